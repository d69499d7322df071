//! Renders `hoptrace compare --html` pages (the real binary) from synthetic
//! (valid, typed) node reports and lab documents, opens them in headless
//! Chromium and checks that they render: no console errors, the verdict and
//! the per-request chart first, a screenshot of the right size that is not
//! blank and shows coloured bars. Skips with a printed reason when Chromium
//! is not installed.

use std::path::{Path, PathBuf};

use hoptrace_core::report::{
    Category, CategoryRow, ClientLatency, ConnState, Direction, EndToEndRow, LabDocument, LabLoad,
    LabRequests, LabRunDocument, LabSection, LedgerCounters, REPORT_SCHEMA, Report,
    RequestCategory, SegmentRow, Stats,
};

/// Statistics of 5000 values around `p50` µs.
fn stats(p50: f64) -> Stats {
    Stats {
        count: 5000,
        p50_us: p50,
        p90_us: p50 * 1.5,
        p99_us: p50 * 3.0,
        max_us: p50 * 10.0,
        mean_us: p50 * 1.2,
        total_us: p50 * 1.2 * 5000.0,
    }
}

/// A valid `hoptrace.report.v1` of one lab node, built with the core types:
/// six categories (so the bar chart has six colours) and a client latency
/// histogram (so the CDF comes from the load generator).
fn synthetic_report(datapath: &str, scale: f64) -> Report {
    let category = |category: Category, p50: f64| CategoryRow {
        category,
        direction: "all".into(),
        conn_state: "all".into(),
        stats: stats(p50 * scale),
        share: 0.2,
    };
    let segment = |name: &str, category: Category, p50: f64| SegmentRow {
        segment: name.into(),
        category,
        direction: Direction::Egress,
        conn_state: ConnState::Established,
        stats: stats(p50 * scale),
        share: 0.1,
        len_p50_bytes: 100,
        len_max_bytes: 1500,
    };
    let histogram: Vec<(u64, f64, u64)> = (1..=40)
        .map(|i| {
            let value = (50.0 * scale * (1.0 + f64::from(i) * 0.15)).round() as u64;
            let percentile =
                100.0 * (1.0 - (-f64::from(i) / 6.0).exp()) / (1.0 - (-40.0f64 / 6.0).exp());
            (value, percentile, 25)
        })
        .collect();
    let us = |value: f64| (value * scale).round() as u64;
    Report {
        schema: REPORT_SCHEMA.into(),
        node: "lab-node-1".into(),
        kernel: "6.18.0".into(),
        started_at: "2025-01-01T12:00:00Z".into(),
        duration_s: 30.0,
        capabilities: serde_json::Value::Null,
        journeys: 5000,
        segments: vec![
            segment("pod.veth.egress", Category::Cni, 6.0),
            segment("bridge", Category::Cni, 4.0),
            segment("netfilter.prerouting.conntrack", Category::Conntrack, 3.0),
            segment("netfilter.prerouting.dnat", Category::KubeProxy, 9.0),
            segment("tunnel.vxlan.encap", Category::Encapsulation, 12.0),
        ],
        categories: vec![
            category(Category::Cni, 6.0),
            category(Category::NetfilterOther, 4.0),
            category(Category::Conntrack, 3.0),
            category(Category::KubeProxy, 9.0),
            category(Category::Encapsulation, 12.0),
            category(Category::KernelOther, 20.0),
        ],
        end_to_end: vec![EndToEndRow {
            direction: "all".into(),
            conn_state: "all".into(),
            stats: Stats {
                count: 5000,
                p50_us: 60.0 * scale,
                p90_us: 90.0 * scale,
                p99_us: 200.0 * scale,
                max_us: 800.0 * scale,
                mean_us: 70.0 * scale,
                total_us: 70.0 * scale * 5000.0,
            },
        }],
        exemplars: Vec::new(),
        drops: Vec::new(),
        drop_records: Vec::new(),
        icmp: Vec::new(),
        lost_events: 0,
        unparsed_packets: 0,
        foreign_events: 0,
        counters: LedgerCounters::default(),
        notes: Vec::new(),
        requests: None,
        lab: Some(LabSection {
            datapath: datapath.into(),
            nodes: 2,
            kube_proxy: "iptables".into(),
            services: 1000,
            ingress: "none".into(),
            target: "10.96.0.10:80".into(),
            load: LabLoad {
                mode: "http-keep-alive".into(),
                connections: 8,
                rate: 2000.0,
                duration: 30.0,
                request_timeout: 2.0,
                http_path: "/".into(),
                udp_payload_len: 64,
            },
            requests_ok: 1000,
            errors: 0,
            timeouts: 0,
            error_kinds: Default::default(),
            achieved_rate: 2000.0,
            client_latency: ClientLatency {
                p50_us: us(120.0),
                p90_us: us(180.0),
                p99_us: us(400.0),
                p999_us: us(900.0),
                max_us: us(1500.0),
                mean_us: 140.0 * scale,
                histogram,
            },
        }),
    }
}

