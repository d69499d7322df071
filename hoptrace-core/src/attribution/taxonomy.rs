//! The one segment taxonomy: names of observation points ("hops"), names of the
//! segments between two consecutive hops of a packet, and the category each
//! segment is attributed to. Every rule here is documented in
//! `docs/segments.md`; change both together.

use std::fmt::Write as _;

use hoptrace_common::{Encap, NF_PRIORITY_SLOTS, NfHook};
use serde::{Deserialize, Serialize};

pub use crate::node::DeviceRole;

/// Where the latency of a segment is attributed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    /// Pod networking: veth crossings, bridge, routing.
    Cni,
    /// Tunnel encapsulation and decapsulation.
    Encapsulation,
    /// kube-proxy's iptables work: DNAT, filter, SNAT.
    KubeProxy,
    /// Connection tracking lookup/creation.
    Conntrack,
    /// Other netfilter bands (raw, mangle, unnamed gaps).
    NetfilterOther,
    /// The ingress proxy's own time: reading a request and writing it
    /// upstream (`proxy.request`), the response back (`proxy.response`), a
    /// new upstream connection (`proxy.connect`), and bytes waiting in its
    /// sockets (`socket.queue`). Only the request timeline produces it.
    IngressProxy,
    /// The backend application: read the request → wrote the response
    /// (`app.service`), and bytes waiting in its socket (`socket.queue`).
    /// Only the request timeline produces it.
    Application,
    /// The client's own stack and its socket (`socket.queue` of the
    /// response at the client). Only the request timeline produces it.
    Client,
    /// Everything else the kernel does (IP receive/output, tc, qdisc, socket).
    KernelOther,
}

impl Category {
    /// Every category, in report order (and in [`Category::index`] order).
    pub const ALL: [Category; 9] = [
        Self::Cni,
        Self::Encapsulation,
        Self::KubeProxy,
        Self::Conntrack,
        Self::NetfilterOther,
        Self::IngressProxy,
        Self::KernelOther,
        Self::Application,
        Self::Client,
    ];

    /// Stable name used in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Cni => "cni",
            Self::Encapsulation => "encapsulation",
            Self::KubeProxy => "kube-proxy",
            Self::Conntrack => "conntrack",
            Self::NetfilterOther => "netfilter-other",
            Self::IngressProxy => "ingress-proxy",
            Self::KernelOther => "kernel-other",
            Self::Application => "application",
            Self::Client => "client",
        }
    }

    /// Position in [`Category::ALL`].
    pub const fn index(self) -> usize {
        match self {
            Self::Cni => 0,
            Self::Encapsulation => 1,
            Self::KubeProxy => 2,
            Self::Conntrack => 3,
            Self::NetfilterOther => 4,
            Self::IngressProxy => 5,
            Self::KernelOther => 6,
            Self::Application => 7,
            Self::Client => 8,
        }
    }

    /// Whether the category is the datapath's (kernel hops of packets), as
    /// opposed to a process's own time (`ingress-proxy`, `application`,
    /// `client`) that only the request timeline measures.
    pub const fn is_datapath(self) -> bool {
        !matches!(self, Self::IngressProxy | Self::Application | Self::Client)
    }
}

/// Direction of a tc hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TcDirection {
    /// Ingress: the device received the packet (before the stack sees it).
    Ingress,
    /// Egress: the device is about to transmit the packet (before its qdisc).
    Egress,
}

/// Which device tracepoint saw the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DevStage {
    /// net:netif_receive_skb.
    Receive,
    /// net:net_dev_queue.
    Queue,
    /// net:net_dev_start_xmit.
    Xmit,
}

impl DevStage {
    const fn name(self) -> &'static str {
        match self {
            Self::Receive => "rx",
            Self::Queue => "queue",
            Self::Xmit => "xmit",
        }
    }
}

/// Where a device tracepoint fired: inside a pod namespace, or on a node
/// device of a given role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Place {
    /// Any device inside a pod's network namespace (the pod's end of its
    /// veth, its loopback).
    Pod,
    /// A device of the node's network namespace, with its discovered role.
    Node(DeviceRole),
}

