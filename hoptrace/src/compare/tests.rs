//! `hoptrace compare` on typed documents written to files: inputs, labels,
//! deltas, errors, charts and the HTML page.

use std::path::{Path, PathBuf};

use hoptrace_core::report::{
    Category, CategoryRow, ClientLatency, ConnState, Direction, DocumentError, EndToEndRow,
    LAB_SCHEMA, LabDocument, LabLoad, LabRunDocument, LabSection, LedgerCounters, REPORT_SCHEMA,
    Report, SegmentRow, Stats,
};
use serde::Serialize;

use super::html::{category_bars_svg, cdf_points, cdf_svg};
use super::*;

fn stats(count: u64, p50: f64, p90: f64, p99: f64, max: f64, mean: f64) -> Stats {
    Stats {
        count,
        p50_us: p50,
        p90_us: p90,
        p99_us: p99,
        max_us: max,
        mean_us: mean,
        total_us: mean * count as f64,
    }
}

fn category(category: Category, direction: &str, conn_state: &str, stats: Stats) -> CategoryRow {
    CategoryRow {
        category,
        direction: direction.to_owned(),
        conn_state: conn_state.to_owned(),
        stats,
        share: 0.1,
    }
}

fn empty_report() -> Report {
    Report {
        schema: REPORT_SCHEMA.to_owned(),
        node: String::new(),
        kernel: String::new(),
        started_at: String::new(),
        duration_s: 0.0,
        capabilities: serde_json::Value::Null,
        journeys: 0,
        segments: Vec::new(),
        categories: Vec::new(),
        end_to_end: Vec::new(),
        exemplars: Vec::new(),
        drops: Vec::new(),
        drop_records: Vec::new(),
        icmp: Vec::new(),
        lost_events: 0,
        unparsed_packets: 0,
        foreign_events: 0,
        counters: LedgerCounters::default(),
        notes: Vec::new(),
        lab: None,
    }
}

fn lab_section(datapath: &str, scale: f64) -> LabSection {
    LabSection {
        datapath: datapath.to_owned(),
        nodes: 2,
        kube_proxy: "iptables".to_owned(),
        services: 100,
        ingress: "none".to_owned(),
        target: "10.96.0.10:80".to_owned(),
        load: LabLoad {
            mode: "http-keep-alive".to_owned(),
            connections: 8,
            rate: 1000.0,
            duration: 10.0,
            request_timeout: 2.0,
            http_path: "/".to_owned(),
            udp_payload_len: 64,
        },
        requests_ok: 1000,
        errors: 0,
        timeouts: 0,
        error_kinds: Default::default(),
        achieved_rate: 100.0,
        client_latency: ClientLatency {
            p50_us: 200 * scale as u64,
            p90_us: 300,
            p99_us: 500,
            p999_us: 700,
            max_us: 800,
            mean_us: 250.0,
            histogram: vec![
                (150, 10.0, 100),
                (200, 50.0, 400),
                (400, 99.0, 490),
                (800, 100.0, 10),
            ],
        },
    }
}

