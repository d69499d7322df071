//! Follows each packet hop to hop ("journeys"), names the segments between
//! consecutive hops with [`crate::attribution::taxonomy`], and aggregates them into a
//! [`Ledger`] of latency histograms.
//!
//! Identity of a packet: the kernel `sk_buff` address, validated by a
//! fingerprint of header fields that NAT and encapsulation leave alone. See
//! `docs/segments.md` for the rules on direction and connection state.

use std::collections::{BTreeMap, HashMap, VecDeque};

use hoptrace_common::{
    Encap, HookKind, HopEvent, LINK_LOCAL_MULTICAST_GAP_NS, NF_PRIORITY_SLOTS, NfHook, ParseStatus,
    device_key,
};
use rustc_hash::{FxHashMap as FastMap, FxHashSet as FastSet};

pub use crate::attribution::ledger::{
    ConnState, DROP_RECORDS_PER_GROUP, Direction, DropGroupRecords, DropRecord, Exemplar,
    ExemplarHop, ExemplarSegment, FlowInfo, IcmpCount, IcmpInfo, Ledger, LedgerCounters,
    SegmentKey, Stat,
};
use crate::attribution::taxonomy::{
    Category, DevStage, HopPoint, HopSite, Place, SegmentName, TcDirection, classify,
    reassembly_segment,
};
use crate::node::{DeviceRole, NodeContext};
use journey::{ENCAP_UNKNOWN, Hop, Journey, NetfilterPass, journey_conn_state, journey_direction};

pub mod aggregate;
mod filter;
mod fingerprint;
mod journey;
mod observer;
pub mod requests;
#[cfg(test)]
pub(crate) mod tests;

pub use filter::FlowFilter;
use filter::{FlowKey, FollowedFlows};
pub use fingerprint::fingerprint;
pub use observer::{JourneyObserver, JourneySummary, Observers};

/// Tuning of the correlator. All times are in event time (bpf ktime, ns).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorrelatorOptions {
    /// A journey without a new hop for this long is finalized by
    /// [`Correlator::flush_idle`].
    pub idle_timeout_ns: u64,
    /// The same for a journey whose newest hop may be followed by a wait in
    /// a kernel queue (after POSTROUTING: neighbour resolution; before a
    /// qdisc; before IP reassembly): longer than the kernel keeps a packet
    /// there (reassembly: `ipfrag_time`, 30 s; an unresolved neighbour:
    /// about 3 s), so the wait and a drop at its end stay in the journey.
    pub queue_timeout_ns: u64,
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
    /// `--ip`/`--port`: only journeys whose first parsed hop matches, and
    /// the rest of their connections, are reported ([`FlowFilter`]).
    pub filter: Option<FlowFilter>,
}

impl Default for CorrelatorOptions {
    fn default() -> Self {
        Self {
            idle_timeout_ns: 50_000_000,
            queue_timeout_ns: 60_000_000_000,
            reorder_window_ns: 5_000_000,
            rebind_window_ns: 2_000_000,
            max_in_flight: 65_536,
            exemplars: 5,
            filter: None,
        }
    }
}

impl CorrelatorOptions {
    /// How long `j` may go without a hop before it is finalized: the queue
    /// timeout when its newest hop may be followed by a kernel queue, else
    /// the idle timeout.
    fn limit(&self, j: &Journey) -> u64 {
        if j.waiting {
            self.queue_timeout_ns.max(self.idle_timeout_ns)
        } else {
            self.idle_timeout_ns
        }
    }
}

/// Devices and namespaces of the node context, indexed for per-event lookups.
struct DeviceTable {
    node_netns_ino: u32,
    pod_netns: FastSet<u32>,
    devices: FastMap<u64, (DeviceRole, String)>,
    /// Devices with a qdisc ([`device_key`]).
    queueing: FastSet<u64>,
    drop_reasons: HashMap<u32, String>,
}

