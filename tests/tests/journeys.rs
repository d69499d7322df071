//! Issue 9, "Journeys that stay whole": each class with its smallest input
//! on the namespace lab, checked by segment, category, direction,
//! conn_state and drop location.

use std::{net::SocketAddr, path::PathBuf};

use hoptrace_core::{
    correlate::FlowFilter,
    report::{self, Report},
    session::{Session, SessionOptions},
};
use hoptrace_lab::{
    kubeproxy::Protocol,
    topology::{Datapath, KubeProxyMode, Lab, LabSpec},
};
use tests::{
    can_run_as_root, http_requests_new_connection,
    modes::{Mode, ModeLedger, Row},
    start_backend,
};

fn spec(prefix: &str) -> LabSpec {
    LabSpec {
        prefix: prefix.to_owned(),
        nodes: 2,
        pods_per_node: 2,
        datapath: Datapath::FlannelVxlan,
        kube_proxy: KubeProxyMode::Iptables,
        services: 0,
    }
}

fn session_options(netns: &str) -> SessionOptions {
    let mut opts = SessionOptions::new();
    opts.netns = Some(PathBuf::from("/run/netns").join(netns));
    opts
}

fn dump(name: &str, report: &Report) {
    eprintln!(
        "==== {name}\n{}",
        hoptrace_core::report::render_table(report)
    );
}

fn count(report: &Report, segment: &str, direction: &str, conn_state: Option<&str>) -> u64 {
    report
        .segments
        .iter()
        .filter(|s| {
            s.segment == segment
                && s.direction.name() == direction
                && conn_state.is_none_or(|c| s.conn_state.name() == c)
        })
        .map(|s| s.stats.count)
        .sum()
}

/// `trace --ip 10.96.0.0/12` while a pod opens 20 TCP connections to the
/// ClusterIP: every request is followed through DNAT into the tunnel, every
/// reply is `ingress` from its first hop, nothing is `local`, no segment
/// joins unrelated packets; connections straight to the backend's pod IP
/// are not reported.
#[test]
fn filter_follows_the_connection_through_dnat() {
    if !can_run_as_root("filter_follows_the_connection_through_dnat") {
        return;
    }
    const CONNECTIONS: usize = 20;
    let prefix = format!("ht-jf{}-", std::process::id() % 1000);
    let lab = Lab::build(&spec(&prefix)).expect("build lab");
    let service = lab.service();
    let backend = &service.backends[0];
    let _server = start_backend(&backend.netns);
    let target: SocketAddr = service
        .connect_addr(Protocol::Tcp)
        .expect("tcp service")
        .into();
    let direct = SocketAddr::from((backend.ip, 8080));
    let client = lab.client_pod().netns.clone();
    assert_eq!(
        http_requests_new_connection(&client, target, 3),
        3,
        "warm-up"
    );
    let mut opts = session_options(&lab.nodes()[0].netns);
    opts.correlator.filter = FlowFilter::new(Some("10.96.0.0/12".parse().unwrap()), None);
    let session = Session::start(&opts).expect("session");
    let ok = http_requests_new_connection(&client, target, CONNECTIONS);
    let ok_direct = http_requests_new_connection(&client, direct, 5);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let r = report::finish(session, "node-a".into(), serde_json::Value::Null).expect("finish");
    lab.teardown().expect("teardown");
    dump("node A, --ip 10.96.0.0/12", &r);
    assert_eq!(ok, CONNECTIONS, "every request answered");
    assert_eq!(ok_direct, 5, "every direct request answered");
    let n = CONNECTIONS as u64;
    // The SYN: before DNAT (matches) and after it (the backend's address)
    // in one journey, conn_state new.
    for segment in [
        "netfilter.prerouting.dnat",
        "netfilter.forward.filter",
        "tunnel.vxlan.encap",
    ] {
        let c = count(&r, segment, "egress", Some("new"));
        assert!(c >= n, "{segment} egress new: {c} < {n}");
    }
    // Replies (SYN-ACK, data, FIN) arrive through the tunnel: ingress from
    // their first hop, established, decapsulated then reverse-NATed.
    for segment in ["tunnel.vxlan.decap", "netfilter.prerouting.conntrack"] {
        let c = count(&r, segment, "ingress", Some("established"));
        assert!(c >= n, "{segment} ingress established: {c} < {n}");
    }
    let local: Vec<&str> = r
        .segments
        .iter()
        .filter(|s| s.direction.name() == "local")
        .map(|s| s.segment.as_str())
        .collect();
    assert!(
        local.is_empty(),
        "no journey of the connection is local: {local:?}"
    );
    // Categories follow: kube-proxy for new connections, encapsulation.
    assert!(
        r.categories
            .iter()
            .any(|c| c.category.name() == "kube-proxy"
                && c.direction == "egress"
                && c.conn_state == "new"
                && c.stats.count >= n)
    );
    // No segment joins two packets: nothing near the 43 ms of the bug.
    for s in &r.segments {
        assert!(
            s.stats.max_us < 30_000.0,
            "{} {} {}: max {} us",
            s.segment,
            s.direction.name(),
            s.conn_state.name(),
            s.stats.max_us
        );
    }
    // The 5 direct connections (about 10 packets each way) were followed
    // but not reported.
    assert!(
        r.counters.filtered_journeys >= 5 * 6,
        "filtered journeys: {}",
        r.counters.filtered_journeys
    );
    // Only the service's connections: at most ~12 packets per connection
    // (SYN, ACK, request, FINs, replies) plus warm-up leftovers.
    let egress_new = count(&r, "tunnel.vxlan.encap", "egress", Some("new"));
    assert!(
        egress_new <= 2 * n,
        "direct connections leaked into the report: {egress_new} new encaps"
    );
}