fn report(datapath: Option<&str>, scale: f64) -> Report {
    Report {
        node: "node-a".to_owned(),
        kernel: "6.18.0".to_owned(),
        started_at: "2025-01-01T00:00:00Z".to_owned(),
        duration_s: 10.0,
        journeys: 1000,
        segments: vec![
            SegmentRow {
                segment: "pod.veth.egress".to_owned(),
                category: Category::Cni,
                direction: Direction::Egress,
                conn_state: ConnState::Established,
                stats: stats(1000, 10.0 * scale, 15.0, 40.0 * scale, 90.0, 12.0),
                share: 0.1,
                len_p50_bytes: 100,
                len_max_bytes: 1500,
            },
            SegmentRow {
                segment: "netfilter.prerouting.dnat".to_owned(),
                category: Category::KubeProxy,
                direction: Direction::Egress,
                conn_state: ConnState::New,
                stats: stats(
                    50,
                    30.0 * scale,
                    50.0 * scale,
                    80.0 * scale,
                    90.0 * scale,
                    35.0,
                ),
                share: 0.2,
                len_p50_bytes: 100,
                len_max_bytes: 1500,
            },
        ],
        categories: vec![
            category(
                Category::Cni,
                "all",
                "all",
                stats(1000, 10.0 * scale, 15.0, 40.0 * scale, 90.0, 12.0),
            ),
            category(
                Category::KubeProxy,
                "all",
                "all",
                stats(1000, 30.0 * scale, 50.0, 80.0 * scale, 100.0, 35.0),
            ),
            category(
                Category::KubeProxy,
                "egress",
                "new",
                stats(50, 99.0, 110.0, 120.0, 130.0, 100.0),
            ),
        ],
        end_to_end: vec![EndToEndRow {
            direction: "all".to_owned(),
            conn_state: "all".to_owned(),
            stats: stats(
                1000,
                100.0 * scale,
                150.0 * scale,
                300.0 * scale,
                900.0 * scale,
                120.0,
            ),
        }],
        lab: datapath.map(|datapath| lab_section(datapath, scale)),
        ..empty_report()
    }
}

fn input(report: Report, source: &str) -> InputReport {
    InputReport {
        label: String::new(),
        source: PathBuf::from(source),
        report,
    }
}

fn json(document: &impl Serialize) -> String {
    serde_json::to_string_pretty(document).unwrap()
}