impl DeviceTable {
    fn new(ctx: NodeContext) -> Self {
        let mut pod_netns = FastSet::default();
        let mut devices = FastMap::default();
        let mut queueing = FastSet::default();
        for d in ctx.devices {
            if d.queues {
                queueing.insert(device_key(d.netns_ino, d.ifindex));
            }
            if d.netns_ino != ctx.node_netns_ino {
                pod_netns.insert(d.netns_ino);
            }
            devices.insert(device_key(d.netns_ino, d.ifindex), (d.role, d.name));
        }
        Self {
            node_netns_ino: ctx.node_netns_ino,
            pod_netns,
            devices,
            queueing,
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

    /// Whether the device has a qdisc (a packet may wait in it).
    #[inline]
    fn queues(&self, netns_ino: u32, ifindex: u32) -> bool {
        self.queueing.contains(&device_key(netns_ino, ifindex))
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

/// The named point of a hop of kind `hook` on device (`netns_ino`,
/// `ifindex`), at netfilter hook `nf_hook` and slot `nf_slot` for a
/// netfilter hop; `in_pod` when the namespace is a pod's. `None` for hooks
/// that make no hop (consume) and netfilter values out of range. The
/// correlator and the aggregate namer both name hops with it.
fn hop_point(
    devices: &DeviceTable,
    hook: HookKind,
    netns_ino: u32,
    ifindex: u32,
    nf_hook: u8,
    nf_slot: u8,
    in_pod: bool,
) -> Option<HopPoint> {
    let place = || {
        if in_pod {
            Place::Pod
        } else {
            Place::Node(devices.role(netns_ino, ifindex))
        }
    };
    Some(match hook {
        HookKind::TcIngress | HookKind::TcEgress => HopPoint::Tc {
            role: devices.role(netns_ino, ifindex),
            dir: if hook == HookKind::TcIngress {
                TcDirection::Ingress
            } else {
                TcDirection::Egress
            },
        },
        HookKind::Netfilter => {
            let hook = NfHook::from_u8(nf_hook)?;
            if usize::from(nf_slot) >= NF_PRIORITY_SLOTS.len() {
                return None;
            }
            HopPoint::Netfilter {
                hook,
                slot: nf_slot,
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

/// Interns segment names; caches the name of every (hop, hop) pair seen.
#[derive(Default)]
struct SegmentTable {
    /// (from, to, same device, untracked journey, `to` is the first hop of
    /// a reassembled packet) -> segment id.
    by_pair: FastMap<(HopSite, HopSite, bool, bool, bool), u32>,
    by_name: HashMap<String, u32>,
    /// See [`NodeContext::kube_proxy_absent`].
    kube_proxy_absent: bool,
}

impl SegmentTable {
    /// What names the segment between two consecutive hops: both sites
    /// (hop and layer) and whether both hops are on the same device.
    fn pair(a: &Hop, b: &Hop) -> (HopSite, HopSite, bool) {
        let same_device = a.ifindex != 0 && a.ifindex == b.ifindex && a.netns_ino == b.netns_ino;
        let site = |h: &Hop| HopSite {
            point: h.point,
            encap: Encap::from_u8(h.encap),
        };
        (site(a), site(b), same_device)
    }

    /// The id of a pair already named by [`SegmentTable::id`].
    fn cached(&self, a: &Hop, b: &Hop, untracked: bool) -> Option<u32> {
        let reassembled = b.reassembled;
        let (a, b, same_device) = Self::pair(a, b);
        self.by_pair
            .get(&(a, b, same_device, untracked, reassembled))
            .copied()
    }

    /// The id of the segment between hops `a` and `b`, naming it (and
    /// adding the name to `names`) on first sight. In an `untracked`
    /// journey conntrack did not run: its band is named `untracked` and
    /// counted as `netfilter-other`. The segment that ends at the first hop
    /// of a reassembled packet is `ip.reassembly`: the wait for the other
    /// fragments and the reassembly.
    fn id(&mut self, names: &mut Vec<SegmentName>, a: &Hop, b: &Hop, untracked: bool) -> u32 {
        let reassembled = b.reassembled;
        let (a, b, same_device) = Self::pair(a, b);
        if let Some(&id) = self
            .by_pair
            .get(&(a, b, same_device, untracked, reassembled))
        {
            return id;
        }
        let mut seg = if reassembled {
            reassembly_segment()
        } else {
            classify(a, b, same_device)
        };
        if self.kube_proxy_absent && seg.category == Category::KubeProxy {
            seg.category = Category::NetfilterOther;
        }
        if untracked {
            untrack_segment(&mut seg);
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
        self.by_pair
            .insert((a, b, same_device, untracked, reassembled), id);
        id
    }
}

/// Renames the conntrack band of a netfilter segment (`conntrack`, or
/// `conntrack` among spanned bands) to `untracked`, in `netfilter-other`.
fn untrack_segment(seg: &mut SegmentName) {
    let (prefix, bands) = if let Some(rest) = seg.name.strip_prefix("netfilter.outer.") {
        ("netfilter.outer.", rest)
    } else if let Some(rest) = seg.name.strip_prefix("netfilter.") {
        ("netfilter.", rest)
    } else {
        return;
    };
    let Some((hook, bands)) = bands.split_once('.') else {
        return;
    };
    if !bands.split('+').any(|b| b == "conntrack") {
        return;
    }
    let renamed: Vec<&str> = bands
        .split('+')
        .map(|b| if b == "conntrack" { "untracked" } else { b })
        .collect();
    seg.name = format!("{prefix}{hook}.{}", renamed.join("+"));
    if seg.category == Category::Conntrack {
        seg.category = Category::NetfilterOther;
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
    scratch_segments: Vec<(u32, ConnState, u64, u32)>,
    observer: Option<std::sync::Arc<dyn JourneyObserver>>,
    scratch_observed: Vec<(u32, u64)>,
    /// Buffers of unparsed frames seen lately and the time of their latest
    /// event, so that a frame is counted once however many hooks see it.
    unparsed_seen: FastMap<u64, u64>,
    /// 5-tuples of reported connections (only with a filter).
    followed: FollowedFlows,
    /// IP datagrams in fragments: their journeys by reassembly key.
    fragments: FastMap<FragKey, FragGroup>,
    /// Header-only hops of buffers without a journey, by buffer (at most
    /// [`MAX_LONE_SITES`]): in aggregate mode the kernel sends the hop
    /// before an unsampled packet's drop this way, just before the drop.
    lone_sites: FastMap<u64, (HopEvent, Hop)>,
}

/// Most header-only hops kept for a drop that may follow
/// ([`Correlator::push`]); past it the map starts again empty.
const MAX_LONE_SITES: usize = 4096;

/// What identifies the fragments of one IP datagram (RFC 791): addresses,
/// protocol and IP ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FragKey {
    saddr: [u8; 16],
    daddr: [u8; 16],
    ip_id: u16,
    proto: u8,
}

impl FragKey {
    fn of(h: &hoptrace_common::L3Headers) -> Self {
        Self {
            saddr: h.saddr,
            daddr: h.daddr,
            ip_id: h.ip_id,
            proto: h.l4_proto,
        }
    }
}

/// The journeys of one fragmented datagram on this node.
#[derive(Default)]
struct FragGroup {
    /// The journey of the first fragment, then of the reassembled packet.
    main: Option<u64>,
    /// Journeys of the other fragments, merged into `main` at reassembly.
    others: Vec<u64>,
    /// The datagram was reassembled: fragments of it seen later are the
    /// copies the node makes to send it on (refragmentation).
    reassembled: bool,
    /// Newest event time of the group, ns.
    last_ts: u64,
}

const HOP_POOL_MAX: usize = 1024;

/// Longest gap between the receive hooks of one frame from the wire (a
/// bond's or VLAN's lower device, the upper device, its tc ingress), ns:
/// they run back to back in one softirq, microseconds apart.
const RECEIVE_CHAIN_NS: u64 = 1_000_000;

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
            observer: None,
            scratch_observed: Vec::new(),
            unparsed_seen: FastMap::default(),
            lone_sites: FastMap::default(),
            followed: FollowedFlows::default(),
            fragments: FastMap::default(),
        }
    }

    /// Counts an unparsed frame once: a buffer seen within the idle timeout
    /// is the same frame at another hook.
    fn count_unparsed(&mut self, ev: &HopEvent) {
        let idle = self.opts.idle_timeout_ns;
        let new_packet = match self.unparsed_seen.get_mut(&ev.skb_addr) {
            Some(last) => {
                let new = ev.ts_ns > last.saturating_add(idle);
                *last = (*last).max(ev.ts_ns);
                new
            }
            None => {
                // Bounded like the journeys: forget everything at the cap
                // (at worst a frame is counted twice).
                if self.unparsed_seen.len() >= self.opts.max_in_flight.max(1) {
                    self.unparsed_seen.clear();
                }
                self.unparsed_seen.insert(ev.skb_addr, ev.ts_ns);
                true
            }
        };
        if new_packet {
            self.ledger.counters.unparsed_packets += 1;
            if let Some(observer) = &self.observer {
                observer.unparsed_packet();
            }
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
        hop_point(
            &self.devices,
            hook,
            ev.netns_ino,
            ev.ifindex,
            ev.nf_hook,
            ev.nf_slot,
            in_pod,
        )
    }

    /// Whether the packet may wait in a kernel queue right after this hop:
    /// after POSTROUTING (the neighbour's address being resolved), entering
    /// or in front of the qdisc of a device that has one, or as an IP
    /// fragment before conntrack's defragmentation (the first netfilter
    /// slot).
    fn may_wait(&self, point: HopPoint, ev: &HopEvent, parsed: bool) -> bool {
        match point {
            HopPoint::Netfilter {
                hook: NfHook::PostRouting,
                ..
            } => true,
            HopPoint::Netfilter { slot: 0, .. } => parsed && ev.packet.flow().fragment != 0,
            HopPoint::Device {
                stage: DevStage::Queue,
                ..
            }
            | HopPoint::Tc {
                dir: TcDirection::Egress,
                ..
            } => self.devices.queues(ev.netns_ino, ev.ifindex),
            _ => false,
        }
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
        if hook == HookKind::Drop && self.opts.filter.is_none() {
            // With a filter, a drop counts when it ends a reported journey.
            *self.drops.entry(ev.drop_reason).or_insert(0) += 1;
        }
        let status = ParseStatus::from_u8(ev.packet.status);
        let parsed = status == ParseStatus::Ok;
        if !parsed && status != ParseStatus::Skipped {
            // Not a packet hoptrace can follow: it neither starts nor
            // extends a journey (its buffer address alone says nothing about
            // which packet it is). Counted once per packet: the hops of one
            // unparsed frame share a buffer within the idle timeout.
            self.count_unparsed(ev);
            return;
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
                reassembled: false,
                waits: self.may_wait(point, ev, parsed),
                point,
                netns_ino: ev.netns_ino,
                ifindex: ev.ifindex,
                len: ev.skb_len,
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
                // A parsed hop proves its identity by its fingerprint; a
                // header-only netfilter bracket by following a parsed hop
                // of the same netfilter hook (the kernel runs one hook's
                // programs back to back for one packet).
                let same_packet = match fp {
                    Some(fp) => fp == j.fingerprint,
                    None => j.follows_netfilter_hook(ev.nf_hook),
                };
                // A buffer idle longer than the idle timeout carries a new
                // packet (non-IP frames have no fingerprint to tell): one
                // packet does not dwell that long between two hops of a
                // node, unless it waits in a kernel queue.
                let stale = ev.ts_ns > j.last_ts.saturating_add(self.opts.limit(j));
                // A drop older than the journey's newest hop is not its end:
                // it freed the packet that used the buffer before (or a
                // copy of this one).
                if hook == HookKind::Drop && ev.ts_ns < j.last_hop_ts && !stale {
                    self.ledger.counters.stale_drops += 1;
                    return;
                }
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
                            // Fragments of one datagram cross the same
                            // hooks each (and its copies refragmented on
                            // the way out): one journey, not a recycled
                            // buffer.
                            || (j.frag_key.is_none() && j.has_hop_at(h))
                            || j.hands_to_another_pod(h)
                            // A frame's receive hooks (lower device, upper
                            // device, tc) run back to back in one softirq:
                            // a receive long after the others is another frame.
                            || (j.only_receives
                                && h.point.is_wire_receive()
                                && ev.ts_ns > j.last_ts.saturating_add(RECEIVE_CHAIN_NS))
                            || (h.point.leaves_node() && j.link_local_multicast_received())
                            // Link-local multicast is never routed and waits
                            // for no neighbour: a node delivers and floods
                            // it in one softirq. A hop long after the
                            // newest one is a repeat from the same sender
                            // (MLD reports go out 2-3 times within a second,
                            // identical) whose flood copy took the recycled
                            // buffer.
                            || (j.link_local_multicast()
                                && !j.waiting
                                && ev.ts_ns > j.last_ts.saturating_add(LINK_LOCAL_MULTICAST_GAP_NS))
                            || j.local_out_after_prerouting(h)
                    });
                let after_end = j.ended && ev.ts_ns > j.last_ts;
                // The buffer of a fragment now holds the reassembled
                // datagram: it continues the first fragment's journey.
                let reassembly = parsed
                    && !stale
                    && j.fragment != 0
                    && ev.packet.flow().fragment == 0
                    && j.frag_key == Some(FragKey::of(ev.packet.flow()));
                if reassembly {
                    let hop = hop.map(|mut h| {
                        h.reassembled = true;
                        h
                    });
                    self.reassemble(id, ev, hook, hop);
                    return;
                }
                if same_packet && !stale && !returned && !after_end {
                    j.add(ev, hook, hop, parsed);
                    if parsed && j.frag_key.is_some() {
                        let (ts, key) = (ev.ts_ns, FragKey::of(ev.packet.flow()));
                        if j.frag_key != Some(key) {
                            // NAT changed the datagram's addresses: its
                            // later fragments carry the new ones.
                            j.frag_key = Some(key);
                            self.fragments.insert(
                                key,
                                FragGroup {
                                    main: Some(id),
                                    others: Vec::new(),
                                    reassembled: true,
                                    last_ts: ts,
                                },
                            );
                        }
                    }
                    if parsed && j.keep && self.opts.filter.is_some() {
                        follow(&mut self.followed, j, ev, self.opts.max_in_flight);
                    }
                    return;
                }
                if fp.is_none() {
                    // A header-only bracket that follows no parsed hop of
                    // its hook: nothing says which packet it timed, unless
                    // a drop of this buffer follows (aggregate mode's hop
                    // before a drop, in a buffer whose journey is over).
                    if let Some(hop) = hop
                        && (after_end || stale)
                    {
                        self.remember_lone_site(ev, hop);
                    }
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
            // A dropped packet takes no further hop: an identical one
            // (same fingerprint) in another buffer is another packet.
            && j.drop_reason.is_none()
        {
            j.extra_addrs.push(ev.skb_addr);
            // A copy lives on after the original was consumed.
            j.ended = false;
            j.add(ev, hook, hop, parsed);
            if j.keep && self.opts.filter.is_some() {
                follow(&mut self.followed, j, ev, self.opts.max_in_flight);
            }
            self.by_skb.insert(ev.skb_addr, id);
            self.ledger.counters.rebinds += 1;
            return;
        }
        // A new journey starts with a parsed event on a hop (a lone drop or
        // consume of an unknown buffer is only counted).
        let (Some(fp), Some(hop)) = (fp, hop) else {
            if let (None, Some(hop)) = (fp, hop)
                && hook != HookKind::Drop
            {
                self.remember_lone_site(ev, hop);
            }
            return;
        };
        if hook == HookKind::Drop {
            self.drop_after_lone_site(ev, fp, hop);
            return;
        }
        let flow = ev.packet.flow();
        if flow.fragment == hoptrace_common::packet::FRAGMENT_LATER
            && let Some(group) = self.fragments.get_mut(&FragKey::of(flow))
            && group.reassembled
        {
            // A later fragment of a datagram this node reassembled: one of
            // the copies it sends the datagram on in (refragmentation),
            // part of the datagram's journey, timed by its first fragment.
            group.last_ts = group.last_ts.max(ev.ts_ns);
            self.ledger.counters.fragments_merged += 1;
            return;
        }
        self.start(ev, fp, hop, hook);
    }

    /// Keeps header-only hop `hop` (event `ev`) of a buffer without a
    /// journey for a drop that may follow ([`Correlator::drop_after_lone_site`]).
    fn remember_lone_site(&mut self, ev: &HopEvent, hop: Hop) {
        if self.lone_sites.len() >= MAX_LONE_SITES {
            self.lone_sites.clear();
        }
        self.lone_sites.insert(ev.skb_addr, (*ev, hop));
    }

    /// A drop of a buffer without a journey: when the header-only hop just
    /// before it in the same buffer was seen (aggregate mode sends the hop
    /// before an unsampled drop that way), the two make a journey that ends
    /// in the drop, with the drop's headers: its reason, location (that
    /// hop), flow and length reach the drop records and the observer. Else
    /// the drop is only counted.
    fn drop_after_lone_site(&mut self, ev: &HopEvent, fp: u64, hop: Hop) {
        let Some((site, site_hop)) = self.lone_sites.remove(&ev.skb_addr) else {
            return;
        };
        if site.ts_ns > ev.ts_ns || ev.ts_ns - site.ts_ns > self.opts.idle_timeout_ns {
            return;
        }
        let mut first = site;
        first.packet = ev.packet;
        let first_hop = Hop {
            encap: ev.packet.encap,
            ..site_hop
        };
        self.start(&first, fp, first_hop, HookKind::from_u8(first.hook));
        if let Some(&id) = self.by_skb.get(&ev.skb_addr)
            && let Some(j) = self.journeys.get_mut(&id)
        {
            j.add(ev, HookKind::Drop, Some(hop), true);
        }
    }

    /// The datagram of fragment journey `id` was reassembled in its buffer
    /// (event `ev`): the reassembled packet continues the first fragment's
    /// journey (or this one when that was not seen), the other fragments'
    /// journeys are merged into it (not reported on their own).
    fn reassemble(&mut self, id: u64, ev: &HopEvent, hook: HookKind, hop: Option<Hop>) {
        let key = FragKey::of(ev.packet.flow());
        let group = self.fragments.remove(&key).unwrap_or_default();
        let main = group
            .main
            .filter(|m| *m != id && self.journeys.contains_key(m))
            .unwrap_or(id);
        for other in group.others.iter().copied().chain(std::iter::once(id)) {
            if other != main {
                self.absorb(other);
            }
        }
        let fp = fingerprint(&ev.packet);
        let Some(j) = self.journeys.get_mut(&main) else {
            return;
        };
        j.add(ev, hook, hop, true);
        j.fragment = 0;
        if j.addr != ev.skb_addr && !j.extra_addrs.contains(&ev.skb_addr) {
            j.extra_addrs.push(ev.skb_addr);
        }
        if j.fingerprint != fp {
            if self.by_fingerprint.get(&j.fingerprint) == Some(&main) {
                self.by_fingerprint.remove(&j.fingerprint);
            }
            j.fingerprint = fp;
        }
        self.by_fingerprint.insert(fp, main);
        self.by_skb.insert(ev.skb_addr, main);
        self.fragments.insert(
            key,
            FragGroup {
                main: Some(main),
                others: Vec::new(),
                reassembled: true,
                last_ts: ev.ts_ns,
            },
        );
    }

    /// Drops fragment journey `id` into the journey of its datagram: not
    /// reported on its own, its buffer forgotten.
    fn absorb(&mut self, id: u64) {
        let Some(j) = self.journeys.remove(&id) else {
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
        self.ledger.counters.fragments_merged += 1;
        self.recycle(j);
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
        // The filter is decided here, once, from the first parsed hop: it
        // matches, or it belongs to a connection already reported.
        let keep =
            self.opts.filter.as_ref().is_none_or(|f| {
                f.matches(&ev.packet) || self.followed.contains(&FlowKey::of(&flow))
            });
        let mut j = Journey {
            keep,
            followed_key: None,
            fragment: flow.fragment,
            frag_key: None,
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
            inner_pass: NetfilterPass::default(),
            outer_pass: NetfilterPass::default(),
            first_flow_ts: ev.ts_ns,
            first_flow: flow,
            last_flow_ts: ev.ts_ns,
            last_flow: flow,
            encap: Encap::None,
            layer_encap: ev.packet.encap,
            drop_reason: None,
            last_hop_ts: 0,
            waiting: false,
        };
        j.add(ev, hook, Some(hop), true);
        if keep && self.opts.filter.is_some() {
            follow(&mut self.followed, &mut j, ev, self.opts.max_in_flight);
        }
        let fragment = flow.fragment;
        if fragment != 0 {
            let key = FragKey::of(&flow);
            j.frag_key = Some(key);
            let group = self.fragments.entry(key).or_default();
            group.last_ts = group.last_ts.max(ev.ts_ns);
            if fragment == hoptrace_common::packet::FRAGMENT_FIRST && group.main.is_none() {
                group.main = Some(id);
            } else {
                group.others.push(id);
            }
            if self.fragments.len() > self.opts.max_in_flight.max(1) {
                let journeys = &self.journeys;
                self.fragments.retain(|_, g| {
                    g.main
                        .iter()
                        .chain(g.others.iter())
                        .any(|m| journeys.contains_key(m))
                });
            }
        }
        self.journeys.insert(id, j);
        self.by_skb.insert(ev.skb_addr, id);
        self.by_fingerprint.insert(fp, id);
        self.order.push_back(id);
    }

    /// Hands every journey recorded from now on to `observer` as well.
    pub fn set_observer(&mut self, observer: std::sync::Arc<dyn JourneyObserver>) {
        self.observer = Some(observer);
    }

    /// Finalizes journeys idle for longer than the idle timeout, and ended
    /// journeys older than the reorder window. `now_ns` is bpf ktime.
    pub fn flush_idle(&mut self, now_ns: u64) {
        let idle = self.opts.idle_timeout_ns;
        self.unparsed_seen
            .retain(|_, last| now_ns.saturating_sub(*last) <= idle);
        self.followed.expire(now_ns, false);
        // A datagram's group lives while one of its journeys does, and a
        // reassembled one a second longer (its refragmented copies).
        let journeys = &self.journeys;
        self.fragments.retain(|_, g| {
            now_ns.saturating_sub(g.last_ts) <= 1_000_000_000
                || g.main
                    .iter()
                    .chain(g.others.iter())
                    .any(|m| journeys.contains_key(m))
        });
        let mut ids = std::mem::take(&mut self.scratch_ids);
        ids.clear();
        for (id, j) in &self.journeys {
            let limit = if j.ended {
                self.opts.reorder_window_ns
            } else {
                self.opts.limit(j)
            };
            if now_ns.saturating_sub(j.last_ts) > limit {
                ids.push(*id);
            }
        }
        ids.sort_unstable();
        for &id in &ids {
            self.finalize(id);
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
        if !j.keep {
            self.ledger.counters.filtered_journeys += 1;
            self.recycle(j);
            return;
        }
        if self.opts.filter.is_some()
            && let Some(reason) = j.drop_reason
        {
            *self.drops.entry(reason).or_insert(0) += 1;
        }
        record_journey(
            &mut self.ledger,
            &mut self.segments,
            &self.devices,
            &mut j,
            &mut self.scratch_segments,
            &self.opts,
        );
        if let Some(observer) = &self.observer {
            observe_journey(
                observer.as_ref(),
                &self.ledger,
                &self.segments,
                &self.devices,
                &j,
                &mut self.scratch_observed,
            );
        }
        self.recycle(j);
    }

    /// Keeps a finalized journey's hop buffer for the next one.
    fn recycle(&mut self, mut j: Journey) {
        if self.hop_pool.len() < HOP_POOL_MAX {
            j.hops.clear();
            self.hop_pool.push(j.hops);
        }
    }
}

/// The connection states of a journey's two netfilter passes: the packet
/// itself (the journey's state) and its outer packet (its own pass, with
/// its own conntrack entry), each with "untracked" as a flag for naming.
#[derive(Clone, Copy)]
struct PassStates {
    inner: ConnState,
    outer: ConnState,
}

impl PassStates {
    fn of(j: &Journey) -> Self {
        let inner = journey_conn_state(j);
        Self {
            inner,
            outer: j.outer_pass.conn_state().unwrap_or(inner),
        }
    }

    /// The state of the pass a segment belongs to: the outer packet's for
    /// a segment between two netfilter hops of the outer packet, else the
    /// journey's.
    fn of_segment(self, a: &Hop, b: &Hop) -> ConnState {
        let outer =
            |h: &Hop| matches!(h.point, HopPoint::Netfilter { .. }) && h.encap != Encap::None as u8;
        if outer(a) && outer(b) {
            self.outer
        } else {
            self.inner
        }
    }
}

/// Remembers the 5-tuple of a reported journey's parsed hop `ev` (and its
/// reverse) when NAT changed it since the last one: the connection's other
/// packets, before or after NAT, are then reported too.
fn follow(followed: &mut FollowedFlows, j: &mut Journey, ev: &HopEvent, cap: usize) {
    let key = FlowKey::of(ev.packet.flow());
    if j.followed_key != Some(key) {
        followed.follow(key, ev.ts_ns, cap);
        j.followed_key = Some(key);
    }
}

fn record_journey(
    ledger: &mut Ledger,
    table: &mut SegmentTable,
    devices: &DeviceTable,
    j: &mut Journey,
    seen_segments: &mut Vec<(u32, ConnState, u64, u32)>,
    opts: &CorrelatorOptions,
) {
    let max_exemplars = opts.exemplars;
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
    // A dropped packet takes no further hop: anything after the first drop
    // is another packet's.
    if let Some(first_drop) = hops.iter().position(|h| h.point == HopPoint::Drop) {
        hops.truncate(first_drop + 1);
    }
    if let Some(reason) = j.drop_reason {
        record_drop(ledger, devices, j, reason);
    }
    let hops = &j.hops;
    if hops.len() < 2 {
        ledger.counters.single_hop_journeys += 1;
        return;
    }
    if hops
        .windows(2)
        .any(|w| w[1].ts_ns - w[0].ts_ns > opts.idle_timeout_ns)
    {
        ledger.counters.queued_journeys += 1;
    }
    let direction = journey_direction(&hops[0]);
    if let Some(icmp) = IcmpInfo::from_headers(&j.first_flow) {
        let proto = j.first_flow.l4_proto;
        let row = ledger
            .icmp
            .entry((proto, icmp.kind, icmp.code, direction))
            .or_insert_with(|| IcmpCount {
                proto: FlowInfo::from_headers(&j.first_flow, Encap::None).proto,
                icmp: icmp.clone(),
                direction,
                count: 0,
            });
        row.count += 1;
        row.icmp.mtu = icmp.mtu.or(row.icmp.mtu);
    }
    let states = PassStates::of(j);
    let conn_state = states.inner;
    let hops = &j.hops;
    let e2e = hops[hops.len() - 1].ts_ns - hops[0].ts_ns;
    let mut category_ns = [0u64; Category::ALL.len()];
    let mut category_seen = [false; Category::ALL.len()];
    // One value per journey and segment row: a segment that repeats within
    // the journey (two passes through one band) is summed, as categories are.
    seen_segments.clear();
    for pair in hops.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let state = states.of_segment(a, b);
        let segment = table.id(
            &mut ledger.segment_names,
            a,
            b,
            state == ConnState::Untracked,
        );
        let duration = b.ts_ns - a.ts_ns;
        match seen_segments
            .iter_mut()
            .find(|(s, st, _, _)| *s == segment && *st == state)
        {
            Some((_, _, ns, _)) => *ns += duration,
            None => seen_segments.push((segment, state, duration, a.len)),
        }
        let category = ledger.segment_names[segment as usize].category.index();
        category_ns[category] += duration;
        category_seen[category] = true;
    }
    for &(segment, state, ns, len) in seen_segments.iter() {
        let stat = ledger
            .segments
            .entry(SegmentKey {
                segment,
                direction,
                conn_state: state,
            })
            .or_insert_with(Stat::new);
        stat.record(ns);
        stat.record_len(len);
        stat.e2e_ns += u128::from(e2e);
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
                let untracked = states.of_segment(&pair[0], &pair[1]) == ConnState::Untracked;
                let id = table.id(&mut ledger.segment_names, &pair[0], &pair[1], untracked);
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

/// Counts a dropped journey under its (reason, location) and lists it
/// while the group has fewer than [`DROP_RECORDS_PER_GROUP`].
fn record_drop(ledger: &mut Ledger, devices: &DeviceTable, j: &Journey, reason: u32) {
    let drop = j.hops.iter().rev().find(|h| h.point == HopPoint::Drop);
    let location = j
        .hops
        .iter()
        .rev()
        .find(|h| h.point != HopPoint::Drop)
        .map_or_else(|| "unknown".to_owned(), |h| h.point.name());
    let reason = devices.drop_reason_name(reason);
    let group = ledger
        .drop_records
        .entry((reason.clone(), location.clone()))
        .or_insert_with(|| DropGroupRecords {
            reason,
            location,
            count: 0,
            omitted: 0,
            records: Vec::new(),
        });
    group.count += 1;
    if group.records.len() < DROP_RECORDS_PER_GROUP {
        group.records.push(DropRecord {
            flow: FlowInfo::from_headers(&j.first_flow, j.encap),
            len_bytes: drop.map_or(0, |h| h.len),
            ts_ns: drop.map_or(j.last_ts, |h| h.ts_ns),
        });
    } else {
        group.omitted += 1;
    }
}

/// Hands a journey that [`record_journey`] has just recorded (hops sorted,
/// segments named) to the observer.
fn observe_journey(
    observer: &dyn JourneyObserver,
    ledger: &Ledger,
    table: &SegmentTable,
    devices: &DeviceTable,
    j: &Journey,
    scratch: &mut Vec<(u32, u64)>,
) {
    let hops = &j.hops;
    if hops.len() < 2 {
        return;
    }
    scratch.clear();
    let states = PassStates::of(j);
    let conn_state = states.inner;
    let mut categories: Vec<(Category, u64)> = Vec::with_capacity(4);
    for pair in hops.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let untracked = states.of_segment(a, b) == ConnState::Untracked;
        // Every pair was named by `record_journey`: a cache hit.
        let Some(segment) = table.cached(a, b, untracked) else {
            continue;
        };
        let duration = b.ts_ns - a.ts_ns;
        match scratch.iter_mut().find(|(s, _)| *s == segment) {
            Some((_, ns)) => *ns += duration,
            None => scratch.push((segment, duration)),
        }
        let category = ledger.segment_names[segment as usize].category;
        match categories.iter_mut().find(|(c, _)| *c == category) {
            Some((_, ns)) => *ns += duration,
            None => categories.push((category, duration)),
        }
    }
    let pod_netns = [hops[0].netns_ino, hops[hops.len() - 1].netns_ino]
        .into_iter()
        .find(|ino| devices.pod_netns.contains(ino));
    // Only a dropped journey pays for the names.
    let dropped = j.drop_reason.and_then(|reason| {
        let location = hops.iter().rev().find(|h| h.point != HopPoint::Drop)?;
        Some((devices.drop_reason_name(reason), location.point.name()))
    });
    let drop = dropped
        .as_ref()
        .map(|(reason, location)| (reason.as_str(), location.as_str()));
    observer.journey(&JourneySummary {
        direction: journey_direction(&hops[0]),
        conn_state,
        end_to_end_ns: hops[hops.len() - 1].ts_ns - hops[0].ts_ns,
        start_ns: hops[0].ts_ns,
        segments: scratch,
        segment_names: &ledger.segment_names,
        categories: &categories,
        first_flow: &j.first_flow,
        encap: j.encap,
        pod_netns,
        drop,
    });
}