/// One journey as the observer saw it, owned.
#[derive(Clone, Debug)]
struct Seen {
    direction: String,
    conn_state: String,
    /// (segment, category, ns) in hop order.
    segments: Vec<(String, String, u64)>,
    /// (reason, location).
    drop: Option<(String, String)>,
    /// Protocol and ports of the first parsed hop.
    flow: (u8, u16, u16),
}

#[derive(Default)]
struct Collect(std::sync::Mutex<Vec<Seen>>);

impl hoptrace_core::correlate::JourneyObserver for Collect {
    fn journey(&self, j: &hoptrace_core::correlate::JourneySummary<'_>) {
        let seen = Seen {
            direction: j.direction.name().to_owned(),
            conn_state: j.conn_state.name().to_owned(),
            segments: j
                .named_segments()
                .map(|(s, ns)| (s.name.clone(), s.category.name().to_owned(), ns))
                .collect(),
            drop: j.drop.map(|(r, l)| (r.to_owned(), l.to_owned())),
            flow: (
                j.first_flow.l4_proto,
                j.first_flow.sport,
                j.first_flow.dport,
            ),
        };
        self.0.lock().unwrap().push(seen);
    }
}

/// Sends `n` identical UDP datagrams (unconnected socket: IP ID 0, so one
/// fingerprint) from inside `netns` to `to`, back to back.
fn identical_datagrams(netns: &str, to: SocketAddr, n: usize) {
    hoptrace_lab::netns::with_netns(netns, || {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        for _ in 0..n {
            let _ = sock.send_to(b"hoptrace identical datagram", to);
        }
    })
    .expect("enter pod netns");
}

fn in_node(netns: &str, argv: &[&str]) {
    let mut full = vec!["ip", "netns", "exec", netns];
    full.extend_from_slice(argv);
    tests::sh(&full);
}

/// Sends `n` identical UDP datagrams (unconnected sockets: IP ID 0, so one
/// fingerprint) from inside `netns` to `to`, alternately from two threads
/// pinned to CPUs 0 and 1, 200 µs apart: consecutive datagrams live in
/// buffers of different CPUs (the slab is per CPU), so an identical packet
/// in another buffer follows each dropped one.
fn identical_datagrams_two_cpus(netns: &str, to: SocketAddr, n: usize) {
    use std::time::{Duration, Instant};
    let socks = hoptrace_lab::netns::with_netns(netns, || {
        [0, 1].map(|_| std::net::UdpSocket::bind("0.0.0.0:0").expect("bind"))
    })
    .expect("enter pod netns");
    let start = Instant::now() + Duration::from_millis(20);
    std::thread::scope(|s| {
        for (cpu, sock) in socks.iter().enumerate() {
            s.spawn(move || {
                let mut set = nix::sched::CpuSet::new();
                set.set(cpu).expect("cpu set");
                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                    .expect("pin thread");
                for k in (cpu..n).step_by(2) {
                    let at = start + Duration::from_micros(200 * k as u64);
                    while Instant::now() < at {
                        std::hint::spin_loop();
                    }
                    let _ = sock.send_to(b"hoptrace identical datagram", to);
                }
            });
        }
    });
}

