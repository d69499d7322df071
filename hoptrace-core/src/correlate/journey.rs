//! One packet's journey through the node: its hops, its layers (inner,
//! outer), and what the hops say about its direction and connection state.

use hoptrace_common::packet::IPPROTO_TCP;
use hoptrace_common::{CtState, Encap, HookKind, HopEvent, L3Headers, NF_PRIORITY_SLOTS};

/// Netfilter priority of conntrack (`NF_IP_PRI_CONNTRACK`).
const NF_PRIORITY_CONNTRACK: i32 = -200;

use crate::attribution::ledger::{ConnState, Direction};
use crate::attribution::taxonomy::{DevStage, DeviceRole, HopPoint, Place, TcDirection};

/// Encapsulation not known for a hop (its headers did not parse).
pub(crate) const ENCAP_UNKNOWN: u8 = 0xff;

/// One observation of the packet: when, where, and in which layer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hop {
    /// bpf ktime (CLOCK_MONOTONIC) at the hook, ns.
    pub(crate) ts_ns: u64,
    pub(crate) point: HopPoint,
    /// Namespace inode and ifindex of the event (0 when unknown).
    pub(crate) netns_ino: u32,
    pub(crate) ifindex: u32,
    /// [`Encap`] as u8, or [`ENCAP_UNKNOWN`].
    pub(crate) encap: u8,
    /// The packet may wait in a kernel queue after this hop (neighbour
    /// resolution after POSTROUTING, a qdisc, IP reassembly): the journey
    /// is then kept for the queue timeout, not the idle timeout.
    pub(crate) waits: bool,
    /// The first hop of a datagram reassembled from fragments: the segment
    /// that ends here is `ip.reassembly`.
    pub(crate) reassembled: bool,
}

/// One packet in flight through the node, from its first hop until it is
/// finalized (idle, ended, evicted or its buffer reused).
pub(crate) struct Journey {
    /// Reported: no filter, or the first parsed hop matched it (decided
    /// once, at the start).
    pub(crate) keep: bool,
    /// The 5-tuple last remembered for the filter (NAT changes it).
    pub(crate) followed_key: Option<super::filter::FlowKey>,
    /// [`hoptrace_common::L3Headers::fragment`] of the newest parsed event.
    pub(crate) fragment: u8,
    /// Reassembly key of a fragment's (or a reassembled datagram's)
    /// journey, with the addresses of its newest parsed event.
    pub(crate) frag_key: Option<super::FragKey>,
    /// [`super::fingerprint`] of the innermost headers at the first hop.
    pub(crate) fingerprint: u64,
    /// The skb address the journey started with.
    pub(crate) addr: u64,
    /// Further skb addresses bound by fingerprint (copies, clones).
    pub(crate) extra_addrs: Vec<u64>,
    /// Hops in arrival order; sorted by time when the journey is recorded.
    pub(crate) hops: Vec<Hop>,
    /// Earliest and latest event time, ns (bpf ktime), consume and drop
    /// events included.
    pub(crate) first_ts: u64,
    pub(crate) last_ts: u64,
    /// A drop or consume event was seen.
    pub(crate) ended: bool,
    /// An egress hop on the uplink or a tunnel device was seen: the packet
    /// has left (or is leaving) the node.
    pub(crate) left_node: bool,
    /// The uplink took the packet (tc egress or driver): only its driver
    /// hops or a drop can follow.
    pub(crate) on_wire: bool,
    /// Every hop so far is a receive from the wire (uplink or lower device).
    pub(crate) only_receives: bool,
    /// Every hop so far is the sending pod's.
    pub(crate) only_pod_sends: bool,
    /// The node handed the packet to a pod: only pod-side hops can follow.
    pub(crate) in_pod: bool,
    /// A netfilter hop was seen, of any layer.
    pub(crate) saw_netfilter: bool,
    /// A netfilter hop of any layer reported `CtState::New`.
    pub(crate) saw_ct_new: bool,
    /// Netfilter hops of the packet itself, not of its encapsulating outer
    /// packet: an overlay's outer UDP flow never sees a reply on its own
    /// tuple, so conntrack keeps calling it NEW; the inner verdict decides.
    pub(crate) saw_inner_netfilter: bool,
    /// A netfilter hop of the packet itself reported `CtState::New`.
    pub(crate) saw_inner_ct_new: bool,
    /// Netfilter hops after conntrack's priority (of any layer, of the
    /// packet itself): where an entry must be attached if conntrack ran.
    pub(crate) ct_checked: bool,
    pub(crate) inner_ct_checked: bool,
    /// Such a hop found a conntrack entry (of any layer, of the packet itself).
    pub(crate) ct_found: bool,
    pub(crate) inner_ct_found: bool,
    /// Time and innermost headers of the earliest parsed event (before NAT).
    pub(crate) first_flow_ts: u64,
    pub(crate) first_flow: L3Headers,
    /// Time and innermost headers of the latest parsed event (after NAT).
    pub(crate) last_flow_ts: u64,
    pub(crate) last_flow: L3Headers,
    /// The tunnel seen on any parsed hop ([`Encap::None`] if none).
    pub(crate) encap: Encap,
    /// [`Encap`] of the latest parsed event: the layer that events without
    /// headers of their own (skipped netfilter brackets) belong to.
    pub(crate) layer_encap: u8,
    /// `enum skb_drop_reason` of the drop that ended the journey.
    pub(crate) drop_reason: Option<u32>,
    /// Time of the newest hop (consume events excluded), ns.
    pub(crate) last_hop_ts: u64,
    /// The newest hop may be followed by a wait in a kernel queue
    /// ([`Hop::waits`]).
    pub(crate) waiting: bool,
}

