//! `hoptrace compare` on typed documents written to files: inputs, labels,
//! deltas, errors, charts and the HTML page.

use std::path::{Path, PathBuf};

use hoptrace_core::report::{
    Category, CategoryRow, ClientLatency, ConnState, Direction, DocumentError, EndToEndRow,
    LAB_SCHEMA, LabDocument, LabLoad, LabRequests, LabRunDocument, LabSection, LedgerCounters,
    REPORT_SCHEMA, Report, RequestCategory, SegmentRow, Stats,
};
use serde::Serialize;

use super::html::{
    MIN_CDF_POINTS, category_bars_svg, cdf_points, grouped_bars_svg, latency_is_cdf, latency_svg,
    same_curve,
};
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
        requests: None,
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
        run: None,
        lab: report.lab.clone(),
        nodes: vec![report],
        requests: None,
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

/// A node report whose categories have the given `all`/`all` totals (µs).
fn node(name: &str, totals: &[(Category, f64)]) -> Report {
    Report {
        node: name.to_owned(),
        categories: totals
            .iter()
            .map(|(c, total)| {
                let mut s = stats(100, total / 100.0, 0.0, 0.0, 0.0, total / 100.0);
                s.total_us = *total;
                category(*c, "all", "all", s)
            })
            .collect(),
        segments: totals
            .iter()
            .map(|(c, total)| SegmentRow {
                segment: format!("seg.{}", c.name()),
                category: *c,
                direction: Direction::Egress,
                conn_state: ConnState::Established,
                stats: Stats {
                    total_us: *total,
                    ..stats(100, 1.0, 1.0, 1.0, 1.0, 1.0)
                },
                share: 0.1,
                len_p50_bytes: 100,
                len_max_bytes: 1500,
            })
            .collect(),
        end_to_end: vec![EndToEndRow {
            direction: "all".to_owned(),
            conn_state: "all".to_owned(),
            stats: stats(100, 80.0, 90.0, 99.0, 120.0, 85.0),
        }],
        ..empty_report()
    }
}

fn lab_with(datapath: &str, ingress: &str, client_mean: f64) -> LabSection {
    let mut lab = lab_section(datapath, 1.0);
    lab.ingress = ingress.to_owned();
    lab.client_latency.mean_us = client_mean;
    lab
}

/// Two lab runs of two nodes each: flannel-vxlan (encapsulation on both
/// nodes) and calico-bgp, 1000 requests each.
fn two_runs() -> LabDocument {
    LabDocument::new(vec![
        LabRunDocument::new(
            "flannel-vxlan".to_owned(),
            lab_with("flannel-vxlan", "none", 500.0),
            vec![
                node(
                    "n1",
                    &[
                        (Category::Encapsulation, 20_000.0),
                        (Category::KubeProxy, 10_000.0),
                    ],
                ),
                node(
                    "n2",
                    &[
                        (Category::Encapsulation, 30_000.0),
                        (Category::KubeProxy, 5_000.0),
                    ],
                ),
            ],
        ),
        LabRunDocument::new(
            "calico-bgp".to_owned(),
            lab_with("calico-bgp", "none", 400.0),
            vec![
                node("n1", &[(Category::KubeProxy, 8_000.0)]),
                node(
                    "n2",
                    &[(Category::KubeProxy, 4_000.0), (Category::Cni, 2_000.0)],
                ),
            ],
        ),
    ])
}

