//! Issue "Reliability on busy real nodes": the real `hoptrace` binary next
//! to other traffic (netlink), other runs (cleanup, a second trace,
//! overlapping clsact runs), foreign tc filters and a namespace without
//! conntrack. Each test builds its own throwaway namespaces (removed on
//! drop, also on failure) and sends traffic only inside them.

use std::{
    path::Path,
    process::{Command, ExitStatus},
    time::Duration,
};

use hoptrace_lab::netns::run_in;
use nix::{sys::signal::Signal, unistd::Pid};
use serde_json::Value;
use tests::{HoptraceRun, TwoPodNode, hoptrace_bin};

/// The shared two-pod node (`tests::TwoPodNode`, veths `hra`/`hrb`, pods in
/// 10.97.0.0/16) with the commands these tests run in it.
struct Node(TwoPodNode);

impl Node {
    fn build(tag: &str) -> Self {
        Self(TwoPodNode::build(&format!("rel{tag}"), 97, "hr"))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn name(&self) -> &str {
        self.0.name()
    }

    fn ping(&self, count: u32, interval: &str) {
        run_ok(
            self.0.pod_a.name(),
            &[
                "ping",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                interval,
                "-W",
                "1",
                &self.0.pod_b_addr().to_string(),
            ],
        );
    }

    fn tc(&self, args: &[&str]) -> String {
        let mut argv = vec!["tc"];
        argv.extend_from_slice(args);
        run_ok(self.name(), &argv)
    }
}

fn run_ok(ns: &str, argv: &[&str]) -> String {
    let out = run_in(ns, argv).unwrap_or_else(|e| panic!("{argv:?} in {ns}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A running `hoptrace trace` writing its report into its temp dir.
struct Trace(HoptraceRun);

impl Trace {
    /// `hoptrace trace --netns NODE --duration 60s --json <dir>/report.json
    /// <extra>`, waiting (bounded) until every hook is attached.
    fn start(node: &Node, extra: &[&str]) -> Self {
        let mut args = vec!["trace", "--duration", "60s", "--json", "{dir}/report.json"];
        args.extend_from_slice(extra);
        Self(HoptraceRun::start(&args, node.path()))
    }

    fn pid(&self) -> Pid {
        self.0.pid()
    }

    /// SIGINT, then the exit status (bounded wait).
    fn stop(&mut self) -> ExitStatus {
        self.0.signal(Signal::SIGINT);
        self.0.wait_exit(Duration::from_secs(20))
    }

    fn stderr(&self) -> String {
        self.0.stderr()
    }

    fn report(&self) -> Value {
        let text = std::fs::read_to_string(self.0.dir().join("report.json"))
            .unwrap_or_else(|e| panic!("report.json: {e}\n{}", self.stderr()));
        serde_json::from_str(&text).expect("report JSON")
    }

    /// `N` of the "tracing T tc hooks, N netfilter links" line.
    fn netfilter_links(&self) -> u64 {
        let stderr = self.stderr();
        stderr
            .lines()
            .find_map(|l| {
                let rest = l.split(" tc hooks, ").nth(1)?;
                rest.split_whitespace().next()?.parse().ok()
            })
            .unwrap_or_else(|| panic!("no netfilter link count in:\n{stderr}"))
    }
}

fn rows<'a>(report: &'a Value, table: &str) -> &'a [Value] {
    report[table].as_array().map_or(&[], Vec::as_slice)
}

/// Netlink messages reuse the buffers of traced packets; before the fix
/// their socket hops joined the packets' journeys (`local` journeys of tens
/// of ms, `socket.delivery` up to 42 ms) and each netlink event counted as
/// an unparsed packet.
#[test]
fn netlink_during_a_ping_makes_no_journey() {
    if !tests::can_run_with_kernel_programs("netlink_during_a_ping_makes_no_journey") {
        return;
    }
    let node = Node::build("l");
    let mut trace = Trace::start(&node, &[]);
    let pinger = {
        let pod = node.0.pod_a.name().to_owned();
        let target = node.0.pod_b_addr().to_string();
        std::thread::spawn(move || {
            run_ok(
                &pod,
                &["ping", "-q", "-c", "60", "-i", "0.05", "-W", "1", &target],
            )
        })
    };
    for _ in 0..150 {
        tests::sh(&["ip", "-n", node.name(), "link", "show"]);
    }
    pinger.join().expect("ping");
    assert_eq!(trace.stop().code(), Some(0), "{}", trace.stderr());
    let report = trace.report();
    let e2e = rows(&report, "end_to_end");
    let pings: u64 = e2e
        .iter()
        .filter(|r| r["direction"] == "egress")
        .filter_map(|r| r["count"].as_u64())
        .sum();
    assert!(
        pings >= 100,
        "the pings' journeys (requests and replies): {e2e:?}"
    );
    let local: Vec<_> = e2e
        .iter()
        .filter(|r| r["direction"] == "local" && r["count"].as_u64() > Some(0))
        .collect();
    assert!(
        local.is_empty(),
        "journeys that no traffic explains: {local:?}"
    );
    // A ping crosses the node in well under a millisecond; the pings are
    // 50 ms apart. Nothing may span from one packet to the next.
    for row in e2e {
        let max = row["max_us"].as_f64().unwrap_or(0.0);
        assert!(max < 20_000.0, "a journey of {max} µs: {row}");
    }
    for row in rows(&report, "segments") {
        let max = row["max_us"].as_f64().unwrap_or(0.0);
        assert!(max < 20_000.0, "a segment of {max} µs: {row}");
    }
    let unparsed = report["unparsed_packets"]
        .as_u64()
        .expect("unparsed_packets");
    assert!(
        unparsed <= 20,
        "150 `ip link show` add no unparsed packets (ARP only): {unparsed}"
    );
}

/// A namespace where nothing asked for conntrack: its hooks never run, so
/// there is no conntrack time and no connection state to report.
#[test]
fn no_conntrack_namespace_reports_untracked() {
    if !tests::can_run_with_kernel_programs("no_conntrack_namespace_reports_untracked") {
        return;
    }
    let node = Node::build("u");
    let mut trace = Trace::start(&node, &[]);
    node.ping(20, "0.05");
    assert_eq!(trace.stop().code(), Some(0), "{}", trace.stderr());
    let report = trace.report();
    let states: Vec<&str> = rows(&report, "end_to_end")
        .iter()
        .filter(|r| r["direction"] != "all" && r["count"].as_u64() > Some(0))
        .filter_map(|r| r["conn_state"].as_str())
        .collect();
    assert!(!states.is_empty(), "journeys: {report}");
    assert!(states.iter().all(|s| *s == "untracked"), "{states:?}");
    let conntrack: Vec<_> = rows(&report, "segments")
        .iter()
        .filter(|r| {
            r["category"] == "conntrack"
                || r["segment"]
                    .as_str()
                    .is_some_and(|s| s.contains("conntrack"))
        })
        .collect();
    assert!(
        conntrack.is_empty(),
        "conntrack time where conntrack never ran: {conntrack:?}"
    );
    // Once a rule needs conntrack, the same traffic is tracked.
    run_ok(
        node.name(),
        &[
            "iptables",
            "-A",
            "FORWARD",
            "-m",
            "conntrack",
            "--ctstate",
            "NEW,ESTABLISHED",
            "-j",
            "ACCEPT",
        ],
    );
    let mut trace = Trace::start(&node, &[]);
    node.ping(20, "0.05");
    assert_eq!(trace.stop().code(), Some(0), "{}", trace.stderr());
    let report = trace.report();
    let states: Vec<&str> = rows(&report, "end_to_end")
        .iter()
        .filter(|r| r["direction"] != "all" && r["count"].as_u64() > Some(0))
        .filter_map(|r| r["conn_state"].as_str())
        .collect();
    assert!(states.contains(&"established"), "{states:?}");
    assert!(!states.contains(&"untracked"), "{states:?}");
}

/// `hoptrace cleanup` next to a live clsact run leaves it alone; when its
/// filters are removed anyway (`tc filter del`), the run says so in its
/// report and exit code.
#[test]
fn cleanup_leaves_a_live_run_alone_and_a_run_notices_lost_hooks() {
    if !tests::can_run_with_kernel_programs(
        "cleanup_leaves_a_live_run_alone_and_a_run_notices_lost_hooks",
    ) {
        return;
    }
    let node = Node::build("c");
    let mut trace = Trace::start(&node, &["--tc-mode", "clsact"]);
    let out = Command::new(hoptrace_bin())
        .args(["cleanup", "--netns"])
        .arg(node.path())
        .output()
        .expect("hoptrace cleanup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("removed"),
        "cleanup removed a live run's filters:\n{text}"
    );
    assert!(
        text.contains(&format!(
            "belongs to a running hoptrace (pid {})",
            trace.pid()
        )),
        "{text}"
    );
    for dir in ["ingress", "egress"] {
        let filters = node.tc(&["filter", "show", "dev", "hra", dir]);
        assert!(
            filters.contains("hoptrace_tc_"),
            "{dir} after cleanup:\n{filters}"
        );
    }
    // Someone removes the filters behind the run's back.
    node.tc(&["filter", "del", "dev", "hra", "ingress"]);
    let status = trace.stop();
    assert_eq!(
        status.code(),
        Some(4),
        "exit code of a run that lost hooks: {}",
        trace.stderr()
    );
    assert!(
        trace.stderr().contains("hooks removed by another process"),
        "{}",
        trace.stderr()
    );
    let notes = trace.report()["notes"].to_string();
    assert!(notes.contains("hra/ingress"), "{notes}");
}

/// Two traces of one node: the second gets every netfilter link (at
/// nearby priorities) and is told that another hoptrace runs.
#[test]
fn two_concurrent_runs_both_get_every_netfilter_link() {
    if !tests::can_run_with_kernel_programs("two_concurrent_runs_both_get_every_netfilter_link") {
        return;
    }
    let node = Node::build("t");
    let mut first = Trace::start(&node, &[]);
    let mut second = Trace::start(&node, &[]);
    let links = first.netfilter_links();
    assert!(links > 0, "{}", first.stderr());
    assert_eq!(second.netfilter_links(), links, "{}", second.stderr());
    // Notes wrap at 100 columns: compare with whitespace folded.
    let stderr = second
        .stderr()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        stderr.contains(&format!(
            "another hoptrace is running on this node (pid {})",
            first.pid()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("took a nearby priority"), "{stderr}");
    node.ping(5, "0.05");
    assert_eq!(second.stop().code(), Some(0), "{}", second.stderr());
    assert_eq!(first.stop().code(), Some(0), "{}", first.stderr());
    for trace in [&first, &second] {
        let report = trace.report();
        assert!(report["journeys"].as_u64() > Some(0), "{}", trace.stderr());
    }
}

/// A foreign u32 filter at tc priority 1 (another protocol): clsact mode
/// takes another priority instead of failing, and leaves the filter and
/// the qdisc it did not add in place.
#[test]
fn a_foreign_filter_at_tc_priority_1_is_left_alone() {
    if !tests::can_run_with_kernel_programs("a_foreign_filter_at_tc_priority_1_is_left_alone") {
        return;
    }
    let node = Node::build("p");
    node.tc(&["qdisc", "add", "dev", "hra", "clsact"]);
    node.tc(&[
        "filter", "add", "dev", "hra", "ingress", "pref", "1", "protocol", "ip", "u32", "match",
        "u32", "0", "0", "flowid", "1:1",
    ]);
    let mut trace = Trace::start(&node, &["--tc-mode", "clsact"]);
    let filters = node.tc(&["filter", "show", "dev", "hra", "ingress"]);
    assert!(filters.contains("hoptrace_tc_ingress"), "{filters}");
    node.ping(5, "0.05");
    assert_eq!(trace.stop().code(), Some(0), "{}", trace.stderr());
    let filters = node.tc(&["filter", "show", "dev", "hra", "ingress"]);
    assert!(
        filters.contains("u32"),
        "the foreign filter stays:\n{filters}"
    );
    assert!(!filters.contains("hoptrace_"), "{filters}");
    let qdiscs = node.tc(&["qdisc", "show", "dev", "hra"]);
    assert!(
        qdiscs.contains("clsact"),
        "the qdisc hoptrace did not add stays:\n{qdiscs}"
    );
}

/// Overlapping clsact runs: the first adds the qdisc, the last one to stop
/// leaves it empty and removes it.
#[test]
fn overlapping_clsact_runs_leave_no_qdisc() {
    if !tests::can_run_with_kernel_programs("overlapping_clsact_runs_leave_no_qdisc") {
        return;
    }
    let node = Node::build("o");
    let mut first = Trace::start(&node, &["--tc-mode", "clsact"]);
    let mut second = Trace::start(&node, &["--tc-mode", "clsact"]);
    assert_eq!(first.stop().code(), Some(0), "{}", first.stderr());
    let filters = node.tc(&["filter", "show", "dev", "hra", "ingress"]);
    assert!(
        filters.contains("hoptrace_tc_ingress"),
        "the second run's filter stays:\n{filters}"
    );
    assert_eq!(second.stop().code(), Some(0), "{}", second.stderr());
    for veth in ["hra", "hrb"] {
        let qdiscs = node.tc(&["qdisc", "show", "dev", veth]);
        assert!(!qdiscs.contains("clsact"), "{veth}: {qdiscs}");
    }
}

/// The agent's side of lost hooks: when another process removes its tc
/// filters, `/readyz` fails and names them, `hoptrace_hooks_lost` counts
/// them, and the agent exits 4 when stopped.
#[test]
fn the_agent_notices_lost_hooks() {
    if !tests::can_run_with_kernel_programs("the_agent_notices_lost_hooks") {
        return;
    }
    let node = Node::build("g");
    let mut agent = HoptraceRun::start(
        &[
            "agent",
            "--no-kubernetes",
            "--metrics-addr",
            "127.0.0.1:0",
            "--tc-mode",
            "clsact",
        ],
        node.path(),
    );
    let addr = agent.metrics_addr();
    let hooks_lost = || {
        let (_, body) = tests::http_get(addr, "/metrics");
        body.lines()
            .find(|l| l.starts_with("hoptrace_hooks_lost{"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no hoptrace_hooks_lost in /metrics:\n{body}"))
    };
    assert_eq!(tests::http_get(addr, "/readyz").0, 200);
    assert_eq!(hooks_lost(), 0);
    // Someone removes the agent's ingress filter on one pod veth.
    node.tc(&["filter", "del", "dev", "hra", "ingress"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (status, body) = loop {
        let (status, body) = tests::http_get(addr, "/readyz");
        if status != 200 || std::time::Instant::now() > deadline {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(status, 503, "/readyz after the filter went: {body}");
    assert!(body.contains("hra/ingress"), "{body}");
    assert_eq!(hooks_lost(), 1);
    agent.signal(Signal::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(4), "{}", agent.stderr());
}
