//! Issue "Per-hop datapath ledger": follow each packet through veth,
//! netfilter, conntrack, NAT and VXLAN on a two-node namespace lab and check
//! what each node's report attributes. Issue 12: the attribution tests run
//! in both modes (`*_aggregate`: the kernel's histograms alone, no journey
//! sampled) and assert the same segments, directions and categories.

use std::{net::SocketAddr, time::Duration};

use hoptrace_core::session::{Session, SessionOptions};
use hoptrace_lab::{
    kubeproxy::Protocol,
    topology::{Datapath, KubeProxyMode, Lab, LabSpec, TopologyError},
};
use tests::{
    can_run_as_root, http_requests_new_connection,
    modes::{Mode, ModeLedger},
    start_backend,
};

const REQUESTS: usize = 40;

fn spec(prefix: &str, datapath: Datapath, services: u32) -> LabSpec {
    LabSpec {
        prefix: prefix.to_owned(),
        nodes: 2,
        pods_per_node: 2,
        datapath,
        kube_proxy: KubeProxyMode::Iptables,
        services,
    }
}

fn session_on(netns: &str, mode: Mode) -> Session {
    Session::start(&mode.options(netns)).unwrap_or_else(|e| panic!("session on {netns}: {e}"))
}

/// How the two node sessions get their tracepoint events.
#[derive(Clone, Copy, PartialEq)]
enum Tracepoints {
    /// Each session attaches its own (and filters by namespace).
    PerSession,
    /// One set for the kernel, its events handed to the node they belong to.
    Shared,
}

/// Builds the lab, traces both nodes in `mode` while `REQUESTS`
/// new-connection requests go from a pod on node 0 to the ClusterIP,
/// returns both ledgers.
fn run_lab(spec: &LabSpec, requests: usize, mode: Mode) -> (ModeLedger, ModeLedger) {
    run_lab_with(spec, requests, Tracepoints::PerSession, mode)
}

fn run_lab_with(
    spec: &LabSpec,
    requests: usize,
    tracepoints: Tracepoints,
    mode: Mode,
) -> (ModeLedger, ModeLedger) {
    try_run_lab(spec, requests, tracepoints, mode, Duration::ZERO)
        .expect("the lab's datapath is supported")
}

/// [`run_lab_with`], tracing from `quiet` after the warm-up (a fresh lab
/// sends its own packets for a few seconds: IPv6 autoconfiguration, some
/// of it dropped), or `None` (printed) when this kernel cannot build the
/// datapath (calico-ipip without IPIP devices).
fn try_run_lab(
    spec: &LabSpec,
    requests: usize,
    tracepoints: Tracepoints,
    mode: Mode,
    quiet: Duration,
) -> Option<(ModeLedger, ModeLedger)> {
    let lab = match Lab::build(spec) {
        Ok(lab) => lab,
        Err(err @ TopologyError::Unsupported { .. }) => {
            eprintln!("skipping {}: {err}", spec.datapath.as_str());
            return None;
        }
        Err(err) => panic!("build lab: {err}"),
    };
    let service = lab.service();
    let backend = &service.backends[0];
    let _server = start_backend(&backend.netns);
    let target: SocketAddr = service
        .connect_addr(Protocol::Tcp)
        .expect("tcp service")
        .into();
    let client = lab.client_pod().netns.clone();
    // Warm up ARP/neighbours so they do not land in the measurement.
    assert!(
        http_requests_new_connection(&client, target, 3) == 3,
        "warm-up requests failed"
    );
    std::thread::sleep(quiet);
    let nodes = [
        lab.nodes()[0].netns.clone(),
        lab.nodes()[backend.node_index].netns.clone(),
    ];
    let (node_a, node_b) = match tracepoints {
        Tracepoints::PerSession => (session_on(&nodes[0], mode), session_on(&nodes[1], mode)),
        Tracepoints::Shared => {
            let opts: Vec<SessionOptions> = nodes.iter().map(|netns| mode.options(netns)).collect();
            let mut sessions = Session::start_group(&opts).expect("session group");
            let b = sessions.pop().expect("node B session");
            let a = sessions.pop().expect("node A session");
            assert!(!a.attachments.tracepoints.is_empty());
            assert!(b.attachments.tracepoints.is_empty(), "node B shares A's");
            (a, b)
        }
    };
    let ok = http_requests_new_connection(&client, target, requests);
    assert_eq!(ok, requests, "every request answered");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let a = ModeLedger::finish(node_a, mode, "node-a");
    let b = ModeLedger::finish(node_b, mode, "node-b");
    lab.teardown().expect("teardown");
    Some((a, b))
}