/// A pod sends identical datagrams that the node's filter table drops, from
/// two CPUs: each is its own journey that ends at the drop (location
/// `nf.forward.-1`, egress, new), and no hop follows a drop (before:
/// `drop..pod.xmit`, the next identical datagram joined the dropped one).
#[test]
fn a_dropped_packet_takes_no_further_hop() {
    if !can_run_as_root("a_dropped_packet_takes_no_further_hop") {
        return;
    }
    let (r, seen) = dropped_datagrams(Mode::Full, "jd");
    for j in drops_end_in_the_filter_band(&r, &seen) {
        assert_eq!(j.direction, "egress", "{j:?}");
        assert_eq!(j.conn_state, "new", "{j:?}");
        // One packet: it crossed the pod's veth once.
        let veth = j
            .segments
            .iter()
            .filter(|(s, _, _)| s == "pod.veth.egress")
            .count();
        assert!(veth <= 1, "two packets joined: {j:?}");
    }
}

/// The same in aggregate mode (no journey sampled): the kernel's
/// histograms have no hop after a drop, the segment that ends at each drop
/// is kube-proxy's filter band of egress, new journeys (one per datagram,
/// no two joined), and each drop still reaches userspace through the ring
/// buffer with the hop before it: its location (`nf.forward.-1`).
#[test]
fn a_dropped_packet_takes_no_further_hop_aggregate() {
    if !can_run_as_root("a_dropped_packet_takes_no_further_hop_aggregate") {
        return;
    }
    let (r, seen) = dropped_datagrams(Mode::Aggregate, "jda");
    drops_end_in_the_filter_band(&r, &seen);
    let band: Vec<&Row> = r
        .rows
        .iter()
        .filter(|r| r.segment == "netfilter.forward.filter" && r.direction == "egress")
        .collect();
    let new: u64 = band
        .iter()
        .filter(|r| r.conn_state == "new")
        .map(|r| r.count)
        .sum();
    assert!(
        new >= (DROPPED * 9 / 10) as u64,
        "{new} of {DROPPED} datagrams end in the filter band as egress, new: {band:?}"
    );
    assert!(band.iter().all(|r| r.category == "kube-proxy"), "{band:?}");
    // One packet per journey: no more pod veth crossings than datagrams
    // (and the 30 broadcasts' copies).
    let veth = r.count("pod.veth.egress", Some("egress"));
    assert!(
        veth <= (DROPPED + 30 + 10) as u64,
        "{veth} pod veth crossings"
    );
}

/// Checks what both modes must show of [`dropped_datagrams`]: no hop after
/// a drop in the ledger, and at least 90 % of the datagrams reaching the
/// correlator as journeys that end in the filter drop (location
/// `nf.forward.-1`), whose last segment is the band the drop happened in
/// (KUBE-FORWARD's filter band: kube-proxy). Returns those journeys.
fn drops_end_in_the_filter_band<'a>(r: &ModeLedger, seen: &'a [Seen]) -> Vec<&'a Seen> {
    let after_drop: Vec<&str> = r
        .rows
        .iter()
        .map(|s| s.segment.as_str())
        .filter(|s| s.starts_with("drop.."))
        .collect();
    assert!(after_drop.is_empty(), "hops after a drop: {after_drop:?}");
    let dropped: Vec<&Seen> = seen.iter().filter(|j| filter_drop(j)).collect();
    assert!(
        dropped.len() >= DROPPED * 9 / 10,
        "{} of {DROPPED} journeys end at the filter drop: {:?}",
        dropped.len(),
        seen.iter().map(|j| &j.drop).collect::<Vec<_>>()
    );
    for j in &dropped {
        let (last, category, _) = j.segments.last().expect("segments");
        assert_eq!(
            (last.as_str(), category.as_str()),
            ("netfilter.forward.filter", "kube-proxy"),
            "the drop is the last hop: {j:?}"
        );
    }
    dropped
}

/// Datagrams of [`dropped_datagrams`].
const DROPPED: usize = 40;

/// A journey that ended at the node's filter drop, `nf.forward.-1`.
fn filter_drop(j: &Seen) -> bool {
    j.drop.as_ref().is_some_and(|(reason, location)| {
        reason.eq_ignore_ascii_case("netfilter_drop") && location == "nf.forward.-1"
    })
}