impl Place {
    const fn name(self) -> &'static str {
        match self {
            Self::Pod => "pod",
            Self::Node(role) => role.hop_name(),
        }
    }

    const fn role(self) -> Option<DeviceRole> {
        match self {
            Self::Pod => None,
            Self::Node(role) => Some(role),
        }
    }
}

/// A named observation point. Its [`HopPoint::name`] is stable and documented.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HopPoint {
    /// `<role>.ingress` / `<role>.egress`: a tc program on a node device.
    Tc {
        /// Role of the device the program is attached to.
        role: DeviceRole,
        /// Ingress or egress hook of that device.
        dir: TcDirection,
    },
    /// `nf.<hook>.<priority>`: a netfilter link of the node's namespace.
    Netfilter {
        /// The netfilter hook.
        hook: NfHook,
        /// Index into [`NF_PRIORITY_SLOTS`]: the link's priority.
        slot: u8,
    },
    /// `<where>.rx|queue|xmit`: a device tracepoint.
    Device {
        /// The pod, or the role of the node device.
        place: Place,
        /// Which of the three device tracepoints fired.
        stage: DevStage,
    },
    /// `socket.pod` / `socket.node`: a socket reader copied the payload
    /// (`skb:skb_copy_datagram_iovec`).
    Socket {
        /// The socket lives in a pod's network namespace, not the node's.
        in_pod: bool,
    },
    /// `drop`.
    Drop,
}

impl HopPoint {
    /// Appends the stable hop name to `out`.
    pub fn write_name(&self, out: &mut String) {
        match *self {
            Self::Tc { role, dir } => {
                out.push_str(role.hop_name());
                out.push_str(match dir {
                    TcDirection::Ingress => ".ingress",
                    TcDirection::Egress => ".egress",
                });
            }
            Self::Netfilter { hook, slot } => {
                out.push_str("nf.");
                out.push_str(hook.name());
                match NF_PRIORITY_SLOTS.get(slot as usize) {
                    Some(prio) => {
                        let _ = write!(out, ".{prio}");
                    }
                    None => {
                        let _ = write!(out, ".slot{slot}");
                    }
                }
            }
            Self::Device { place, stage } => {
                out.push_str(place.name());
                out.push('.');
                out.push_str(stage.name());
            }
            Self::Socket { in_pod } => {
                out.push_str(if in_pod { "socket.pod" } else { "socket.node" });
            }
            Self::Drop => out.push_str("drop"),
        }
    }

    /// The stable hop name (`veth.ingress`, `nf.prerouting.-201`, `pod.xmit`).
    pub fn name(&self) -> String {
        let mut s = String::new();
        self.write_name(&mut s);
        s
    }

    /// Role of the node device the hop is on, when it is a tc or device hop
    /// in the node namespace.
    pub const fn node_role(&self) -> Option<DeviceRole> {
        match *self {
            Self::Tc { role, .. } => Some(role),
            Self::Device { place, .. } => place.role(),
            _ => None,
        }
    }

    /// An egress hop (tc egress, the driver, and with `queue` the qdisc) on
    /// a node device whose role satisfies `role`.
    fn egress_on(&self, role: impl Fn(DeviceRole) -> bool, queue: bool) -> bool {
        match *self {
            Self::Tc {
                role: r,
                dir: TcDirection::Egress,
            }
            | Self::Device {
                place: Place::Node(r),
                stage: DevStage::Xmit,
            } => role(r),
            Self::Device {
                place: Place::Node(r),
                stage: DevStage::Queue,
            } => queue && role(r),
            _ => false,
        }
    }

    /// A receive hop (tc ingress or netif_receive_skb) on a node device
    /// whose role satisfies `role`.
    fn receive_on(&self, role: impl Fn(DeviceRole) -> bool) -> bool {
        match *self {
            Self::Tc {
                role: r,
                dir: TcDirection::Ingress,
            }
            | Self::Device {
                place: Place::Node(r),
                stage: DevStage::Receive,
            } => role(r),
            _ => false,
        }
    }

    /// The packet leaves the node here: egress (tc, qdisc or driver) on the
    /// uplink or a tunnel device.
    pub fn leaves_node(&self) -> bool {
        self.egress_on(DeviceRole::faces_network, true)
    }

    /// The packet goes onto the wire here: tc egress or the driver on the
    /// uplink.
    pub fn hands_to_uplink(&self) -> bool {
        self.egress_on(|r| r == DeviceRole::Uplink, false)
    }