#[test]
fn vxlan_clusterip_ledger_across_two_nodes() {
    if !can_run_as_root("vxlan_clusterip_ledger_across_two_nodes") {
        return;
    }
    vxlan_clusterip_ledger(Mode::Full, "l");
}

/// The same ledger from the kernel's aggregate histograms alone (no journey
/// sampled): the same segments, directions and categories; no exemplars
/// (they need sampled journeys, docs/agent.md).
#[test]
fn vxlan_clusterip_ledger_across_two_nodes_aggregate() {
    if !can_run_as_root("vxlan_clusterip_ledger_across_two_nodes_aggregate") {
        return;
    }
    vxlan_clusterip_ledger(Mode::Aggregate, "la");
}

fn vxlan_clusterip_ledger(mode: Mode, tag: &str) {
    let prefix = format!("ht-{tag}{}-", std::process::id() % 1000);
    let (a, b) = run_lab(&spec(&prefix, Datapath::FlannelVxlan, 0), REQUESTS, mode);
    a.dump("node A");
    b.dump("node B");
    let n = REQUESTS as u64;
    for segment in [
        "netfilter.prerouting.conntrack",
        "netfilter.prerouting.dnat",
        "tunnel.vxlan.encap",
    ] {
        assert!(
            a.count(segment, Some("egress")) >= n,
            "node A {segment}: {}",
            a.count(segment, Some("egress"))
        );
    }
    for segment in ["tunnel.vxlan.decap", "pod.veth.ingress"] {
        assert!(
            b.count(segment, Some("ingress")) >= n,
            "node B {segment}: {}",
            b.count(segment, Some("ingress"))
        );
    }
    // The encapsulated outer packet crosses netfilter output on node A too,
    // as a pass of its own (issue 9: `netfilter.outer.*`).
    assert!(a.count("netfilter.outer.output.conntrack", None) >= n);
    for category in ["encapsulation", "kube-proxy", "conntrack"] {
        assert!(
            a.category_count(category) >= n,
            "node A {category}: {}",
            a.category_count(category)
        );
    }
    if mode == Mode::Aggregate {
        return;
    }
    let a = &a.report;
    // An exemplar of a request: pod egress -> NAT -> tunnel, timestamps non-decreasing.
    let exemplar = a
        .exemplars
        .iter()
        .find(|e| {
            e.direction.name() == "egress"
                && e.hops.iter().any(|h| h.hop.starts_with("nf.prerouting"))
                && e.hops.iter().any(|h| h.hop.starts_with("vxlan"))
        })
        .expect("an exemplar through NAT and the tunnel");
    eprintln!(
        "exemplar: {:?}",
        exemplar
            .hops
            .iter()
            .map(|h| h.hop.as_str())
            .collect::<Vec<_>>()
    );
    assert!(
        exemplar.hops.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns),
        "exemplar timestamps"
    );
    let first_nat = exemplar
        .hops
        .iter()
        .position(|h| h.hop.starts_with("nf.prerouting"))
        .unwrap();
    let first_tunnel = exemplar
        .hops
        .iter()
        .position(|h| h.hop.starts_with("vxlan"))
        .unwrap();
    assert!(first_nat < first_tunnel, "NAT before the tunnel");
    assert!(exemplar.hops[0].hop.starts_with("pod") || exemplar.hops[0].hop.starts_with("veth"));
}

