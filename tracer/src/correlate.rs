//! Follows each packet hop to hop ("journeys"), names the segments between
//! consecutive hops with [`crate::taxonomy`], and aggregates them into a
//! [`Ledger`] of latency histograms.
//!
//! Identity of a packet: the kernel `sk_buff` address, validated by a
//! fingerprint of header fields that NAT and encapsulation leave alone. See
//! `docs/segments.md` for the rules on direction and connection state.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hdrhistogram::Histogram;
use hoptrace_common::packet::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};
use hoptrace_common::{
    CtState, Encap, HookKind, HopEvent, L3Headers, NF_PRIORITY_SLOTS, NfHook, PacketMeta,
    ParseStatus, device_key,
};
use serde::{Deserialize, Serialize};

use crate::taxonomy::{
    Category, DevStage, DeviceRole, HopPoint, HopSite, NodeContext, Place, SegmentName,
    TcDirection, classify, encap_name,
};

/// Tuning of the correlator. All times are in event time (bpf ktime, ns).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorrelatorOptions {
    /// A journey without a new hop for this long is finalized by
    /// [`Correlator::flush_idle`].
    pub idle_timeout_ns: u64,
    /// A journey that ended (drop or consume) waits this long for events that
    /// other CPUs delivered late before it is finalized.
    pub reorder_window_ns: u64,
    /// An event with an unknown skb address joins an in-flight journey with
    /// the same fingerprint whose newest hop is at most this far away in time.
    pub rebind_window_ns: u64,
    /// Upper bound on journeys kept in memory; the oldest is finalized first.
    pub max_in_flight: usize,
    /// How many of the slowest journeys are kept with every hop.
    pub exemplars: usize,
}

impl Default for CorrelatorOptions {
    fn default() -> Self {
        Self {
            idle_timeout_ns: 50_000_000,
            reorder_window_ns: 5_000_000,
            rebind_window_ns: 2_000_000,
            max_in_flight: 65_536,
            exemplars: 5,
        }
    }
}

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
    pub const ALL: [Direction; 3] = [Self::Egress, Self::Ingress, Self::Local];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Egress => "egress",
            Self::Ingress => "ingress",
            Self::Local => "local",
        }
    }
}

/// Whether a journey's packet opened a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnState {
    New,
    Established,
}

impl ConnState {
    pub const ALL: [ConnState; 2] = [Self::New, Self::Established];

    pub const fn name(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Established => "established",
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
    /// Sum of the end-to-end time of the journeys that contributed to this
    /// row (each journey once), ns. `total_ns / e2e_ns` is the row's share.
    pub e2e_ns: u128,
}

impl Stat {
    fn new() -> Self {
        Self {
            hist: Histogram::new(2).expect("2 significant digits is a valid histogram precision"),
            total_ns: 0,
            e2e_ns: 0,
        }
    }

    fn record(&mut self, ns: u64) {
        // Auto-resizing histogram: recording only fails past u64 range limits.
        if self.hist.record(ns).is_err() {
            self.hist.saturating_record(ns);
        }
        self.total_ns += u128::from(ns);
    }

    /// Adds another row's data (for `all` rows).
    pub fn merge(&mut self, other: &Stat) {
        // Both histograms auto-resize, so adding cannot fail on range.
        let _ = self.hist.add(&other.hist);
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
    pub direction: Direction,
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
}

/// The 5-tuple of a flow, formatted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowInfo {
    /// `tcp`, `udp`, `icmp`, `icmpv6` or the protocol number.
    pub proto: String,
    /// `addr:port` (`[addr]:port` for IPv6); the address alone without ports.
    pub src: String,
    pub dst: String,
    /// Encapsulation seen on the journey: `none`, `vxlan`, `geneve`, `ipip`.
    pub encap: String,
}

impl FlowInfo {
    fn from_headers(h: &L3Headers, encap: Encap) -> Self {
        let addr = |raw: &[u8; 16]| -> IpAddr {
            if h.version == 6 {
                IpAddr::V6(Ipv6Addr::from(*raw))
            } else {
                IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
            }
        };
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
            src: with_port(addr(&h.saddr), h.sport),
            dst: with_port(addr(&h.daddr), h.dport),
            encap: encap_name(encap).to_string(),
        }
    }
}

/// One hop of an exemplar journey.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExemplarHop {
    /// Stable hop name (`veth.ingress`, `nf.prerouting.-201`).
    pub hop: String,
    pub netns_ino: u32,
    /// 0 when the hook does not know the device.
    pub ifindex: u32,
    /// Device name from the node context, when known.
    pub device: Option<String>,
    /// bpf ktime (CLOCK_MONOTONIC), ns.
    pub ts_ns: u64,
}

/// One segment of an exemplar journey.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExemplarSegment {
    pub segment: String,
    pub category: Category,
    pub duration_us: f64,
}

/// One of the slowest journeys, hop by hop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Exemplar {
    /// First to last hop on this node, µs.
    pub end_to_end_us: f64,
    pub direction: Direction,
    pub conn_state: ConnState,
    /// Innermost 5-tuple at the first hop (before NAT).
    pub flow: FlowInfo,
    /// Innermost 5-tuple at the last hop (after NAT).
    pub flow_last: FlowInfo,
    /// Hops in timestamp order.
    pub hops: Vec<ExemplarHop>,
    pub segments: Vec<ExemplarSegment>,
}

/// Everything the correlator learned: histograms per segment, per category
/// and end to end, exemplars, drops and counters.
#[derive(Clone, Debug)]
pub struct Ledger {
    /// Interned segment names; [`SegmentKey::segment`] indexes this.
    pub segment_names: Vec<SegmentName>,
    pub segments: HashMap<SegmentKey, Stat>,
    pub categories: HashMap<(Category, Direction, ConnState), Stat>,
    /// One value per journey: first to last hop.
    pub end_to_end: HashMap<(Direction, ConnState), Stat>,
    /// Slowest journeys, slowest first.
    pub exemplars: Vec<Exemplar>,
    /// Drop events by reason name.
    pub drops: BTreeMap<String, u64>,
    pub counters: LedgerCounters,
}

