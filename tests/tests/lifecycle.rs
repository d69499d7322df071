//! Issue "Lifecycle": the real `hoptrace trace` binary, traced on a throwaway
//! node namespace, leaves nothing attached after SIGINT or SIGTERM (it exits
//! 0 with a report); after SIGKILL its clsact filters survive and
//! `hoptrace cleanup` removes them.
//!
//! What belongs to the hoptrace process under test is read from its own file
//! descriptors (`/proc/PID/fdinfo`: program and link ids), not from program
//! names: other hoptrace instances (other tests, other users) may run on the
//! machine at the same time and own `hoptrace_*` programs of their own.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use hoptrace_lab::netns::{NetnsGuard, run_in, with_netns};
use nix::{sys::signal::Signal, unistd::Pid};
use tests::{HoptraceRun as Traced, hoptrace_bin, http_get};

/// The node-side veth, inside the node namespace.
const NODE_VETH: &str = "hlc0";

/// A node namespace with one pod namespace behind a veth (the node side is
/// what hoptrace discovers and attaches to). Both are deleted on drop.
struct NodeWithPod {
    node: NetnsGuard,
    pod: NetnsGuard,
}

impl NodeWithPod {
    fn build(tag: &str) -> Self {
        let base = format!("ht-lc{}{tag}", std::process::id() % 1000);
        let node = NetnsGuard::create(&format!("{base}n")).expect("node namespace");
        let pod = NetnsGuard::create(&format!("{base}p")).expect("pod namespace");
        let node_ns = node.name().to_owned();
        for argv in [
            vec![
                "ip",
                "link",
                "add",
                NODE_VETH,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                pod.name(),
            ],
            vec!["ip", "addr", "add", "10.98.0.1/30", "dev", NODE_VETH],
            vec!["ip", "link", "set", NODE_VETH, "up"],
        ] {
            run_in(&node_ns, &argv).expect("node side");
        }
        for argv in [
            vec!["ip", "addr", "add", "10.98.0.2/30", "dev", "eth0"],
            vec!["ip", "link", "set", "eth0", "up"],
        ] {
            run_in(pod.name(), &argv).expect("pod side");
        }
        Self { node, pod }
    }

    fn netns_path(&self) -> &Path {
        self.node.path()
    }

    fn netns(&self) -> &str {
        self.node.name()
    }

    /// Names of the programs in the tcx chain of the node veth, per direction.
    fn tcx_programs(&self) -> Vec<(TcAttachType, String, u32)> {
        with_netns(self.netns(), || {
            let mut found = Vec::new();
            for attach in [TcAttachType::Ingress, TcAttachType::Egress] {
                let (_, progs) = SchedClassifier::query_tcx(NODE_VETH, attach).expect("query tcx");
                for prog in progs {
                    found.push((
                        attach,
                        prog.name_as_str().unwrap_or("?").to_owned(),
                        prog.id(),
                    ));
                }
            }
            found
        })
        .expect("enter node namespace")
    }

    /// `tc filter show dev hlc0 <direction>` inside the node.
    fn tc_filters(&self, direction: &str) -> String {
        let out = run_in(
            self.netns(),
            &["tc", "filter", "show", "dev", NODE_VETH, direction],
        )
        .expect("tc filter show");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// `hoptrace trace --netns <node> --duration 60s <extra>`, ready.
fn start_trace(node: &NodeWithPod, extra: &[&str]) -> Traced {
    let mut args = vec!["trace", "--duration", "60s"];
    args.extend_from_slice(extra);
    Traced::start(&args, node.netns_path())
}

/// `hoptrace agent --netns <node> --no-kubernetes --metrics-addr
/// 127.0.0.1:0 <extra>`, ready.
fn start_agent(node: &NodeWithPod, extra: &[&str]) -> Traced {
    let mut args = vec!["agent", "--no-kubernetes", "--metrics-addr", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Traced::start(&args, node.netns_path())
}

/// BPF objects a process holds open, from `/proc/PID/fdinfo`.
#[derive(Debug, Default)]
struct OwnedObjects {
    /// Program ids (program fds and the programs of link fds).
    programs: BTreeSet<u32>,
    /// (link type as fdinfo names it, link id).
    links: Vec<(String, u32)>,
}

impl OwnedObjects {
    fn of(pid: Pid) -> Self {
        let mut owned = Self::default();
        let dir = PathBuf::from(format!("/proc/{pid}/fdinfo"));
        for entry in std::fs::read_dir(&dir).expect("read fdinfo").flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue; // closed meanwhile
            };
            let field = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            };
            if let Some(id) = field("prog_id:").and_then(|v| v.parse().ok()) {
                owned.programs.insert(id);
            }
            if let (Some(kind), Some(id)) = (
                field("link_type:"),
                field("link_id:").and_then(|v| v.parse().ok()),
            ) {
                owned.links.push((kind, id));
            }
        }
        owned
    }

