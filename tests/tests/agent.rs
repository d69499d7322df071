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

/// One segment's histogram summed over label sets: count, sum in seconds,
/// cumulative bucket counts by upper bound (seconds, `+Inf` as infinity).
#[derive(Clone, Debug, Default)]
struct SegmentHist {
    count: f64,
    sum_s: f64,
    buckets: Vec<(f64, f64)>,
}

/// Per segment, from one metric family of the agent's exposition text.
fn histograms_by_segment(text: &str, family: &str) -> BTreeMap<String, SegmentHist> {
    let label = |line: &str, name: &str| -> Option<String> {
        let start = line.find(&format!("{name}=\""))? + name.len() + 2;
        let end = start + line[start..].find('"')?;
        Some(line[start..end].to_owned())
    };
    /// Count, sum, and (bound, cumulative count) by the bound's bits.
    type Partial = (f64, f64, BTreeMap<u64, (f64, f64)>);
    let mut out: BTreeMap<String, Partial> = BTreeMap::new();
    for line in text.lines() {
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let Some(segment) = label(line, "segment") else {
            continue;
        };
        if line.starts_with(&format!("{family}_count{{")) {
            out.entry(segment).or_default().0 += value;
        } else if line.starts_with(&format!("{family}_sum{{")) {
            out.entry(segment).or_default().1 += value;
        } else if line.starts_with(&format!("{family}_bucket{{")) {
            let le = label(line, "le").unwrap_or_default();
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            };
            let entry = out.entry(segment).or_default();
            // Key by the bound's bits (ordered for positive floats).
            entry.2.entry(bound.to_bits()).or_insert((bound, 0.0)).1 += value;
        }
    }
    out.into_iter()
        .map(|(segment, (count, sum_s, buckets))| {
            (
                segment,
                SegmentHist {
                    count,
                    sum_s,
                    buckets: buckets.into_values().collect(),
                },
            )
        })
        .collect()
}

/// `histogram_quantile`'s answer for cumulative buckets: linear
/// interpolation inside the bucket that holds rank `q * count`.
fn quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    let Some(&(_, total)) = buckets.last() else {
        return f64::NAN;
    };
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, cumulative) in buckets {
        if cumulative >= rank {
            if bound.is_infinite() {
                return lower.0;
            }
            let in_bucket = cumulative - lower.1;
            return if in_bucket > 0.0 {
                lower.0 + (bound - lower.0) * (rank - lower.1) / in_bucket
            } else {
                bound
            };
        }
        lower = (bound, cumulative);
    }
    f64::NAN
}