/// Node A traced in `mode` while a pod sends [`DROPPED`] identical
/// datagrams that the node's FORWARD chain drops, from two CPUs, then 30
/// broadcasts on the pod subnet; the ledger and the journeys the
/// correlator saw.
fn dropped_datagrams(mode: Mode, tag: &str) -> (ModeLedger, Vec<Seen>) {
    let prefix = format!("ht-{tag}{}-", std::process::id() % 1000);
    let lab = Lab::build(&spec(&prefix)).expect("build lab");
    let node = lab.nodes()[0].netns.clone();
    let client = lab.client_pod().netns.clone();
    in_node(
        &node,
        &[
            "iptables",
            "-I",
            "FORWARD",
            "-d",
            "10.77.0.99",
            "-p",
            "udp",
            "-j",
            "DROP",
        ],
    );
    let observer = std::sync::Arc::new(Collect::default());
    let mut opts = mode.options(&node);
    opts.observer = Some(observer.clone());
    let session = Session::start(&opts).expect("session");
    identical_datagrams_two_cpus(&client, SocketAddr::from(([10, 77, 0, 99], 9999)), DROPPED);
    // Broadcasts on the pod subnet: the bridge floods copies (clones) to
    // the other pod and to the node, and nobody listens: each copy is
    // dropped, the first drop must not take the other copy's hops.
    let (net, len) = lab.nodes()[0].pod_cidr;
    assert_eq!(len, 24, "a /24 pod CIDR");
    let o = net.octets();
    let broadcast = SocketAddr::from(([o[0], o[1], o[2], 255], 9998));
    hoptrace_lab::netns::with_netns(&client, || {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        sock.set_broadcast(true).expect("SO_BROADCAST");
        for i in 0..30 {
            sock.send_to(format!("hoptrace broadcast {i}").as_bytes(), broadcast)
                .expect("broadcast");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    })
    .expect("enter pod netns");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let r = ModeLedger::finish(session, mode, "node-a");
    lab.teardown().expect("teardown");
    r.dump("node A, dropped datagrams and broadcasts");
    let seen = observer.0.lock().unwrap().clone();
    (r, seen)
}

/// A pod sends one datagram to an on-link address nobody answers: it waits
/// after POSTROUTING while the node resolves the neighbour (over the 50 ms
/// idle timeout), then is dropped. One journey: the wait is `ip.output`
/// (kernel-other), egress, new, and the drop's location is the last
/// POSTROUTING hop.
#[test]
fn a_packet_waiting_for_its_neighbour_keeps_its_journey() {
    if !can_run_as_root("a_packet_waiting_for_its_neighbour_keeps_its_journey") {
        return;
    }
    let prefix = format!("ht-jn{}-", std::process::id() % 1000);
    let lab = Lab::build(&spec(&prefix)).expect("build lab");
    let node_info = lab.nodes()[0].clone();
    let node = node_info.netns.clone();
    let uplink = node_info.uplink_device.clone();
    let client = lab.client_pod().netns.clone();
    in_node(
        &node,
        &["ip", "route", "add", "10.77.1.0/24", "dev", &uplink],
    );
    for (key, value) in [("mcast_solicit", "1"), ("retrans_time_ms", "400")] {
        in_node(
            &node,
            &[
                "sysctl",
                "-qw",
                &format!("net.ipv4.neigh.{uplink}.{key}={value}"),
            ],
        );
    }
    let observer = std::sync::Arc::new(Collect::default());
    let mut opts = session_options(&node);
    opts.observer = Some(observer.clone());
    let session = Session::start(&opts).expect("session");
    identical_datagrams(&client, SocketAddr::from(([10, 77, 1, 99], 9999)), 1);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let r = report::finish(session, "node-a".into(), serde_json::Value::Null).expect("finish");
    lab.teardown().expect("teardown");
    dump("node A, unresolved neighbour", &r);
    let seen = observer.0.lock().unwrap().clone();
    // New veths also carry IPv6 autoconfiguration, dropped here and there:
    // only the neighbour's drop is ours.
    let waited: Vec<&Seen> = seen
        .iter()
        .filter(|j| {
            j.drop
                .as_ref()
                .is_some_and(|(reason, _)| reason.to_ascii_lowercase().starts_with("neigh"))
        })
        .collect();
    assert_eq!(waited.len(), 1, "one journey ends in the drop: {seen:#?}");
    let j = waited[0];
    let (reason, location) = j.drop.clone().unwrap();
    assert!(reason.to_ascii_lowercase().starts_with("neigh"), "{reason}");
    assert!(location.starts_with("nf.postrouting."), "{location}");
    assert_eq!(j.direction, "egress", "{j:?}");
    assert_eq!(j.conn_state, "new", "{j:?}");
    assert!(
        j.segments.iter().any(|(s, _, _)| s == "pod.veth.egress"),
        "the journey starts in the pod: {j:?}"
    );
    let (last, category, wait_ns) = j.segments.last().expect("segments").clone();
    assert_eq!(last, "ip.output", "{j:?}");
    assert_eq!(category, "kernel-other");
    assert!(
        wait_ns > 300_000_000,
        "the neighbour wait (about 400 ms) is in the journey: {wait_ns} ns"
    );
    assert!(r.counters.queued_journeys >= 1);
}

/// A pod sends 3000-byte UDP datagrams to the ClusterIP: its veth (MTU
/// below 3000) carries each in fragments, conntrack reassembles them at
/// PREROUTING on the node before DNAT, and the tunnel sends it on in
/// fragments again. Each datagram is one egress journey from its first
/// fragment's first hop, with `ip.reassembly` (kernel-other) before DNAT;
/// no fragment is a journey of its own, no reassembled packet is `local`.
#[test]
fn fragments_and_reassembly_are_one_journey() {
    if !can_run_as_root("fragments_and_reassembly_are_one_journey") {
        return;
    }
    let (r, seen, target) = fragmented_datagrams(Mode::Full, "jr");
    let ours: Vec<&Seen> = seen
        .iter()
        .filter(|j| j.flow.0 == 17 && (j.flow.2 == target.port() || j.flow == (17, 0, 0)))
        .collect();
    for j in &ours {
        eprintln!("{j:?}");
    }
    let reassembled: Vec<&&Seen> = ours
        .iter()
        .filter(|j| j.segments.iter().any(|(s, _, _)| s == "ip.reassembly"))
        .collect();
    assert_eq!(
        reassembled.len(),
        FRAGMENTED,
        "one journey with ip.reassembly per datagram"
    );
    for j in &reassembled {
        assert_eq!(j.direction, "egress", "{j:?}");
        let names: Vec<&str> = j.segments.iter().map(|(s, _, _)| s.as_str()).collect();
        let reasm = names.iter().position(|s| *s == "ip.reassembly").unwrap();
        let dnat = names
            .iter()
            .position(|s| *s == "netfilter.prerouting.dnat")
            .expect("DNAT in the journey");
        assert!(reasm < dnat, "reassembly before DNAT: {names:?}");
        assert!(names.contains(&"tunnel.vxlan.encap"), "{names:?}");
        assert!(
            names.first().is_some_and(|s| s.starts_with("pod.veth")),
            "starts in the pod: {names:?}"
        );
        let (_, category, _) = &j.segments[reasm];
        assert_eq!(category, "kernel-other");
    }
    assert!(
        reassembled.iter().any(|j| j.conn_state == "new"),
        "the first datagram is new"
    );
    // Nothing else of these datagrams: no fragment alone, nothing local.
    assert_eq!(ours.len(), FRAGMENTED, "{ours:#?}");
    assert!(r.report.counters.fragments_merged >= FRAGMENTED as u64);
}

/// Datagrams of [`fragmented_datagrams`].
const FRAGMENTED: usize = 5;

/// Node A traced in `mode` while a pod sends [`FRAGMENTED`] 3000-byte UDP
/// datagrams to the ClusterIP, 20 ms apart; the ledger, the journeys the
/// correlator saw and the Service's address.
fn fragmented_datagrams(mode: Mode, tag: &str) -> (ModeLedger, Vec<Seen>, SocketAddr) {
    let prefix = format!("ht-{tag}{}-", std::process::id() % 1000);
    let lab = Lab::build(&spec(&prefix)).expect("build lab");
    let service = lab.service();
    let backend = &service.backends[0];
    let _server = start_backend(&backend.netns);
    let target: SocketAddr = service
        .connect_addr(Protocol::Udp)
        .expect("udp service")
        .into();
    let node = lab.nodes()[0].netns.clone();
    let client = lab.client_pod().netns.clone();
    let observer = std::sync::Arc::new(Collect::default());
    let mut opts = mode.options(&node);
    opts.observer = Some(observer.clone());
    let session = Session::start(&opts).expect("session");
    hoptrace_lab::netns::with_netns(&client, || {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        for i in 0..FRAGMENTED {
            let mut payload = vec![b'x'; 3000];
            payload[..8].copy_from_slice(format!("frag{i:04}").as_bytes());
            sock.send_to(&payload, target).expect("send");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    })
    .expect("enter pod netns");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let r = ModeLedger::finish(session, mode, "node-a");
    lab.teardown().expect("teardown");
    r.dump("node A, fragmented datagrams");
    let seen = observer.0.lock().unwrap().clone();
    (r, seen, target)
}

/// Datagrams of [`a_qdisc_wait_is_qdisc_in_both_modes`].
const QUEUED: u32 = 400;

/// Issue 9, "a packet waiting in a kernel queue keeps its journey; the
/// wait is reported", for a qdisc, in both modes: a tbf (230 kbit/s, an
/// 800-byte queue) on node A's uplink while a pod sends 100-byte UDP
/// datagrams at 200/s through the VXLAN tunnel (more than the rate: the
/// queue stays full, each datagram that gets in waits about 28 ms). The
/// wait is node A's `qdisc` segment (kernel-other), egress: several ms per
/// datagram sent, most of the node's attributed time. The
/// kernel's 50 ms idle gap is longer than this wait, so aggregate mode
/// keeps it (a wait past 50 ms it cannot: docs/agent.md).
#[test]
fn a_qdisc_wait_is_qdisc_in_both_modes() {
    if !can_run_as_root("a_qdisc_wait_is_qdisc_in_both_modes") {
        return;
    }
    for (mode, tag) in [(Mode::Full, "jq"), (Mode::Aggregate, "jqa")] {
        let prefix = format!("ht-{tag}{}-", std::process::id() % 1000);
        let lab = Lab::build(&spec(&prefix)).expect("build lab");
        let node = lab.nodes()[0].clone();
        let target: SocketAddr = lab
            .service()
            .connect_addr(Protocol::Udp)
            .expect("udp service")
            .into();
        let client = lab.client_pod().netns.clone();
        in_node(
            &node.netns,
            &[
                "tc",
                "qdisc",
                "replace",
                "dev",
                &node.uplink_device,
                "root",
                "tbf",
                "rate",
                "230kbit",
                "burst",
                "1600",
                "limit",
                "800",
            ],
        );
        let session = Session::start(&mode.options(&node.netns)).expect("session");
        hoptrace_lab::netns::with_netns(&client, || {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
            for i in 0..QUEUED {
                let mut payload = [b'q'; 100];
                payload[..4].copy_from_slice(&i.to_be_bytes());
                let _ = sock.send_to(&payload, target);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        })
        .expect("enter pod netns");
        std::thread::sleep(std::time::Duration::from_millis(300));
        let r = ModeLedger::finish(session, mode, "node-a");
        lab.teardown().expect("teardown");
        r.dump("node A, tbf on the uplink");
        let qdisc: Vec<&Row> = r
            .rows
            .iter()
            .filter(|row| row.segment == "qdisc" && row.direction == "egress")
            .collect();
        let count: u64 = qdisc.iter().map(|row| row.count).sum();
        let p50 = r.p50_us("qdisc", None).unwrap_or(0.0);
        let total: f64 = r.rows.iter().map(|row| row.total_us).sum();
        let waited: f64 = qdisc.iter().map(|row| row.total_us).sum();
        eprintln!(
            "{mode:?}: qdisc egress {count} observations, p50 {p50:.0} µs, {:.0} µs per datagram, {:.1} % of {total:.0} µs",
            waited / f64::from(QUEUED),
            100.0 * waited / total
        );
        assert!(count >= 50, "{mode:?}: the queued datagrams: {qdisc:?}");
        assert!(
            qdisc.iter().all(|row| row.category == "kernel-other"),
            "{qdisc:?}"
        );
        // Per datagram sent, not per observation: full mode sums a
        // journey's qdisc crossings into one, the kernel counts each (two
        // per datagram here, one of them a few µs).
        let per_datagram = waited / f64::from(QUEUED);
        assert!(
            per_datagram > 5_000.0,
            "{mode:?}: the wait is in qdisc: {per_datagram} µs per datagram"
        );
        assert!(
            waited > 0.5 * total,
            "{mode:?}: qdisc holds most of the node's time: {waited} of {total} µs"
        );
    }
}
