//! Issue "Node agent": `hoptrace agent` on a lab node, scraped by a real
//! Prometheus (Debian's `prometheus`, started here on loopback), queried
//! through its HTTP API, and compared with `hoptrace trace --json` of the
//! same traffic.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use hoptrace_common::agg::AGG_BUCKETS;
use hoptrace_core::correlate::aggregate::log_linear_quantile;
use hoptrace_lab::{
    kubeproxy::Protocol,
    netns::ChildGuard,
    topology::{Datapath, KubeProxyMode, Lab, LabSpec},
};
use serde_json::Value;
use tests::{
    HoptraceRun, can_run_with_kernel_programs, http_get, http_requests_new_connection,
    start_backend,
};

/// New-connection requests per run: each walks kube-proxy's chains on
/// node 0 and crosses the VXLAN tunnel.
const REQUESTS: usize = 100;
const PROMETHEUS: &str = "/usr/bin/prometheus";

/// `hoptrace <args>` on the lab node `node_netns`, ready.
fn start(args: &[&str], node_netns: &str) -> HoptraceRun {
    HoptraceRun::start(args, &Path::new("/run/netns").join(node_netns))
}

/// Sends `signal` and waits (bounded) for a successful exit.
fn stop(run: &mut HoptraceRun, signal: nix::sys::signal::Signal) {
    run.signal(signal);
    let status = run.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exit {status}: {}", run.stderr());
}