    fn links_of_type(&self, kind: &str) -> usize {
        self.links.iter().filter(|(k, _)| k == kind).count()
    }
}

/// `bpftool <object> list -j` as JSON values.
fn bpftool_list(object: &str) -> Vec<serde_json::Value> {
    let out = Command::new("bpftool")
        .args([object, "list", "-j"])
        .output()
        .expect("run bpftool");
    assert!(
        out.status.success(),
        "bpftool {object} list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .expect("bpftool JSON")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn id_of(value: &serde_json::Value, key: &str) -> Option<u32> {
    value.get(key)?.as_u64().map(|v| v as u32)
}

/// Checks that hoptrace is attached: its two tc programs head the tcx chain
/// of the node veth (or sit in clsact), and `bpftool` sees its netfilter and
/// tracepoint links. Returns what the process owns.
fn assert_attached(node: &NodeWithPod, traced: &Traced, clsact: bool) -> OwnedObjects {
    let owned = OwnedObjects::of(traced.pid());
    let programs = bpftool_list("prog");
    let name_of = |id: u32| {
        programs
            .iter()
            .find(|p| id_of(p, "id") == Some(id))
            .and_then(|p| p.get("name")?.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    for id in &owned.programs {
        let name = name_of(*id);
        assert!(
            name.starts_with("hoptrace_"),
            "program {id} of the process is {name:?}"
        );
    }
    if clsact {
        assert!(node.tcx_programs().is_empty(), "clsact mode uses no tcx");
        assert!(
            node.tc_filters("ingress").contains("hoptrace_tc_ingress"),
            "{}",
            node.tc_filters("ingress")
        );
        assert!(
            node.tc_filters("egress").contains("hoptrace_tc_egress"),
            "{}",
            node.tc_filters("egress")
        );
    } else {
        let tcx = node.tcx_programs();
        // The kernel keeps 15 characters of a program name.
        let names: Vec<_> = tcx.iter().map(|(a, n, _)| (*a, n.as_str())).collect();
        assert_eq!(
            names,
            [
                (TcAttachType::Ingress, "hoptrace_tc_ing"),
                (TcAttachType::Egress, "hoptrace_tc_egr")
            ],
            "tcx chains of {NODE_VETH}"
        );
        assert!(
            tcx.iter().all(|(_, _, id)| owned.programs.contains(id)),
            "tcx programs belong to the process"
        );
        assert_eq!(owned.links_of_type("tcx"), 2, "{owned:?}");
    }
    // Netfilter and tracepoint links as bpftool lists them (type 10 is
    // netfilter for a bpftool that predates it).
    let links = bpftool_list("link");
    let ours = |link: &&serde_json::Value| {
        id_of(link, "id").is_some_and(|id| owned.links.iter().any(|(_, own)| *own == id))
    };
    let netfilter = links
        .iter()
        .filter(ours)
        .filter(|l| l.get("type").is_some_and(|t| t == "netfilter" || t == 10))
        .count();
    assert!(
        netfilter > 0,
        "netfilter links in `bpftool link list`: {owned:?}"
    );
    let tracepoints: Vec<u32> = links
        .iter()
        .filter(ours)
        .filter(|l| {
            l.get("type")
                .is_some_and(|t| t == "raw_tracepoint" || t == "tracing")
        })
        .filter_map(|l| id_of(l, "prog_id"))
        .collect();
    assert!(
        !tracepoints.is_empty(),
        "tracepoint links in `bpftool link list`: {owned:?}"
    );
    assert!(
        tracepoints
            .iter()
            .all(|id| name_of(*id).starts_with("hoptrace_"))
    );
    owned
}

/// Nothing the process owned exists any more (the kernel frees programs and
/// links after an RCU grace period: poll, bounded), and the node veth has
/// neither tcx programs nor clsact filters.
fn assert_nothing_left(node: &NodeWithPod, owned: &OwnedObjects) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let programs: BTreeSet<u32> = bpftool_list("prog")
            .iter()
            .filter_map(|p| id_of(p, "id"))
            .collect();
        let links: BTreeSet<u32> = bpftool_list("link")
            .iter()
            .filter_map(|l| id_of(l, "id"))
            .collect();
        let left_programs: Vec<_> = owned.programs.intersection(&programs).collect();
        let left_links: Vec<_> = owned
            .links
            .iter()
            .filter(|(_, id)| links.contains(id))
            .collect();
        if left_programs.is_empty() && left_links.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still present 5 s after exit: programs {left_programs:?}, links {left_links:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        node.tcx_programs().is_empty(),
        "tcx programs left: {:?}",
        node.tcx_programs()
    );
    for direction in ["ingress", "egress"] {
        let filters = node.tc_filters(direction);
        assert!(
            !filters.contains("hoptrace_"),
            "{direction} filters left:\n{filters}"
        );
    }
}

fn stop_cleanly(tag: &str, signal: Signal, extra: &[&str]) {
    let node = NodeWithPod::build(tag);
    let mut traced = start_trace(&node, extra);
    let owned = assert_attached(&node, &traced, extra.contains(&"clsact"));
    // Some traffic through the traced veth, so the report has journeys.
    run_in(
        node.netns(),
        &["ping", "-c", "3", "-i", "0.2", "-W", "1", "10.98.0.2"],
    )
    .expect("ping the pod");
    traced.signal(signal);
    let status = traced.wait_exit(Duration::from_secs(5));
    let stdout = traced.stdout();
    assert!(
        status.success(),
        "exit after {signal}: {status}\n{}",
        traced.stderr()
    );
    assert!(
        stdout.contains("hoptrace report"),
        "a report on stdout:\n{stdout}\n{}",
        traced.stderr()
    );
    assert!(
        stdout.contains(NODE_VETH),
        "the report names the traced device:\n{stdout}"
    );
    assert_nothing_left(&node, &owned);
}

#[test]
fn sigint_detaches_everything_and_reports() {
    if !tests::can_run_with_kernel_programs("sigint_detaches_everything_and_reports") {
        return;
    }
    stop_cleanly("i", Signal::SIGINT, &[]);
}

#[test]
fn sigterm_detaches_everything_and_reports() {
    if !tests::can_run_with_kernel_programs("sigterm_detaches_everything_and_reports") {
        return;
    }
    stop_cleanly("t", Signal::SIGTERM, &[]);
}

/// clsact filters are deleted over netlink in the node's namespace, not in
/// the namespace hoptrace itself runs in.
#[test]
fn sigint_removes_clsact_filters_in_the_traced_namespace() {
    if !tests::can_run_with_kernel_programs("sigint_removes_clsact_filters_in_the_traced_namespace")
    {
        return;
    }
    stop_cleanly("c", Signal::SIGINT, &["--tc-mode", "clsact"]);
}

fn cleanup(node: &NodeWithPod) -> String {
    let out = Command::new(hoptrace_bin())
        .arg("cleanup")
        .arg("--netns")
        .arg(node.netns_path())
        .output()
        .expect("run hoptrace cleanup");
    assert!(
        out.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sigkill_leaves_clsact_filters_that_cleanup_removes() {
    if !tests::can_run_with_kernel_programs("sigkill_leaves_clsact_filters_that_cleanup_removes") {
        return;
    }
    let node = NodeWithPod::build("k");
    let mut traced = start_trace(&node, &["--tc-mode", "clsact"]);
    assert_attached(&node, &traced, true);
    traced.signal(Signal::SIGKILL);
    let status = traced.wait_exit(Duration::from_secs(5));
    assert!(!status.success(), "killed: {status}");
    // A killed process cannot detach: the filters outlive it.
    assert!(
        node.tc_filters("ingress").contains("hoptrace_tc_ingress"),
        "{}",
        node.tc_filters("ingress")
    );
    assert!(
        node.tc_filters("egress").contains("hoptrace_tc_egress"),
        "{}",
        node.tc_filters("egress")
    );

    let first = cleanup(&node);
    assert!(
        first.contains("removed ingress filter `hoptrace_tc_ingress` on hlc0"),
        "{first}"
    );
    assert!(
        first.contains("removed egress filter `hoptrace_tc_egress` on hlc0"),
        "{first}"
    );
    for direction in ["ingress", "egress"] {
        let filters = node.tc_filters(direction);
        assert!(
            !filters.contains("hoptrace_"),
            "{direction} after cleanup:\n{filters}"
        );
    }
    // The clsact qdisc hoptrace added goes too: the veth is as before.
    let qdiscs =
        run_in(node.netns(), &["tc", "qdisc", "show", "dev", NODE_VETH]).expect("tc qdisc show");
    let qdiscs = String::from_utf8_lossy(&qdiscs.stdout);
    assert!(
        !qdiscs.contains("clsact"),
        "clsact left after cleanup:\n{qdiscs}"
    );
    let second = cleanup(&node);
    assert!(second.contains("no hoptrace tc filters found"), "{second}");
    assert!(!second.contains("removed"), "{second}");
}

#[test]
fn agent_serves_metrics_and_sigterm_detaches_everything() {
    if !tests::can_run_with_kernel_programs("agent_serves_metrics_and_sigterm_detaches_everything")
    {
        return;
    }
    let node = NodeWithPod::build("a");
    // The default mode (aggregate), every journey also sampled through the
    // correlator: the sampled series carry the pod labels.
    let mut agent = start_agent(&node, &["--sample", "1"]);
    let owned = assert_attached(&node, &agent, false);
    let addr = agent.metrics_addr();
    let (status, body) = http_get(addr, "/readyz");
    assert_eq!(status, 200, "/readyz: {body}");
    assert!(body.contains("ready: node"), "{body}");
    assert!(body.contains("mode: aggregate"), "{body}");
    assert_eq!(http_get(addr, "/healthz").0, 200);
    run_in(
        node.netns(),
        &["ping", "-c", "3", "-i", "0.2", "-W", "1", "10.98.0.2"],
    )
    .expect("ping the pod");
    // The drain thread flushes idle journeys every 25 ms; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let (status, body) = http_get(addr, "/metrics");
        assert_eq!(status, 200);
        // The kernel's histograms are read once a second.
        if (body.contains("hoptrace_segment_duration_seconds_bucket")
            && body.contains("hoptrace_sampled_segment_duration_seconds_bucket"))
            || Instant::now() > deadline
        {
            break body;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for needle in [
        "hoptrace_segment_duration_seconds_bucket{",
        "hoptrace_category_duration_seconds_count{",
        "hoptrace_journeys_total{direction=",
        "hoptrace_hooks_attached{kind=\"tc\"",
        "process_resident_memory_bytes",
        "# EOF",
    ] {
        assert!(metrics.contains(needle), "{needle} in /metrics:\n{metrics}");
    }
    // Without the Kubernetes API, journeys are named after the pod's
    // network namespace: on the sampled journeys (the correlator's); the
    // kernel's histograms carry no pod labels.
    let pod_label = format!("pod_namespace=\"{}\"", node.pod.name());
    assert!(
        metrics.lines().any(
            |l| l.starts_with("hoptrace_sampled_segment_duration_seconds_count{")
                && l.contains(&pod_label)
        ),
        "{pod_label} on the sampled segment series:\n{metrics}"
    );
    assert!(
        metrics.lines().any(
            |l| l.starts_with("hoptrace_segment_duration_seconds_count{")
                && !l.contains("pod_namespace=")
        ),
        "the kernel's segment series, without pod labels:\n{metrics}"
    );
    let tc_hooks = metrics
        .lines()
        .find(|l| l.starts_with("hoptrace_hooks_attached{kind=\"tc\""))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
    assert_eq!(
        tc_hooks,
        Some(2),
        "tc ingress and egress on the veth:\n{metrics}"
    );
    agent.signal(Signal::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(10));
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        agent.stderr()
    );
    assert!(
        agent.stderr().contains("every hook detached"),
        "{}",
        agent.stderr()
    );
    assert_nothing_left(&node, &owned);
}

/// Restarts as a DaemonSet sees them (rollouts, OOM kills, node drains):
/// start, ready, SIGTERM, exit; a hundred times. Nothing may pile up.
#[test]
fn a_hundred_agent_restarts_leave_nothing_attached() {
    if !tests::can_run_with_kernel_programs("a_hundred_agent_restarts_leave_nothing_attached") {
        return;
    }
    let node = NodeWithPod::build("r");
    let mut all = OwnedObjects::default();
    let started = Instant::now();
    for round in 0..100 {
        let mut agent = start_agent(&node, &[]);
        let owned = OwnedObjects::of(agent.pid());
        assert!(!owned.programs.is_empty(), "round {round}: no programs");
        all.programs.extend(owned.programs);
        all.links.extend(owned.links);
        agent.signal(Signal::SIGTERM);
        let status = agent.wait_exit(Duration::from_secs(10));
        assert!(
            status.success(),
            "round {round}: exit after SIGTERM: {status}\n{}",
            agent.stderr()
        );
    }
    eprintln!("100 agent restarts in {:?}", started.elapsed());
    assert_nothing_left(&node, &all);
}
