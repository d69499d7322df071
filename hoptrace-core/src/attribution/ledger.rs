//! The ledger: latency histograms per segment, category and end to end,
//! split by direction and connection state, with the slowest journeys kept
//! as exemplars. Filled by [`crate::correlate::Correlator`], read by
//! [`crate::report`].

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use hdrhistogram::Histogram;
use hoptrace_common::packet::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};
use hoptrace_common::{Encap, L3Headers};
use serde::{Deserialize, Serialize};

use crate::attribution::taxonomy::{Category, SegmentName, encap_name};

/// Which way a journey crossed the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Left a pod (first hop in a pod namespace or entering the node side of a pod veth).
    Egress,
    /// Arrived from the network (first hop on the uplink or a tunnel device).
    Ingress,
    /// Anything else (node-local traffic, host-network senders).
    Local,
}

impl Direction {
    /// Every direction, in report order.
    pub const ALL: [Direction; 3] = [Self::Egress, Self::Ingress, Self::Local];

    /// Stable lower-case name, as reports and the JSON schema spell it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Egress => "egress",
            Self::Ingress => "ingress",
            Self::Local => "local",
        }
    }
}

/// Whether a journey's packet opened a connection. The conntrack state its
/// netfilter hops reported decides (of the inner packet when the journey
/// crossed a tunnel); netfilter hops after conntrack without an entry make
/// it `Untracked`; without netfilter hops, a TCP SYN without ACK is `New`
/// and everything else `Established`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnState {
    /// Conntrack said `IP_CT_NEW` at some hop (the first packet of a flow,
    /// which pays for conntrack entry creation and the NAT rule walk).
    New,
    /// Conntrack found an entry (established or related), or no netfilter
    /// hop saw the packet and it was not a TCP SYN.
    Established,
    /// Netfilter hops after conntrack's priority saw the packet without a
    /// conntrack entry: conntrack did not run in its namespace (no rule or
    /// tool asked for it there) or the packet was marked `notrack`.
    Untracked,
}

impl ConnState {
    /// Every state, in report order.
    pub const ALL: [ConnState; 3] = [Self::New, Self::Established, Self::Untracked];

    /// Stable lower-case name, as reports and the JSON schema spell it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Established => "established",
            Self::Untracked => "untracked",
        }
    }
}

/// Latency distribution of one ledger row.
#[derive(Clone, Debug)]
pub struct Stat {
    /// Durations in nanoseconds, 2 significant digits (<= 1 % relative error).
    pub hist: Histogram<u64>,
    /// Sum of all recorded durations, ns.
    pub total_ns: u128,
    /// Packet lengths (`skb->len` at the row's first hop, bytes; 3
    /// significant digits), for segment rows; empty for categories and end
    /// to end.
    pub len_hist: Histogram<u64>,
    /// Sum of the end-to-end time of the journeys that contributed to this
    /// row (each journey once), ns. `total_ns / e2e_ns` is the row's share.
    pub e2e_ns: u128,
}

impl Stat {
    pub(crate) fn new() -> Self {
        Self {
            hist: Histogram::new(2).expect("2 significant digits is a valid histogram precision"),
            total_ns: 0,
            // 3 digits: lengths up to 2047 bytes are exact.
            len_hist: Histogram::new(3)
                .expect("3 significant digits is a valid histogram precision"),
            e2e_ns: 0,
        }
    }

    pub(crate) fn record(&mut self, ns: u64) {
        // Auto-resizing histogram: recording only fails past u64 range limits.
        if self.hist.record(ns).is_err() {
            self.hist.saturating_record(ns);
        }
        self.total_ns += u128::from(ns);
    }

    pub(crate) fn record_len(&mut self, bytes: u32) {
        // Auto-resizing: `record` grows the range (`saturating_record` would
        // clamp to the initial one).
        if self.len_hist.record(u64::from(bytes)).is_err() {
            self.len_hist.saturating_record(u64::from(bytes));
        }
    }

    /// Adds another row's data (for `all` rows).
    pub fn merge(&mut self, other: &Stat) {
        // Both histograms auto-resize, so adding cannot fail on range.
        let _ = self.hist.add(&other.hist);
        let _ = self.len_hist.add(&other.len_hist);
        self.total_ns += other.total_ns;
        self.e2e_ns += other.e2e_ns;
    }

