//! Renders a `hoptrace compare --html` page (the real binary) from two
//! synthetic reports, opens it
//! in headless Chromium and checks that it renders: no console errors, a
//! screenshot of the right size that is not blank and shows coloured bars.
//! Skips with a printed reason when Chromium is not installed.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

fn synthetic_report(datapath: &str, scale: f64) -> Value {
    let category = |name: &str, p50: f64| {
        json!({"category": name, "direction": "all", "conn_state": "all", "count": 5000,
               "p50_us": p50 * scale, "p90_us": p50 * scale * 1.5, "p99_us": p50 * scale * 3.0,
               "max_us": p50 * scale * 10.0, "mean_us": p50 * scale * 1.2, "share": 0.2})
    };
    let segment = |name: &str, category: &str, p50: f64| {
        json!({"segment": name, "category": category, "direction": "request", "conn_state": "established",
               "count": 5000, "p50_us": p50 * scale, "p99_us": p50 * scale * 3.0})
    };
    let histogram: Vec<Value> = (1..=40)
        .map(|i| {
            let value = (50.0 * scale * (1.0 + f64::from(i) * 0.15)).round();
            let percentile =
                100.0 * (1.0 - (-f64::from(i) / 6.0).exp()) / (1.0 - (-40.0f64 / 6.0).exp());
            json!([value, percentile, 25])
        })
        .collect();
    json!({
        "schema": "hoptrace.report.v1",
        "node": "lab-node-1",
        "kernel": "6.18.0",
        "started_at": "2025-01-01T12:00:00Z",
        "duration_s": 30.0,
        "segments": [
            segment("pod0-veth→cni0", "veth", 6.0),
            segment("cni0→conntrack", "bridge", 4.0),
            segment("conntrack", "conntrack", 3.0),
            segment("dnat", "nat", 9.0),
            segment("vxlan encap", "overlay", 12.0),
        ],
        "categories": [
            category("veth", 6.0),
            category("bridge", 4.0),
            category("conntrack", 3.0),
            category("nat", 9.0),
            category("overlay", 12.0),
            category("socket", 20.0),
        ],
        "end_to_end": [
            {"direction": "all", "conn_state": "all", "count": 5000, "p50_us": 60.0 * scale,
             "p90_us": 90.0 * scale, "p99_us": 200.0 * scale, "max_us": 800.0 * scale, "mean_us": 70.0 * scale}
        ],
        "lab": {
            "datapath": datapath, "kube_proxy": "iptables", "services": 1000, "ingress": "none",
            "load": {"mode": "http-keep-alive", "rate": 2000, "connections": 8},
            "client_latency": {"p50_us": 120.0 * scale, "p90_us": 180.0 * scale, "p99_us": 400.0 * scale,
                               "max_us": 1500.0 * scale, "histogram": histogram}
        }
    })
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
    if let Ok(keep) = std::env::var("HOPTRACE_KEEP_HTML") {
        for file in &written {
            let _ = std::fs::copy(file, Path::new(&keep).join(file.file_name().expect("name")));
        }
    }

    tests::browser::assert_page_renders(&page, &["cilium", "iptables"], 2);
}