    /// Can this hop follow [`Self::hands_to_uplink`] for the same packet?
    /// Only the uplink's own tc, qdisc and driver hops, and a drop.
    pub fn may_follow_uplink(&self) -> bool {
        matches!(self, Self::Drop) || self.egress_on(|r| r == DeviceRole::Uplink, true)
    }

    /// A receive on the uplink or on a device of no known role (a bond's or
    /// VLAN's lower device): what may come before [`Self::arrives_on_uplink`].
    pub fn is_wire_receive(&self) -> bool {
        self.receive_on(|r| matches!(r, DeviceRole::Uplink | DeviceRole::Other))
    }

    /// The node hands the packet to a pod here: egress (tc or driver) on
    /// the host side of a pod's veth.
    pub fn hands_to_pod(&self) -> bool {
        self.egress_on(|r| r == DeviceRole::PodVethHost, false)
    }

    /// Can this hop follow [`Self::hands_to_pod`] for the same packet? The
    /// veth's own hops, the pod receiving it, a socket reading it, a drop.
    pub fn may_follow_pod_handoff(&self) -> bool {
        matches!(
            self,
            Self::Device {
                place: Place::Pod,
                stage: DevStage::Receive,
            } | Self::Socket { in_pod: true }
                | Self::Drop
        ) || self.egress_on(|r| r == DeviceRole::PodVethHost, true)
    }

    /// The packet arrives from the wire here: tc ingress or receive on the
    /// uplink. On a node this comes first, after at most the receive hops of
    /// lower devices (a bond's or VLAN's slave).
    pub fn arrives_on_uplink(&self) -> bool {
        self.receive_on(|r| r == DeviceRole::Uplink)
    }

    /// A pod sends the packet here: the pod's own device, or the host side
    /// of its veth receiving.
    pub fn sent_by_pod(&self) -> bool {
        matches!(
            self,
            Self::Device {
                place: Place::Pod,
                stage: DevStage::Queue | DevStage::Xmit,
            }
        ) || self.receive_on(|r| r == DeviceRole::PodVethHost)
    }

    /// The packet enters the node here: ingress (tc or receive) on the
    /// uplink or a tunnel device.
    pub fn enters_node(&self) -> bool {
        self.receive_on(DeviceRole::faces_network)
    }

    /// tc ingress or netif_receive_skb on a node device.
    pub const fn is_node_receive(&self) -> bool {
        matches!(
            self,
            Self::Tc {
                dir: TcDirection::Ingress,
                ..
            } | Self::Device {
                place: Place::Node(_),
                stage: DevStage::Receive
            }
        )
    }

    /// tc egress, net_dev_queue or net_dev_start_xmit on a node device.
    const fn is_node_transmit(&self) -> bool {
        matches!(
            self,
            Self::Tc {
                dir: TcDirection::Egress,
                ..
            } | Self::Device {
                place: Place::Node(_),
                stage: DevStage::Queue | DevStage::Xmit
            }
        )
    }
}

/// A hop as the taxonomy sees it: the point and the encapsulation of the
/// packet there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HopSite {
    /// Where the packet was observed.
    pub point: HopPoint,
    /// Tunnel around the packet at that hop ([`Encap::None`] when the
    /// hop saw the bare packet).
    pub encap: Encap,
}

/// A named segment and its category.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentName {
    /// Stable segment name, as documented in `docs/segments.md`
    /// (`pod.veth.egress`, `netfilter.prerouting.dnat`, `tunnel.vxlan.encap`).
    pub name: String,
    /// Category the segment's time is attributed to.
    pub category: Category,
}

impl SegmentName {
    fn new(name: impl Into<String>, category: Category) -> Self {
        Self {
            name: name.into(),
            category,
        }
    }
}

/// Netfilter bands between consecutive entries of [`NF_PRIORITY_SLOTS`]:
/// band `i` lies between slot `i` and slot `i + 1`.
pub const NF_BANDS: [(&str, Category); 8] = [
    ("raw", Category::NetfilterOther),    // -401 .. -201
    ("conntrack", Category::Conntrack),   // -201 .. -199
    ("mangle", Category::NetfilterOther), // -199 .. -101
    ("dnat", Category::KubeProxy),        // -101 .. -99
    ("other", Category::NetfilterOther),  // -99 .. -1
    ("filter", Category::KubeProxy),      // -1 .. 1
    ("other", Category::NetfilterOther),  // 1 .. 99
    ("snat", Category::KubeProxy),        // 99 .. 101
];