#[test]
fn compare_page_renders_in_headless_chromium() {
    if !tests::browser::chromium_available() {
        println!("skipping: /usr/bin/chromium not installed (apt-get install -y chromium)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let inputs: Vec<PathBuf> = [
        ("iptables.json", synthetic_report("iptables", 1.0)),
        ("cilium.json", synthetic_report("cilium", 0.7)),
    ]
    .into_iter()
    .map(|(name, report)| {
        let path = dir.path().join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(&report).expect("json")).expect("write");
        path
    })
    .collect();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).expect("out dir");
    let page = out_dir.join("compare.html");
    let out = std::process::Command::new(tests::hoptrace_bin())
        .arg("compare")
        .args(&inputs)
        .arg("--html")
        .arg(&page)
        .output()
        .expect("run hoptrace compare");
    assert!(
        out.status.success(),
        "hoptrace compare failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written: Vec<PathBuf> = std::fs::read_dir(&out_dir)
        .expect("read out dir")
        .map(|entry| entry.expect("entry").path())
        .collect();
    assert_eq!(written.len(), 3, "page plus two SVG charts: {written:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("Verdict: cilium is "), "{stdout}");
    if let Ok(keep) = std::env::var("HOPTRACE_KEEP_HTML") {
        for file in &written {
            let _ = std::fs::copy(file, Path::new(&keep).join(file.file_name().expect("name")));
        }
    }

    tests::browser::assert_page_renders(
        &page,
        &[
            "cilium",
            "iptables",
            "Time per request by category",
            "Client latency CDF",
        ],
        2,
    );
}

/// A request timeline for a run: `(category, mean µs per request)`.
fn requests(client_mean_us: f64, categories: &[(&str, f64)]) -> LabRequests {
    LabRequests {
        count: 2000,
        joined: 1990,
        join_rate: 0.995,
        client_mean_us,
        client_p50_us: client_mean_us * 0.9,
        client_p99_us: client_mean_us * 3.0,
        attributed_mean_us: categories.iter().map(|c| c.1).sum(),
        coverage: 0.95,
        client_own_mean_us: 20.0,
        categories: categories
            .iter()
            .map(|(name, mean_us)| {
                (
                    (*name).to_owned(),
                    RequestCategory {
                        mean_us: *mean_us,
                        p50_us: *mean_us * 0.9,
                        p99_us: *mean_us * 3.0,
                        socket_queue_mean_us: 0.0,
                    },
                )
            })
            .collect(),
        proxy_hold_mean_us: None,
        retransmitted: 0,
        retransmit_mean_us: 0.0,
        slowest: Vec::new(),
        notes: Vec::new(),
    }
}

/// A lab document of two runs of two nodes each, with request timelines,
/// compared with `--label`: one column per run (never node against node),
/// the verdict on top and the per-request categories as the first chart.
#[test]
fn compare_of_lab_runs_has_one_column_per_run() {
    if !tests::browser::chromium_available() {
        println!("skipping: /usr/bin/chromium not installed (apt-get install -y chromium)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |datapath: &str, scale: f64, requests_of_run: LabRequests| {
        let mut nodes = vec![
            synthetic_report(datapath, scale),
            synthetic_report(datapath, scale),
        ];
        nodes[1].node = "lab-node-2".into();
        let lab = nodes[0].lab.clone().expect("lab section");
        let mut run = LabRunDocument::new(datapath.into(), lab, nodes);
        run.requests = Some(requests_of_run);
        run
    };
    let document = LabDocument::new(vec![
        run(
            "flannel-vxlan",
            1.0,
            requests(
                1770.0,
                &[
                    ("application", 1200.0),
                    ("ingress-proxy", 310.0),
                    ("encapsulation", 21.0),
                    ("kube-proxy", 35.0),
                    ("kernel-other", 150.0),
                ],
            ),
        ),
        run(
            "calico-bgp",
            0.8,
            requests(
                1360.0,
                &[
                    ("application", 1200.0),
                    ("ingress-proxy", 60.0),
                    ("kube-proxy", 35.0),
                    ("kernel-other", 40.0),
                ],
            ),
        ),
    ]);
    let input = dir.path().join("lab.json");
    std::fs::write(&input, document.to_json_pretty().expect("json")).expect("write");
    let page = dir.path().join("runs.html");
    let out = std::process::Command::new(tests::hoptrace_bin())
        .arg("compare")
        .arg(&input)
        .args(["--label", "vxlan overlay", "--label", "bgp routed"])
        .arg("--html")
        .arg(&page)
        .output()
        .expect("run hoptrace compare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "hoptrace compare failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    // The verdict wraps at 100 columns: compare with whitespace folded.
    let flat = stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.starts_with(
            "Verdict: bgp routed is 0.41 ms per request faster than vxlan overlay, which spends more in ingress-proxy (+0.25 ms)"
        ),
        "{stdout}"
    );
    // The first table's header names each run once: two value columns and
    // one delta, no per-node columns.
    let header = stdout
        .lines()
        .find(|line| line.contains("category") && line.contains("vxlan overlay"))
        .expect("category table header");
    assert_eq!(header.matches("vxlan overlay").count(), 1, "{header}");
    assert_eq!(
        header.matches("bgp routed").count(),
        2,
        "value and Δ: {header}"
    );
    assert!(!stdout.contains("/lab-node"), "per-node columns: {stdout}");
    let ingress = stdout
        .lines()
        .find(|line| line.starts_with("│ ingress-proxy"))
        .expect("ingress-proxy row");
    assert!(
        ingress.contains("310 (18%)") && ingress.contains("-250"),
        "{ingress}"
    );
    // A wrong number of labels is one line naming the columns.
    let wrong = std::process::Command::new(tests::hoptrace_bin())
        .arg("compare")
        .arg(&input)
        .args(["--label", "only one"])
        .output()
        .expect("run hoptrace compare");
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("flannel-vxlan, calico-bgp"), "{stderr}");

    let html = std::fs::read_to_string(&page).expect("page");
    let chart = html
        .find("Time per request by category (mean µs)")
        .expect("chart");
    let latency = html.find("Client latency CDF").expect("latency chart");
    assert!(chart < latency, "the per-request chart comes first");
    tests::browser::assert_page_renders(
        &page,
        &[
            "bgp routed is 0.41 ms per request faster than vxlan overlay",
            "Time per request by category",
            "ingress-proxy",
            "application",
            "Request timeline",
        ],
        2,
    );
}

/// Files that are not hoptrace documents are refused by the real binary
/// with one line naming the file and what was expected, exit code 1.
#[test]
fn compare_refuses_non_documents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let check = r#"{"items": [{"name": "tc", "available": true, "reason": null, "detail": ""}],
                    "notes": [], "fidelity": "full"}"#;
    for (name, content) in [
        ("hello.json", r#"{"hello":"world"}"#),
        ("list.json", "[1,2,3]"),
        ("check.json", check),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, content).expect("write");
        let out = std::process::Command::new(tests::hoptrace_bin())
            .arg("compare")
            .arg(&path)
            .output()
            .expect("run hoptrace compare");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{name}: {stderr}");
        assert!(
            stderr.contains(&path.display().to_string()),
            "{name}: {stderr}"
        );
        assert!(
            stderr.contains(
                r#"expected a JSON object with "schema": "hoptrace.report.v1" or "hoptrace.lab.v1""#
            ),
            "{name}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{name}: no table for a bad input");
    }
}