fn write_inputs(dir: &Path, documents: &[(&str, String)]) -> Vec<PathBuf> {
    documents
        .iter()
        .map(|(name, text)| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect()
}

/// The error and its causes on one line, as `hoptrace` prints it.
fn one_line(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[test]
fn deltas_against_the_first_input() {
    let dir = tempfile::tempdir().unwrap();
    let paths = write_inputs(
        dir.path(),
        &[
            ("base.json", json(&report(Some("iptables"), 1.0))),
            ("other.json", json(&report(Some("cilium"), 1.5))),
        ],
    );
    let comparison = compare(&paths).expect("compare");
    let labels: Vec<&str> = comparison.inputs.iter().map(|i| i.label.as_str()).collect();
    assert_eq!(labels, ["iptables", "cilium"]);
    assert_eq!(delta(Some(30.0), Some(45.0)), Some((15.0, Some(50.0))));
    let table = render_table(&comparison);
    // kube-proxy all/all: p50 30 → 45 (+15, +50%), p99 80 → 120 (+40, +50%).
    let kube_proxy = table
        .lines()
        .find(|line| line.contains("kube-proxy") && line.contains("all"))
        .expect("kube-proxy row");
    assert!(kube_proxy.contains("+15 (+50.0%)"), "{kube_proxy}");
    assert!(kube_proxy.contains("+40 (+50.0%)"), "{kube_proxy}");
    // End to end: p50 100 → 150.
    let e2e = table
        .lines()
        .find(|line| line.contains("end-to-end"))
        .expect("e2e row");
    assert!(e2e.contains("+50 (+50.0%)"), "{e2e}");
    assert!(table.contains("client (load generator)"));
    // The category chart stacks the all/all rows, not the egress/new one.
    assert_eq!(
        comparison.inputs[1].category_p50(),
        vec![("cni".to_owned(), 15.0), ("kube-proxy".to_owned(), 45.0)]
    );
}

#[test]
fn format_helpers() {
    assert_eq!(
        format_delta(delta(Some(200.0), Some(150.0))),
        "-50 (-25.0%)"
    );
    assert_eq!(format_delta(delta(Some(0.0), Some(3.5))), "+3.5 (n/a)");
    assert_eq!(format_delta(delta(None, Some(3.0))), "-");
    assert_eq!(format_us(None), "-");
    assert_eq!(format_us(Some(12.34)), "12.3");
}

#[test]
fn missing_rows_show_dashes() {
    let dir = tempfile::tempdir().unwrap();
    // A valid report with one category row and no segment or end-to-end row.
    let sparse = Report {
        categories: vec![category(
            Category::Cni,
            "egress",
            "established",
            stats(3, 5.0, 6.0, 7.0, 8.0, 5.5),
        )],
        ..empty_report()
    };
    let paths = write_inputs(
        dir.path(),
        &[
            ("full.json", json(&report(None, 1.0))),
            ("sparse.json", json(&sparse)),
        ],
    );
    let comparison = compare(&paths).expect("compare");
    assert_eq!(comparison.inputs[0].label, "full");
    assert_eq!(comparison.inputs[1].label, "sparse");
    assert!(comparison.inputs[1].report.segments.is_empty());
    let table = render_table(&comparison);
    let cni = table
        .lines()
        .find(|line| line.contains("cni") && line.contains("all"))
        .expect("cni row");
    assert!(cni.contains(" - "), "{cni}");
    // The page still renders with charts and a CDF from percentiles.
    let (points, from_client) = cdf_points(&comparison.inputs[0]);
    assert!(!from_client);
    assert_eq!(
        points,
        vec![(100.0, 0.5), (150.0, 0.9), (300.0, 0.99), (900.0, 1.0)]
    );
    assert!(cdf_points(&comparison.inputs[1]).0.is_empty());
    let written = write_html(&comparison, &dir.path().join("out.html")).expect("html");
    assert_eq!(written.len(), 3);
}

#[test]
fn lab_files_give_one_input_per_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut node_b = report(Some("iptables"), 2.0);
    node_b.node = "node-b".to_owned();
    let lab = LabDocument::new(vec![
        LabRunDocument::new(
            "iptables-1k".to_owned(),
            lab_section("iptables", 1.0),
            vec![report(None, 1.0), node_b],
        ),
        // A run without a label is named after the file.
        LabRunDocument::new(
            String::new(),
            lab_section("cilium", 3.0),
            vec![report(None, 3.0)],
        ),
    ]);
    let paths = write_inputs(
        dir.path(),
        &[
            ("lab.json", json(&lab)),
            ("single.json", json(&report(Some("iptables"), 1.0))),
        ],
    );
    let comparison = compare(&paths).expect("compare");
    let labels: Vec<&str> = comparison.inputs.iter().map(|i| i.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "iptables-1k/node-a",
            "iptables-1k/node-b",
            "lab#2",
            "iptables"
        ]
    );
    let (points, from_client) = cdf_points(&comparison.inputs[0]);
    assert!(from_client);
    assert_eq!(points.first(), Some(&(150.0, 0.1)));
    assert_eq!(points.last(), Some(&(800.0, 1.0)));
}

#[test]
fn bad_inputs_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(compare(&[]), Err(CompareError::NoInputs)));
    assert!(matches!(
        compare(&[dir.path().join("absent.json")]),
        Err(CompareError::Read { .. })
    ));
    let paths = write_inputs(
        dir.path(),
        &[
            ("schema.json", r#"{"schema": "other.v9"}"#.to_owned()),
            (
                "empty-lab.json",
                json(&serde_json::json!({"schema": LAB_SCHEMA, "runs": []})),
            ),
        ],
    );
    assert!(matches!(
        compare(&paths[..1]),
        Err(CompareError::Document {
            source: DocumentError::Schema { .. },
            ..
        })
    ));
    assert!(matches!(
        compare(&paths[1..]),
        Err(CompareError::EmptyLab { .. })
    ));
    std::fs::write(dir.path().join("bad.json"), "{ not json").unwrap();
    assert!(matches!(
        compare(&[dir.path().join("bad.json")]),
        Err(CompareError::Document {
            source: DocumentError::Json(_),
            ..
        })
    ));
}