const _: () = assert!(NF_BANDS.len() + 1 == NF_PRIORITY_SLOTS.len());

/// Slots that open a band hoptrace brackets on both sides in its default
/// plan (-201 conntrack, -101 dnat, -1 filter, 99 snat): a drop right after
/// one of them happened inside that band.
const DROP_BANDS: [u8; 4] = [1, 3, 5, 7];

/// Tunnel kind name used in `tunnel.<kind>.encap|decap`.
pub const fn encap_name(encap: Encap) -> &'static str {
    match encap {
        Encap::None => "none",
        Encap::Vxlan => "vxlan",
        Encap::Geneve => "geneve",
        Encap::IpIp => "ipip",
    }
}

/// `netfilter.<hook>.<bands>`, or `netfilter.outer.<hook>.<bands>` for the
/// pass of an encapsulating outer packet (its own conntrack entry, its own
/// walk of the nat chains).
fn netfilter_layer_band_segment(
    hook: NfHook,
    from_slot: u8,
    to_slot: u8,
    outer: bool,
) -> Option<SegmentName> {
    let (from, to) = (from_slot as usize, to_slot as usize);
    if from >= to || to > NF_BANDS.len() {
        return None;
    }
    let bands = &NF_BANDS[from..to];
    let layer = if outer { "outer." } else { "" };
    let mut name = format!("netfilter.{layer}{}.", hook.name());
    for (i, (band, _)) in bands.iter().enumerate() {
        if i > 0 {
            name.push('+');
        }
        name.push_str(band);
    }
    let first = bands[0].1;
    let category = if bands.iter().all(|(_, c)| *c == first) {
        first
    } else {
        Category::NetfilterOther
    };
    Some(SegmentName { name, category })
}

/// The segment that ends at the first hop of a datagram reassembled from
/// IP fragments (conntrack's defragmentation, or local delivery), whatever
/// the hops: the wait for the other fragments and the reassembly
/// (`ip.reassembly`, kernel-other).
pub fn reassembly_segment() -> SegmentName {
    SegmentName::new("ip.reassembly", Category::KernelOther)
}