    /// An empty row.
    pub fn empty() -> Self {
        Self::new()
    }
}

/// Key of a segment row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentKey {
    /// Index into [`Ledger::segment_names`].
    pub segment: u32,
    /// Direction of the journeys that crossed the segment.
    pub direction: Direction,
    /// Connection state of the journeys that crossed the segment.
    pub conn_state: ConnState,
}

/// Counters of events that did not become (whole) journeys.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerCounters {
    /// Journeys finalized (including single-hop ones).
    pub journeys: u64,
    /// Journeys with one hop only: no segment, not in the histograms.
    pub single_hop_journeys: u64,
    /// Events whose headers did not parse (`packet.status != Ok`).
    pub unparsed_packets: u64,
    /// Events from network namespaces that are neither the node's nor a known pod's.
    pub foreign_events: u64,
    /// Events older than the journey that now owns their skb address (dropped).
    pub late_events: u64,
    /// Events with an unknown hook kind, netfilter hook or priority slot.
    pub invalid_events: u64,
    /// Journeys finalized early because `max_in_flight` was reached.
    pub evicted_journeys: u64,
    /// Journeys closed because their skb address started carrying another packet.
    pub buffer_reuses: u64,
    /// Events that joined a journey by fingerprint under a new skb address.
    pub rebinds: u64,
    /// Journeys followed but not reported: their first parsed hop did not
    /// match `--ip`/`--port` and their connection was not a reported one.
    #[serde(default)]
    pub filtered_journeys: u64,
    /// Journeys that waited in a kernel queue (neighbour resolution, IP
    /// reassembly, a qdisc) longer than the idle timeout between two hops
    /// and were kept whole.
    #[serde(default)]
    pub queued_journeys: u64,
    /// Events of a drop older than the newest hop of the journey that owns
    /// the buffer: the drop of the packet that used the buffer before (or
    /// of a copy), never the end of this journey.
    #[serde(default)]
    pub stale_drops: u64,
    /// Journeys of non-first IP fragments merged into the journey of their
    /// datagram at reassembly, and fragments of a reassembled datagram sent
    /// on (refragmented) that are part of its journey.
    #[serde(default)]
    pub fragments_merged: u64,
}

/// The 5-tuple of a flow, formatted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowInfo {
    /// `tcp`, `udp`, `icmp`, `icmpv6` or the protocol number.
    pub proto: String,
    /// Source `addr:port` (`[addr]:port` for IPv6); the address alone for
    /// protocols without ports (ICMP).
    pub src: String,
    /// Destination, formatted as `src`.
    pub dst: String,
    /// Encapsulation seen on the journey: `none`, `vxlan`, `geneve`, `ipip`.
    pub encap: String,
    /// ICMP/ICMPv6 type, code, well-known name and MTU; absent for other
    /// protocols.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<IcmpInfo>,
}

/// What an ICMP or ICMPv6 message is (`flow.icmp`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IcmpInfo {
    /// ICMP type (RFC 792 / RFC 4443).
    #[serde(rename = "type")]
    pub kind: u8,
    /// ICMP code.
    pub code: u8,
    /// Well-known name of the type and code (`echo-request`,
    /// `fragmentation-needed`, `packet-too-big`, ...); `other` otherwise.
    pub name: String,
    /// The MTU a "fragmentation needed" (IPv4 3/4) or "packet too big"
    /// (ICMPv6 2) message announces, bytes; absent for other messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