#[test]
fn shared_tracepoints_serve_both_nodes() {
    if !can_run_as_root("shared_tracepoints_serve_both_nodes") {
        return;
    }
    let prefix = format!("ht-s{}-", std::process::id() % 1000);
    let (a, b) = run_lab_with(
        &spec(&prefix, Datapath::FlannelVxlan, 0),
        REQUESTS,
        Tracepoints::Shared,
        Mode::Full,
    );
    a.dump("node A");
    b.dump("node B");
    let n = REQUESTS as u64;
    // Hops only tracepoints see: the pod side of the veths, on both nodes,
    // and delivery to the backend's socket on node B.
    assert!(a.count("pod.veth.egress", Some("egress")) >= n);
    for segment in ["pod.veth.ingress", "socket.delivery"] {
        assert!(
            b.count(segment, Some("ingress")) >= n,
            "node B {segment}: {}",
            b.count(segment, Some("ingress"))
        );
    }
    assert!(b.count("tunnel.vxlan.decap", Some("ingress")) >= n);
    let (a, b) = (&a.report, &b.report);
    // Handed over in time order: no event of B's looks like a straggler.
    assert_eq!(b.counters.late_events, 0, "{:?}", b.counters);
    assert_eq!(a.foreign_events, 0);
    assert_eq!(b.foreign_events, 0);
}

#[test]
fn native_routing_has_no_encapsulation() {
    if !can_run_as_root("native_routing_has_no_encapsulation") {
        return;
    }
    native_routing(Mode::Full, "r");
}

/// The same from the kernel's aggregate histograms alone.
#[test]
fn native_routing_has_no_encapsulation_aggregate() {
    if !can_run_as_root("native_routing_has_no_encapsulation_aggregate") {
        return;
    }
    native_routing(Mode::Aggregate, "ra");
}

fn native_routing(mode: Mode, tag: &str) {
    let prefix = format!("ht-{tag}{}-", std::process::id() % 1000);
    let (a, b) = run_lab(&spec(&prefix, Datapath::CalicoBgp, 0), REQUESTS, mode);
    a.dump("node A");
    let n = REQUESTS as u64;
    assert!(a.count("netfilter.prerouting.dnat", None) >= n);
    for ledger in [&a, &b] {
        assert!(
            !ledger.rows.iter().any(|r| r.segment.starts_with("tunnel.")),
            "no tunnel segment with native routing"
        );
        assert_eq!(ledger.category_count("encapsulation"), 0);
    }
}

#[test]
fn many_services_slow_dnat_not_encapsulation() {
    if !can_run_as_root("many_services_slow_dnat_not_encapsulation") {
        return;
    }
    many_services(Mode::Full, "s");
}

/// The same from the kernel's aggregate histograms alone.
#[test]
fn many_services_slow_dnat_not_encapsulation_aggregate() {
    if !can_run_as_root("many_services_slow_dnat_not_encapsulation_aggregate") {
        return;
    }
    many_services(Mode::Aggregate, "sa");
}

fn many_services(mode: Mode, tag: &str) {
    let base = format!("ht-{tag}{}-", std::process::id() % 1000);
    let (few, _) = run_lab(
        &spec(&format!("{base}a"), Datapath::FlannelVxlan, 0),
        REQUESTS,
        mode,
    );
    let (many, _) = run_lab(
        &spec(&format!("{base}b"), Datapath::FlannelVxlan, 5000),
        REQUESTS,
        mode,
    );
    let dnat_few = few
        .p50_us("netfilter.prerouting.dnat", Some("new"))
        .expect("dnat (few)");
    let dnat_many = many
        .p50_us("netfilter.prerouting.dnat", Some("new"))
        .expect("dnat (many)");
    let encap = |ledger: &ModeLedger| {
        ledger
            .rows
            .iter()
            .filter(|r| r.segment == "tunnel.vxlan.encap")
            .map(|r| r.p50_us)
            .fold(0.0, f64::max)
    };
    let (encap_few, encap_many) = (encap(&few), encap(&many));
    eprintln!(
        "{mode:?}: dnat p50 new: {dnat_few} -> {dnat_many} us; encap p50: {encap_few} -> {encap_many} us"
    );
    // Direction, not a time: 5,000 linear KUBE-SERVICES rules must cost the
    // first packet of a connection clearly more than none.
    assert!(
        dnat_many > dnat_few * 3.0,
        "dnat p50 for new connections should rise clearly"
    );
    // Encapsulation does not depend on the number of services: it must not
    // grow anywhere near as much.
    assert!(
        encap_many < encap_few * 3.0 + 5.0,
        "encapsulation should stay within noise: {encap_few} -> {encap_many}"
    );
}