/// Names the segment from hop `a` to the next observed hop `b` of the same
/// packet. `same_device` says whether both hops were on the same device
/// (same namespace and ifindex). The rules are tried in the order documented
/// in `docs/segments.md`; the first that matches wins.
pub fn classify(a: HopSite, b: HopSite, same_device: bool) -> SegmentName {
    use DevStage::{Queue, Receive, Xmit};
    use HopPoint::{Device, Netfilter, Socket, Tc};
    use TcDirection::{Egress, Ingress};

    // 1. Encapsulation changes between the two hops.
    if a.encap == Encap::None && b.encap != Encap::None {
        return SegmentName::new(
            format!("tunnel.{}.encap", encap_name(b.encap)),
            Category::Encapsulation,
        );
    }
    if a.encap != Encap::None && b.encap == Encap::None {
        return SegmentName::new(
            format!("tunnel.{}.decap", encap_name(a.encap)),
            Category::Encapsulation,
        );
    }
    // 2. Delivery to a socket.
    if matches!(b.point, Socket { .. }) {
        return SegmentName::new("socket.delivery", Category::KernelOther);
    }
    match (a.point, b.point) {
        // 3a. A drop inside a band that hoptrace brackets on both sides (a
        //     drop after the band's opening slot: the closing one did not
        //     see the packet): the band's time, in its category (a drop by
        //     kube-proxy's KUBE-FORWARD is kube-proxy's).
        (Netfilter { hook, slot }, HopPoint::Drop) if DROP_BANDS.contains(&slot) => {
            let outer = a.encap != Encap::None;
            if let Some(seg) = netfilter_layer_band_segment(hook, slot, slot + 1, outer) {
                return seg;
            }
        }
        // 3b. br_netfilter (bridge-nf-call-iptables=1): the bridge runs
        //     PREROUTING on a frame it received on a port before the
        //     frame reaches the bridge device: both pieces are the bridge's.
        (
            Netfilter {
                hook: NfHook::PreRouting,
                ..
            },
            p,
        ) if p.receive_on(|r| r == DeviceRole::Bridge) => {
            return SegmentName::new("bridge", Category::Cni);
        }
        (
            p,
            Netfilter {
                hook: NfHook::PreRouting,
                ..
            },
        ) if !same_device && p.receive_on(|r| r == DeviceRole::PodVethHost) => {
            return SegmentName::new("bridge", Category::Cni);
        }
        // 3. Netfilter to netfilter.
        (Netfilter { hook: h1, slot: s1 }, Netfilter { hook: h2, slot: s2 }) => {
            if h1 == h2 {
                // Both hops in the outer packet: the outer pass's own names.
                let outer = a.encap != Encap::None && b.encap != Encap::None;
                if let Some(seg) = netfilter_layer_band_segment(h1, s1, s2, outer) {
                    return seg;
                }
            } else if h1 == NfHook::PreRouting && matches!(h2, NfHook::LocalIn | NfHook::Forward) {
                return SegmentName::new("routing", Category::Cni);
            } else if matches!(h1, NfHook::Forward | NfHook::LocalOut) && h2 == NfHook::PostRouting
            {
                return SegmentName::new("routing.output", Category::Cni);
            }
        }
        // 4. From a receiving device into the IP stack.
        (p, Netfilter { .. }) if p.is_node_receive() => {
            return SegmentName::new("ip.receive", Category::KernelOther);
        }
        // 5. From the last postrouting hop to the output device.
        (
            Netfilter {
                hook: NfHook::PostRouting,
                ..
            },
            Tc { dir: Egress, .. }
            | Device {
                place: Place::Node(_),
                stage: Queue,
            },
        ) => {
            return SegmentName::new("ip.output", Category::KernelOther);
        }
        // 5b. Dropped while waiting: after POSTROUTING (neighbour
        // resolution) in IP output, after entering a device's transmit
        // path in its qdisc.
        (
            Netfilter {
                hook: NfHook::PostRouting,
                ..
            },
            HopPoint::Drop,
        ) => {
            return SegmentName::new("ip.output", Category::KernelOther);
        }
        (Tc { dir: Egress, .. } | Device { stage: Queue, .. }, HopPoint::Drop) => {
            return SegmentName::new("qdisc", Category::KernelOther);
        }
        _ => {}
    }
    // 6. Two hooks of one device.
    if same_device {
        match (a.point, b.point) {
            // Older kernels run net_dev_queue before tc egress, 6.18 after
            // it (sch_handle_egress comes first in __dev_queue_xmit):
            // either way the time between them is the tc egress stage.
            (Device { stage: Queue, .. }, Tc { dir: Egress, .. })
            | (Tc { dir: Egress, .. }, Device { stage: Queue, .. }) => {
                return SegmentName::new("tc.egress", Category::KernelOther);
            }
            (Tc { dir: Egress, .. } | Device { stage: Queue, .. }, Device { stage: Xmit, .. }) => {
                return SegmentName::new("qdisc", Category::KernelOther);
            }
            (Device { stage: Receive, .. }, Tc { dir: Ingress, .. }) => {
                return SegmentName::new("tc.ingress", Category::KernelOther);
            }
            _ => {}
        }
    }
    // 7. Crossing a pod's veth pair.
    let veth = DeviceRole::PodVethHost;
    match (a.point, b.point) {
        (
            Device {
                place: Place::Pod,
                stage: Queue | Xmit,
            },
            Device {
                place: Place::Node(r),
                stage: Receive,
            }
            | Tc {
                role: r,
                dir: Ingress,
            },
        ) if r == veth => {
            return SegmentName::new("pod.veth.egress", Category::Cni);
        }
        (
            Tc {
                role: r,
                dir: Egress,
            }
            | Device {
                place: Place::Node(r),
                stage: Queue | Xmit,
            },
            Device {
                place: Place::Pod,
                stage: Receive,
            },
        ) if r == veth => {
            return SegmentName::new("pod.veth.ingress", Category::Cni);
        }
        _ => {}
    }
    // 8. Through a bridge: a bridge device on one end, a pod veth on the other.
    if !same_device {
        if let (Some(ra), Some(rb)) = (a.point.node_role(), b.point.node_role()) {
            let pair = (ra, rb);
            if pair == (veth, DeviceRole::Bridge) || pair == (DeviceRole::Bridge, veth) {
                return SegmentName::new("bridge", Category::Cni);
            }
        }
        // 9. Received on one node device, sent on another, no netfilter hop
        //    in between: routing (netfilter time, if any, stays inside).
        if a.point.is_node_receive() && b.point.is_node_transmit() {
            return SegmentName::new("routing", Category::Cni);
        }
    }
    // 10. Anything else.
    let mut name = a.point.name();
    name.push_str("..");
    b.point.write_name(&mut name);
    SegmentName::new(name, Category::KernelOther)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(point: HopPoint) -> HopSite {
        HopSite {
            point,
            encap: Encap::None,
        }
    }
    fn nf(hook: NfHook, prio: i32) -> HopPoint {
        let slot = NF_PRIORITY_SLOTS
            .iter()
            .position(|p| *p == prio)
            .expect("known priority");
        HopPoint::Netfilter {
            hook,
            slot: slot as u8,
        }
    }
    fn dev(role: DeviceRole, stage: DevStage) -> HopPoint {
        HopPoint::Device {
            place: Place::Node(role),
            stage,
        }
    }
    fn tc(role: DeviceRole, dir: TcDirection) -> HopPoint {
        HopPoint::Tc { role, dir }
    }

    #[test]
    fn hop_names_are_stable() {
        assert_eq!(
            tc(DeviceRole::PodVethHost, TcDirection::Ingress).name(),
            "veth.ingress"
        );
        assert_eq!(
            tc(DeviceRole::Other, TcDirection::Egress).name(),
            "dev.egress"
        );
        assert_eq!(nf(NfHook::PreRouting, -201).name(), "nf.prerouting.-201");
        assert_eq!(nf(NfHook::PostRouting, 101).name(), "nf.postrouting.101");
        assert_eq!(
            HopPoint::Device {
                place: Place::Pod,
                stage: DevStage::Xmit
            }
            .name(),
            "pod.xmit"
        );
        assert_eq!(
            dev(DeviceRole::Uplink, DevStage::Queue).name(),
            "uplink.queue"
        );
        assert_eq!(HopPoint::Socket { in_pod: true }.name(), "socket.pod");
        assert_eq!(HopPoint::Drop.name(), "drop");
    }

    #[test]
    fn netfilter_bands_and_categories() {
        let cases = [
            (
                -401,
                -201,
                "netfilter.prerouting.raw",
                Category::NetfilterOther,
            ),
            (
                -201,
                -199,
                "netfilter.prerouting.conntrack",
                Category::Conntrack,
            ),
            (
                -199,
                -101,
                "netfilter.prerouting.mangle",
                Category::NetfilterOther,
            ),
            (-101, -99, "netfilter.prerouting.dnat", Category::KubeProxy),
            (
                -99,
                -1,
                "netfilter.prerouting.other",
                Category::NetfilterOther,
            ),
            (-1, 1, "netfilter.prerouting.filter", Category::KubeProxy),
            (99, 101, "netfilter.prerouting.snat", Category::KubeProxy),
            // A missed hop: spanned bands, mixed categories.
            (
                -201,
                -101,
                "netfilter.prerouting.conntrack+mangle",
                Category::NetfilterOther,
            ),
            // Another mixed span.
            (
                -99,
                1,
                "netfilter.prerouting.other+filter",
                Category::NetfilterOther,
            ),
        ];
        for (from, to, name, cat) in cases {
            let seg = classify(
                site(nf(NfHook::PreRouting, from)),
                site(nf(NfHook::PreRouting, to)),
                true,
            );
            assert_eq!(seg, SegmentName::new(name, cat), "{from}..{to}");
        }
        let seg = classify(
            site(nf(NfHook::Forward, -199)),
            site(nf(NfHook::Forward, -1)),
            true,
        );
        assert_eq!(seg.name, "netfilter.forward.mangle+dnat+other");
    }

    #[test]
    fn spanned_bands_of_one_category_keep_it() {
        // No two adjacent kube-proxy bands exist, so check the rule directly.
        let seg = netfilter_layer_band_segment(NfHook::LocalOut, 3, 4, false).expect("band");
        assert_eq!(seg.category, Category::KubeProxy);
        let seg = netfilter_layer_band_segment(NfHook::LocalOut, 3, 6, false).expect("bands");
        assert_eq!(seg.name, "netfilter.output.dnat+other+filter");
        assert_eq!(seg.category, Category::NetfilterOther);
        assert!(netfilter_layer_band_segment(NfHook::LocalOut, 4, 4, false).is_none());
        assert!(netfilter_layer_band_segment(NfHook::LocalOut, 5, 3, false).is_none());
    }

    #[test]
    fn between_hooks_and_devices() {
        use DeviceRole::*;
        let cases: [(HopPoint, HopPoint, bool, &str, Category); 14] = [
            (
                nf(NfHook::PreRouting, 101),
                nf(NfHook::Forward, -401),
                true,
                "routing",
                Category::Cni,
            ),
            (
                nf(NfHook::PreRouting, 101),
                nf(NfHook::LocalIn, -401),
                true,
                "routing",
                Category::Cni,
            ),
            (
                nf(NfHook::Forward, 101),
                nf(NfHook::PostRouting, -401),
                true,
                "routing.output",
                Category::Cni,
            ),
            (
                nf(NfHook::LocalOut, 101),
                nf(NfHook::PostRouting, -401),
                true,
                "routing.output",
                Category::Cni,
            ),
            (
                tc(Bridge, TcDirection::Ingress),
                nf(NfHook::PreRouting, -401),
                true,
                "ip.receive",
                Category::KernelOther,
            ),
            (
                dev(Uplink, DevStage::Receive),
                nf(NfHook::PreRouting, -401),
                true,
                "ip.receive",
                Category::KernelOther,
            ),
            (
                nf(NfHook::PostRouting, 101),
                dev(Vxlan, DevStage::Queue),
                true,
                "ip.output",
                Category::KernelOther,
            ),
            (
                dev(Vxlan, DevStage::Queue),
                tc(Vxlan, TcDirection::Egress),
                true,
                "tc.egress",
                Category::KernelOther,
            ),
            (
                tc(Vxlan, TcDirection::Egress),
                dev(Vxlan, DevStage::Xmit),
                true,
                "qdisc",
                Category::KernelOther,
            ),
            (
                dev(Uplink, DevStage::Receive),
                tc(Uplink, TcDirection::Ingress),
                true,
                "tc.ingress",
                Category::KernelOther,
            ),
            (
                HopPoint::Device {
                    place: Place::Pod,
                    stage: DevStage::Xmit,
                },
                dev(PodVethHost, DevStage::Receive),
                false,
                "pod.veth.egress",
                Category::Cni,
            ),
            (
                dev(PodVethHost, DevStage::Xmit),
                HopPoint::Device {
                    place: Place::Pod,
                    stage: DevStage::Receive,
                },
                false,
                "pod.veth.ingress",
                Category::Cni,
            ),
            (
                tc(PodVethHost, TcDirection::Ingress),
                dev(Bridge, DevStage::Receive),
                false,
                "bridge",
                Category::Cni,
            ),
            (
                tc(Uplink, TcDirection::Ingress),
                dev(PodVethHost, DevStage::Queue),
                false,
                "routing",
                Category::Cni,
            ),
        ];
        for (a, b, same, name, cat) in cases {
            assert_eq!(
                classify(site(a), site(b), same),
                SegmentName::new(name, cat),
                "{a:?} -> {b:?}"
            );
        }
    }

    #[test]
    fn same_device_rules_need_the_same_device() {
        let a = site(dev(DeviceRole::Uplink, DevStage::Queue));
        let b = site(tc(DeviceRole::Uplink, TcDirection::Egress));
        assert_eq!(classify(a, b, true).name, "tc.egress");
        let other = classify(a, b, false);
        assert_eq!(other.name, "uplink.queue..uplink.egress");
        assert_eq!(other.category, Category::KernelOther);
    }

    #[test]
    fn encapsulation_and_socket() {
        let inner = site(dev(DeviceRole::Vxlan, DevStage::Xmit));
        let outer = HopSite {
            point: nf(NfHook::LocalOut, -401),
            encap: Encap::Vxlan,
        };
        assert_eq!(
            classify(inner, outer, false),
            SegmentName::new("tunnel.vxlan.encap", Category::Encapsulation)
        );
        let outer_in = HopSite {
            point: nf(NfHook::LocalIn, 101),
            encap: Encap::Geneve,
        };
        let inner_rx = site(dev(DeviceRole::Geneve, DevStage::Receive));
        assert_eq!(
            classify(outer_in, inner_rx, false).name,
            "tunnel.geneve.decap"
        );
        // Netfilter time of the outer packet has names of its own, in the
        // same categories.
        let o1 = HopSite {
            point: nf(NfHook::LocalOut, -101),
            encap: Encap::Vxlan,
        };
        let o2 = HopSite {
            point: nf(NfHook::LocalOut, -99),
            encap: Encap::Vxlan,
        };
        assert_eq!(
            classify(o1, o2, true),
            SegmentName::new("netfilter.outer.output.dnat", Category::KubeProxy)
        );
        let sock = site(HopPoint::Socket { in_pod: true });
        let rx = site(HopPoint::Device {
            place: Place::Pod,
            stage: DevStage::Receive,
        });
        assert_eq!(classify(rx, sock, false).name, "socket.delivery");
    }

    #[test]
    fn what_real_nodes_do_has_names() {
        use DeviceRole::*;
        // br_netfilter: PREROUTING at the bridge, before cni0's tc hook.
        let seg = classify(
            site(nf(NfHook::PreRouting, -99)),
            site(tc(Bridge, TcDirection::Ingress)),
            false,
        );
        assert_eq!(seg, SegmentName::new("bridge", Category::Cni));
        let seg = classify(
            site(tc(PodVethHost, TcDirection::Ingress)),
            site(nf(NfHook::PreRouting, -201)),
            false,
        );
        assert_eq!(seg, SegmentName::new("bridge", Category::Cni));
        // A routed CNI: prerouting on the veth itself is IP receive.
        let seg = classify(
            site(tc(PodVethHost, TcDirection::Ingress)),
            site(nf(NfHook::PreRouting, -201)),
            true,
        );
        assert_eq!(seg.name, "ip.receive");
        // 6.18: tc egress before net_dev_queue.
        let seg = classify(
            site(tc(Uplink, TcDirection::Egress)),
            site(dev(Uplink, DevStage::Queue)),
            true,
        );
        assert_eq!(seg, SegmentName::new("tc.egress", Category::KernelOther));
        // A drop in the filter band (KUBE-FORWARD drops ctstate INVALID).
        let seg = classify(site(nf(NfHook::Forward, -1)), site(HopPoint::Drop), false);
        assert_eq!(
            seg,
            SegmentName::new("netfilter.forward.filter", Category::KubeProxy)
        );
        let seg = classify(
            site(nf(NfHook::LocalOut, -101)),
            site(HopPoint::Drop),
            false,
        );
        assert_eq!(seg.name, "netfilter.output.dnat");
    }

    #[test]
    fn fallback_names_both_hops() {
        // After a band's closing slot the drop could be anywhere later.
        let seg = classify(site(nf(NfHook::Forward, 1)), site(HopPoint::Drop), false);
        assert_eq!(
            seg,
            SegmentName::new("nf.forward.1..drop", Category::KernelOther)
        );
    }

    #[test]
    fn no_rule_produces_ingress_proxy_yet() {
        // Exhaustive over a representative set of points.
        let mut points = vec![HopPoint::Drop, HopPoint::Socket { in_pod: false }];
        for hook in NfHook::ALL {
            for slot in 0..NF_PRIORITY_SLOTS.len() as u8 {
                points.push(HopPoint::Netfilter { hook, slot });
            }
        }
        for role in [
            DeviceRole::PodVethHost,
            DeviceRole::Bridge,
            DeviceRole::Uplink,
        ] {
            for dir in [TcDirection::Ingress, TcDirection::Egress] {
                points.push(tc(role, dir));
            }
            for stage in [DevStage::Receive, DevStage::Queue, DevStage::Xmit] {
                points.push(dev(role, stage));
            }
        }
        for a in &points {
            for b in &points {
                let seg = classify(site(*a), site(*b), false);
                assert_ne!(seg.category, Category::IngressProxy);
                assert!(!seg.name.is_empty());
            }
        }
    }
}
