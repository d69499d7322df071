//! Unit tests of the correlator: synthetic events, no kernel.

use std::collections::HashSet;

use hoptrace_common::packet::{IPPROTO_TCP, IPPROTO_UDP};
use hoptrace_common::{CtState, Encap, L3Headers, PacketMeta};

use super::*;
use crate::node::DeviceInfo;
use crate::session::ReorderBuffer;

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
        queues: role == DeviceRole::Uplink,
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

pub fn nf(ts: u64, skb: u64, hook: NfHook, prio: i32, ct: CtState, packet: PacketMeta) -> HopEvent {
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
        ("netfilter.outer.output.dnat", KubeProxy, 100),
        ("routing.output", Cni, 500),
        ("netfilter.outer.postrouting.snat", KubeProxy, 100),
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
pub fn node_b_journey(t0: u64, skb: u64) -> (Vec<HopEvent>, Vec<(&'static str, Category, u64)>) {
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
        ("netfilter.outer.prerouting.conntrack", Conntrack, 300),
        ("routing", Cni, 500),
        ("netfilter.outer.input.filter", KubeProxy, 200),
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
    // The outer packet's pass has names of its own and its own state: the
    // journey is established, the outer pass (ctinfo NEW, no status read) new.
    assert!(
        names.contains(&"netfilter.outer.output.conntrack"),
        "{names:?}"
    );
    assert!(
        ledger
            .segment(
                "netfilter.outer.output.conntrack",
                Direction::Local,
                ConnState::New
            )
            .is_some()
    );
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
fn unparsed_events_never_join_a_journey() {
    // A ping crosses the veth; then a netlink message reuses its buffer
    // (no IP headers) and is read by a socket twice. Before the fix, those
    // socket hops joined the ping's journey (`socket.delivery` segments of
    // tens of ms).
    use HookKind::*;
    let p = tcp(ACK, 1, 1);
    let mut not_ip = PacketMeta::zeroed();
    not_ip.status = ParseStatus::NotIp as u8;
    let events = [
        ev(0, SKB, POD_A, IF_POD_ETH0, DevXmit, p),
        ev(1_000, SKB, NODE, IF_VETH_A, DevReceive, p),
        ev(1_500, SKB, NODE, IF_VETH_A, TcIngress, p),
        ev(2_000_000, SKB, NODE, 0, SocketDeliver, not_ip),
        ev(9_000_000, SKB, NODE, 0, SocketDeliver, not_ip),
        // Unknown buffer, unparsed: counted only.
        ev(9_500_000, 0x7000, NODE, IF_UPLINK, DevReceive, not_ip),
    ];
    let ledger = run(&events);
    assert_eq!(ledger.counters.journeys, 1);
    let e2e = ledger
        .end_to_end
        .get(&(Direction::Egress, ConnState::Established))
        .expect("the ping's journey");
    assert_eq!(e2e.total_ns, 1_500, "nothing after the packet's last hop");
    assert!(
        !ledger.segment_names_seen().contains(&"socket.delivery"),
        "{:?}",
        ledger.segment_names_seen()
    );
    assert_eq!(ledger.counters.unparsed_packets, 2, "two frames, once each");
}

#[test]
fn unparsed_frames_are_counted_once_per_packet() {
    use HookKind::*;
    let mut arp = PacketMeta::zeroed();
    arp.status = ParseStatus::NotIp as u8;
    let events = [
        // One ARP request crossing a pod veth and the bridge: one frame.
        ev(0, SKB, POD_A, IF_POD_ETH0, DevXmit, arp),
        ev(1_000, SKB, NODE, IF_VETH_A, TcIngress, arp),
        ev(2_000, SKB, NODE, IF_BRIDGE, DevReceive, arp),
        // The same buffer long after the idle timeout: another frame.
        ev(100_000_000, SKB, NODE, IF_VETH_A, TcIngress, arp),
        // Another buffer.
        ev(100_000_100, SKB + 0x100, NODE, IF_VETH_A, TcIngress, arp),
    ];
    let ledger = run(&events);
    assert_eq!(ledger.counters.unparsed_packets, 3);
    assert_eq!(ledger.counters.journeys, 0);
}

#[test]
fn a_skipped_bracket_joins_only_after_its_hook() {
    use HookKind::*;
    let p = tcp(ACK, 1, 1);
    let mut skipped = PacketMeta::zeroed();
    skipped.status = ParseStatus::Skipped as u8;
    let events = [
        ev(0, SKB, POD_A, IF_POD_ETH0, DevXmit, p),
        ev(1_000, SKB, NODE, IF_VETH_A, TcIngress, p),
        // No parsed prerouting hop before it: not this packet's.
        nf(
            5_000,
            SKB,
            NfHook::PreRouting,
            -199,
            CtState::Established,
            skipped,
        ),
    ];
    let ledger = run(&events);
    assert_eq!(ledger.counters.journeys, 1);
    assert_eq!(
        ledger
            .end_to_end
            .get(&(Direction::Egress, ConnState::Established))
            .map(|s| s.total_ns),
        Some(1_000)
    );
}

#[test]
fn untracked_where_conntrack_did_not_run() {
    use CtState::None as NoCt;
    use NfHook::*;
    let p = tcp(ACK, 1, 1);
    let events = [
        ev(0, SKB, NODE, IF_VETH_A, HookKind::TcIngress, p),
        nf(1_000, SKB, PreRouting, -201, NoCt, p),
        nf(1_300, SKB, PreRouting, -199, NoCt, p),
        nf(1_600, SKB, PreRouting, -101, NoCt, p),
        nf(1_700, SKB, PreRouting, -99, NoCt, p),
    ];
    let ledger = run(&events);
    let seg = ledger
        .segment(
            "netfilter.prerouting.untracked",
            Direction::Egress,
            ConnState::Untracked,
        )
        .expect("the band where conntrack would run");
    assert_eq!(seg.total_ns, 300);
    let names = ledger.segment_names_seen();
    assert!(!names.iter().any(|n| n.contains("conntrack")), "{names:?}");
    let category = ledger
        .segment_names
        .iter()
        .find(|n| n.name == "netfilter.prerouting.untracked")
        .map(|n| n.category);
    assert_eq!(category, Some(Category::NetfilterOther));
    // With an entry after conntrack, the same hops are tracked.
    let mut tracked = events;
    tracked[2] = nf(1_300, SKB, PreRouting, -199, CtState::Established, p);
    let ledger = run(&tracked);
    assert!(
        ledger
            .segment(
                "netfilter.prerouting.conntrack",
                Direction::Egress,
                ConnState::Established
            )
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
        queues: false,
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

mod throughput {
    use super::*;
    use super::{ctx, node_a_journey};

    /// Rough events/s of push + finalize; run with
    /// `AYA_BUILD_SKIP=1 cargo test -p hoptrace-core --lib --release throughput -- --ignored --nocapture`.
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

/// One journey as an observer saw it: direction, conn_state, end-to-end
/// ns, (segment, ns), pod netns, (drop reason, location).
type Observed = (
    Direction,
    ConnState,
    u64,
    Vec<(String, u64)>,
    Option<u32>,
    Option<(String, String)>,
);

/// Collects what the correlator hands an observer.
#[derive(Default)]
struct Recorder {
    journeys: std::sync::Mutex<Vec<Observed>>,
}

impl JourneyObserver for Recorder {
    fn journey(&self, j: &JourneySummary<'_>) {
        let segments = j
            .named_segments()
            .map(|(name, ns)| (name.name.clone(), ns))
            .collect();
        self.journeys.lock().expect("lock").push((
            j.direction,
            j.conn_state,
            j.end_to_end_ns,
            segments,
            j.pod_netns,
            j.drop.map(|(r, l)| (r.to_owned(), l.to_owned())),
        ));
    }
}

#[test]
fn the_observer_sees_each_journey_as_the_ledger_records_it() {
    let recorder = std::sync::Arc::new(Recorder::default());
    let mut c = Correlator::new(ctx(), CorrelatorOptions::default());
    c.set_observer(recorder.clone());
    let (events, expected) = node_a_journey(0, SKB, 100);
    for e in &events {
        c.push(e);
    }
    let ledger = c.finish();
    let seen = recorder.journeys.lock().expect("lock");
    assert_eq!(seen.len(), 1, "one journey with segments");
    let (direction, conn_state, e2e, segments, pod_netns, drop) = &seen[0];
    assert_eq!(*direction, Direction::Egress);
    assert_eq!(*pod_netns, Some(POD_A), "the journey left pod A");
    assert!(drop.is_none());
    // Every segment the ledger has, with the same time, in hop order.
    let mut totals: BTreeMap<String, u128> = BTreeMap::new();
    for (name, ns) in segments {
        *totals.entry(name.clone()).or_insert(0) += u128::from(*ns);
    }
    for (name, (_, total)) in expected_totals(&expected) {
        assert_eq!(totals.get(&name), Some(&total), "{name}");
        let stat = ledger.segment(&name, *direction, *conn_state).expect("row");
        assert_eq!(stat.total_ns, total, "{name}");
    }
    assert_eq!(
        u128::from(*e2e),
        segments.iter().map(|(_, ns)| u128::from(*ns)).sum::<u128>()
    );
}

#[test]
fn the_observer_gets_the_drop_reason_and_location() {
    use HookKind::*;
    let recorder = std::sync::Arc::new(Recorder::default());
    let mut c = Correlator::new(ctx(), CorrelatorOptions::default());
    c.set_observer(recorder.clone());
    let p = tcp(ACK, 1, 1);
    let mut drop = ev(5_000, SKB, NODE, IF_VETH_A, Drop, p);
    drop.drop_reason = 6;
    for e in [
        ev(0, SKB, POD_A, IF_POD_ETH0, DevXmit, p),
        ev(1_000, SKB, NODE, IF_VETH_A, DevReceive, p),
        drop,
    ] {
        c.push(&e);
    }
    c.finish();
    let seen = recorder.journeys.lock().expect("lock");
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].5,
        Some(("NETFILTER_DROP".to_owned(), "veth.rx".to_owned())),
        "reason from the kernel's names, location = the hop before the drop"
    );
}

/// `ct_state` of a netfilter event whose program read the entry's status.
fn with_status(mut e: HopEvent, unconfirmed: bool) -> HopEvent {
    e.ct_state |= hoptrace_common::CT_STATUS_KNOWN;
    if unconfirmed {
        e.ct_state |= hoptrace_common::CT_UNCONFIRMED;
    }
    e
}

#[test]
fn each_pass_has_the_conn_state_of_its_own_conntrack_entry() {
    // Node A of an overlay, an established inner packet whose outer VXLAN
    // flow is new (a new source port): the outer pass created its entry
    // (unconfirmed) and walked the nat chains. Its segments are
    // `netfilter.outer.*`, in state `new`; the inner ones `established`.
    use CtState::{Established, New};
    use HookKind::*;
    use NfHook::*;
    let inner = dnat(tcp(ACK, 77, 3));
    let outer = vxlan(inner);
    let events = [
        ev(1_000, SKB, NODE, IF_VETH_A, TcIngress, inner),
        with_status(nf(2_000, SKB, PreRouting, -101, Established, inner), false),
        with_status(nf(2_500, SKB, PreRouting, -99, Established, inner), false),
        ev(3_000, SKB, NODE, IF_VXLAN, TcEgress, inner),
        // Outer: ctinfo says NEW, and the entry is unconfirmed.
        with_status(nf(4_000, SKB, LocalOut, -101, New, outer), true),
        with_status(nf(304_000, SKB, LocalOut, -99, New, outer), true),
        ev(305_000, SKB, NODE, IF_UPLINK, TcEgress, outer),
    ];
    let ledger = run(&events);
    assert_eq!(ledger.counters.journeys, 1, "{:?}", ledger.counters);
    let inner_dnat = ledger
        .segment(
            "netfilter.prerouting.dnat",
            Direction::Egress,
            ConnState::Established,
        )
        .expect("inner dnat, established");
    assert_eq!(inner_dnat.total_ns, 500);
    let outer_dnat = ledger
        .segment(
            "netfilter.outer.output.dnat",
            Direction::Egress,
            ConnState::New,
        )
        .expect("outer dnat, new: its own pass created the entry");
    assert_eq!(outer_dnat.total_ns, 300_000);
    assert!(
        ledger
            .segment("netfilter.output.dnat", Direction::Egress, ConnState::New)
            .is_none()
    );
    // The same outer flow later: ctinfo still says NEW (an overlay's outer
    // flow never sees a reply), but the entry is confirmed: established.
    let events2: Vec<HopEvent> = [
        ev(1_000, SKB, NODE, IF_VETH_A, TcIngress, inner),
        with_status(nf(2_000, SKB, PreRouting, -101, Established, inner), false),
        with_status(nf(2_500, SKB, PreRouting, -99, Established, inner), false),
        ev(3_000, SKB, NODE, IF_VXLAN, TcEgress, inner),
        with_status(nf(4_000, SKB, LocalOut, -101, New, outer), false),
        with_status(nf(4_500, SKB, LocalOut, -99, New, outer), false),
        ev(5_000, SKB, NODE, IF_UPLINK, TcEgress, outer),
    ]
    .to_vec();
    let ledger = run(&events2);
    assert!(
        ledger
            .segment(
                "netfilter.outer.output.dnat",
                Direction::Egress,
                ConnState::Established
            )
            .is_some(),
        "a confirmed entry is not new, whatever ctinfo says"
    );
}

#[test]
fn a_segment_that_repeats_in_a_journey_counts_once_summed() {
    // Two passes through one band in one journey (the packet loops through
    // prerouting twice, e.g. hairpin): one value, the sum, as categories.
    use CtState::Established;
    use HookKind::*;
    use NfHook::*;
    let p = tcp(ACK, 9, 3);
    let events = [
        ev(1_000, SKB, NODE, IF_VETH_A, TcIngress, p),
        nf(2_000, SKB, PreRouting, -101, Established, p),
        nf(2_700, SKB, PreRouting, -99, Established, p),
        nf(3_000, SKB, PreRouting, -101, Established, p),
        nf(3_300, SKB, PreRouting, -99, Established, p),
        ev(4_000, SKB, NODE, IF_VETH_A, TcEgress, p),
    ];
    let ledger = run(&events);
    let dnat = ledger
        .segment(
            "netfilter.prerouting.dnat",
            Direction::Egress,
            ConnState::Established,
        )
        .expect("dnat row");
    assert_eq!(dnat.hist.len(), 1, "one value per journey");
    assert_eq!(dnat.total_ns, 1_000, "both crossings summed");
    let kube = &ledger.categories[&(
        Category::KubeProxy,
        Direction::Egress,
        ConnState::Established,
    )];
    assert_eq!(kube.total_ns, dnat.total_ns);
    assert_eq!(kube.hist.len(), 1);
}

#[test]
fn a_second_receive_from_the_wire_on_one_device_is_another_packet() {
    // A retransmission (same fingerprint) in the recycled buffer of its
    // first copy, 30 ms later, within the idle timeout: before, one
    // journey with a 30 ms `uplink.ingress..uplink.ingress` segment.
    use CtState::Established;
    use HookKind::*;
    use NfHook::*;
    let p = tcp(ACK, 5, 3);
    // The first copy's only hop is its receive (the rest of its way was
    // not traced: another namespace's hooks, a filtered flow).
    let events = [
        ev(1_000, SKB, NODE, IF_UPLINK, TcIngress, p),
        ev(31_000, SKB, NODE, IF_UPLINK, TcIngress, p),
        nf(32_000, SKB, PreRouting, -201, CtState::None, p),
        nf(32_300, SKB, PreRouting, -199, Established, p),
    ];
    let ledger = run(&events);
    assert_eq!(ledger.counters.journeys, 2, "{:?}", ledger.counters);
    assert_eq!(ledger.counters.buffer_reuses, 1);
    assert!(
        ledger
            .segment_names_seen()
            .iter()
            .all(|n| !n.contains("..")),
        "{:?}",
        ledger.segment_names_seen()
    );
}

#[test]
fn output_after_prerouting_of_a_bare_packet_is_another_packet() {
    // A received packet, then the node's own packet with the same
    // fingerprint in the recycled buffer 8 ms later (IPv6 MLD reports):
    // before, one journey with an 8 ms `nf.prerouting.-99..nf.output.-201`.
    use HookKind::*;
    use NfHook::*;
    let mut p = PacketMeta::zeroed();
    p.outer = l3([192, 168, 0, 9], 0, [224, 0, 0, 22], 0, 2);
    p.outer.payload_len = 40;
    let events = [
        ev(1_000, SKB, NODE, IF_UPLINK, TcIngress, p),
        nf(2_000, SKB, PreRouting, -101, CtState::None, p),
        nf(2_300, SKB, PreRouting, -99, CtState::None, p),
        nf(10_000_000, SKB, LocalOut, -201, CtState::None, p),
        nf(10_000_300, SKB, LocalOut, -199, CtState::None, p),
        ev(10_001_000, SKB, NODE, IF_UPLINK, TcEgress, p),
    ];
    let ledger = run(&events);
    assert_eq!(ledger.counters.journeys, 2, "{:?}", ledger.counters);
    assert!(
        ledger
            .segment_names_seen()
            .iter()
            .all(|n| !n.contains("prerouting.-99..")),
        "{:?}",
        ledger.segment_names_seen()
    );
    // The outer packet of an overlay does go from PREROUTING to OUTPUT.
    let (events, _) = node_a_journey(0, SKB, 100);
    assert_eq!(run(&events).counters.journeys, 1);
}

#[test]
fn the_nodes_own_dad_message_after_a_received_one_is_another_packet() {
    // IPv6 DAD neighbour solicitations from :: to a solicited-node group
    // share a fingerprint: one received from the other node, the node's
    // own sent 30 ms later in the recycled buffer. Before: one journey
    // with `uplink.ingress..uplink.egress`, then `uplink.egress..uplink.egress`.
    use HookKind::*;
    let mut p = PacketMeta::zeroed();
    p.outer.version = 6;
    p.outer.daddr = [
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xb8, 0x82, 0x72,
    ];
    p.outer.l4_proto = 58;
    p.outer.payload_len = 24;
    let events = [
        ev(1_000, SKB, NODE, IF_UPLINK, TcIngress, p),
        ev(30_000_000, SKB, NODE, IF_UPLINK, TcEgress, p),
        ev(60_000_000, SKB, NODE, IF_UPLINK, TcEgress, p),
    ];
    let ledger = run(&events);
    assert_eq!(ledger.counters.journeys, 3, "{:?}", ledger.counters);
    assert!(
        ledger.segments.is_empty(),
        "{:?}",
        ledger.segment_names_seen()
    );
}

#[test]
fn a_repeated_link_local_multicast_packet_in_a_recycled_buffer_is_another_packet() {
    // The lab flake (flannel-host-gw, full mode): one 31.5 ms
    // `nf.prerouting.-99..veth.egress` segment, 31 % of a run's attributed
    // time. A pod's MLD report crosses the bridge's (br_netfilter)
    // PREROUTING and its buffer is freed without a consume event; the same
    // pod repeats the identical report (same sender, same fingerprint)
    // 31.5 ms later, and the bridge's flood copy of it to another port
    // takes the recycled buffer. Before: one journey with the 31.5 ms
    // segment (fingerprint, address and the path rules all agreed).
    use HookKind::*;
    use NfHook::*;
    let mut p = PacketMeta::zeroed();
    p.outer.version = 6;
    p.outer.saddr = [
        0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x3c, 0x1f, 0, 0xff, 0xfe, 0, 0, 5,
    ];
    p.outer.daddr = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x16];
    p.outer.payload_len = 36;
    let events = [
        ev(1_000, SKB, POD_A, IF_POD_ETH0, DevXmit, p),
        ev(3_000, SKB, NODE, IF_VETH_A, TcIngress, p),
        nf(5_000, SKB, PreRouting, -201, CtState::None, p),
        nf(5_400, SKB, PreRouting, -199, CtState::None, p),
        nf(5_600, SKB, PreRouting, -101, CtState::None, p),
        nf(5_900, SKB, PreRouting, -99, CtState::None, p),
        ev(31_505_900, SKB, NODE, IF_VETH_B, TcEgress, p),
        ev(31_509_000, SKB, POD_B, IF_POD_ETH0, DevReceive, p),
    ];
    let ledger = run(&events);
    let names = ledger.segment_names_seen();
    assert!(
        names.iter().all(|n| !n.contains("..")),
        "no unnamed segment: {names:?}"
    );
    assert_eq!(ledger.counters.journeys, 2, "{:?}", ledger.counters);
    assert_eq!(ledger.counters.buffer_reuses, 1);
    assert!(names.contains(&"pod.veth.ingress"), "{names:?}");
    // One packet's own hops close together stay one journey, flood copies
    // included (a copy in a new buffer joins by its fingerprint).
    let events = [
        ev(1_000, SKB, POD_A, IF_POD_ETH0, DevXmit, p),
        ev(3_000, SKB, NODE, IF_VETH_A, TcIngress, p),
        nf(5_000, SKB, PreRouting, -201, CtState::None, p),
        nf(5_900, SKB, PreRouting, -99, CtState::None, p),
        ev(9_000, SKB + 0x100, NODE, IF_VETH_B, TcEgress, p),
        ev(12_000, SKB + 0x100, POD_B, IF_POD_ETH0, DevReceive, p),
    ];
    let ledger = run(&events);
    assert_eq!(ledger.counters.journeys, 1, "{:?}", ledger.counters);
}

#[test]
fn a_drop_after_a_header_only_hop_is_a_journey_with_its_location() {
    // Aggregate mode: an unsampled packet's drop arrives as a header-only
    // record of the hop before it, then the drop with its headers.
    use HookKind::*;
    let mut c = Correlator::new(ctx(), CorrelatorOptions::default());
    let p = tcp(ACK, 1, 77);
    let mut skipped = PacketMeta::zeroed();
    skipped.status = ParseStatus::Skipped as u8;
    let mut drop = ev(2_000, SKB, NODE, 0, Drop, p);
    drop.drop_reason = 6;
    c.push(&nf(1_000, SKB, NfHook::Forward, -1, CtState::None, skipped));
    c.push(&drop);
    // A lone drop (no hop before it) and a drop long after its hop are
    // only counted.
    let mut lone = ev(3_000, SKB + 0x100, NODE, 0, Drop, p);
    lone.drop_reason = 6;
    c.push(&lone);
    c.push(&nf(
        4_000,
        SKB + 0x200,
        NfHook::Forward,
        -1,
        CtState::None,
        skipped,
    ));
    let mut late = ev(4_000 + 10_000_000_000, SKB + 0x200, NODE, 0, Drop, p);
    late.drop_reason = 6;
    c.push(&late);
    // The same buffer again with an identical packet (another CPU's
    // datagram, the same fingerprint): the first journey is over, the
    // second drop has its own hop before it.
    c.push(&nf(
        3_000_000,
        SKB,
        NfHook::Forward,
        -1,
        CtState::None,
        skipped,
    ));
    let mut again = ev(3_001_000, SKB, NODE, 0, Drop, p);
    again.drop_reason = 6;
    c.push(&again);
    let ledger = c.finish();
    let records = &ledger.drop_records[&("NETFILTER_DROP".to_owned(), "nf.forward.-1".to_owned())];
    assert_eq!(records.count, 2, "{:?}", ledger.drop_records.keys());
    assert_eq!(records.records[0].flow.dst, "10.96.0.10:80");
    assert_eq!(ledger.drop_records.len(), 1);
    assert_eq!(
        ledger.segment_names_seen(),
        vec!["netfilter.forward.filter"]
    );
}

#[test]
fn every_drop_is_recorded_with_its_flow_bounded_per_reason_and_location() {
    use HookKind::*;
    let mut c = Correlator::new(ctx(), CorrelatorOptions::default());
    // 150 ICMP "fragmentation needed" (MTU 1450) dropped in the filter
    // band of FORWARD, 5 TCP packets dropped on the pod veth.
    for i in 0..150u64 {
        let mut p = tcp(ACK, 1, 1000 + i as u16);
        p.outer.l4_proto = hoptrace_common::packet::IPPROTO_ICMP;
        p.outer.tcp_flags = 3;
        p.outer.icmp_code = 4;
        p.outer.dport = 1450;
        let skb = SKB + 0x1000 * i;
        let t = 1_000_000 * i;
        let mut drop = ev(t + 2_000, skb, NODE, 0, Drop, p);
        drop.drop_reason = 6;
        drop.skb_len = 576;
        for e in [
            ev(t, skb, NODE, IF_UPLINK, TcIngress, p),
            nf(t + 1_000, skb, NfHook::Forward, -1, CtState::Established, p),
            drop,
        ] {
            c.push(&e);
        }
    }
    for i in 0..5u64 {
        let p = tcp(ACK, 7, 1 + i as u16);
        let skb = 0x5000_0000 + 0x1000 * i;
        let t = 500_000_000 + 1_000_000 * i;
        let mut drop = ev(t + 1_000, skb, NODE, IF_VETH_A, Drop, p);
        drop.drop_reason = 2;
        drop.skb_len = 1500;
        c.push(&ev(t, skb, NODE, IF_VETH_A, TcIngress, p));
        c.push(&drop);
    }
    let ledger = c.finish();
    let icmp = &ledger.drop_records[&("NETFILTER_DROP".to_owned(), "nf.forward.-1".to_owned())];
    assert_eq!(
        (icmp.count, icmp.omitted, icmp.records.len()),
        (150, 50, 100)
    );
    let first = &icmp.records[0];
    assert_eq!(first.len_bytes, 576);
    assert_eq!(first.flow.proto, "icmp");
    let info = first.flow.icmp.as_ref().expect("icmp info");
    assert_eq!(
        (info.kind, info.code, info.name.as_str(), info.mtu),
        (3, 4, "fragmentation-needed", Some(1450))
    );
    let tcp_drops = &ledger.drop_records[&("NOT_SPECIFIED".to_owned(), "veth.ingress".to_owned())];
    assert_eq!((tcp_drops.count, tcp_drops.omitted), (5, 0));
    assert_eq!(tcp_drops.records[4].flow.dst, "10.96.0.10:80");
    assert!(tcp_drops.records[0].flow.icmp.is_none());
    // Every ICMP journey is counted by type and code, fast or not.
    let frag = &ledger.icmp[&(
        hoptrace_common::packet::IPPROTO_ICMP,
        3,
        4,
        Direction::Ingress,
    )];
    assert_eq!(frag.count, 150);
    assert_eq!(frag.icmp.name, "fragmentation-needed");
    assert_eq!(frag.icmp.mtu, Some(1450));
    // The drop in kube-proxy's filter band is kube-proxy's time.
    let seg = ledger
        .segment_names
        .iter()
        .find(|s| s.name == "netfilter.forward.filter")
        .expect("named");
    assert_eq!(seg.category, Category::KubeProxy);
}

#[test]
fn segment_rows_keep_packet_lengths() {
    use HookKind::*;
    let mut c = Correlator::new(ctx(), CorrelatorOptions::default());
    for (i, len) in [100u32, 1500, 9000].into_iter().enumerate() {
        let p = tcp(ACK, 3, 10 + i as u16);
        let skb = SKB + 0x1000 * i as u64;
        let t = 1_000_000 * (i as u64 + 1);
        let mut a = ev(t, skb, NODE, IF_UPLINK, DevReceive, p);
        a.skb_len = len;
        let b = ev(t + 500, skb, NODE, IF_UPLINK, TcIngress, p);
        c.push(&a);
        c.push(&b);
    }
    let ledger = c.finish();
    let row = ledger
        .segment("tc.ingress", Direction::Ingress, ConnState::Established)
        .expect("tc.ingress row");
    assert_eq!(row.len_hist.len(), 3);
    assert_eq!(row.len_hist.value_at_quantile(0.5), 1500);
    assert!(row.len_hist.max() >= 9000 && row.len_hist.max() < 9100);
}

#[test]
fn a_receive_long_after_a_lower_device_receive_is_another_frame() {
    // cilium-like: a frame received on cilium_host (role Other), then 16 ms
    // later a frame with the same fingerprint from the wire in the same
    // buffer. Before: one journey with `dev.ingress..uplink.ingress`.
    use HookKind::*;
    let p = tcp(ACK, 11, 4);
    let mut ctx = ctx();
    ctx.devices.push(crate::node::DeviceInfo {
        netns_ino: NODE,
        ifindex: 77,
        name: "cilium_host".into(),
        role: DeviceRole::Other,
        queues: false,
    });
    let mut c = Correlator::new(ctx, CorrelatorOptions::default());
    for e in [
        ev(1_000, SKB, NODE, 77, TcIngress, p),
        ev(16_000_000, SKB, NODE, IF_UPLINK, TcIngress, p),
        nf(16_001_000, SKB, NfHook::PreRouting, -201, CtState::None, p),
    ] {
        c.push(&e);
    }
    let ledger = c.finish();
    assert_eq!(ledger.counters.journeys, 2, "{:?}", ledger.counters);
    assert!(
        ledger
            .segment_names_seen()
            .iter()
            .all(|n| !n.contains("..")),
        "{:?}",
        ledger.segment_names_seen()
    );
}

#[test]
fn a_packet_handed_to_one_pod_is_not_handed_to_another() {
    // flannel-host-gw: a packet to pod A's veth, then 28 ms later a packet
    // with the same fingerprint in the same buffer to pod B's veth. Before:
    // one journey with `veth.egress..veth.egress`.
    use HookKind::*;
    let p = tcp(ACK, 12, 5);
    let events = [
        ev(1_000, SKB, NODE, IF_UPLINK, TcIngress, p),
        ev(3_000, SKB, NODE, IF_VETH_A, TcEgress, p),
        ev(28_000_000, SKB, NODE, IF_VETH_B, TcEgress, p),
    ];
    let ledger = run(&events);
    assert_eq!(ledger.counters.journeys, 2, "{:?}", ledger.counters);
    assert!(
        ledger
            .segment_names_seen()
            .iter()
            .all(|n| !n.contains("..")),
        "{:?}",
        ledger.segment_names_seen()
    );
}

/// Issue 9: a packet that waits for its neighbour after POSTROUTING keeps
/// its journey over seconds, through idle flushes; the drop that ends the
/// wait is its last hop, the wait is `ip.output`.
#[test]
fn a_packet_waiting_for_its_neighbour_keeps_its_journey() {
    use CtState::New;
    use HookKind::*;
    use NfHook::*;
    let p = tcp(SYN, 1, 1);
    let mut c = Correlator::new(ctx(), CorrelatorOptions::default());
    c.push(&ev(1_000, SKB, NODE, IF_VETH_A, TcIngress, p));
    c.push(&nf(2_000, SKB, Forward, 1, New, p));
    c.push(&nf(3_000, SKB, PostRouting, 101, New, p));
    // One second, then three, of event time without a hop.
    c.flush_idle(1_000_000_000);
    c.flush_idle(3_000_000_000);
    assert_eq!(c.in_flight(), 1, "the waiting journey is kept");
    let mut drop = ev(3_000_003_000, SKB, NODE, IF_UPLINK, Drop, p);
    drop.drop_reason = 2;
    c.push(&drop);
    let ledger = c.finish();
    let wait = ledger
        .segment("ip.output", Direction::Egress, ConnState::New)
        .expect("the wait is ip.output");
    assert_eq!(wait.hist.len(), 1);
    assert_eq!(ledger.counters.queued_journeys, 1);
    assert_eq!(ledger.counters.journeys, 1);
    assert!(
        ledger.segment_names.iter().all(|s| !s.name.contains("..")),
        "{:?}",
        ledger.segment_names
    );
}

/// Without a queue in front, 50 ms without a hop still ends a journey.
#[test]
fn a_journey_not_in_a_queue_still_goes_idle() {
    use HookKind::*;
    let p = tcp(ACK, 1, 1);
    let mut c = Correlator::new(ctx(), CorrelatorOptions::default());
    c.push(&ev(1_000, SKB, NODE, IF_VETH_A, TcIngress, p));
    c.push(&nf(2_000, SKB, NfHook::PreRouting, -201, CtState::None, p));
    c.flush_idle(1_000_000_000);
    assert_eq!(c.in_flight(), 0);
}

/// Issue 9: a dropped packet takes no further hop. An identical packet
/// (same fingerprint: unconnected UDP, IP ID 0) sent right after, in
/// another buffer, starts its own journey; a drop older than a journey's
/// newest hop (the buffer's previous packet) does not end it.
#[test]
fn a_dropped_journey_takes_no_further_hop() {
    use HookKind::*;
    use NfHook::*;
    let mut p = tcp(ACK, 1, 0);
    p.outer.l4_proto = IPPROTO_UDP;
    let mut c = Correlator::new(ctx(), CorrelatorOptions::default());
    let mut drop = ev(3_000, SKB, NODE, 0, Drop, p);
    drop.drop_reason = 6;
    c.push(&ev(1_000, SKB, POD_A, IF_POD_ETH0, DevXmit, p));
    c.push(&nf(2_000, SKB, Forward, -1, CtState::New, p));
    c.push(&drop);
    // The next datagram, 100 µs later, in another buffer.
    c.push(&ev(100_000, SKB + 0x100, POD_A, IF_POD_ETH0, DevXmit, p));
    c.push(&nf(101_000, SKB + 0x100, Forward, -1, CtState::New, p));
    // A drop of the buffer's previous user, delivered late.
    let mut late = ev(50_000, SKB + 0x100, NODE, 0, Drop, p);
    late.drop_reason = 6;
    c.push(&late);
    let mut drop2 = ev(102_000, SKB + 0x100, NODE, 0, Drop, p);
    drop2.drop_reason = 6;
    c.push(&drop2);
    let ledger = c.finish();
    assert_eq!(ledger.counters.journeys, 2, "{:?}", ledger.counters);
    assert_eq!(ledger.counters.stale_drops, 1);
    assert!(
        ledger
            .segment_names
            .iter()
            .all(|s| !s.name.starts_with("drop..")),
        "{:?}",
        ledger.segment_names
    );
    // A drop inside the filter band is that band's time (issue 9).
    let to_drop = ledger
        .segment(
            "netfilter.forward.filter",
            Direction::Egress,
            ConnState::New,
        )
        .expect("both end at the drop");
    assert_eq!(to_drop.hist.len(), 2);
}

/// Issue 9: a datagram in two fragments from pod A, reassembled by
/// conntrack at PREROUTING in the second fragment's buffer, DNATed: one
/// egress journey from the first fragment's first hop, `ip.reassembly`
/// between the first fragment's last hop and the reassembled packet's
/// first, and the second fragment's journey merged into it.
#[test]
fn fragments_and_their_reassembled_datagram_are_one_journey() {
    use CtState::{New, None as NoCt};
    use HookKind::*;
    use NfHook::*;
    use hoptrace_common::packet::{FRAGMENT_FIRST, FRAGMENT_LATER};
    let mut whole = PacketMeta::zeroed();
    whole.outer = l3([10, 244, 0, 5], 40000, [10, 96, 0, 10], 53, IPPROTO_UDP);
    whole.outer.ip_id = 77;
    whole.outer.payload_len = 3000;
    whole.outer.payload_head = *b"datagram";
    let mut first = whole;
    first.outer.fragment = FRAGMENT_FIRST;
    let mut later = whole;
    later.outer.fragment = FRAGMENT_LATER;
    later.outer.sport = 0;
    later.outer.dport = 0;
    later.outer.payload_len = 1560;
    later.outer.payload_head = [0; 8];
    let skb2 = SKB + 0x800;
    let mut c = Correlator::new(ctx(), CorrelatorOptions::default());
    c.push(&ev(1_000, SKB, NODE, IF_VETH_A, TcIngress, first));
    c.push(&nf(2_000, SKB, PreRouting, -401, NoCt, first));
    c.push(&ev(3_000, skb2, NODE, IF_VETH_A, TcIngress, later));
    c.push(&nf(4_000, skb2, PreRouting, -401, NoCt, later));
    // The idle timeout passes for neither: both wait for reassembly.
    c.flush_idle(200_000_000);
    assert_eq!(c.in_flight(), 2);
    let t = 200_000_000;
    c.push(&nf(t + 70_000, skb2, PreRouting, -201, NoCt, whole));
    c.push(&nf(t + 70_500, skb2, PreRouting, -199, New, whole));
    c.push(&nf(t + 70_600, skb2, PreRouting, -101, New, whole));
    c.push(&nf(t + 72_600, skb2, PreRouting, -99, New, dnat(whole)));
    c.push(&nf(t + 73_000, skb2, Forward, -1, New, dnat(whole)));
    c.push(&nf(t + 74_000, skb2, PostRouting, 101, New, dnat(whole)));
    // Sent on in two fragments again: the first continues the journey,
    // the later one (the first fragment's buffer) is a copy of it.
    let mut out_first = dnat(whole);
    out_first.outer.fragment = FRAGMENT_FIRST;
    let mut out_later = dnat(later);
    out_later.outer.dport = 0;
    c.push(&ev(t + 75_000, skb2, NODE, IF_VXLAN, TcEgress, out_first));
    c.push(&ev(t + 75_200, SKB, NODE, IF_VXLAN, TcEgress, out_later));
    let ledger = c.finish();
    assert_eq!(ledger.counters.journeys, 1, "{:?}", ledger.counters);
    assert_eq!(ledger.counters.fragments_merged, 2);
    let reasm = ledger
        .segment("ip.reassembly", Direction::Egress, ConnState::New)
        .expect("ip.reassembly, egress, new");
    assert_eq!(reasm.total_ns, u128::from(t + 70_000 - 2_000));
    let e2e = ledger
        .end_to_end
        .get(&(Direction::Egress, ConnState::New))
        .expect("one egress journey");
    assert_eq!(e2e.hist.len(), 1);
    assert!(
        ledger.segment_names.iter().all(|s| !s.name.contains("..")),
        "{:?}",
        ledger.segment_names
    );
}

/// Issue 9: `--ip 10.96.0.0/12` is decided once per journey from its first
/// parsed hop: the request keeps its hops after DNAT, the reply (backend
/// to pod, no ClusterIP until the reverse NAT) is reported as the rest of
/// the connection, an unrelated journey is followed but not reported.
#[test]
fn the_filter_follows_the_connection_through_nat() {
    use CtState::New;
    use HookKind::*;
    use NfHook::*;
    let opts = CorrelatorOptions {
        filter: FlowFilter::new(Some("10.96.0.0/12".parse().unwrap()), None),
        ..CorrelatorOptions::default()
    };
    let mut c = Correlator::new(ctx(), opts);
    let syn = tcp(SYN, 1, 1);
    c.push(&ev(1_000, SKB, NODE, IF_VETH_A, TcIngress, syn));
    c.push(&nf(2_000, SKB, PreRouting, -101, New, syn));
    c.push(&nf(3_000, SKB, PreRouting, -99, New, dnat(syn)));
    c.push(&nf(4_000, SKB, Forward, -1, New, dnat(syn)));
    // The reply from the backend, before the reverse NAT.
    let mut reply = PacketMeta::zeroed();
    reply.outer = l3([10, 244, 1, 7], 8080, [10, 244, 0, 5], 40000, IPPROTO_TCP);
    reply.outer.tcp_flags = SYN | ACK;
    reply.outer.ip_id = 9;
    let skb2 = SKB + 0x1000;
    c.push(&ev(100_000, skb2, NODE, IF_UPLINK, TcIngress, reply));
    c.push(&nf(
        101_000,
        skb2,
        PreRouting,
        -201,
        CtState::Established,
        reply,
    ));
    // Unrelated: pod A to another pod, never a ClusterIP.
    let mut other = PacketMeta::zeroed();
    other.outer = l3([10, 244, 0, 5], 41000, [10, 244, 0, 9], 22, IPPROTO_TCP);
    other.outer.ip_id = 5;
    let skb3 = SKB + 0x2000;
    c.push(&ev(200_000, skb3, NODE, IF_VETH_A, TcIngress, other));
    c.push(&nf(201_000, skb3, PreRouting, -201, New, other));
    let ledger = c.finish();
    assert_eq!(ledger.counters.journeys, 2, "{:?}", ledger.counters);
    assert_eq!(ledger.counters.filtered_journeys, 1);
    assert!(
        ledger
            .segment("routing", Direction::Egress, ConnState::New)
            .is_some(),
        "the request keeps its hops after DNAT"
    );
    assert!(
        ledger
            .segment("ip.receive", Direction::Ingress, ConnState::Established)
            .is_some(),
        "the reply is reported, ingress"
    );
}