/// Issue 12: the agent's default aggregate mode, with every journey also
/// sampled through the correlator (`--sample 1`), on the same packets: the
/// kernel's histograms (`hoptrace_segment_duration_seconds`) against the
/// correlator's (`hoptrace_sampled_segment_duration_seconds`), segment by
/// segment. Segments a journey crosses once (netfilter bands, tunnel
/// encap/decap, the sending pod's veth) agree in count
/// within 2 %, in p50 within 10 % and in p99 within 25 % (the agent's
/// 1-2.5-5 buckets; the 10 % is not met for p99 there). Segments a journey can cross
/// twice (the inner and the outer packet's `routing`, `routing.output`,
/// `ip.output`, ...) are one observation per crossing in the kernel and
/// one per journey, repeats summed, in the correlator: there the kernel
/// counts at least as many (`socket.delivery` too: same count, but its
/// p50 differed by up to 16 %). Totals (sums) are printed, not judged: see
/// docs/agent.md for the differences measured.
#[test]
fn aggregate_mode_matches_the_correlator_on_the_same_packets() {
    if !can_run_with_kernel_programs("aggregate_mode_matches_the_correlator_on_the_same_packets") {
        return;
    }
    let lab = VxlanLab::build("aa");
    let (client, target, node) = (lab.client.clone(), lab.target, lab.node.clone());
    let mut agent = start(
        &[
            "agent",
            "--no-kubernetes",
            "--metrics-addr",
            "127.0.0.1:0",
            "--mode",
            "aggregate",
            "--sample",
            "1",
        ],
        &node,
    );
    let metrics_addr = agent.metrics_addr();
    let (_, ready) = http_get(metrics_addr, "/readyz");
    assert!(ready.contains("mode: aggregate"), "/readyz: {ready}");
    assert_eq!(
        http_requests_new_connection(&client, target, REQUESTS),
        REQUESTS
    );
    // The kernel's histograms are read every second, the correlator
    // finishes a journey after its idle timeout: wait until both settle.
    let mut last = (f64::NAN, f64::NAN);
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        std::thread::sleep(Duration::from_millis(1500));
        let (status, text) = http_get(metrics_addr, "/metrics");
        assert_eq!(status, 200);
        let now = (
            sum_samples(&text, "hoptrace_segment_duration_seconds_count", "segment="),
            sum_samples(
                &text,
                "hoptrace_sampled_segment_duration_seconds_count",
                "segment=",
            ),
        );
        if now == last && now.0 > 0.0 || Instant::now() > deadline {
            break text;
        }
        last = now;
    };
    stop(&mut agent, nix::sys::signal::Signal::SIGTERM);
    lab.lab.teardown().expect("teardown");

    let kernel = histograms_by_segment(&text, "hoptrace_segment_duration_seconds");
    let correlator = histograms_by_segment(&text, "hoptrace_sampled_segment_duration_seconds");
    assert!(
        kernel.keys().any(|s| s.ends_with(".dnat"))
            && kernel.keys().any(|s| s.starts_with("tunnel.vxlan.")),
        "DNAT and VXLAN segments from the kernel's histograms: {:?}",
        kernel.keys()
    );
    let mut report = String::from("segment: kernel / correlator count; sum ms; p50 µs; p99 µs\n");
    let mut misses = Vec::new();
    let once_per_journey =
        |s: &str| s.starts_with("netfilter.") || s.starts_with("tunnel.") || s == "pod.veth.egress";
    for (segment, want) in &correlator {
        let got = kernel.get(segment).cloned().unwrap_or_default();
        let (p50, p99) = (
            (quantile(0.5, &got.buckets), quantile(0.5, &want.buckets)),
            (quantile(0.99, &got.buckets), quantile(0.99, &want.buckets)),
        );
        report.push_str(&format!(
            "{segment}: {} / {}; {:.2} / {:.2}; {:.1} / {:.1}; {:.1} / {:.1}\n",
            got.count,
            want.count,
            got.sum_s * 1e3,
            want.sum_s * 1e3,
            p50.0 * 1e6,
            p50.1 * 1e6,
            p99.0 * 1e6,
            p99.1 * 1e6
        ));
        // Segments with too few crossings for a 2 % comparison are listed,
        // not judged.
        if want.count < 100.0 {
            continue;
        }
        if !once_per_journey(segment) {
            if got.count < 0.98 * want.count {
                misses.push(format!("{segment}: count {} < {}", got.count, want.count));
            }
            continue;
        }
        if (got.count - want.count).abs() > 0.02 * want.count {
            misses.push(format!("{segment}: count {} vs {}", got.count, want.count));
        }
        // p99 of a few hundred crossings sits in the agent's coarse 1-2.5-5
        // buckets, where a log-linear kernel bucket that straddles a bound
        // lands on one side of it: 25 % for p99, 10 % for p50.
        for (name, (g, w), tolerance) in [("p50", p50, 0.10), ("p99", p99, 0.25)] {
            if !(g.is_finite() && w.is_finite() && (g - w).abs() <= tolerance * w) {
                misses.push(format!("{segment}: {name} {g} vs {w}"));
            }
        }
    }
    for (segment, got) in &kernel {
        if !correlator.contains_key(segment) {
            report.push_str(&format!(
                "{segment}: {} / (not in the correlator's)\n",
                got.count
            ));
            if got.count >= 100.0 {
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

/// The kernel's histograms of an agent run on `lab` (`--sample <sample>`)
/// after `REQUESTS` new-connection requests, once they settle.
fn kernel_histograms(lab: &VxlanLab, sample: &str) -> BTreeMap<String, SegmentHist> {
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
    let metrics_addr = agent.metrics_addr();
    assert_eq!(
        http_requests_new_connection(&lab.client, lab.target, REQUESTS),
        REQUESTS
    );
    let mut last = f64::NAN;
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        std::thread::sleep(Duration::from_millis(1500));
        let (status, text) = http_get(metrics_addr, "/metrics");
        assert_eq!(status, 200);
        let now = sum_samples(&text, "hoptrace_segment_duration_seconds_count", "segment=");
        if now == last && now > 0.0 || Instant::now() > deadline {
            break text;
        }
        last = now;
    };
    stop(&mut agent, nix::sys::signal::Signal::SIGTERM);
    histograms_by_segment(&text, "hoptrace_segment_duration_seconds")
}

/// Issue 12: the cheap per-hop path of aggregate mode (netfilter brackets
/// that continue a pass add the hop without parsing) is taken only by
/// journeys that are not sampled, which the comparison with the correlator
/// above cannot see (`--sample 1` samples every journey). Here the same
/// traffic runs twice on one lab, every journey sampled and none: the
/// kernel's histograms of both runs agree, segment by segment, in count
/// within 2 %, and the netfilter bands (where the cheap path ends a
/// segment) in p50 within 25 % or 0.5 µs (two runs of other packets on a
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
    let _ = kernel_histograms(&lab, "0");
    std::thread::sleep(Duration::from_secs(3));
    let unsampled = kernel_histograms(&lab, "0");
    let sampled = kernel_histograms(&lab, "1");
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
        let (pa, pb) = (quantile(0.5, &a.buckets), quantile(0.5, &b.buckets));
        report.push_str(&format!(
            "{segment}: {} / {}; {:.1} / {:.1}\n",
            a.count,
            b.count,
            pa * 1e6,
            pb * 1e6
        ));
        if a.count.max(b.count) < 100.0 {
            continue;
        }
        if (a.count - b.count).abs() > 0.02 * a.count.max(b.count) {
            misses.push(format!(
                "{segment}: count {} (sampled) vs {} (unsampled)",
                a.count, b.count
            ));
        }
        // Times are compared where the cheap path ends a segment (the
        // netfilter bands): elsewhere both runs take the same path, and
        // their times differ with the machine's load (the sampled run's
        // correlator is busier), by 30 % and more for `socket.delivery`.
        // Within 25 %, or within 0.5 µs: a sampled hop writes a ring
        // record (200-300 ns a run here, BENCHMARKS.md), which lands in
        // the sampled run's sub-µs bands (measured: postrouting.snat p50
        // 0.76 µs sampled against 0.51 µs unsampled on a busy machine).
        let tolerance = (0.25 * pa.max(pb)).max(0.5e-6);
        if segment.starts_with("netfilter.")
            && !(pa.is_finite() && pb.is_finite() && (pa - pb).abs() <= tolerance)
        {
            misses.push(format!("{segment}: p50 {pa} (sampled) vs {pb} (unsampled)"));
        }
    }
    eprintln!("{report}");
    assert!(misses.is_empty(), "{}\n{report}", misses.join("\n"));
}