impl IcmpInfo {
    /// The ICMP part of headers `h` (type in `tcp_flags`, code, the 4 bytes
    /// after the checksum in `sport`/`dport`); `None` for other protocols.
    pub fn from_headers(h: &L3Headers) -> Option<Self> {
        let v6 = match h.l4_proto {
            IPPROTO_ICMP => false,
            IPPROTO_ICMPV6 => true,
            _ => return None,
        };
        let (kind, code) = (h.tcp_flags, h.icmp_code);
        let name = match (v6, kind, code) {
            (false, 0, _) | (true, 129, _) => "echo-reply",
            (false, 8, _) | (true, 128, _) => "echo-request",
            (false, 3, 4) => "fragmentation-needed",
            (false, 3, 3) | (true, 1, 4) => "port-unreachable",
            (false, 3, 1) | (true, 1, 3) => "host-unreachable",
            (false, 3, _) | (true, 1, _) => "destination-unreachable",
            (true, 2, _) => "packet-too-big",
            (false, 11, _) | (true, 3, _) => "time-exceeded",
            (true, 133, _) => "router-solicitation",
            (true, 134, _) => "router-advertisement",
            (true, 143, _) => "mld-report",
            (true, 135, _) => "neighbor-solicitation",
            (true, 136, _) => "neighbor-advertisement",
            _ => "other",
        };
        let mtu = match (v6, kind, code) {
            (false, 3, 4) => Some(u32::from(h.dport)),
            (true, 2, _) => Some(u32::from(h.sport) << 16 | u32::from(h.dport)),
            _ => None,
        };
        Some(Self {
            kind,
            code,
            name: name.to_owned(),
            mtu,
        })
    }
}

impl FlowInfo {
    pub(crate) fn from_headers(h: &L3Headers, encap: Encap) -> Self {
        let with_port = |ip: IpAddr, port: u16| -> String {
            if matches!(h.l4_proto, IPPROTO_TCP | IPPROTO_UDP) {
                SocketAddr::new(ip, port).to_string()
            } else {
                ip.to_string()
            }
        };
        let proto = match h.l4_proto {
            IPPROTO_TCP => "tcp".to_string(),
            IPPROTO_UDP => "udp".to_string(),
            IPPROTO_ICMP => "icmp".to_string(),
            IPPROTO_ICMPV6 => "icmpv6".to_string(),
            n => n.to_string(),
        };
        Self {
            proto,
            src: with_port(h.src_addr(), h.sport),
            dst: with_port(h.dst_addr(), h.dport),
            encap: encap_name(encap).to_string(),
            icmp: IcmpInfo::from_headers(h),
        }
    }
}

/// Drops of one kernel drop reason at one location (`drop_records[]`), with
/// the first [`DROP_RECORDS_PER_GROUP`] dropped packets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropGroupRecords {
    /// Kernel drop reason name, as in `drops[]`.
    pub reason: String,
    /// The journey's last hop before the drop (`nf.forward.-1`); `unknown`
    /// when the drop was the packet's only hop.
    pub location: String,
    /// Dropped journeys of this reason and location.
    pub count: u64,
    /// Dropped journeys beyond the first [`DROP_RECORDS_PER_GROUP`], not
    /// listed (`count - records.len()`).
    pub omitted: u64,
    /// The first dropped packets, in the order their journeys ended.
    pub records: Vec<DropRecord>,
}

/// One dropped packet (`drop_records[].records[]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropRecord {
    /// Innermost 5-tuple at the journey's first hop (before NAT), with the
    /// ICMP type and code for ICMP.
    pub flow: FlowInfo,
    /// `skb->len` at the drop, bytes (from the network header on, outer
    /// headers included when the packet was encapsulated).
    pub len_bytes: u32,
    /// bpf ktime (CLOCK_MONOTONIC) of the drop, ns.
    pub ts_ns: u64,
}

/// ICMP journeys of one type and code in one direction (`icmp[]`), so that
/// a "fragmentation needed" is visible as such however fast it was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IcmpCount {
    /// `icmp` or `icmpv6`.
    pub proto: String,
    /// Type, code, name and the MTU announced by the latest message of
    /// this kind (as in `flow.icmp`).
    #[serde(flatten)]
    pub icmp: IcmpInfo,
    /// Which way the journeys crossed the node.
    pub direction: Direction,
    /// Journeys (ICMP messages) of this kind.
    pub count: u64,
}

/// Dropped packets listed per (reason, location) in [`Ledger::drop_records`].
pub const DROP_RECORDS_PER_GROUP: usize = 100;

/// One hop of an exemplar journey.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExemplarHop {
    /// Stable hop name (`veth.ingress`, `nf.prerouting.-201`).
    pub hop: String,
    /// Inode of the network namespace of the hop's device (socket hops: of
    /// the socket; netfilter hops: the node's); 0 when unknown.
    pub netns_ino: u32,
    /// Interface index inside `netns_ino`; 0 when the hook does not know
    /// the device.
    pub ifindex: u32,
    /// Device name from the node context, when known.
    pub device: Option<String>,
    /// bpf ktime (CLOCK_MONOTONIC), ns.
    pub ts_ns: u64,
}

