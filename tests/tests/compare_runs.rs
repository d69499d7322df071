//! `hoptrace compare` of two real lab runs (root): a short
//! `hoptrace lab --compare flannel-vxlan,calico-bgp --json F` (two nodes per
//! run), then `hoptrace compare F --html P` as a user would. The comparison
//! has one column per run, summed over its nodes (never node against node),
//! a verdict on top, the per-request categories first, and the page renders
//! in headless Chromium without console errors. Bounded traffic inside the
//! namespaces the lab builds; every namespace is removed, also on failure.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use tests::{PrefixGuard, can_run_as_root, hoptrace_bin};

fn hoptrace(args: &[&str]) -> Output {
    let out = Command::new(hoptrace_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run hoptrace");
    eprintln!(
        "hoptrace {args:?}: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `format_us` of `hoptrace compare`: whole µs from 100 up, else one decimal.
fn shown(value: f64) -> String {
    if value.abs() >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// µs per request of `category` in a run: the request timeline's mean, or
/// the category's `all`/`all` total summed over the run's nodes divided by
/// the requests the load generator completed.
fn per_request(run: &Value, category: &str, timeline: bool) -> f64 {
    if timeline {
        return run["requests"]["categories"][category]["mean_us"]
            .as_f64()
            .unwrap_or(0.0);
    }
    let total: f64 = run["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .flat_map(|node| node["categories"].as_array().cloned().unwrap_or_default())
        .filter(|row| {
            row["category"] == category && row["direction"] == "all" && row["conn_state"] == "all"
        })
        .map(|row| row["total_us"].as_f64().unwrap_or(0.0))
        .sum();
    total
        / run["lab"]["requests_ok"]
            .as_f64()
            .expect("requests_ok")
            .max(1.0)
}

#[test]
fn compare_of_two_real_runs_has_one_column_per_run() {
    if !can_run_as_root("compare_of_two_real_runs_has_one_column_per_run") {
        return;
    }
    let prefix = format!("ht-q{}-", std::process::id() % 1000);
    let _guard = PrefixGuard(prefix.clone());
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("runs.json");
    let out = hoptrace(&[
        "lab",
        "--duration",
        "1s",
        "--rate",
        "200",
        "--prefix",
        &prefix,
        "--json",
        json.to_str().unwrap(),
        "--compare",
        "flannel-vxlan,calico-bgp",
    ]);
    assert!(out.status.success());
    let document: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("lab json")).expect("parse");
    let runs = document["runs"].as_array().expect("runs").clone();
    assert_eq!(runs.len(), 2);
    let nodes: Vec<Vec<String>> = runs
        .iter()
        .map(|run| {
            run["nodes"]
                .as_array()
                .expect("nodes")
                .iter()
                .map(|node| node["node"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .collect();
    assert!(nodes[0].len() >= 2, "several nodes per run: {nodes:?}");

    let html = dir.path().join("runs.html");
    let out = hoptrace(&[
        "compare",
        json.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first = stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("Verdict: ")
            && (first.contains("per request faster than") || first.contains("of each other")),
        "{first}"
    );
    // The first table: per-request categories, one value column per run
    // and one delta; no node names in its header.
    let timeline = runs
        .iter()
        .all(|run| run["requests"]["joined"].as_u64().unwrap_or(0) > 0);
    let title = stdout
        .lines()
        .find(|line| line.starts_with("Time per request by category"))
        .expect("category table");
    assert!(
        title.contains(if timeline {
            "request timeline"
        } else {
            "kernel ledger"
        }),
        "{title}"
    );
    let header = stdout
        .lines()
        .find(|line| line.starts_with("│ category"))
        .expect("category header");
    assert_eq!(header.matches("flannel-vxlan").count(), 1, "{header}");
    assert_eq!(
        header.matches("calico-bgp").count(),
        2,
        "value and Δ: {header}"
    );
    for name in nodes.iter().flatten() {
        assert!(!header.contains(name.as_str()), "node {name} in {header}");
    }
    // Each run's figure is its whole run: the value printed for the
    // largest category is the one summed over that run's nodes.
    let row = stdout
        .lines()
        .skip_while(|line| !line.starts_with("╞"))
        .nth(1)
        .expect("first category row");
    let cells: Vec<&str> = row.trim_matches('│').split('┆').map(str::trim).collect();
    let category = cells[0];
    for (index, run) in runs.iter().enumerate() {
        let cell = cells[if index == 0 { 1 } else { 2 }];
        let expected = shown(per_request(run, category, timeline));
        assert!(
            cell.starts_with(&expected),
            "{category} of run {index}: {cell} (expected {expected})"
        );
    }
    tests::browser::assert_page_renders(
        &html,
        &[
            "flannel-vxlan",
            "calico-bgp",
            "Time per request by category",
            category,
        ],
        2,
    );
    let page = std::fs::read_to_string(&html).expect("page");
    assert!(
        page.find("Time per request by category (mean µs)") < page.find("atency"),
        "the per-request chart comes first"
    );
    // The inputs table lists the two runs of the one file.
    assert!(page.contains("runs.json run 1") && page.contains("runs.json run 2"));
    assert!(!page.contains("runs.json run 3"));
    assert!(Path::new(&dir.path().join("runs-categories.svg")).exists());
}