impl Journey {
    /// Whether the newest hop (in arrival order) is a netfilter hop of
    /// netfilter hook `nf_hook`.
    pub(crate) fn follows_netfilter_hook(&self, nf_hook: u8) -> bool {
        matches!(
            self.hops.last(),
            Some(Hop { point: HopPoint::Netfilter { hook, .. }, .. }) if *hook as u8 == nf_hook
        )
    }

    pub(crate) fn add(&mut self, ev: &HopEvent, hook: HookKind, hop: Option<Hop>, parsed: bool) {
        if let Some(hop) = hop {
            if hop.ts_ns >= self.last_hop_ts {
                self.last_hop_ts = hop.ts_ns;
                self.waiting = hop.waits;
            }
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
                let state = CtState::from_u8(ev.ct_state);
                let new = state == CtState::New;
                self.saw_ct_new |= new;
                // After conntrack (priority -200) every packet it tracks
                // carries an entry; before it, none has one yet.
                let checked = NF_PRIORITY_SLOTS
                    .get(usize::from(ev.nf_slot))
                    .is_some_and(|&p| p > NF_PRIORITY_CONNTRACK);
                let found = state != CtState::None;
                self.ct_checked |= checked;
                self.ct_found |= checked && found;
                let encap = if parsed {
                    ev.packet.encap
                } else {
                    self.layer_encap
                };
                if encap == Encap::None as u8 {
                    self.saw_inner_netfilter = true;
                    self.saw_inner_ct_new |= new;
                    self.inner_ct_checked |= checked;
                    self.inner_ct_found |= checked && found;
                }
            }
            HookKind::Drop => {
                self.ended = true;
                self.drop_reason = Some(ev.drop_reason);
            }
            HookKind::Consume => self.ended = true,
            _ => {}
        }
        if parsed {
            if ev.ts_ns < self.first_flow_ts {
                self.first_flow_ts = ev.ts_ns;
                self.first_flow = *ev.packet.flow();
            }
            if ev.ts_ns >= self.last_flow_ts {
                self.fragment = ev.packet.flow().fragment;
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

/// Direction from the journey's first hop: a pod sent it (pod device, or
/// the host side of a pod veth receiving), the network sent it (a device
/// that faces the network), or it is local.
pub(crate) fn journey_direction(first: &Hop) -> Direction {
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

/// Connection state: the inner packet's conntrack verdict, else any
/// layer's (untracked when hops after conntrack saw no entry), else TCP
/// flags (SYN without ACK is new).
pub(crate) fn journey_conn_state(j: &Journey) -> ConnState {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    if j.saw_inner_netfilter {
        if j.inner_ct_checked && !j.inner_ct_found {
            ConnState::Untracked
        } else if j.saw_inner_ct_new {
            ConnState::New
        } else {
            ConnState::Established
        }
    } else if j.saw_netfilter {
        if j.ct_checked && !j.ct_found {
            ConnState::Untracked
        } else if j.saw_ct_new {
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
