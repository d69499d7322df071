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
    let spec = LabSpec {
        prefix: format!("ht-ag{}-", std::process::id() % 1000),
        nodes: 2,
        pods_per_node: 2,
        datapath: Datapath::FlannelVxlan,
        kube_proxy: KubeProxyMode::Iptables,
        services: 100,
    };
    let lab = Lab::build(&spec).expect("build lab");
    let service = lab.service();
    let _backend = start_backend(&service.backends[0].netns);
    let target: SocketAddr = service.connect_addr(Protocol::Tcp).expect("tcp").into();
    let client = lab.client_pod().netns.clone();
    let node = lab.nodes()[0].netns.clone();
    assert_eq!(
        http_requests_new_connection(&client, target, 3),
        3,
        "warm-up"
    );

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
    lab.teardown().expect("teardown");
}
