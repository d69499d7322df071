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
use tests::{can_run_as_root, http_requests_new_connection, start_backend};

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