fn timeline(client_mean: f64, categories: &[(&str, f64)]) -> LabRequests {
    LabRequests {
        count: 1000,
        joined: 995,
        join_rate: 0.995,
        client_mean_us: client_mean,
        client_p50_us: client_mean,
        client_p99_us: client_mean * 2.0,
        attributed_mean_us: categories.iter().map(|c| c.1).sum(),
        coverage: 0.95,
        client_own_mean_us: 0.0,
        categories: categories
            .iter()
            .map(|(name, mean)| {
                (
                    (*name).to_owned(),
                    RequestCategory {
                        mean_us: *mean,
                        p50_us: *mean,
                        p99_us: *mean,
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

#[test]
fn one_column_per_run_summed_over_its_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let paths = write_inputs(dir.path(), &[("lab.json", json(&two_runs()))]);
    let comparison = compare(&paths).expect("compare");
    // Two runs of two nodes: two columns, never node against node.
    assert_eq!(comparison.labels(), ["flannel-vxlan", "calico-bgp"]);
    assert_eq!(comparison.inputs[0].nodes.len(), 2);
    assert_eq!(comparison.inputs[1].run, Some(2));
    let table = comparison.category_table();
    assert_eq!(table.basis, Basis::LedgerPerRequest);
    assert_eq!(
        table.categories,
        ["encapsulation", "kube-proxy", "cni"].map(str::to_owned)
    );
    // (20 000 + 30 000) µs over both nodes / 1000 requests = 50 µs.
    assert_eq!(table.values[0], [50.0, 0.0]);
    assert_eq!(table.values[1], [15.0, 12.0]);
    assert_eq!(table.values[2], [0.0, 2.0]);
    assert_eq!(table.totals, [Some(500.0), Some(400.0)]);
    let segments = comparison.segment_table();
    assert_eq!(segments.segments[0].0, "seg.encapsulation");
    assert_eq!(segments.values[0], [50.0, 0.0]);
    let text = render_table(&comparison);
    println!("{text}");
    let header = text
        .lines()
        .find(|line| line.contains("flannel-vxlan") && line.contains("calico-bgp"))
        .expect("one header with both runs");
    assert!(!header.contains("n2"), "{header}");
    let encapsulation = text
        .lines()
        .find(|line| line.starts_with("│ encapsulation"))
        .expect("encapsulation row");
    // 50 µs = 10% of the client's 500 µs; calico-bgp 0, -50 (-100%).
    assert!(encapsulation.contains("50 (10%)"), "{encapsulation}");
    assert!(encapsulation.contains("-50 (-100.0%)"), "{encapsulation}");
}

#[test]
fn verdict_from_the_ledger_names_the_categories_that_differ() {
    let dir = tempfile::tempdir().unwrap();
    let paths = write_inputs(dir.path(), &[("lab.json", json(&two_runs()))]);
    let comparison = compare(&paths).expect("compare");
    // Client means 500 vs 400 µs; encapsulation explains 50 of the 100 µs,
    // kube-proxy (-3 µs) and cni (+2 µs) stay under 5% of the difference.
    assert_eq!(
        verdict(&comparison),
        "calico-bgp is 0.10 ms per request faster than flannel-vxlan, which spends more in \
         encapsulation (+50 µs); +49 µs of the difference is outside the measured categories"
    );
    assert!(render_table(&comparison).starts_with("Verdict: calico-bgp is 0.10 ms"));
}

#[test]
fn verdict_names_the_clients_own_time_apart_and_last() {
    // The client's own time differs most (its timer's lateness), then the
    // ingress proxy: the proxy is what the slower run spends more in.
    let mut document = two_runs();
    document.runs[0].requests = Some(timeline(
        2000.0,
        &[
            ("client", 700.0),
            ("ingress-proxy", 400.0),
            ("application", 900.0),
        ],
    ));
    document.runs[1].requests = Some(timeline(
        1300.0,
        &[
            ("client", 300.0),
            ("ingress-proxy", 100.0),
            ("application", 900.0),
        ],
    ));
    let dir = tempfile::tempdir().unwrap();
    let paths = write_inputs(dir.path(), &[("lab.json", json(&document))]);
    let line = verdict(&compare(&paths).expect("compare"));
    assert_eq!(
        line,
        "calico-bgp is 0.70 ms per request faster than flannel-vxlan, which spends more in \
         ingress-proxy (+0.30 ms); the client's time differs by +0.40 ms"
    );
}

#[test]
fn a_difference_within_the_runs_noise_says_so() {
    // 1,000 requests each between 150 and 800 µs (sd 117 µs): a standard
    // error of the mean of 3.7 µs per column, ±10 µs for the difference.
    let mut document = two_runs();
    document.runs[1].lab.client_latency.mean_us = 495.0;
    let dir = tempfile::tempdir().unwrap();
    let paths = write_inputs(dir.path(), &[("lab.json", json(&document))]);
    let line = verdict(&compare(&paths).expect("compare"));
    assert!(
        line.contains("within the runs' noise (±10 µs, two standard errors of the means)"),
        "{line}"
    );
    // 100 µs apart (the two runs as they are): not noise.
    let paths = write_inputs(dir.path(), &[("lab2.json", json(&two_runs()))]);
    let line = verdict(&compare(&paths).expect("compare"));
    assert!(!line.contains("noise"), "{line}");
}

#[test]
fn verdict_from_the_request_timeline_when_every_run_has_one() {
    let mut document = two_runs();
    document.runs[0].requests = Some(timeline(
        1770.0,
        &[
            ("application", 1200.0),
            ("ingress-proxy", 310.0),
            ("encapsulation", 21.0),
            ("kube-proxy", 35.0),
        ],
    ));
    document.runs[1].requests = Some(timeline(
        1360.0,
        &[
            ("application", 1200.0),
            ("ingress-proxy", 60.0),
            ("kube-proxy", 35.0),
        ],
    ));
    let dir = tempfile::tempdir().unwrap();
    let paths = write_inputs(dir.path(), &[("lab.json", json(&document))]);
    let comparison = compare(&paths).expect("compare");
    let table = comparison.category_table();
    assert_eq!(table.basis, Basis::Timeline);
    assert_eq!(table.categories[0], "application");
    assert_eq!(table.totals, [Some(1770.0), Some(1360.0)]);
    let line = verdict(&comparison);
    assert!(
        line.starts_with(
            "calico-bgp is 0.41 ms per request faster than flannel-vxlan, which spends more in ingress-proxy (+0.25 ms) and encapsulation (+21 µs)"
        ),
        "{line}"
    );
    // The timeline section and the share of the client's mean.
    let text = render_table(&comparison);
    assert!(text.contains("request timeline"), "{text}");
    assert!(text.contains("99.5%"), "{text}");
    // One run without a timeline: both fall back to the ledger.
    document.runs[1].requests = None;
    let paths = write_inputs(dir.path(), &[("lab2.json", json(&document))]);
    assert_eq!(
        compare(&paths).unwrap().category_table().basis,
        Basis::LedgerPerRequest
    );
}

#[test]
fn verdict_for_equal_and_single_columns() {
    let mut document = two_runs();
    document.runs[1] = document.runs[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let paths = write_inputs(dir.path(), &[("lab.json", json(&document))]);
    let comparison = compare(&paths).expect("compare");
    assert_eq!(comparison.labels(), ["flannel-vxlan", "flannel-vxlan (2)"]);
    assert_eq!(
        verdict(&comparison),
        "flannel-vxlan and flannel-vxlan (2) are within 0.0 µs per request of each other"
    );
    let single = Comparison {
        inputs: vec![comparison.inputs[0].clone()],
    };
    assert_eq!(
        verdict(&single),
        "flannel-vxlan: 0.50 ms per request, most of it encapsulation 50 µs (one column: nothing to compare)"
    );
}

#[test]
fn labels_default_and_given() {
    let mut document = two_runs();
    document.runs[1].lab = lab_with("flannel-vxlan", "builtin", 400.0);
    let dir = tempfile::tempdir().unwrap();
    let paths = write_inputs(
        dir.path(),
        &[
            ("lab.json", json(&document)),
            ("trace-node.json", json(&report(None, 1.0))),
        ],
    );
    let mut comparison = compare(&paths).expect("compare");
    // Only the ingress differs between the lab runs; a trace report is
    // named after its file.
    assert_eq!(
        comparison.labels(),
        ["flannel-vxlan/none", "flannel-vxlan/builtin", "trace-node"]
    );
    // Without a load generator in every column, time is per journey.
    assert_eq!(comparison.basis(), Basis::LedgerPerJourney);
    let err = comparison
        .set_labels(&["a".to_owned()])
        .expect_err("one label for three columns");
    let line = one_line(&err);
    assert!(
        line.contains("1 --label given for 3 columns")
            && line.contains("flannel-vxlan/none, flannel-vxlan/builtin, trace-node"),
        "{line}"
    );
    comparison
        .set_labels(&["before".to_owned(), "after".to_owned(), "after".to_owned()])
        .expect("three labels");
    assert_eq!(comparison.labels(), ["before", "after", "after (2)"]);
    assert!(verdict(&comparison).contains("per journey"));
}

#[test]
fn text_tables_fit_100_columns() {
    let mut document = two_runs();
    let more = document.runs.clone();
    document.runs.extend(more);
    for (index, run) in document.runs.iter_mut().enumerate() {
        run.lab.datapath = format!("a-rather-long-datapath-name-{index}");
    }
    let dir = tempfile::tempdir().unwrap();
    let paths = write_inputs(
        dir.path(),
        &[("lab-with-a-long-file-name.json", json(&document))],
    );
    let comparison = compare(&paths).expect("compare");
    assert_eq!(comparison.inputs.len(), 4);
    let text = render_table(&comparison);
    for line in text.lines() {
        assert!(
            line.chars().count() <= 100,
            "{} wide: {line}",
            line.chars().count()
        );
    }
}

#[test]
fn text_tables_break_lines_between_words_only() {
    // Three runs of one datapath (labels `flannel-host-gw (2)`, ...):
    // before, comfy-table cut `flannel-host-g|w`, `kernel-o|ther`,
    // `http-keep-aliv|e` to fit 100 columns.
    let mut document = two_runs();
    document.runs.push(document.runs[0].clone());
    for run in &mut document.runs {
        run.lab.datapath = "flannel-host-gw".to_owned();
    }
    let dir = tempfile::tempdir().unwrap();
    let paths = write_inputs(dir.path(), &[("lab.json", json(&document))]);
    let comparison = compare(&paths).expect("compare");
    let text = render_table(&comparison);
    // Every run of letters in a table line is a whole run of letters of
    // some header or cell: a cut word leaves pieces that are not.
    let letter_runs = |t: &str| -> Vec<String> {
        t.split(|c: char| !c.is_alphabetic())
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let mut words = std::collections::HashSet::new();
    for section in sections(&comparison) {
        for header in &section.header {
            words.extend(letter_runs(&header.text));
        }
        for row in &section.rows {
            for cell in row {
                words.extend(letter_runs(&cell.text));
            }
        }
    }
    let mut checked = 0;
    for line in text.lines().filter(|l| l.starts_with('│')) {
        for word in letter_runs(line) {
            assert!(
                words.contains(&word),
                "{word:?} is a cut word in: {line}\n{text}"
            );
            checked += 1;
        }
        assert!(line.chars().count() <= 100, "{line}");
    }
    assert!(checked > 100, "{text}");
    assert!(text.contains("flannel-host-gw"), "{text}");
}

#[test]
fn deltas_against_the_first_input() {
    let dir = tempfile::tempdir().unwrap();
    let paths = write_inputs(
        dir.path(),
        &[
            ("base.json", json(&report(Some("iptables"), 1.0))),
            ("other.json", json(&report(Some("cilium"), 2.0))),
        ],
    );
    let comparison = compare(&paths).expect("compare");
    assert_eq!(comparison.labels(), ["iptables", "cilium"]);
    assert_eq!(delta(Some(30.0), Some(45.0)), Some((15.0, Some(50.0))));
    let table = render_table(&comparison);
    // Client p50 200 → 400 (lab_section scales it), +200 (+100%).
    let p50 = table
        .lines()
        .find(|line| line.contains("│ p50"))
        .expect("p50 row");
    assert!(p50.contains("+200 (+100.0%)"), "{p50}");
    assert!(table.contains("load generator"));
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
    assert_eq!(verdict::human_us(410.0), "0.41 ms");
    assert_eq!(verdict::signed_us(-21.0), "−21 µs");
    assert_eq!(verdict::signed_us(3.25), "+3.2 µs");
}

#[test]
fn sparse_reports_still_compare_and_draw() {
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
    assert_eq!(comparison.labels(), ["full", "sparse"]);
    assert_eq!(comparison.basis(), Basis::LedgerPerJourney);
    let table = comparison.category_table();
    // full: (12 000 + 35 000) µs / 1000 journeys; sparse: 16.5 µs / 1.
    assert_eq!(table.values[0], [35.0, 0.0]);
    assert_eq!(table.values[1], [12.0, 16.5]);
    assert_eq!(table.totals[1], None);
    let text = render_table(&comparison);
    assert!(text.contains("node end to end"), "{text}");
    assert!(cdf_points(&comparison.inputs[0]).is_empty());
    let written = write_html(&comparison, &dir.path().join("out.html")).expect("html");
    assert_eq!(written.len(), 3);
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
fn empty_inputs_still_draw() {
    let empty = Comparison {
        inputs: vec![input(empty_report(), "e.json")],
    };
    assert!(
        category_bars_svg(&empty)
            .expect("bars")
            .contains("no data in the inputs")
    );
    assert!(
        latency_svg(&empty)
            .expect("latency")
            .contains("no data in the inputs")
    );
}

/// `x` and `width` of every `<rect>` filled with `colour` (plotters writes
/// `fill="#RRGGBB"`), left to right.
fn rects(svg: &str, colour: &str) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = svg
        .split("<rect")
        .skip(1)
        .filter(|rect| {
            rect.to_ascii_uppercase()
                .contains(&format!("FILL=\"{colour}\""))
        })
        .filter_map(|rect| {
            let attr = |name: &str| -> Option<f64> {
                let start = rect.find(&format!(" {name}=\""))? + name.len() + 3;
                rect[start..].split('"').next()?.parse().ok()
            };
            Some((attr("x")?, attr("width")?))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

#[test]
fn bars_have_one_colour_per_column_and_no_empty_slot() {
    let groups = ["a", "b", "c"].map(str::to_owned);
    let values = vec![vec![10.0, 20.0], vec![5.0, 6.0], vec![1.0, 2.0]];
    let svg = grouped_bars_svg("test", "test", &groups, &["one", "two"], &values).expect("svg");
    let first = rects(&svg, "#1F77B4");
    let second = rects(&svg, "#FF7F0E");
    // One bar per group in each column's colour (plus its legend swatch).
    assert_eq!(first.len(), 4, "{first:?}");
    assert_eq!(second.len(), 4, "{second:?}");
    let bars: Vec<(f64, f64)> = first.iter().copied().filter(|r| r.1 > 12.0).collect();
    assert_eq!(bars.len(), 3, "{bars:?}");
    // Groups are evenly spaced and the last one ends at the plot's right
    // edge (no empty slot after it): 720 px wide, 12 px margin.
    let slot = bars[1].0 - bars[0].0;
    assert!((bars[2].0 - bars[1].0 - slot).abs() <= 1.0, "{bars:?}");
    let plot_right = bars[0].0 - 0.1 * slot + 3.0 * slot;
    assert!(
        (plot_right - (720.0 - 12.0)).abs() <= 3.0,
        "{plot_right} {bars:?}"
    );
}

fn histogram(points: usize, scale: f64) -> Vec<(u64, f64, u64)> {
    (1..=points)
        .map(|i| {
            (
                (100.0 * scale * (1.0 + i as f64 * 0.1)) as u64,
                100.0 * i as f64 / points as f64,
                10,
            )
        })
        .collect()
}

#[test]
fn latency_is_a_cdf_only_from_enough_points_and_marks_identical_curves() {
    let dir = tempfile::tempdir().unwrap();
    // Four histogram points: p50/p90/p99 bars, never called a CDF.
    let paths = write_inputs(dir.path(), &[("lab.json", json(&two_runs()))]);
    let comparison = compare(&paths).expect("compare");
    assert!(!latency_is_cdf(&comparison));
    let bars = latency_svg(&comparison).expect("bars");
    assert!(
        bars.contains("p99") && !bars.contains("latency CDF"),
        "{bars}"
    );
    // Enough points, two identical curves and a third: a CDF whose legend
    // says which curve is drawn dashed over which.
    let mut document = two_runs();
    let mut third = document.runs[1].clone();
    third.lab.datapath = "cilium-like".to_owned();
    third.lab.client_latency.histogram = histogram(MIN_CDF_POINTS, 2.0);
    document.runs[0].lab.client_latency.histogram = histogram(MIN_CDF_POINTS, 1.0);
    document.runs[1].lab.client_latency.histogram = histogram(MIN_CDF_POINTS, 1.0);
    document.runs.push(third);
    let paths = write_inputs(dir.path(), &[("cdf.json", json(&document))]);
    let comparison = compare(&paths).expect("compare");
    assert!(latency_is_cdf(&comparison));
    let series: Vec<_> = comparison.inputs.iter().map(cdf_points).collect();
    assert!(same_curve(&series[0], &series[1]));
    assert!(!same_curve(&series[0], &series[2]));
    let cdf = latency_svg(&comparison).expect("cdf");
    assert!(cdf.contains("CDF"));
    assert!(
        cdf.contains("calico-bgp (dashed: same curve as flannel-vxlan)"),
        "{cdf}"
    );
    assert!(!cdf.contains("cilium-like (dashed"), "{cdf}");
    assert!(cdf.contains("stroke-dasharray") || cdf.matches("<polyline").count() > 3);
}

#[test]
fn html_is_self_contained_and_starts_with_the_per_request_chart() {
    let dir = tempfile::tempdir().unwrap();
    let mut nasty = two_runs();
    nasty.runs[1].lab.datapath = "<script>alert(1)</script>".to_owned();
    nasty.runs[1].nodes[0].node = "n&<>".to_owned();
    let paths = write_inputs(dir.path(), &[("a.json", json(&nasty))]);
    let comparison = compare(&paths).expect("compare");
    let html_path = dir.path().join("cmp.html");
    let written = write_html(&comparison, &html_path).expect("html");
    assert_eq!(
        written,
        vec![
            html_path.clone(),
            dir.path().join("cmp-categories.svg"),
            dir.path().join("cmp-latency.svg")
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
    // The verdict, then the per-request categories: first heading, first chart.
    let verdict_at = html.find("class=\"verdict\"").expect("verdict");
    let first_h2 = html.find("<h2>").expect("h2");
    assert!(verdict_at < first_h2);
    assert!(html[first_h2..].starts_with("<h2>Time per request by category"));
    let first_svg = html.find("<svg").expect("svg");
    assert!(html[first_svg..].contains("Time per request by category (mean µs)"));
    assert!(
        html.find("Time per request by category (mean µs)") < html.find("Latency p50"),
        "per-request chart first"
    );
    // Tables scroll inside their box; column colours in the headers.
    assert_eq!(
        html.matches("<div class=\"scroll\"><table>").count(),
        html.matches("<table>").count()
    );
    assert!(html.contains("background:#1f77b4") && html.contains("background:#ff7f0e"));
    for svg in &written[1..] {
        let content = std::fs::read_to_string(svg).unwrap();
        assert!(content.contains("<svg") && content.contains("<rect"));
    }
    let bars = std::fs::read_to_string(&written[1]).unwrap();
    assert!(bars.contains("encapsulation") && bars.contains("kube-proxy"));
}