/// Requests per datapath of the naming tests: enough traffic that a
/// fresh lab's own packets (IPv6 autoconfiguration, some of it dropped) are
/// a small part of the attributed time.
const NAMING_REQUESTS: usize = 150;

/// Issue 9's naming classes in aggregate mode, every lab datapath: the
/// kernel's histograms of both nodes name what the datapath does (cni time
/// everywhere, encapsulation only on the VXLAN overlays, kube-proxy's
/// chains everywhere but cilium-like), as `tests/tests/lab.rs` asserts for
/// full mode.
#[test]
fn every_datapath_names_its_segments_aggregate() {
    if !can_run_as_root("every_datapath_names_its_segments_aggregate") {
        return;
    }
    every_datapath_aggregate(false);
}

/// Issue 9: unnamed `a..b` segments hold under 1 % of the attributed time
/// in every lab datapath (lab.rs asserts it for full mode; the same
/// 150-request runs gave 0.35-0.97 % in full mode, without the 2 s quiet
/// start). In aggregate mode the kernel's per-packet state can join a
/// recycled buffer's next packet to the previous one's journey; userspace
/// leaves out the pairs of hops that cannot belong to one packet
/// (`correlate::aggregate::recycled`, counted as
/// `hoptrace_aggregate_recycled_segments`), which took this from 34-71 %
/// to 0-0.21 % (measured 2026-12-01). In 1 of 3 runs one 32 ms
/// `uplink.ingress..bridge.ingress` pair (legitimate where the uplink is a
/// bridge port, so not left out) still held 53 % of flannel-host-gw's
/// attributed time (150 requests: about 60 ms in all): a repeated
/// link-local multicast report in a recycled buffer, which the kernel now
/// splits as the correlator does (`agg::agg_stale`, a gap over 5 ms).
#[test]
fn every_datapath_unnamed_segments_under_one_percent_aggregate() {
    if !can_run_as_root("every_datapath_unnamed_segments_under_one_percent_aggregate") {
        return;
    }
    every_datapath_aggregate(true);
}

/// Both nodes of every lab datapath in aggregate mode, [`NAMING_REQUESTS`]
/// requests: the categories each datapath must show, and with `unnamed`
/// the unnamed share under 1 %.
fn every_datapath_aggregate(unnamed: bool) {
    for datapath in Datapath::ALL {
        let prefix = format!("ht-dn{}-", std::process::id() % 1000);
        let Some((a, b)) = try_run_lab(
            &spec(&prefix, datapath, 0),
            NAMING_REQUESTS,
            Tracepoints::PerSession,
            Mode::Aggregate,
            // Only the time shares need a quiet lab.
            if unnamed {
                Duration::from_secs(2)
            } else {
                Duration::ZERO
            },
        ) else {
            continue;
        };
        let name = datapath.as_str();
        // Over both nodes, as lab.rs sums a run's nodes.
        let (share, named) = ModeLedger::unnamed_share_of(&[&a, &b]);
        eprintln!("{name}: unnamed segments {:.3}% {named:?}", 100.0 * share);
        let both = |category: &str| a.category_count(category) + b.category_count(category);
        assert!(both("cni") > 0, "{name}: cni time attributed");
        match name {
            "flannel-vxlan" | "calico-vxlan" => {
                assert!(both("encapsulation") > 0, "{name} has encapsulation");
            }
            _ => assert_eq!(both("encapsulation"), 0, "{name}: no encapsulation"),
        }
        if name == "cilium-like" {
            assert_eq!(both("kube-proxy"), 0, "cilium-like has no kube-proxy rules");
        } else {
            assert!(both("kube-proxy") > 0, "{name}: kube-proxy's chains");
        }
        assert!(
            !unnamed || share < 0.01,
            "{name}: unnamed segments hold {:.2}% of the attributed time: {named:?}",
            100.0 * share
        );
    }
}