impl Ledger {
    fn new() -> Self {
        Self {
            segment_names: Vec::new(),
            segments: HashMap::new(),
            categories: HashMap::new(),
            end_to_end: HashMap::new(),
            exemplars: Vec::new(),
            drops: BTreeMap::new(),
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

/// Multiplicative hasher for the integer keys of the per-event maps (skb
/// addresses, fingerprints, journey ids): SipHash is needlessly slow here.
#[derive(Clone, Copy, Default)]
struct IntHasher(u64);

impl IntHasher {
    #[inline]
    fn mix_in(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(23) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

impl Hasher for IntHasher {
    #[inline]
    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 31;
        x = x.wrapping_mul(0xd6e8_feb8_6659_fd93);
        x ^ (x >> 32)
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix_in(u64::from_le_bytes(word));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.mix_in(u64::from(i));
    }
    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.mix_in(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.mix_in(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.mix_in(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.mix_in(i as u64);
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;
type FastSet<K> = HashSet<K, BuildHasherDefault<IntHasher>>;

/// Encapsulation not known for a hop (its headers did not parse).
const ENCAP_UNKNOWN: u8 = 0xff;

#[derive(Clone, Copy, Debug)]
struct Hop {
    ts_ns: u64,
    point: HopPoint,
    netns_ino: u32,
    ifindex: u32,
    /// [`Encap`] as u8, or [`ENCAP_UNKNOWN`].
    encap: u8,
}

struct Journey {
    fingerprint: u64,
    addr: u64,
    /// Further skb addresses bound by fingerprint (copies, clones).
    extra_addrs: Vec<u64>,
    hops: Vec<Hop>,
    first_ts: u64,
    last_ts: u64,
    /// A drop or consume event was seen.
    ended: bool,
    /// An egress hop on the uplink or a tunnel device was seen: the packet
    /// has left (or is leaving) the node.
    left_node: bool,
    /// The uplink took the packet (tc egress or driver): only its driver
    /// hops or a drop can follow.
    on_wire: bool,
    /// Every hop so far is a receive from the wire (uplink or lower device).
    only_receives: bool,
    /// Every hop so far is the sending pod's.
    only_pod_sends: bool,
    /// The node handed the packet to a pod: only pod-side hops can follow.
    in_pod: bool,
    saw_netfilter: bool,
    saw_ct_new: bool,
    /// Netfilter hops of the packet itself, not of its encapsulating outer
    /// packet: an overlay's outer UDP flow never sees a reply on its own
    /// tuple, so conntrack keeps calling it NEW; the inner verdict decides.
    saw_inner_netfilter: bool,
    saw_inner_ct_new: bool,
    first_flow_ts: u64,
    first_flow: L3Headers,
    last_flow_ts: u64,
    last_flow: L3Headers,
    encap: Encap,
    /// [`Encap`] of the latest parsed event: the layer that events without
    /// headers of their own (skipped netfilter brackets) belong to.
    layer_encap: u8,
}

impl Journey {
    fn add(&mut self, ev: &HopEvent, hook: HookKind, hop: Option<Hop>, parsed: bool) {
        if let Some(hop) = hop {
            self.left_node |= hop.point.leaves_node();
            self.on_wire |= hop.point.hands_to_uplink();
            self.only_receives &= hop.point.is_wire_receive();
            self.only_pod_sends &= hop.point.sent_by_pod();
            self.in_pod |= hop.point.hands_to_pod();
            self.hops.push(hop);
        }
        self.first_ts = self.first_ts.min(ev.ts_ns);
        self.last_ts = self.last_ts.max(ev.ts_ns);
        match hook {
            HookKind::Netfilter => {
                self.saw_netfilter = true;
                let new = CtState::from_u8(ev.ct_state) == CtState::New;
                self.saw_ct_new |= new;
                let encap = if parsed {
                    ev.packet.encap
                } else {
                    self.layer_encap
                };
                if encap == Encap::None as u8 {
                    self.saw_inner_netfilter = true;
                    self.saw_inner_ct_new |= new;
                }
            }
            HookKind::Drop | HookKind::Consume => self.ended = true,
            _ => {}
        }
        if parsed {
            if ev.ts_ns < self.first_flow_ts {
                self.first_flow_ts = ev.ts_ns;
                self.first_flow = *ev.packet.flow();
            }
            if ev.ts_ns >= self.last_flow_ts {
                self.last_flow_ts = ev.ts_ns;
                self.last_flow = *ev.packet.flow();
                self.layer_encap = ev.packet.encap;
            }
            let encap = Encap::from_u8(ev.packet.encap);
            if encap != Encap::None {
                self.encap = encap;
            }
        }
    }
}

/// Devices and namespaces of the node context, indexed for per-event lookups.
struct DeviceTable {
    node_netns_ino: u32,
    pod_netns: FastSet<u32>,
    devices: FastMap<u64, (DeviceRole, String)>,
    drop_reasons: HashMap<u32, String>,
}

impl DeviceTable {
    fn new(ctx: NodeContext) -> Self {
        let mut pod_netns = FastSet::default();
        let mut devices = FastMap::default();
        for d in ctx.devices {
            if d.netns_ino != ctx.node_netns_ino {
                pod_netns.insert(d.netns_ino);
            }
            devices.insert(device_key(d.netns_ino, d.ifindex), (d.role, d.name));
        }
        Self {
            node_netns_ino: ctx.node_netns_ino,
            pod_netns,
            devices,
            drop_reasons: ctx.drop_reasons,
        }
    }

    /// `Some(in_pod)` for a known namespace, `None` for a foreign one. Socket,
    /// drop and consume events without a namespace (no device) count as node.
    #[inline]
    fn namespace(&self, netns_ino: u32, hook: HookKind) -> Option<bool> {
        if netns_ino == self.node_netns_ino {
            Some(false)
        } else if self.pod_netns.contains(&netns_ino) {
            Some(true)
        } else if netns_ino == 0
            && matches!(
                hook,
                HookKind::SocketDeliver | HookKind::Drop | HookKind::Consume
            )
        {
            Some(false)
        } else {
            None
        }
    }

    #[inline]
    fn role(&self, netns_ino: u32, ifindex: u32) -> DeviceRole {
        self.devices
            .get(&device_key(netns_ino, ifindex))
            .map_or(DeviceRole::Other, |(role, _)| *role)
    }

    fn name(&self, netns_ino: u32, ifindex: u32) -> Option<String> {
        self.devices
            .get(&device_key(netns_ino, ifindex))
            .map(|(_, name)| name.clone())
    }

    fn drop_reason_name(&self, reason: u32) -> String {
        self.drop_reasons
            .get(&reason)
            .cloned()
            .unwrap_or_else(|| format!("reason_{reason}"))
    }
}

/// Holds events from several sources (ring buffers drained at different
/// moments) and releases them in time order up to a watermark: the time
/// before which every source has delivered everything. Without it, an event
/// that reaches a correlator one drain later than a younger event of the
/// same buffer address looks like a straggler of a reused buffer.
#[derive(Default)]
pub struct ReorderBuffer {
    pending: Vec<HopEvent>,
}

impl ReorderBuffer {
    pub fn push(&mut self, ev: HopEvent) {
        self.pending.push(ev);
    }

    pub fn extend_from(&mut self, events: impl IntoIterator<Item = HopEvent>) {
        self.pending.extend(events);
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Hands `sink` every held event with `ts_ns <= watermark`, oldest
    /// first; keeps the rest.
    pub fn release(&mut self, watermark: u64, mut sink: impl FnMut(&HopEvent)) {
        self.pending.sort_by_key(|ev| ev.ts_ns);
        let ready = self.pending.partition_point(|ev| ev.ts_ns <= watermark);
        for ev in self.pending.drain(..ready) {
            sink(&ev);
        }
    }
}

/// Fingerprint of the innermost layer from fields that NAT and
/// encapsulation do not change: IP version, IP ID, protocol, TCP flags,
/// seq/ack, payload length and payload head.
pub fn fingerprint(packet: &PacketMeta) -> u64 {
    let f = packet.flow();
    let mut h = IntHasher(0x5bd1_e995);
    h.mix_in(
        u64::from(f.version)
            | (u64::from(f.l4_proto) << 8)
            | (u64::from(f.tcp_flags) << 16)
            | (u64::from(f.ip_id) << 24)
            | (u64::from(f.payload_len) << 40)
            | (u64::from(f.fragment) << 56),
    );
    h.mix_in((u64::from(f.tcp_seq) << 32) | u64::from(f.tcp_ack));
    h.mix_in(u64::from_le_bytes(f.payload_head));
    h.finish()
}

/// Interns segment names; caches the name of every (hop, hop) pair seen.
#[derive(Default)]
struct SegmentTable {
    by_pair: FastMap<(HopSite, HopSite, bool), u32>,
    by_name: HashMap<String, u32>,
    /// See [`NodeContext::kube_proxy_absent`].
    kube_proxy_absent: bool,
}

impl SegmentTable {
    fn id(
        &mut self,
        names: &mut Vec<SegmentName>,
        a: HopSite,
        b: HopSite,
        same_device: bool,
    ) -> u32 {
        if let Some(&id) = self.by_pair.get(&(a, b, same_device)) {
            return id;
        }
        let mut seg = classify(a, b, same_device);
        if self.kube_proxy_absent && seg.category == Category::KubeProxy {
            seg.category = Category::NetfilterOther;
        }
        let id = match self.by_name.get(&seg.name) {
            Some(&id) => id,
            None => {
                let id = names.len() as u32;
                self.by_name.insert(seg.name.clone(), id);
                names.push(seg);
                id
            }
        };
        self.by_pair.insert((a, b, same_device), id);
        id
    }
}

/// Follows packets hop to hop and fills a [`Ledger`].
pub struct Correlator {
    opts: CorrelatorOptions,
    devices: DeviceTable,
    journeys: FastMap<u64, Journey>,
    by_skb: FastMap<u64, u64>,
    by_fingerprint: FastMap<u64, u64>,
    /// Journey ids in creation order (may hold ids already finalized).
    order: VecDeque<u64>,
    next_id: u64,
    drops: FastMap<u32, u64>,
    ledger: Ledger,
    segments: SegmentTable,
    hop_pool: Vec<Vec<Hop>>,
    scratch_ids: Vec<u64>,
    scratch_segments: Vec<u32>,
}

const HOP_POOL_MAX: usize = 1024;

impl Correlator {
    /// A correlator for one node.
    pub fn new(ctx: NodeContext, opts: CorrelatorOptions) -> Self {
        let kube_proxy_absent = ctx.kube_proxy_absent;
        Self {
            opts,
            devices: DeviceTable::new(ctx),
            journeys: FastMap::default(),
            by_skb: FastMap::default(),
            by_fingerprint: FastMap::default(),
            order: VecDeque::new(),
            next_id: 0,
            drops: FastMap::default(),
            ledger: Ledger::new(),
            segments: SegmentTable {
                kube_proxy_absent,
                ..SegmentTable::default()
            },
            hop_pool: Vec::new(),
            scratch_ids: Vec::new(),
            scratch_segments: Vec::new(),
        }
    }

    /// Replaces the node context (new pods and devices). Hops already
    /// recorded keep the names they were given.
    pub fn update_context(&mut self, ctx: NodeContext) {
        self.devices = DeviceTable::new(ctx);
    }

    /// Journeys currently in flight.
    pub fn in_flight(&self) -> usize {
        self.journeys.len()
    }

    fn hop_point(&self, hook: HookKind, ev: &HopEvent, in_pod: bool) -> Option<HopPoint> {
        let place = || {
            if in_pod {
                Place::Pod
            } else {
                Place::Node(self.devices.role(ev.netns_ino, ev.ifindex))
            }
        };
        Some(match hook {
            HookKind::TcIngress | HookKind::TcEgress => HopPoint::Tc {
                role: self.devices.role(ev.netns_ino, ev.ifindex),
                dir: if hook == HookKind::TcIngress {
                    TcDirection::Ingress
                } else {
                    TcDirection::Egress
                },
            },
            HookKind::Netfilter => {
                let hook = NfHook::from_u8(ev.nf_hook)?;
                if usize::from(ev.nf_slot) >= NF_PRIORITY_SLOTS.len() {
                    return None;
                }
                HopPoint::Netfilter {
                    hook,
                    slot: ev.nf_slot,
                }
            }
            HookKind::DevReceive => HopPoint::Device {
                place: place(),
                stage: DevStage::Receive,
            },
            HookKind::DevQueue => HopPoint::Device {
                place: place(),
                stage: DevStage::Queue,
            },
            HookKind::DevXmit => HopPoint::Device {
                place: place(),
                stage: DevStage::Xmit,
            },
            HookKind::SocketDeliver => HopPoint::Socket { in_pod },
            HookKind::Drop => HopPoint::Drop,
            HookKind::Consume | HookKind::Unknown => return None,
        })
    }

    /// Adds one event. Events may arrive slightly out of time order (one
    /// ring buffer fed by many CPUs).
    pub fn push(&mut self, ev: &HopEvent) {
        let hook = HookKind::from_u8(ev.hook);
        if hook == HookKind::Unknown {
            self.ledger.counters.invalid_events += 1;
            return;
        }
        let Some(in_pod) = self.devices.namespace(ev.netns_ino, hook) else {
            self.ledger.counters.foreign_events += 1;
            return;
        };
        if hook == HookKind::Drop {
            *self.drops.entry(ev.drop_reason).or_insert(0) += 1;
        }
        let status = ParseStatus::from_u8(ev.packet.status);
        let parsed = status == ParseStatus::Ok;
        if !parsed && status != ParseStatus::Skipped {
            self.ledger.counters.unparsed_packets += 1;
        }
        let hop = if hook == HookKind::Consume {
            None
        } else {
            let Some(point) = self.hop_point(hook, ev, in_pod) else {
                self.ledger.counters.invalid_events += 1;
                return;
            };
            Some(Hop {
                ts_ns: ev.ts_ns,
                point,
                netns_ino: ev.netns_ino,
                ifindex: ev.ifindex,
                encap: if parsed {
                    ev.packet.encap
                } else {
                    ENCAP_UNKNOWN
                },
            })
        };
        let fp = parsed.then(|| fingerprint(&ev.packet));

        if let Some(&id) = self.by_skb.get(&ev.skb_addr) {
            if let Some(j) = self.journeys.get_mut(&id) {
                let same_packet = fp.is_none_or(|fp| fp == j.fingerprint);
                // A buffer idle longer than the idle timeout carries a new
                // packet (non-IP frames have no fingerprint to tell): one
                // packet does not dwell that long between two hops of a node.
                let stale = ev.ts_ns > j.last_ts.saturating_add(self.opts.idle_timeout_ns);
                // A packet that left through the uplink or a tunnel does not
                // come back in the same buffer, nor does one from the wire
                // arrive in the middle of a journey: such a hop is another
                // packet with the same fingerprint (a duplicate ACK, a
                // retransmission) in a recycled buffer.
                let returned = ev.ts_ns > j.last_ts
                    && hop.as_ref().is_some_and(|h| {
                        (j.left_node && h.point.enters_node())
                            || (!j.only_pod_sends && h.point.sent_by_pod())
                            || (j.on_wire && !h.point.may_follow_uplink())
                            || (j.in_pod && !h.point.may_follow_pod_handoff())
                            || (!j.only_receives && h.point.arrives_on_uplink())
                    });
                let after_end = j.ended && ev.ts_ns > j.last_ts;
                if same_packet && !stale && !returned && !after_end {
                    j.add(ev, hook, hop, parsed);
                    return;
                }
                if !same_packet && ev.ts_ns < j.first_ts {
                    // A straggler of the packet that used this buffer before.
                    self.ledger.counters.late_events += 1;
                    return;
                }
                // The buffer now carries another packet.
                self.ledger.counters.buffer_reuses += 1;
                self.finalize(id);
            } else {
                self.by_skb.remove(&ev.skb_addr);
            }
        } else if let Some(fp) = fp
            && let Some(&id) = self.by_fingerprint.get(&fp)
            && let Some(j) = self.journeys.get_mut(&id)
            && ev.ts_ns.abs_diff(j.last_ts) <= self.opts.rebind_window_ns
        {
            j.extra_addrs.push(ev.skb_addr);
            // A copy lives on after the original was freed.
            j.ended = false;
            j.add(ev, hook, hop, parsed);
            self.by_skb.insert(ev.skb_addr, id);
            self.ledger.counters.rebinds += 1;
            return;
        }
        // A new journey starts with a parsed event on a hop (a lone drop or
        // consume of an unknown buffer is only counted).
        let (Some(fp), Some(hop)) = (fp, hop) else {
            return;
        };
        if hook == HookKind::Drop {
            return;
        }
        self.start(ev, fp, hop, hook);
    }

    fn start(&mut self, ev: &HopEvent, fp: u64, hop: Hop, hook: HookKind) {
        while self.journeys.len() >= self.opts.max_in_flight.max(1) {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if self.journeys.contains_key(&oldest) {
                self.ledger.counters.evicted_journeys += 1;
                self.finalize(oldest);
            }
        }
        if self.order.len() > 2 * self.opts.max_in_flight + 64 {
            let journeys = &self.journeys;
            self.order.retain(|id| journeys.contains_key(id));
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut hops = self.hop_pool.pop().unwrap_or_default();
        hops.clear();
        let flow = *ev.packet.flow();
        let mut j = Journey {
            fingerprint: fp,
            addr: ev.skb_addr,
            extra_addrs: Vec::new(),
            hops,
            first_ts: ev.ts_ns,
            last_ts: ev.ts_ns,
            ended: false,
            left_node: false,
            on_wire: false,
            only_receives: true,
            only_pod_sends: true,
            in_pod: false,
            saw_netfilter: false,
            saw_ct_new: false,
            saw_inner_netfilter: false,
            saw_inner_ct_new: false,
            first_flow_ts: ev.ts_ns,
            first_flow: flow,
            last_flow_ts: ev.ts_ns,
            last_flow: flow,
            encap: Encap::None,
            layer_encap: ev.packet.encap,
        };
        j.add(ev, hook, Some(hop), true);
        self.journeys.insert(id, j);
        self.by_skb.insert(ev.skb_addr, id);
        self.by_fingerprint.insert(fp, id);
        self.order.push_back(id);
    }

    /// Finalizes journeys idle for longer than the idle timeout, and ended
    /// journeys older than the reorder window. `now_ns` is bpf ktime.
    pub fn flush_idle(&mut self, now_ns: u64) {
        let mut ids = std::mem::take(&mut self.scratch_ids);
        ids.clear();
        for (id, j) in &self.journeys {
            let limit = if j.ended {
                self.opts.reorder_window_ns
            } else {
                self.opts.idle_timeout_ns
            };
            if now_ns.saturating_sub(j.last_ts) > limit {
                ids.push(*id);
            }
        }
        ids.sort_unstable();
        for id in ids.iter() {
            self.finalize(*id);
        }
        self.scratch_ids = ids;
    }

    /// Finalizes every journey and returns the ledger.
    pub fn finish(mut self) -> Ledger {
        let mut ids: Vec<u64> = self.journeys.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.finalize(id);
        }
        let mut drops = BTreeMap::new();
        for (reason, count) in &self.drops {
            *drops
                .entry(self.devices.drop_reason_name(*reason))
                .or_insert(0) += count;
        }
        self.ledger.drops = drops;
        self.ledger
    }

    fn finalize(&mut self, id: u64) {
        let Some(mut j) = self.journeys.remove(&id) else {
            return;
        };
        for addr in std::iter::once(j.addr).chain(j.extra_addrs.iter().copied()) {
            if self.by_skb.get(&addr) == Some(&id) {
                self.by_skb.remove(&addr);
            }
        }
        if self.by_fingerprint.get(&j.fingerprint) == Some(&id) {
            self.by_fingerprint.remove(&j.fingerprint);
        }
        record_journey(
            &mut self.ledger,
            &mut self.segments,
            &self.devices,
            &mut j,
            &mut self.scratch_segments,
            self.opts.exemplars,
        );
        if self.hop_pool.len() < HOP_POOL_MAX {
            j.hops.clear();
            self.hop_pool.push(j.hops);
        }
    }
}

fn journey_direction(first: &Hop) -> Direction {
    match first.point {
        HopPoint::Device {
            place: Place::Pod, ..
        } => Direction::Egress,
        HopPoint::Tc {
            role: DeviceRole::PodVethHost,
            dir: TcDirection::Ingress,
        }
        | HopPoint::Device {
            place: Place::Node(DeviceRole::PodVethHost),
            stage: DevStage::Receive,
        } => Direction::Egress,
        p if p.node_role().is_some_and(DeviceRole::faces_network) => Direction::Ingress,
        _ => Direction::Local,
    }
}

fn journey_conn_state(j: &Journey) -> ConnState {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    if j.saw_inner_netfilter {
        if j.saw_inner_ct_new {
            ConnState::New
        } else {
            ConnState::Established
        }
    } else if j.saw_netfilter {
        if j.saw_ct_new {
            ConnState::New
        } else {
            ConnState::Established
        }
    } else if j.first_flow.l4_proto == IPPROTO_TCP
        && j.first_flow.tcp_flags & SYN != 0
        && j.first_flow.tcp_flags & ACK == 0
    {
        ConnState::New
    } else {
        ConnState::Established
    }
}

fn record_journey(
    ledger: &mut Ledger,
    table: &mut SegmentTable,
    devices: &DeviceTable,
    j: &mut Journey,
    seen_segments: &mut Vec<u32>,
    max_exemplars: usize,
) {
    ledger.counters.journeys += 1;
    let hops = &mut j.hops;
    // Stable: equal timestamps keep arrival order.
    hops.sort_by_key(|h| h.ts_ns);
    hops.dedup_by(|b, a| {
        a.ts_ns == b.ts_ns
            && a.point == b.point
            && a.netns_ino == b.netns_ino
            && a.ifindex == b.ifindex
    });
    // Hops whose headers did not parse take the encapsulation of the hop before.
    let mut prev = hops
        .iter()
        .find(|h| h.encap != ENCAP_UNKNOWN)
        .map_or(0, |h| h.encap);
    for h in hops.iter_mut() {
        if h.encap == ENCAP_UNKNOWN {
            h.encap = prev;
        } else {
            prev = h.encap;
        }
    }
    if hops.len() < 2 {
        ledger.counters.single_hop_journeys += 1;
        return;
    }
    let direction = journey_direction(&hops[0]);
    let conn_state = journey_conn_state(j);
    let hops = &j.hops;
    let e2e = hops[hops.len() - 1].ts_ns - hops[0].ts_ns;
    let mut category_ns = [0u64; Category::ALL.len()];
    let mut category_seen = [false; Category::ALL.len()];
    seen_segments.clear();
    for pair in hops.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let same_device = a.ifindex != 0 && a.ifindex == b.ifindex && a.netns_ino == b.netns_ino;
        let site = |h: &Hop| HopSite {
            point: h.point,
            encap: Encap::from_u8(h.encap),
        };
        let segment = table.id(&mut ledger.segment_names, site(a), site(b), same_device);
        let duration = b.ts_ns - a.ts_ns;
        let stat = ledger
            .segments
            .entry(SegmentKey {
                segment,
                direction,
                conn_state,
            })
            .or_insert_with(Stat::new);
        stat.record(duration);
        if !seen_segments.contains(&segment) {
            seen_segments.push(segment);
            stat.e2e_ns += u128::from(e2e);
        }
        let category = ledger.segment_names[segment as usize].category.index();
        category_ns[category] += duration;
        category_seen[category] = true;
    }
    for category in Category::ALL {
        if category_seen[category.index()] {
            let stat = ledger
                .categories
                .entry((category, direction, conn_state))
                .or_insert_with(Stat::new);
            stat.record(category_ns[category.index()]);
            stat.e2e_ns += u128::from(e2e);
        }
    }
    let stat = ledger
        .end_to_end
        .entry((direction, conn_state))
        .or_insert_with(Stat::new);
    stat.record(e2e);
    stat.e2e_ns += u128::from(e2e);

    let e2e_us = e2e as f64 / 1000.0;
    if max_exemplars == 0 {
        return;
    }
    // The slowest `max_exemplars` per direction: a burst of slow replies must
    // not hide every request (and the other way round).
    let kept = ledger
        .exemplars
        .iter()
        .filter(|e| e.direction == direction)
        .count();
    if kept >= max_exemplars
        && ledger
            .exemplars
            .iter()
            .rfind(|e| e.direction == direction)
            .is_some_and(|fastest_kept| fastest_kept.end_to_end_us >= e2e_us)
    {
        return;
    }
    let exemplar = Exemplar {
        end_to_end_us: e2e_us,
        direction,
        conn_state,
        flow: FlowInfo::from_headers(&j.first_flow, j.encap),
        flow_last: FlowInfo::from_headers(&j.last_flow, j.encap),
        hops: hops
            .iter()
            .map(|h| ExemplarHop {
                hop: h.point.name(),
                netns_ino: h.netns_ino,
                ifindex: h.ifindex,
                device: devices.name(h.netns_ino, h.ifindex),
                ts_ns: h.ts_ns,
            })
            .collect(),
        segments: hops
            .windows(2)
            .map(|pair| {
                let same_device = pair[0].ifindex != 0
                    && pair[0].ifindex == pair[1].ifindex
                    && pair[0].netns_ino == pair[1].netns_ino;
                let site = |h: &Hop| HopSite {
                    point: h.point,
                    encap: Encap::from_u8(h.encap),
                };
                let id = table.id(
                    &mut ledger.segment_names,
                    site(&pair[0]),
                    site(&pair[1]),
                    same_device,
                );
                let seg = &ledger.segment_names[id as usize];
                ExemplarSegment {
                    segment: seg.name.clone(),
                    category: seg.category,
                    duration_us: (pair[1].ts_ns - pair[0].ts_ns) as f64 / 1000.0,
                }
            })
            .collect(),
    };
    let pos = ledger
        .exemplars
        .iter()
        .position(|e| e.end_to_end_us < e2e_us)
        .unwrap_or(ledger.exemplars.len());
    ledger.exemplars.insert(pos, exemplar);
    if kept + 1 > max_exemplars
        && let Some(fastest) = ledger
            .exemplars
            .iter()
            .rposition(|e| e.direction == direction)
    {
        ledger.exemplars.remove(fastest);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::taxonomy::DeviceInfo;
    use hoptrace_common::Encap;

    pub const NODE: u32 = 4_026_531_840;
    pub const POD_A: u32 = 4_026_532_001;
    pub const POD_B: u32 = 4_026_532_002;
    pub const IF_LO: u32 = 1;
    pub const IF_UPLINK: u32 = 2;
    pub const IF_BRIDGE: u32 = 3;
    pub const IF_VXLAN: u32 = 4;
    pub const IF_VETH_A: u32 = 5;
    pub const IF_VETH_B: u32 = 6;
    /// The pod's eth0: same ifindex as the node's bridge, other namespace.
    pub const IF_POD_ETH0: u32 = 3;

    pub fn ctx() -> NodeContext {
        let dev = |netns_ino, ifindex, name: &str, role| DeviceInfo {
            netns_ino,
            ifindex,
            name: name.to_string(),
            role,
        };
        NodeContext {
            node_netns_ino: NODE,
            devices: vec![
                dev(NODE, IF_LO, "lo", DeviceRole::Loopback),
                dev(NODE, IF_UPLINK, "eth0", DeviceRole::Uplink),
                dev(NODE, IF_BRIDGE, "cni0", DeviceRole::Bridge),
                dev(NODE, IF_VXLAN, "flannel.1", DeviceRole::Vxlan),
                dev(NODE, IF_VETH_A, "veth1234", DeviceRole::PodVethHost),
                dev(NODE, IF_VETH_B, "veth5678", DeviceRole::PodVethHost),
                dev(POD_A, IF_POD_ETH0, "eth0", DeviceRole::PodInterface),
                dev(POD_B, IF_POD_ETH0, "eth0", DeviceRole::PodInterface),
            ],
            drop_reasons: HashMap::from([
                (2, "NOT_SPECIFIED".to_string()),
                (6, "NETFILTER_DROP".to_string()),
            ]),
            kube_proxy_absent: false,
        }
    }

    pub const SYN: u8 = 0x02;
    pub const ACK: u8 = 0x10;

    fn l3(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, proto: u8) -> L3Headers {
        let mut h = L3Headers::zeroed();
        h.version = 4;
        h.saddr[..4].copy_from_slice(&src);
        h.daddr[..4].copy_from_slice(&dst);
        h.sport = sport;
        h.dport = dport;
        h.l4_proto = proto;
        h
    }

    /// A TCP packet from pod A (10.244.0.5) to a ClusterIP (10.96.0.10:80).
    pub fn tcp(flags: u8, seq: u32, ip_id: u16) -> PacketMeta {
        let mut p = PacketMeta::zeroed();
        p.outer = l3([10, 244, 0, 5], 40000, [10, 96, 0, 10], 80, IPPROTO_TCP);
        p.outer.tcp_flags = flags;
        p.outer.tcp_seq = seq;
        p.outer.tcp_ack = if flags & ACK != 0 { 7 } else { 0 };
        p.outer.ip_id = ip_id;
        p.outer.payload_len = if flags & SYN != 0 { 0 } else { 100 };
        p
    }

    /// The same packet after DNAT to the backend pod 10.244.1.7:8080.
    pub fn dnat(mut p: PacketMeta) -> PacketMeta {
        p.outer.daddr[..4].copy_from_slice(&[10, 244, 1, 7]);
        p.outer.dport = 8080;
        p
    }

    /// The packet inside VXLAN between nodes 192.168.0.1 and 192.168.0.2.
    pub fn vxlan(inner: PacketMeta) -> PacketMeta {
        let mut p = PacketMeta::zeroed();
        p.outer = l3([192, 168, 0, 1], 51000, [192, 168, 0, 2], 8472, IPPROTO_UDP);
        p.outer.ip_id = 999;
        p.inner = inner.outer;
        p.encap = Encap::Vxlan as u8;
        p.vni = 1;
        p
    }

    pub fn ev(
        ts: u64,
        skb: u64,
        netns: u32,
        ifindex: u32,
        hook: HookKind,
        packet: PacketMeta,
    ) -> HopEvent {
        let mut e = HopEvent::zeroed();
        e.ts_ns = ts;
        e.skb_addr = skb;
        e.netns_ino = netns;
        e.ifindex = ifindex;
        e.hook = hook as u8;
        e.packet = packet;
        e
    }

    pub fn nf(
        ts: u64,
        skb: u64,
        hook: NfHook,
        prio: i32,
        ct: CtState,
        packet: PacketMeta,
    ) -> HopEvent {
        let mut e = ev(ts, skb, NODE, 0, HookKind::Netfilter, packet);
        e.nf_hook = hook as u8;
        e.nf_slot = NF_PRIORITY_SLOTS
            .iter()
            .position(|p| *p == prio)
            .expect("known priority") as u8;
        e.ct_state = ct as u8;
        e.nf_pf = 2;
        e
    }

    pub const SKB: u64 = 0xffff_8880_1234_5600;

    /// Node A: pod A -> ClusterIP -> DNAT to a pod on node B -> VXLAN -> uplink.
    /// Returns the events and the expected (segment, category, ns) list.
    pub fn node_a_journey(
        t0: u64,
        skb: u64,
        seq: u32,
    ) -> (Vec<HopEvent>, Vec<(&'static str, Category, u64)>) {
        use Category::*;
        use CtState::{New, None as NoCt};
        use HookKind::*;
        use NfHook::*;
        let pre = tcp(SYN, seq, 1);
        let post = dnat(pre);
        let outer = vxlan(post);
        let events = vec![
            ev(t0 + 1_000, skb, POD_A, IF_POD_ETH0, DevXmit, pre),
            ev(t0 + 3_000, skb, NODE, IF_VETH_A, DevReceive, pre),
            ev(t0 + 3_500, skb, NODE, IF_VETH_A, TcIngress, pre),
            ev(t0 + 5_000, skb, NODE, IF_BRIDGE, DevReceive, pre),
            nf(t0 + 6_000, skb, PreRouting, -201, NoCt, pre),
            nf(t0 + 6_400, skb, PreRouting, -199, New, pre),
            nf(t0 + 6_600, skb, PreRouting, -101, New, pre),
            nf(t0 + 9_600, skb, PreRouting, -99, New, post),
            nf(t0 + 10_000, skb, Forward, -1, New, post),
            nf(t0 + 10_800, skb, Forward, 1, New, post),
            nf(t0 + 11_200, skb, PostRouting, 99, New, post),
            nf(t0 + 11_500, skb, PostRouting, 101, New, post),
            ev(t0 + 12_000, skb, NODE, IF_VXLAN, DevQueue, post),
            ev(t0 + 12_100, skb, NODE, IF_VXLAN, TcEgress, post),
            ev(t0 + 12_300, skb, NODE, IF_VXLAN, DevXmit, post),
            nf(t0 + 13_000, skb, LocalOut, -101, New, outer),
            nf(t0 + 13_100, skb, LocalOut, -99, New, outer),
            nf(t0 + 13_600, skb, PostRouting, 99, New, outer),
            nf(t0 + 13_700, skb, PostRouting, 101, New, outer),
            ev(t0 + 14_000, skb, NODE, IF_UPLINK, DevQueue, outer),
            ev(t0 + 14_100, skb, NODE, IF_UPLINK, TcEgress, outer),
            ev(t0 + 14_400, skb, NODE, IF_UPLINK, DevXmit, outer),
        ];
        let segments = vec![
            ("pod.veth.egress", Cni, 2_000),
            ("tc.ingress", KernelOther, 500),
            ("bridge", Cni, 1_500),
            ("ip.receive", KernelOther, 1_000),
            ("netfilter.prerouting.conntrack", Conntrack, 400),
            ("netfilter.prerouting.mangle", NetfilterOther, 200),
            ("netfilter.prerouting.dnat", KubeProxy, 3_000),
            ("routing", Cni, 400),
            ("netfilter.forward.filter", KubeProxy, 800),
            ("routing.output", Cni, 400),
            ("netfilter.postrouting.snat", KubeProxy, 300),
            ("ip.output", KernelOther, 500),
            ("tc.egress", KernelOther, 100),
            ("qdisc", KernelOther, 200),
            ("tunnel.vxlan.encap", Encapsulation, 700),
            ("netfilter.output.dnat", KubeProxy, 100),
            ("routing.output", Cni, 500),
            ("netfilter.postrouting.snat", KubeProxy, 100),
            ("ip.output", KernelOther, 300),
            ("tc.egress", KernelOther, 100),
            ("qdisc", KernelOther, 300),
        ];
        (events, segments)
    }

    fn run(events: &[HopEvent]) -> Ledger {
        let mut c = Correlator::new(ctx(), CorrelatorOptions::default());
        for e in events {
            c.push(e);
        }
        c.finish()
    }

    /// Sums the expected durations per segment name.
    fn expected_totals(expected: &[(&str, Category, u64)]) -> BTreeMap<String, (Category, u128)> {
        let mut totals = BTreeMap::new();
        for (name, cat, ns) in expected {
            let e = totals.entry(name.to_string()).or_insert((*cat, 0u128));
            e.1 += u128::from(*ns);
        }
        totals
    }

    fn check_segments(
        ledger: &Ledger,
        dir: Direction,
        conn: ConnState,
        expected: &[(&str, Category, u64)],
    ) {
        let totals = expected_totals(expected);
        let seen: Vec<&str> = ledger.segment_names_seen();
        let want: Vec<&str> = totals.keys().map(String::as_str).collect();
        assert_eq!(seen, want);
        for (name, (cat, total)) in &totals {
            let stat = ledger
                .segment(name, dir, conn)
                .unwrap_or_else(|| panic!("no row for {name}"));
            assert_eq!(stat.total_ns, *total, "{name}");
            let idx = ledger
                .segment_names
                .iter()
                .position(|s| &s.name == name)
                .unwrap();
            assert_eq!(ledger.segment_names[idx].category, *cat, "{name}");
        }
    }

    #[test]
    fn node_a_pod_to_clusterip_over_vxlan() {
        let (events, expected) = node_a_journey(0, SKB, 100);
        let ledger = run(&events);
        assert_eq!(ledger.counters.journeys, 1);
        check_segments(&ledger, Direction::Egress, ConnState::New, &expected);
        let e2e = &ledger.end_to_end[&(Direction::Egress, ConnState::New)];
        assert_eq!(e2e.total_ns, 13_400);
        assert_eq!(e2e.hist.len(), 1);
        // Segments add up to end-to-end.
        let sum: u64 = expected.iter().map(|s| s.2).sum();
        assert_eq!(sum, 13_400);
        let kube = &ledger.categories[&(Category::KubeProxy, Direction::Egress, ConnState::New)];
        assert_eq!(kube.total_ns, 3_000 + 800 + 300 + 100 + 100);
        assert_eq!(kube.hist.len(), 1, "one value per journey");
        let ex = &ledger.exemplars[0];
        assert_eq!(ex.hops.len(), events.len());
        assert_eq!(ex.hops[0].hop, "pod.xmit");
        assert_eq!(ex.hops[1].device.as_deref(), Some("veth1234"));
        assert_eq!(ex.hops[4].hop, "nf.prerouting.-201");
        assert_eq!(ex.flow.dst, "10.96.0.10:80");
        assert_eq!(ex.flow_last.dst, "10.244.1.7:8080");
        assert_eq!(ex.flow.encap, "vxlan");
        assert_eq!(ex.segments.len(), expected.len());
        assert!((ex.end_to_end_us - 13.4).abs() < 1e-9);
    }

    #[test]
    fn out_of_order_delivery_across_cpus() {
        let (events, expected) = node_a_journey(0, SKB, 100);
        // Two CPUs: even events first, then odd ones, each stream in order.
        let mut shuffled: Vec<HopEvent> = events.iter().step_by(2).copied().collect();
        shuffled.extend(events.iter().skip(1).step_by(2).copied());
        assert_ne!(shuffled[1].ts_ns, events[1].ts_ns);
        let ledger = run(&shuffled);
        assert_eq!(ledger.counters.journeys, 1);
        assert_eq!(ledger.counters.buffer_reuses, 0);
        check_segments(&ledger, Direction::Egress, ConnState::New, &expected);
        let ts: Vec<u64> = ledger.exemplars[0].hops.iter().map(|h| h.ts_ns).collect();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");
        assert_eq!(ledger.exemplars[0].hops[0].hop, "pod.xmit");
    }

    #[test]
    fn duplicate_hops_are_ignored() {
        let (mut events, expected) = node_a_journey(0, SKB, 100);
        events.insert(3, events[2]);
        let ledger = run(&events);
        check_segments(&ledger, Direction::Egress, ConnState::New, &expected);
        assert_eq!(ledger.exemplars[0].hops.len(), events.len() - 1);
    }

    /// Node B: VXLAN from the uplink, decap, forward to the backend pod, socket.
    pub fn node_b_journey(
        t0: u64,
        skb: u64,
    ) -> (Vec<HopEvent>, Vec<(&'static str, Category, u64)>) {
        use Category::*;
        use CtState::{Established as Est, None as NoCt};
        use HookKind::*;
        use NfHook::*;
        let inner = dnat(tcp(ACK, 500, 2));
        let outer = vxlan(inner);
        let events = vec![
            ev(t0 + 1_000, skb, NODE, IF_UPLINK, DevReceive, outer),
            ev(t0 + 1_200, skb, NODE, IF_UPLINK, TcIngress, outer),
            nf(t0 + 2_000, skb, PreRouting, -201, NoCt, outer),
            nf(t0 + 2_300, skb, PreRouting, -199, Est, outer),
            nf(t0 + 2_800, skb, LocalIn, -1, Est, outer),
            nf(t0 + 3_000, skb, LocalIn, 1, Est, outer),
            ev(t0 + 4_000, skb, NODE, IF_VXLAN, DevReceive, inner),
            ev(t0 + 4_100, skb, NODE, IF_VXLAN, TcIngress, inner),
            nf(t0 + 4_500, skb, PreRouting, -201, NoCt, inner),
            nf(t0 + 4_700, skb, PreRouting, -199, Est, inner),
            nf(t0 + 5_000, skb, Forward, -1, Est, inner),
            nf(t0 + 5_400, skb, Forward, 1, Est, inner),
            nf(t0 + 5_600, skb, PostRouting, 99, Est, inner),
            nf(t0 + 5_700, skb, PostRouting, 101, Est, inner),
            ev(t0 + 6_000, skb, NODE, IF_BRIDGE, DevQueue, inner),
            ev(t0 + 6_100, skb, NODE, IF_BRIDGE, DevXmit, inner),
            ev(t0 + 6_600, skb, NODE, IF_VETH_B, DevQueue, inner),
            ev(t0 + 6_700, skb, NODE, IF_VETH_B, TcEgress, inner),
            ev(t0 + 6_800, skb, NODE, IF_VETH_B, DevXmit, inner),
            ev(t0 + 9_800, skb, POD_B, IF_POD_ETH0, DevReceive, inner),
            ev(t0 + 12_000, skb, POD_B, 0, SocketDeliver, inner),
        ];
        let segments = vec![
            ("tc.ingress", KernelOther, 200),
            ("ip.receive", KernelOther, 800),
            ("netfilter.prerouting.conntrack", Conntrack, 300),
            ("routing", Cni, 500),
            ("netfilter.input.filter", KubeProxy, 200),
            ("tunnel.vxlan.decap", Encapsulation, 1_000),
            ("tc.ingress", KernelOther, 100),
            ("ip.receive", KernelOther, 400),
            ("netfilter.prerouting.conntrack", Conntrack, 200),
            ("routing", Cni, 300),
            ("netfilter.forward.filter", KubeProxy, 400),
            ("routing.output", Cni, 200),
            ("netfilter.postrouting.snat", KubeProxy, 100),
            ("ip.output", KernelOther, 300),
            ("qdisc", KernelOther, 100),
            ("bridge", Cni, 500),
            ("tc.egress", KernelOther, 100),
            ("qdisc", KernelOther, 100),
            ("pod.veth.ingress", Cni, 3_000),
            ("socket.delivery", KernelOther, 2_200),
        ];
        (events, segments)
    }

    #[test]
    fn node_b_vxlan_decap_to_pod_socket() {
        let (events, expected) = node_b_journey(0, SKB);
        let ledger = run(&events);
        assert_eq!(ledger.counters.journeys, 1);
        check_segments(
            &ledger,
            Direction::Ingress,
            ConnState::Established,
            &expected,
        );
        let e2e = &ledger.end_to_end[&(Direction::Ingress, ConnState::Established)];
        assert_eq!(e2e.total_ns, 11_000);
        let ex = &ledger.exemplars[0];
        assert_eq!(ex.hops.last().map(|h| h.hop.as_str()), Some("socket.pod"));
        assert_eq!(ex.hops[19].hop, "pod.rx");
    }

    #[test]
    fn skb_address_reuse_starts_a_new_journey() {
        let (first, _) = node_a_journey(0, SKB, 100);
        let (second, _) = node_a_journey(1_000_000, SKB, 200);
        let events: Vec<HopEvent> = first.iter().chain(second.iter()).copied().collect();
        let ledger = run(&events);
        assert_eq!(ledger.counters.journeys, 2);
        assert_eq!(ledger.counters.buffer_reuses, 1);
        let e2e = &ledger.end_to_end[&(Direction::Egress, ConnState::New)];
        assert_eq!(e2e.hist.len(), 2);
        assert_eq!(e2e.total_ns, 2 * 13_400);
    }

    #[test]
    fn straggler_of_the_previous_packet_is_counted_late() {
        let (first, _) = node_a_journey(0, SKB, 100);
        let (second, expected) = node_a_journey(100_000, SKB, 200);
        let mut events: Vec<HopEvent> = first[..first.len() - 1].to_vec();
        events.extend_from_slice(&second[..3]);
        // The last hop of the first packet comes in late, from another CPU.
        events.push(first[first.len() - 1]);
        events.extend_from_slice(&second[3..]);
        let ledger = run(&events);
        assert_eq!(ledger.counters.late_events, 1);
        assert_eq!(ledger.counters.journeys, 2);
        let totals = expected_totals(&expected);
        let stat = ledger
            .segment("pod.veth.egress", Direction::Egress, ConnState::New)
            .unwrap();
        assert_eq!(stat.total_ns, 2 * totals["pod.veth.egress"].1);
    }

    #[test]
    fn fingerprint_rebinds_a_copied_buffer() {
        let (events, expected) = node_a_journey(0, SKB, 100);
        let mut moved = events.clone();
        for e in moved.iter_mut().skip(3) {
            e.skb_addr = SKB + 0x1000;
        }
        let ledger = run(&moved);
        assert_eq!(ledger.counters.rebinds, 1);
        assert_eq!(ledger.counters.journeys, 1);
        check_segments(&ledger, Direction::Egress, ConnState::New, &expected);
    }

    #[test]
    fn no_rebind_outside_the_window_or_with_another_fingerprint() {
        let (events, _) = node_a_journey(0, SKB, 100);
        let mut far = events[..3].to_vec();
        let mut late = events[3];
        late.skb_addr = SKB + 0x1000;
        late.ts_ns += 10_000_000;
        far.push(late);
        let ledger = run(&far);
        assert_eq!(ledger.counters.rebinds, 0);
        assert_eq!(ledger.counters.journeys, 2);

        let mut other = events[..3].to_vec();
        let mut e = events[3];
        e.skb_addr = SKB + 0x1000;
        e.packet.outer.ip_id = 77;
        other.push(e);
        let ledger = run(&other);
        assert_eq!(ledger.counters.rebinds, 0);
        assert_eq!(ledger.counters.journeys, 2);
    }

    #[test]
    fn conn_state_from_conntrack_or_tcp_flags() {
        use HookKind::*;
        let pair = |skb: u64, p: PacketMeta| {
            [
                ev(0, skb, POD_A, IF_POD_ETH0, DevXmit, p),
                ev(1_000, skb, NODE, IF_VETH_A, DevReceive, p),
            ]
        };
        let mut events = Vec::new();
        events.extend(pair(1 << 12, tcp(SYN, 1, 1)));
        events.extend(pair(2 << 12, tcp(SYN | ACK, 2, 2)));
        events.extend(pair(3 << 12, tcp(ACK, 3, 3)));
        // Conntrack says new even though the flags carry ACK.
        let p = tcp(ACK, 4, 4);
        events.push(ev(0, 4 << 12, NODE, IF_VETH_A, TcIngress, p));
        events.push(nf(500, 4 << 12, NfHook::PreRouting, -199, CtState::New, p));
        // Conntrack says established even though the flags carry SYN only.
        let p = tcp(SYN, 5, 5);
        events.push(ev(0, 5 << 12, NODE, IF_VETH_A, TcIngress, p));
        events.push(nf(
            500,
            5 << 12,
            NfHook::PreRouting,
            -199,
            CtState::Established,
            p,
        ));
        let ledger = run(&events);
        assert_eq!(ledger.counters.journeys, 5);
        let count = |c| {
            ledger
                .end_to_end
                .get(&(Direction::Egress, c))
                .map_or(0, |s| s.hist.len())
        };
        assert_eq!(count(ConnState::New), 2);
        assert_eq!(count(ConnState::Established), 3);
    }

    #[test]
    fn outer_packet_conntrack_does_not_make_an_established_packet_new() {
        // An ACK of an established connection is encapsulated; the outer UDP
        // flow has never seen a reply on its own tuple, so conntrack calls
        // every outer packet NEW. The inner verdict must decide.
        use CtState::{Established, New};
        use NfHook::*;
        let inner = dnat(tcp(ACK, 42, 3));
        let outer = vxlan(inner);
        let events = [
            nf(1_000, SKB, PreRouting, -201, CtState::None, inner),
            nf(1_200, SKB, PreRouting, -199, Established, inner),
            nf(1_400, SKB, LocalOut, -201, CtState::None, outer),
            nf(1_600, SKB, LocalOut, -199, New, outer),
        ];
        let ledger = run(&events);
        assert_eq!(
            ledger.end_to_end.keys().map(|k| k.1).collect::<Vec<_>>(),
            vec![ConnState::Established]
        );
        // Without any inner netfilter hop, the outer verdict is all there is.
        let ledger = run(&events[2..]);
        assert_eq!(
            ledger.end_to_end.keys().map(|k| k.1).collect::<Vec<_>>(),
            vec![ConnState::New]
        );
    }

    #[test]
    fn skipped_brackets_follow_their_layer_and_are_not_unparsed() {
        // Brackets between two others of a hook carry no headers: they join
        // the buffer's journey, belong to the layer last parsed (here the
        // outer packet after encapsulation) and are not "unparsed".
        use CtState::{Established, New};
        use NfHook::*;
        let inner = dnat(tcp(ACK, 42, 3));
        let outer = vxlan(inner);
        let mut skipped = PacketMeta::zeroed();
        skipped.status = ParseStatus::Skipped as u8;
        let events = [
            nf(1_000, SKB, PreRouting, -201, CtState::None, inner),
            nf(1_200, SKB, PreRouting, -199, Established, skipped),
            nf(1_400, SKB, LocalOut, -201, CtState::None, outer),
            nf(1_600, SKB, LocalOut, -199, New, skipped),
        ];
        let ledger = run(&events);
        assert_eq!(ledger.counters.unparsed_packets, 0);
        assert_eq!(ledger.counters.journeys, 1);
        assert_eq!(
            ledger.end_to_end.keys().map(|k| k.1).collect::<Vec<_>>(),
            vec![ConnState::Established],
            "the outer packet's NEW is not the inner packet's"
        );
        let names = ledger.segment_names_seen();
        assert!(
            names.contains(&"netfilter.prerouting.conntrack"),
            "{names:?}"
        );
        assert!(names.contains(&"netfilter.output.conntrack"), "{names:?}");
        // A skipped bracket of an unknown buffer starts nothing.
        let ledger = run(&events[1..2]);
        assert_eq!(ledger.counters.journeys, 0);
    }

    #[test]
    fn reorder_buffer_releases_in_time_order_up_to_the_watermark() {
        use HookKind::*;
        let p = tcp(ACK, 1, 1);
        let mut buf = ReorderBuffer::default();
        for ts in [30, 10, 40, 20] {
            buf.push(ev(ts, SKB, NODE, IF_UPLINK, DevReceive, p));
        }
        let mut out = Vec::new();
        buf.release(25, |e| out.push(e.ts_ns));
        assert_eq!(out, [10, 20]);
        assert_eq!(buf.len(), 2);
        buf.push(ev(5, SKB, NODE, IF_UPLINK, DevReceive, p));
        buf.release(u64::MAX, |e| out.push(e.ts_ns));
        assert_eq!(
            out,
            [10, 20, 5, 30, 40],
            "a late event still goes out, first"
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn events_of_two_rings_in_time_order_keep_a_reused_buffer_apart() {
        // Packet 1 and packet 2 use the same buffer one after the other; the
        // tracepoint hop of packet 1 arrives through another ring, after
        // packet 2's hops. Released in time order, both journeys are whole.
        use HookKind::*;
        let p1 = tcp(ACK, 1, 1);
        let p2 = tcp(ACK, 2, 2);
        let own = [
            ev(1_000, SKB, NODE, IF_UPLINK, TcIngress, p1),
            ev(3_000, SKB, NODE, IF_UPLINK, TcIngress, p2),
        ];
        let routed = [ev(2_000, SKB, NODE, IF_UPLINK, DevReceive, p1)];
        let mut late = Correlator::new(ctx(), CorrelatorOptions::default());
        for e in own.iter().chain(&routed) {
            late.push(e);
        }
        assert_eq!(late.finish().counters.late_events, 1);
        let mut buf = ReorderBuffer::default();
        own.iter().chain(&routed).for_each(|e| buf.push(*e));
        let mut ordered = Correlator::new(ctx(), CorrelatorOptions::default());
        buf.release(u64::MAX, |e| ordered.push(e));
        let ledger = ordered.finish();
        assert_eq!(ledger.counters.late_events, 0);
        assert_eq!(ledger.counters.journeys, 2);
    }

    #[test]
    fn a_buffer_that_left_the_node_and_comes_back_is_another_packet() {
        // Same bytes in the same buffer: out through the tunnel, then, well
        // within the idle timeout, in through the uplink (a retransmission
        // in a recycled buffer). Two journeys, no 5 ms "segment" between.
        use HookKind::*;
        let p = tcp(ACK, 7, 9);
        let events = [
            ev(1_000, SKB, NODE, IF_VETH_A, TcIngress, p),
            ev(2_000, SKB, NODE, IF_VXLAN, TcEgress, p),
            ev(5_002_000, SKB, NODE, IF_UPLINK, TcIngress, p),
            ev(5_003_000, SKB, NODE, IF_VXLAN, TcIngress, p),
        ];
        let ledger = run(&events);
        assert_eq!(ledger.counters.journeys, 2);
        assert_eq!(ledger.counters.buffer_reuses, 1);
        let names = ledger.segment_names_seen();
        assert!(
            names.contains(&"uplink.ingress..vxlan.ingress"),
            "{names:?}"
        );
        assert!(
            !names.contains(&"vxlan.egress..uplink.ingress"),
            "{names:?}"
        );
        // The same gap on the way out is one packet waiting.
        let mut late_egress = events[1];
        late_egress.ts_ns = events[2].ts_ns;
        let ledger = run(&[events[0], late_egress]);
        assert_eq!(ledger.counters.journeys, 1);
        // Out through the uplink, then sent again from this node's stack in
        // the same buffer: only the uplink's driver hop continues a packet.
        let mut out = ev(1_000, SKB, NODE, IF_UPLINK, TcEgress, p);
        let xmit = ev(1_500, SKB, NODE, IF_UPLINK, DevXmit, p);
        let resent = nf(3_000_000, SKB, NfHook::LocalOut, -201, CtState::None, p);
        let ledger = run(&[out, xmit, resent]);
        assert_eq!(ledger.counters.journeys, 2);
        assert_eq!(ledger.counters.buffer_reuses, 1);
        out.ts_ns = 500;
        let ledger = run(&[out, xmit]);
        assert_eq!(ledger.counters.journeys, 1);
        // Delivered into a pod, then arriving from the wire: another packet.
        let into_pod = ev(1_000, SKB, NODE, IF_VETH_A, TcEgress, p);
        let from_wire = ev(3_000_000, SKB, NODE, IF_UPLINK, TcIngress, p);
        assert_eq!(run(&[into_pod, from_wire]).counters.journeys, 2);
        // Delivered into a pod, then sent from the node's own stack.
        let resent = nf(3_000_000, SKB, NfHook::LocalOut, -201, CtState::None, p);
        assert_eq!(run(&[into_pod, resent]).counters.journeys, 2);
        let pod_rx = ev(2_000, SKB, POD_A, IF_POD_ETH0, DevReceive, p);
        assert_eq!(run(&[into_pod, pod_rx]).counters.journeys, 1);
        // Out through the tunnel, then sent by a pod: another packet.
        let tunnel = ev(1_000, SKB, NODE, IF_VXLAN, TcEgress, p);
        let from_pod = ev(3_000_000, SKB, NODE, IF_VETH_B, TcIngress, p);
        assert_eq!(run(&[tunnel, from_pod]).counters.journeys, 2);
        // From the wire, then sent by a pod; from a bridge, then the wire.
        let mut from_pod_later = from_pod;
        from_pod_later.ts_ns = from_wire.ts_ns + 1_000;
        assert_eq!(run(&[from_wire, from_pod_later]).counters.journeys, 2);
        let bridge_in = ev(1_000, SKB, NODE, IF_BRIDGE, TcIngress, p);
        assert_eq!(run(&[bridge_in, from_wire]).counters.journeys, 2);
        // A pod's own hops, then its veth: one packet.
        let pod_xmit = ev(1_000, SKB, POD_A, IF_POD_ETH0, DevXmit, p);
        let veth_in = ev(2_000, SKB, NODE, IF_VETH_A, TcIngress, p);
        assert_eq!(run(&[pod_xmit, veth_in]).counters.journeys, 1);
    }

    #[test]
    fn a_buffer_idle_past_the_timeout_starts_a_new_journey() {
        use HookKind::*;
        // The same bytes (same fingerprint) in the same buffer, twice.
        let arp = tcp(ACK, 7, 9);
        let idle = CorrelatorOptions::default().idle_timeout_ns;
        let events = [
            ev(1_000, SKB, NODE, IF_UPLINK, DevReceive, arp),
            ev(2_000, SKB, NODE, IF_UPLINK, TcIngress, arp),
            ev(2_000 + idle + 1, SKB, NODE, IF_UPLINK, DevReceive, arp),
            ev(3_000 + idle + 1, SKB, NODE, IF_UPLINK, TcIngress, arp),
        ];
        let ledger = run(&events);
        let e2e: Vec<u64> = ledger.end_to_end.values().map(|s| s.hist.len()).collect();
        assert_eq!(
            e2e.iter().sum::<u64>(),
            2,
            "two journeys, not one spanning the idle gap"
        );
        assert!(
            ledger.end_to_end.values().all(|s| s.hist.max() < idle),
            "no journey spans the gap"
        );
    }

    #[test]
    fn without_kube_proxy_the_nat_and_filter_bands_are_netfilter_other() {
        let (events, _) = node_a_journey(0, SKB, 1);
        let mut c = Correlator::new(
            NodeContext {
                kube_proxy_absent: true,
                ..ctx()
            },
            CorrelatorOptions::default(),
        );
        for e in &events {
            c.push(e);
        }
        let ledger = c.finish();
        let categories: HashSet<Category> = ledger.categories.keys().map(|k| k.0).collect();
        assert!(!categories.contains(&Category::KubeProxy), "{categories:?}");
        assert!(categories.contains(&Category::NetfilterOther));
        assert!(
            categories.contains(&Category::Conntrack),
            "conntrack is not kube-proxy's"
        );
        let dnat = ledger
            .segment_names
            .iter()
            .find(|s| s.name == "netfilter.prerouting.dnat")
            .expect("dnat segment");
        assert_eq!(dnat.category, Category::NetfilterOther);
    }

    #[test]
    fn direction_from_the_first_hop() {
        use HookKind::*;
        let p = tcp(ACK, 1, 1);
        let events = [
            // Ingress: first seen on the uplink.
            ev(0, 1 << 12, NODE, IF_UPLINK, DevReceive, p),
            ev(100, 1 << 12, NODE, IF_UPLINK, TcIngress, p),
            // Local: first seen in the node's output path.
            nf(
                0,
                2 << 12,
                NfHook::LocalOut,
                -201,
                CtState::None,
                tcp(ACK, 2, 2),
            ),
            nf(
                100,
                2 << 12,
                NfHook::LocalOut,
                -199,
                CtState::Established,
                tcp(ACK, 2, 2),
            ),
            // Egress: first seen entering the node side of a pod veth.
            ev(0, 3 << 12, NODE, IF_VETH_A, TcIngress, tcp(ACK, 3, 3)),
            ev(100, 3 << 12, NODE, IF_BRIDGE, DevReceive, tcp(ACK, 3, 3)),
        ];
        let ledger = run(&events);
        for dir in Direction::ALL {
            let n = ledger
                .end_to_end
                .get(&(dir, ConnState::Established))
                .map_or(0, |s| s.hist.len());
            assert_eq!(n, 1, "{dir:?}");
        }
    }

    #[test]
    fn foreign_namespaces_are_ignored() {
        let (mut events, expected) = node_a_journey(0, SKB, 100);
        let mut foreign = events[2];
        foreign.netns_ino = 12345;
        foreign.ts_ns += 1;
        events.push(foreign);
        let mut alone = events[0];
        alone.netns_ino = 999;
        alone.skb_addr = 0xdead_0000;
        events.push(alone);
        let ledger = run(&events);
        assert_eq!(ledger.counters.foreign_events, 2);
        assert_eq!(ledger.counters.journeys, 1);
        check_segments(&ledger, Direction::Egress, ConnState::New, &expected);
    }

    #[test]
    fn drops_by_reason_and_drop_ends_a_journey() {
        use HookKind::*;
        let p = tcp(ACK, 1, 1);
        let mut drop1 = ev(5_000, SKB, NODE, IF_VETH_A, Drop, p);
        drop1.drop_reason = 6;
        let mut drop2 = ev(10, 0x1000, NODE, IF_UPLINK, Drop, tcp(ACK, 9, 9));
        drop2.drop_reason = 6;
        let mut drop3 = ev(10, 0x2000, 0, 0, Drop, tcp(ACK, 8, 8));
        drop3.drop_reason = 77;
        let events = [
            ev(0, SKB, POD_A, IF_POD_ETH0, DevXmit, p),
            ev(1_000, SKB, NODE, IF_VETH_A, DevReceive, p),
            drop1,
            drop2,
            drop3,
            // The buffer is reused by the next packet after the drop.
            ev(9_000, SKB, POD_A, IF_POD_ETH0, DevXmit, p),
            ev(9_500, SKB, NODE, IF_VETH_A, DevReceive, p),
        ];
        let ledger = run(&events);
        assert_eq!(ledger.drops.get("NETFILTER_DROP"), Some(&2));
        assert_eq!(ledger.drops.get("reason_77"), Some(&1));
        assert_eq!(ledger.drops.len(), 2);
        assert_eq!(ledger.counters.journeys, 2);
        let stat = ledger
            .segment("veth.rx..drop", Direction::Egress, ConnState::Established)
            .unwrap();
        assert_eq!(stat.total_ns, 4_000);
    }

    #[test]
    fn unparsed_events_are_counted_and_follow_known_buffers() {
        use HookKind::*;
        let p = tcp(ACK, 1, 1);
        let mut bad = PacketMeta::zeroed();
        bad.status = ParseStatus::Truncated as u8;
        let events = [
            ev(0, SKB, POD_A, IF_POD_ETH0, DevXmit, p),
            ev(1_000, SKB, NODE, IF_VETH_A, DevReceive, bad),
            ev(1_500, SKB, NODE, IF_VETH_A, TcIngress, p),
            // Unknown buffer, unparsed: counted only.
            ev(2_000, 0x7000, NODE, IF_UPLINK, DevReceive, bad),
        ];
        let ledger = run(&events);
        assert_eq!(ledger.counters.unparsed_packets, 2);
        assert_eq!(ledger.counters.journeys, 1);
        assert!(
            ledger
                .segment("pod.veth.egress", Direction::Egress, ConnState::Established)
                .is_some()
        );
        assert!(
            ledger
                .segment("tc.ingress", Direction::Egress, ConnState::Established)
                .is_some()
        );
    }

    #[test]
    fn idle_flush_and_eviction() {
        let (events, _) = node_a_journey(0, SKB, 100);
        let mut c = Correlator::new(ctx(), CorrelatorOptions::default());
        for e in &events {
            c.push(e);
        }
        let last = events.last().unwrap().ts_ns;
        c.flush_idle(last + 50_000_000);
        assert_eq!(c.in_flight(), 1);
        c.flush_idle(last + 50_000_001);
        assert_eq!(c.in_flight(), 0);

        let opts = CorrelatorOptions {
            max_in_flight: 2,
            ..CorrelatorOptions::default()
        };
        let mut c = Correlator::new(ctx(), opts);
        for i in 0..3u64 {
            let (events, _) = node_a_journey(i * 100_000, SKB + (i << 12), 100 + i as u32);
            c.push(&events[0]);
            c.push(&events[1]);
        }
        assert_eq!(c.in_flight(), 2);
        let ledger = c.finish();
        assert_eq!(ledger.counters.evicted_journeys, 1);
        assert_eq!(ledger.counters.journeys, 3);
    }

    #[test]
    fn ended_journey_waits_only_the_reorder_window() {
        use HookKind::*;
        let p = tcp(ACK, 1, 1);
        let mut c = Correlator::new(ctx(), CorrelatorOptions::default());
        c.push(&ev(0, SKB, POD_A, IF_POD_ETH0, DevXmit, p));
        c.push(&ev(1_000, SKB, NODE, IF_VETH_A, DevReceive, p));
        c.push(&ev(2_000, SKB, NODE, IF_VETH_A, Consume, p));
        c.flush_idle(2_000 + 5_000_000);
        assert_eq!(c.in_flight(), 1);
        c.flush_idle(2_000 + 5_000_001);
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn new_devices_via_update_context() {
        use HookKind::*;
        let p = tcp(ACK, 1, 1);
        const POD_C: u32 = 4_026_532_099;
        let mut c = Correlator::new(ctx(), CorrelatorOptions::default());
        c.push(&ev(0, SKB, POD_C, IF_POD_ETH0, DevXmit, p));
        let mut with_c = ctx();
        with_c.devices.push(DeviceInfo {
            netns_ino: POD_C,
            ifindex: IF_POD_ETH0,
            name: "eth0".into(),
            role: DeviceRole::PodInterface,
        });
        c.update_context(with_c);
        c.push(&ev(10, SKB + 0x1000, POD_C, IF_POD_ETH0, DevXmit, p));
        c.push(&ev(20, SKB + 0x1000, NODE, IF_VETH_A, DevReceive, p));
        let ledger = c.finish();
        assert_eq!(ledger.counters.foreign_events, 1);
        assert!(
            ledger
                .segment("pod.veth.egress", Direction::Egress, ConnState::Established)
                .is_some()
        );
    }

    #[test]
    fn exemplars_keep_the_slowest() {
        let mut events = Vec::new();
        for i in 0..8u64 {
            let (mut evs, _) = node_a_journey(i * 1_000_000, SKB + (i << 12), 100 + i as u32);
            // Stretch journey i by i microseconds at the last hop.
            evs.last_mut().unwrap().ts_ns += i * 1_000;
            events.extend(evs);
        }
        let ledger = run(&events);
        let e2e: Vec<f64> = ledger.exemplars.iter().map(|e| e.end_to_end_us).collect();
        assert_eq!(e2e, vec![20.4, 19.4, 18.4, 17.4, 16.4]);
    }
}

#[cfg(test)]
mod throughput {
    use super::tests::{ctx, node_a_journey};
    use super::*;

    /// Rough events/s of push + finalize; run with
    /// `AYA_BUILD_SKIP=1 cargo test -p tracer --lib --release throughput -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing check, run by hand in release"]
    fn events_per_second() {
        let (template, _) = node_a_journey(0, 0, 0);
        let journeys = 100_000u64;
        let mut events = Vec::with_capacity(template.len() * journeys as usize);
        for i in 0..journeys {
            for e in &template {
                let mut e = *e;
                e.ts_ns += i * 20_000;
                // Buffer addresses cycle, as the kernel's slab does.
                e.skb_addr = 0xffff_8880_0000_0000 + (i % 4096) * 256;
                e.packet.outer.tcp_seq = i as u32;
                e.packet.inner.tcp_seq = i as u32;
                events.push(e);
            }
        }
        let mut c = Correlator::new(ctx(), CorrelatorOptions::default());
        let start = std::time::Instant::now();
        for (n, e) in events.iter().enumerate() {
            c.push(e);
            if n % 65_536 == 0 {
                c.flush_idle(e.ts_ns);
            }
        }
        let ledger = c.finish();
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{} events, {} journeys in {secs:.3}s: {:.2} M events/s",
            events.len(),
            ledger.counters.journeys,
            events.len() as f64 / secs / 1e6
        );
        assert_eq!(ledger.counters.journeys, journeys);
    }
}