/// Percent-encodes a PromQL query for a URL.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A Prometheus server on loopback scraping `target` every second.
struct Prometheus {
    _child: ChildGuard,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Self {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: run `cargo xtask setup` (Debian package prometheus)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: hoptrace\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("config");
        // A free loopback port (released just before Prometheus binds it).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr")).expect("stderr"))
            .spawn()
            .expect("spawn prometheus");
        let prometheus = Self {
            _child: ChildGuard::new(child),
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .is_ok()
                && http_get(addr, "/-/ready").0 == 200;
            if ready {
                return prometheus;
            }
            assert!(Instant::now() < deadline, "Prometheus not ready in 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// An instant query: `(labels, value)` per series.
    fn query(&self, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let (status, body) = http_get(
            self.addr,
            &format!("/api/v1/query?query={}", url_encode(promql)),
        );
        assert_eq!(status, 200, "{promql}: {body}");
        let doc: Value = serde_json::from_str(&body).expect("query JSON");
        assert_eq!(doc["status"], "success", "{promql}: {body}");
        doc["data"]["result"]
            .as_array()
            .expect("vector result")
            .iter()
            .map(|series| {
                let labels = series["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                let value = series["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                (labels, value)
            })
            .collect()
    }

    /// `sum by (segment) (<metric>_count{category="<category>"})`.
    fn counts_by_segment(&self, category: &str) -> BTreeMap<String, f64> {
        self.query(&format!(
            "sum by (segment) (hoptrace_segment_duration_seconds_count{{category=\"{category}\"}})"
        ))
        .into_iter()
        .map(|(labels, value)| (labels.get("segment").cloned().unwrap_or_default(), value))
        .collect()
    }
}

/// The two-node flannel VXLAN lab with kube-proxy's iptables rules (100
/// Services), a backend behind the first Service, warmed up with 3
/// requests.
struct VxlanLab {
    lab: Lab,
    /// The backend's server tasks (stopped when dropped).
    _backend: Vec<hoptrace_lab::servers::NetnsTask>,
    /// The Service's ClusterIP and TCP port.
    target: SocketAddr,
    /// The client pod's namespace name.
    client: String,
    /// Node 0's namespace name (where hoptrace runs).
    node: String,
}

impl VxlanLab {
    fn build(tag: &str) -> Self {
        let spec = LabSpec {
            prefix: format!("ht-{tag}{}-", std::process::id() % 1000),
            nodes: 2,
            pods_per_node: 2,
            datapath: Datapath::FlannelVxlan,
            kube_proxy: KubeProxyMode::Iptables,
            services: 100,
        };
        let lab = Lab::build(&spec).expect("build lab");
        let service = lab.service();
        let backend = start_backend(&service.backends[0].netns);
        let target: SocketAddr = service.connect_addr(Protocol::Tcp).expect("tcp").into();
        let client = lab.client_pod().netns.clone();
        let node = lab.nodes()[0].netns.clone();
        assert_eq!(
            http_requests_new_connection(&client, target, 3),
            3,
            "warm-up"
        );
        Self {
            lab,
            _backend: backend,
            target,
            client,
            node,
        }
    }
}

/// Segment counts of one category in a `hoptrace.report.v1`, by segment.
fn report_counts(report: &Value, category: &str) -> BTreeMap<String, f64> {
    let mut counts = BTreeMap::new();
    for row in report["segments"].as_array().expect("segments") {
        if row["category"] == category {
            *counts
                .entry(row["segment"].as_str().unwrap_or_default().to_owned())
                .or_insert(0.0) += row["count"].as_f64().unwrap_or(0.0);
        }
    }
    counts
}

/// The agent's `/metrics`, once two reads 300 ms apart agree (the drain
/// thread has flushed every journey of the traffic).
fn settled_metrics(addr: SocketAddr) -> String {
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let (status, body) = http_get(addr, "/metrics");
        assert_eq!(status, 200);
        let counts: Vec<&str> = body
            .lines()
            .filter(|l| l.starts_with("hoptrace_journeys_total"))
            .collect();
        let previous: Vec<&str> = last
            .lines()
            .filter(|l| l.starts_with("hoptrace_journeys_total"))
            .collect();
        if !counts.is_empty() && counts == previous || Instant::now() > deadline {
            return body;
        }
        last = body;
    }
}

/// The values of `metric`'s series that carry `label`, summed (from the
/// agent's exposition text).
fn sum_samples(text: &str, metric: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn prometheus_scrapes_the_agent_and_its_counts_match_trace() {
    if !can_run_with_kernel_programs("prometheus_scrapes_the_agent_and_its_counts_match_trace") {
        return;
    }
    let lab = VxlanLab::build("ag");
    let (client, target, node) = (lab.client.clone(), lab.target, lab.node.clone());

    // The agent, scraped by Prometheus, while the client sends its requests.
    let mut agent = start(
        &["agent", "--no-kubernetes", "--metrics-addr", "127.0.0.1:0"],
        &node,
    );
    let metrics_addr = agent.metrics_addr();
    let prometheus = Prometheus::start(metrics_addr);
    assert_eq!(
        http_requests_new_connection(&client, target, REQUESTS),
        REQUESTS
    );
    let metrics = settled_metrics(metrics_addr);
    let agent_kube_proxy = sum_samples(
        &metrics,
        "hoptrace_segment_duration_seconds_count",
        "category=\"kube-proxy\"",
    );
    assert!(
        agent_kube_proxy > 0.0,
        "kube-proxy segments in /metrics:\n{metrics}"
    );
    // Wait until Prometheus has scraped what the agent now says.
    let deadline = Instant::now() + Duration::from_secs(20);
    let kube_proxy = loop {
        let counts = prometheus.counts_by_segment("kube-proxy");
        let total: f64 = counts.values().sum();
        let agent_now = sum_samples(
            &http_get(metrics_addr, "/metrics").1,
            "hoptrace_segment_duration_seconds_count",
            "category=\"kube-proxy\"",
        );
        // Late journeys (retransmissions, TIME_WAIT) may still trickle in.
        if total >= agent_kube_proxy && (total - agent_now).abs() <= 0.01 * agent_now {
            break counts;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never caught up: {counts:?} vs the agent's {agent_kube_proxy}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let encapsulation = prometheus.counts_by_segment("encapsulation");
    let p50 = prometheus.query(
        "histogram_quantile(0.5, sum by (le, segment) (hoptrace_segment_duration_seconds_bucket{category=\"kube-proxy\"}))",
    );
    stop(&mut agent, nix::sys::signal::Signal::SIGTERM);

    assert!(
        kube_proxy.keys().any(|s| s.ends_with(".dnat")),
        "kube-proxy DNAT segments in Prometheus: {kube_proxy:?}"
    );
    assert!(
        encapsulation.keys().any(|s| s.starts_with("tunnel.vxlan.")),
        "VXLAN segments in Prometheus: {encapsulation:?}"
    );
    assert!(
        p50.iter().any(
            |(labels, v)| labels.get("segment").is_some_and(|s| s.ends_with(".dnat"))
                && v.is_finite()
                && *v > 0.0
        ),
        "histogram_quantile over the buckets gives a DNAT p50: {p50:?}"
    );

    // The same traffic under `hoptrace trace`.
    let out = tempfile::tempdir().expect("temp dir");
    let report_path = out.path().join("report.json");
    let report_arg = report_path.to_str().expect("UTF-8 path");
    let mut trace = start(
        &["trace", "--duration", "120s", "--json", report_arg],
        &node,
    );
    assert_eq!(
        http_requests_new_connection(&client, target, REQUESTS),
        REQUESTS
    );
    std::thread::sleep(Duration::from_millis(500));
    stop(&mut trace, nix::sys::signal::Signal::SIGINT);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).expect("trace --json report"))
            .expect("report JSON");

    for (category, from_agent) in [
        ("kube-proxy", &kube_proxy),
        ("encapsulation", &encapsulation),
    ] {
        let from_trace = report_counts(&report, category);
        assert!(!from_trace.is_empty(), "{category} in the trace report");
        for (segment, want) in &from_trace {
            let got = from_agent.get(segment).copied().unwrap_or(0.0);
            assert!(
                (got - want).abs() <= 0.05 * want,
                "{category} {segment}: Prometheus {got} vs trace {want} (more than 5% apart)\n\
                 agent: {from_agent:?}\ntrace: {from_trace:?}"
            );
        }
    }
    lab.lab.teardown().expect("teardown");
}

/// One segment's log-linear histogram (the kernel's buckets) summed over
/// directions and connection states: count, sum in ns, counts per bucket.
#[derive(Clone, Debug, Default)]
struct SegmentHist {
    count: u64,
    sum_ns: u64,
    buckets: Vec<u64>,
}

impl SegmentHist {
    /// Quantile `q` in ns at the kernel's resolution (NaN when empty).
    fn quantile(&self, q: f64) -> f64 {
        log_linear_quantile(&self.buckets, q).unwrap_or(f64::NAN)
    }
}

/// Per segment, from one part (`kernel` or `sampled`) of the agent's
/// `hoptrace.agent.histograms.v1`.
fn histograms_by_segment(doc: &Value, part: &str) -> BTreeMap<String, SegmentHist> {
    let mut out: BTreeMap<String, SegmentHist> = BTreeMap::new();
    for series in doc[part].as_array().expect("histogram series") {
        let segment = series["segment"].as_str().expect("segment").to_owned();
        let entry = out.entry(segment).or_insert_with(|| SegmentHist {
            buckets: vec![0; AGG_BUCKETS],
            ..SegmentHist::default()
        });
        entry.count += series["count"].as_u64().expect("count");
        entry.sum_ns += series["sum_ns"].as_u64().expect("sum_ns");
        for bucket in series["buckets"].as_array().expect("buckets") {
            let (i, n) = (bucket[0].as_u64(), bucket[1].as_u64());
            let (Some(i), Some(n)) = (i, n) else {
                panic!("bucket {bucket}");
            };
            entry.buckets[usize::try_from(i).expect("index")] += n;
        }
    }
    out
}

/// Total observations of one part of a `/histograms` document.
fn total_count(doc: &Value, part: &str) -> u64 {
    doc[part]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["count"].as_u64()).sum())
        .unwrap_or(0)
}

/// The agent in aggregate mode (`--sample <sample>`) on `lab`'s node 0
/// while `REQUESTS` new-connection requests go through it; its
/// `/histograms` once the kernel's and the correlator's totals settle (the
/// kernel's histograms are read every second, the correlator finishes a
/// journey after its idle timeout), bounded by 20 s.
fn aggregate_run(lab: &VxlanLab, sample: &str) -> Value {
    let mut agent = start(
        &[
            "agent",
            "--no-kubernetes",
            "--metrics-addr",
            "127.0.0.1:0",
            "--mode",
            "aggregate",
            "--sample",
            sample,
        ],
        &lab.node,
    );
    let addr = agent.metrics_addr();
    let (_, ready) = http_get(addr, "/readyz");
    assert!(ready.contains("mode: aggregate"), "/readyz: {ready}");
    assert_eq!(
        http_requests_new_connection(&lab.client, lab.target, REQUESTS),
        REQUESTS
    );
    let mut last = (u64::MAX, u64::MAX);
    let deadline = Instant::now() + Duration::from_secs(20);
    let doc = loop {
        std::thread::sleep(Duration::from_millis(1500));
        let (status, body) = http_get(addr, "/histograms");
        assert_eq!(status, 200, "{body}");
        let doc: Value = serde_json::from_str(&body).expect("/histograms JSON");
        assert_eq!(doc["schema"], "hoptrace.agent.histograms.v1");
        let now = (total_count(&doc, "kernel"), total_count(&doc, "sampled"));
        if now == last && now.0 > 0 || Instant::now() > deadline {
            break doc;
        }
        last = now;
    };
    stop(&mut agent, nix::sys::signal::Signal::SIGTERM);
    doc
}

/// Issue 12: the agent's default aggregate mode, with every journey also
/// sampled through the correlator (`--sample 1`), on the same packets: the
/// kernel's histograms against the correlator's, both at the kernel's
/// resolution (`/histograms`: 4 log-linear buckets per power of two, the
/// correlator's times put in the same buckets), segment by segment.
/// Segments a journey crosses once (netfilter bands, tunnel encap/decap,
/// the sending pod's veth) agree in count within 2 %, in p50 and p99
/// within 10 %. Segments a journey can cross twice (the inner and the
/// outer packet's `routing`, `routing.output`, `ip.output`, ...) are one
/// observation per crossing in the kernel and one per journey, repeats
/// summed, in the correlator: there the kernel counts at least as many.
/// Totals (sums) are printed, not judged: see docs/agent.md for the
/// differences measured.
#[test]
fn aggregate_mode_matches_the_correlator_on_the_same_packets() {
    if !can_run_with_kernel_programs("aggregate_mode_matches_the_correlator_on_the_same_packets") {
        return;
    }
    let lab = VxlanLab::build("aa");
    let doc = aggregate_run(&lab, "1");
    lab.lab.teardown().expect("teardown");

    let kernel = histograms_by_segment(&doc, "kernel");
    let correlator = histograms_by_segment(&doc, "sampled");
    assert!(
        kernel.keys().any(|s| s.ends_with(".dnat"))
            && kernel.keys().any(|s| s.starts_with("tunnel.vxlan.")),
        "DNAT and VXLAN segments from the kernel's histograms: {:?}",
        kernel.keys()
    );
    let mut report = String::from(
        "segment: kernel / correlator count; sum ms; p50 µs; p99 µs; p50 ratio; p99 ratio\n",
    );
    let mut misses = Vec::new();
    let once_per_journey =
        |s: &str| s.starts_with("netfilter.") || s.starts_with("tunnel.") || s == "pod.veth.egress";
    for (segment, want) in &correlator {
        let got = kernel.get(segment).cloned().unwrap_or_default();
        let (p50, p99) = (
            (got.quantile(0.5), want.quantile(0.5)),
            (got.quantile(0.99), want.quantile(0.99)),
        );
        report.push_str(&format!(
            "{segment}: {} / {}; {:.2} / {:.2}; {:.2} / {:.2}; {:.2} / {:.2}; {:.3}; {:.3}\n",
            got.count,
            want.count,
            got.sum_ns as f64 / 1e6,
            want.sum_ns as f64 / 1e6,
            p50.0 / 1e3,
            p50.1 / 1e3,
            p99.0 / 1e3,
            p99.1 / 1e3,
            p50.0 / p50.1,
            p99.0 / p99.1,
        ));
        // Segments with too few crossings for a 2 % comparison are listed,
        // not judged.
        if want.count < 100 {
            continue;
        }
        if !once_per_journey(segment) {
            if (got.count as f64) < 0.98 * want.count as f64 {
                misses.push(format!("{segment}: count {} < {}", got.count, want.count));
            }
            continue;
        }
        if got.count.abs_diff(want.count) as f64 > 0.02 * want.count as f64 {
            misses.push(format!("{segment}: count {} vs {}", got.count, want.count));
        }
        for (name, (g, w)) in [("p50", p50), ("p99", p99)] {
            if !(g.is_finite() && w.is_finite() && (g - w).abs() <= 0.10 * w) {
                misses.push(format!("{segment}: {name} {g} ns vs {w} ns"));
            }
        }
    }
    for (segment, got) in &kernel {
        if !correlator.contains_key(segment) {
            report.push_str(&format!(
                "{segment}: {} / (not in the correlator's)\n",
                got.count
            ));
            if got.count >= 100 {
                misses.push(format!(
                    "{segment}: {} crossings only in the kernel's histograms",
                    got.count
                ));
            }
        }
    }
    eprintln!("{report}");
    assert!(misses.is_empty(), "{}\n{report}", misses.join("\n"));
}

/// Issue 12: the cheap per-hop path of aggregate mode (netfilter brackets
/// that continue a pass add the hop without parsing) is taken only by
/// journeys that are not sampled, which the comparison with the correlator
/// above cannot see (`--sample 1` samples every journey). Here the same
/// traffic runs twice on one lab, every journey sampled and none: the
/// kernel's histograms of both runs agree, segment by segment, in count
/// within 2 %, and the netfilter bands (where the cheap path ends a
/// segment) in p50 within 25 % or 0.75 µs (two runs of other packets on a
/// shared machine; the sampled path's own ring writes); segments with fewer than 100 crossings are printed, not
/// judged. Measured: every segment of the requests, 1500/1000/500
/// crossings, the same count in both runs.
#[test]
fn unsampled_aggregate_mode_matches_the_sampled_path() {
    if !can_run_with_kernel_programs("unsampled_aggregate_mode_matches_the_sampled_path") {
        return;
    }
    let lab = VxlanLab::build("au");
    // A fresh lab sends its own packets for several seconds (IPv6 router
    // solicitations, MLD, neighbour discovery, some dropped): a first run
    // takes them, so that the two compared runs see the same traffic.
    let _ = aggregate_run(&lab, "0");
    std::thread::sleep(Duration::from_secs(3));
    let unsampled = histograms_by_segment(&aggregate_run(&lab, "0"), "kernel");
    let sampled = histograms_by_segment(&aggregate_run(&lab, "1"), "kernel");
    lab.lab.teardown().expect("teardown");
    assert!(
        unsampled.keys().any(|s| s.ends_with(".dnat"))
            && unsampled.keys().any(|s| s.starts_with("tunnel.vxlan.")),
        "DNAT and VXLAN segments without sampling: {:?}",
        unsampled.keys()
    );
    let mut report = String::from("segment: sampled / unsampled count; p50 µs\n");
    let mut misses = Vec::new();
    let segments: std::collections::BTreeSet<&String> =
        sampled.keys().chain(unsampled.keys()).collect();
    for segment in segments {
        let (a, b) = (
            sampled.get(segment).cloned().unwrap_or_default(),
            unsampled.get(segment).cloned().unwrap_or_default(),
        );
        let (pa, pb) = (a.quantile(0.5), b.quantile(0.5));
        report.push_str(&format!(
            "{segment}: {} / {}; {:.2} / {:.2}\n",
            a.count,
            b.count,
            pa / 1e3,
            pb / 1e3
        ));
        let most = a.count.max(b.count);
        if most < 100 {
            continue;
        }
        if a.count.abs_diff(b.count) as f64 > 0.02 * most as f64 {
            misses.push(format!(
                "{segment}: count {} (sampled) vs {} (unsampled)",
                a.count, b.count
            ));
        }
        // Times are compared where the cheap path ends a segment (the
        // netfilter bands): elsewhere both runs take the same path, and
        // their times differ with the machine's load (the sampled run's
        // correlator is busier), by 30 % and more for `socket.delivery`.
        // Within 25 %, or within 0.75 µs: a sampled hop writes a ring
        // record (200-300 ns a run here, more under load; BENCHMARKS.md),
        // which lands in the sampled run's sub-µs bands. At the kernel's
        // resolution (`/histograms`) that shows: worst differences in six
        // runs 0.26-0.60 µs, mostly `netfilter.outer.postrouting.snat`
        // (p50 0.75-0.81 µs sampled against 0.13-0.27 µs unsampled, a
        // steady ring write in that band); the exported
        // 1-2.5-5 buckets, compared before, put both in one sub-µs bucket.
        let tolerance = (0.25 * pa.max(pb)).max(750.0);
        if segment.starts_with("netfilter.")
            && !(pa.is_finite() && pb.is_finite() && (pa - pb).abs() <= tolerance)
        {
            misses.push(format!(
                "{segment}: p50 {pa} ns (sampled) vs {pb} ns (unsampled)"
            ));
        }
    }
    eprintln!("{report}");
    assert!(misses.is_empty(), "{}\n{report}", misses.join("\n"));
}
