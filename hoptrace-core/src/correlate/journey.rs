//! One packet's journey through the node: its hops, its layers (inner,
//! outer), and what the hops say about its direction and connection state.

use hoptrace_common::packet::IPPROTO_TCP;
use hoptrace_common::{
    CT_STATUS_KNOWN, CT_UNCONFIRMED, CtState, Encap, HookKind, HopEvent, L3Headers,
    NF_PRIORITY_SLOTS, NfHook,
};

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
    /// `skb->len` at the hook, bytes.
    pub(crate) len: u32,
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
    /// What the netfilter hops of the packet itself said about conntrack.
    pub(crate) inner_pass: NetfilterPass,
    /// What the netfilter hops of its encapsulating outer packet said: a
    /// pass of its own, with its own conntrack entry.
    pub(crate) outer_pass: NetfilterPass,
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

/// One layer's netfilter pass (the packet itself, or its outer packet):
/// what its conntrack entry said at the hops after conntrack.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct NetfilterPass {
    /// A netfilter hop of this layer was seen.
    pub(crate) seen: bool,
    /// A hop after conntrack's priority (-200) saw it: where an entry must
    /// be attached if conntrack ran.
    pub(crate) checked: bool,
    /// Such a hop found a conntrack entry.
    pub(crate) found: bool,
    /// A hop reported ctinfo `IP_CT_NEW` (no reply seen on the entry yet).
    pub(crate) ctinfo_new: bool,
    /// A hop read the entry's status ([`CT_STATUS_KNOWN`]).
    pub(crate) status_known: bool,
    /// A hop found the entry unconfirmed: this pass created it.
    pub(crate) unconfirmed: bool,
}

impl NetfilterPass {
    fn add(&mut self, slot: u8, ct_state: u8) {
        self.seen = true;
        // After conntrack (priority -200) every packet it tracks carries an
        // entry; before it, none has one yet.
        let checked = NF_PRIORITY_SLOTS
            .get(usize::from(slot))
            .is_some_and(|&p| p > NF_PRIORITY_CONNTRACK);
        let state = CtState::from_u8(ct_state);
        self.checked |= checked;
        self.found |= checked && state != CtState::None;
        self.ctinfo_new |= state == CtState::New;
        if ct_state & CT_STATUS_KNOWN != 0 {
            self.status_known = true;
            self.unconfirmed |= ct_state & CT_UNCONFIRMED != 0;
        }
    }

    /// This pass's connection state, `None` without netfilter hops:
    /// `untracked` when hops after conntrack found no entry; `new` when
    /// this pass created its entry (unconfirmed: the nat chains ran), or,
    /// where the kernel gave no entry status, when ctinfo said NEW;
    /// `established` otherwise.
    pub(crate) fn conn_state(&self) -> Option<ConnState> {
        if !self.seen {
            return None;
        }
        Some(if self.checked && !self.found {
            ConnState::Untracked
        } else if (self.status_known && self.unconfirmed) || (!self.status_known && self.ctinfo_new)
        {
            ConnState::New
        } else {
            ConnState::Established
        })
    }
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

    /// Whether the journey already has a hop at `hop`'s device hook (tc
    /// or device tracepoint, same device, same layer): a packet crosses a
    /// hook of a device once, so a second crossing is another packet in a
    /// recycled buffer (a retransmission, or the node's own IPv6 DAD or
    /// MLD message after the same one it received).
    pub(crate) fn has_hop_at(&self, hop: &Hop) -> bool {
        matches!(hop.point, HopPoint::Tc { .. } | HopPoint::Device { .. })
            && self.hops.iter().any(|h| {
                h.point == hop.point
                    && h.ifindex == hop.ifindex
                    && h.netns_ino == hop.netns_ino
                    && h.encap == hop.encap
            })
    }

    /// Whether `hop` hands the packet to a pod (egress on a pod veth) other
    /// than the one the journey already handed it to: a packet is handed to
    /// one pod; the flood copies of a bridge are clones in buffers of their
    /// own, so this is another packet in a recycled buffer.
    pub(crate) fn hands_to_another_pod(&self, hop: &Hop) -> bool {
        self.in_pod
            && hop.point.hands_to_pod()
            && self.hops.iter().any(|h| {
                h.point.hands_to_pod() && (h.ifindex != hop.ifindex || h.netns_ino != hop.netns_ino)
            })
    }

    /// A packet received from the wire for a link-local multicast group
    /// (IPv4 224.0.0.0/24, IPv6 ff02::/16): no node forwards it, so one
    /// that leaves the node afterwards is the node's own (same fingerprint
    /// in a recycled buffer, as IPv6 DAD neighbour solicitations have).
    pub(crate) fn link_local_multicast_received(&self) -> bool {
        let received = self
            .hops
            .first()
            .is_some_and(|h| h.point.is_wire_receive() || h.point.enters_node());
        received && self.link_local_multicast()
    }

    /// Whether the packet is for a link-local multicast group (IPv4
    /// 224.0.0.0/24: IGMP, VRRP; IPv6 ff02::/16: neighbour discovery, MLD).
    /// The kernel's aggregate mode tests the same bytes
    /// ([`hoptrace_common::L3Headers::link_local_multicast`]).
    pub(crate) fn link_local_multicast(&self) -> bool {
        self.first_flow.link_local_multicast()
    }

    /// Whether `hop` is the OUTPUT hook of a bare (not encapsulated)
    /// packet while the journey's bare packet already crossed PREROUTING:
    /// LOCAL_OUT sees only locally generated packets, so this is another
    /// packet in a recycled buffer (a node's own MLD report after one it
    /// received, with the same fingerprint). Encapsulation does go from
    /// PREROUTING to OUTPUT, as the outer packet, and stays one journey.
    pub(crate) fn local_out_after_prerouting(&self, hop: &Hop) -> bool {
        let bare_nf = |h: &Hop, want: NfHook| {
            h.encap == Encap::None as u8
                && matches!(h.point, HopPoint::Netfilter { hook, .. } if hook == want)
        };
        bare_nf(hop, NfHook::LocalOut) && self.hops.iter().any(|h| bare_nf(h, NfHook::PreRouting))
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
                let encap = if parsed {
                    ev.packet.encap
                } else {
                    self.layer_encap
                };
                let pass = if encap == Encap::None as u8 {
                    &mut self.inner_pass
                } else {
                    &mut self.outer_pass
                };
                pass.add(ev.nf_slot, ev.ct_state);
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

/// Connection state: the inner packet's own netfilter pass, else the
/// outer packet's (see [`NetfilterPass::conn_state`]), else TCP flags (SYN
/// without ACK is new).
pub(crate) fn journey_conn_state(j: &Journey) -> ConnState {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    if let Some(state) = j.inner_pass.conn_state() {
        state
    } else if let Some(state) = j.outer_pass.conn_state() {
        state
    } else if j.first_flow.l4_proto == IPPROTO_TCP
        && j.first_flow.tcp_flags & SYN != 0
        && j.first_flow.tcp_flags & ACK == 0
    {
        ConnState::New
    } else {
        ConnState::Established
    }
}