#[test]
fn non_documents_name_the_file_and_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let check = r#"{"items": [{"name": "tc", "available": true, "reason": null, "detail": ""}],
                    "notes": [], "fidelity": "full"}"#;
    let paths = write_inputs(
        dir.path(),
        &[
            ("hello.json", r#"{"hello":"world"}"#.to_owned()),
            ("list.json", "[1,2,3]".to_owned()),
            ("check.json", check.to_owned()),
        ],
    );
    for path in &paths {
        let err = compare(std::slice::from_ref(path)).expect_err("not a document");
        assert!(
            matches!(
                err,
                CompareError::Document {
                    source: DocumentError::NotADocument,
                    ..
                }
            ),
            "{err:?}"
        );
        let line = one_line(&err);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains(&path.display().to_string()), "{line}");
        assert!(
            line.contains("expected a JSON object with \"schema\": \"hoptrace.report.v1\" or \"hoptrace.lab.v1\""),
            "{line}"
        );
    }
    // A report with a category this version does not know.
    let invalid = json(&report(None, 1.0)).replace("\"kube-proxy\"", "\"nat\"");
    let path = write_inputs(dir.path(), &[("nat.json", invalid)]);
    let err = compare(&path).expect_err("invalid category");
    assert!(matches!(
        err,
        CompareError::Document {
            source: DocumentError::Invalid { .. },
            ..
        }
    ));
    let line = one_line(&err);
    assert!(
        line.contains("nat.json") && line.contains("hoptrace.report.v1") && line.contains("nat"),
        "{line}"
    );
}

#[test]
fn single_input_and_empty_inputs_still_draw() {
    let single = Comparison {
        inputs: vec![input(report(Some("iptables"), 1.0), "a.json")],
    };
    let bars = category_bars_svg(&single).expect("bars");
    assert!(bars.contains("kube-proxy"));
    let empty = Comparison {
        inputs: vec![input(empty_report(), "e.json")],
    };
    assert!(
        category_bars_svg(&empty)
            .expect("bars")
            .contains("no category data")
    );
    assert!(cdf_svg(&empty).expect("cdf").contains("no end-to-end data"));
}

#[test]
fn duplicate_labels_are_numbered() {
    let dir = tempfile::tempdir().unwrap();
    let paths = write_inputs(
        dir.path(),
        &[
            ("a.json", json(&report(Some("cilium"), 1.0))),
            ("b.json", json(&report(Some("cilium"), 1.1))),
        ],
    );
    let comparison = compare(&paths).expect("compare");
    assert_eq!(comparison.inputs[1].label, "cilium (2)");
}

#[test]
fn html_is_self_contained() {
    let dir = tempfile::tempdir().unwrap();
    let mut nasty = report(Some("<script>alert(1)</script>"), 1.2);
    nasty.node = "n&<>".to_owned();
    let paths = write_inputs(
        dir.path(),
        &[
            ("a.json", json(&report(Some("iptables"), 1.0))),
            ("b.json", json(&nasty)),
        ],
    );
    let comparison = compare(&paths).expect("compare");
    let html_path = dir.path().join("cmp.html");
    let written = write_html(&comparison, &html_path).expect("html");
    assert_eq!(
        written,
        vec![
            html_path.clone(),
            dir.path().join("cmp-categories.svg"),
            dir.path().join("cmp-cdf.svg")
        ]
    );
    let html = std::fs::read_to_string(&html_path).unwrap();
    let without_xmlns = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    assert!(
        !without_xmlns.contains("http://"),
        "external reference in page"
    );
    assert!(
        !without_xmlns.contains("https://"),
        "external reference in page"
    );
    assert!(
        !html.contains("<script"),
        "labels must be escaped, no scripts"
    );
    assert!(html.contains("&lt;script&gt;"));
    assert_eq!(html.matches("<svg").count(), 2);
    for svg in &written[1..] {
        let content = std::fs::read_to_string(svg).unwrap();
        assert!(content.contains("<svg") && content.contains("<rect"));
    }
    // Category names appear in the chart legend.
    let bars = std::fs::read_to_string(&written[1]).unwrap();
    assert!(bars.contains("kube-proxy") && bars.contains("cni"));
}