/// One segment of an exemplar journey.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExemplarSegment {
    /// Segment name from the taxonomy (`routing`, `netfilter.prerouting.dnat`).
    pub segment: String,
    /// Category the segment's time is attributed to.
    pub category: Category,
    /// Time from the segment's first hop to its second, µs.
    pub duration_us: f64,
}

/// One of the slowest journeys, hop by hop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Exemplar {
    /// First to last hop on this node, µs.
    pub end_to_end_us: f64,
    /// Which way the journey crossed the node.
    pub direction: Direction,
    /// Whether the packet opened a connection.
    pub conn_state: ConnState,
    /// Innermost 5-tuple at the first hop (before NAT).
    pub flow: FlowInfo,
    /// Innermost 5-tuple at the last hop (after NAT).
    pub flow_last: FlowInfo,
    /// Hops in timestamp order.
    pub hops: Vec<ExemplarHop>,
    /// The segments between consecutive hops: `hops.len() - 1` entries, in
    /// the same order.
    pub segments: Vec<ExemplarSegment>,
}

/// Everything the correlator learned: histograms per segment, per category
/// and end to end, exemplars, drops and counters.
#[derive(Clone, Debug)]
pub struct Ledger {
    /// Interned segment names; [`SegmentKey::segment`] indexes this.
    pub segment_names: Vec<SegmentName>,
    /// One row per segment, direction and state: one value per journey
    /// (a journey that crosses a segment twice records the sum once). The
    /// state of a segment between two netfilter hops of an outer
    /// (encapsulating) packet is that outer pass's own.
    pub segments: HashMap<SegmentKey, Stat>,
    /// One value per journey and category: the sum of the journey's
    /// segments of that category.
    pub categories: HashMap<(Category, Direction, ConnState), Stat>,
    /// One value per journey: first to last hop.
    pub end_to_end: HashMap<(Direction, ConnState), Stat>,
    /// The slowest journeys of each direction (at most
    /// [`crate::correlate::CorrelatorOptions::exemplars`] per direction),
    /// slowest first.
    pub exemplars: Vec<Exemplar>,
    /// Drop events (`skb:kfree_skb`) by reason: the `enum skb_drop_reason`
    /// name of include/net/dropreason-core.h, as the running kernel's BTF
    /// spells it, without `SKB_DROP_REASON_` and in lower case (`no_socket`);
    /// `reason_<n>` for a value the BTF does not name.
    pub drops: BTreeMap<String, u64>,
    /// Every dropped journey by (reason, location): counted, and the first
    /// [`DROP_RECORDS_PER_GROUP`] of each listed with flow and length.
    pub drop_records: BTreeMap<(String, String), DropGroupRecords>,
    /// ICMP journeys by (protocol, type, code, direction).
    pub icmp: BTreeMap<(u8, u8, u8, Direction), IcmpCount>,
    /// Events and journeys that did not make it into the histograms.
    pub counters: LedgerCounters,
}

impl Ledger {
    pub(crate) fn new() -> Self {
        Self {
            segment_names: Vec::new(),
            segments: HashMap::new(),
            categories: HashMap::new(),
            end_to_end: HashMap::new(),
            exemplars: Vec::new(),
            drops: BTreeMap::new(),
            drop_records: BTreeMap::new(),
            icmp: BTreeMap::new(),
            counters: LedgerCounters::default(),
        }
    }

    /// The segment row for a name, direction and state, if any journey crossed it.
    pub fn segment(
        &self,
        name: &str,
        direction: Direction,
        conn_state: ConnState,
    ) -> Option<&Stat> {
        let idx = self.segment_names.iter().position(|s| s.name == name)? as u32;
        self.segments.get(&SegmentKey {
            segment: idx,
            direction,
            conn_state,
        })
    }

    /// Names of every segment that has at least one row.
    pub fn segment_names_seen(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .segments
            .keys()
            .map(|k| self.segment_names[k.segment as usize].name.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}
