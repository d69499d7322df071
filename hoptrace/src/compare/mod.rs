//! `hoptrace compare`: side-by-side latency of several reports.
//!
//! Inputs are `hoptrace.report.v1` files (optionally with a `lab` section) or
//! `hoptrace.lab.v1` files holding runs of per-node reports. They are read as
//! untyped JSON on the documented fields only, so a report from a newer or
//! older writer still compares; any missing field shows as `-`.
//!
//! Output is a text table per category, per segment and end to end (p50 and
//! p99 of each input, and the difference to the first input), and optionally
//! a self-contained HTML page with SVG charts (no scripts, no external URLs).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use comfy_table::{Cell, CellAlignment, ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use plotters::prelude::*;
use serde_json::Value;

/// Schema name of a single-node report.
pub const REPORT_SCHEMA: &str = "hoptrace.report.v1";
/// Schema name of a lab file with several runs.
pub const LAB_SCHEMA: &str = "hoptrace.lab.v1";

/// Errors of `hoptrace compare`.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// No input file given.
    #[error("nothing to compare: give at least one report file")]
    NoInputs,
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A file is not JSON.
    #[error("{path} is not valid JSON: {source}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Underlying error.
        source: serde_json::Error,
    },
    /// A file has a schema this version does not know.
    #[error("{path} has schema {schema:?}; expected {REPORT_SCHEMA} or {LAB_SCHEMA}")]
    UnknownSchema {
        /// File.
        path: PathBuf,
        /// Schema found.
        schema: String,
    },
    /// A lab file without any node report.
    #[error("{path} contains no report (no runs[].nodes[])")]
    EmptyLab {
        /// File.
        path: PathBuf,
    },
    /// Writing the HTML page or an SVG failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// File.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Drawing a chart failed.
    #[error("cannot draw chart {chart}: {message}")]
    Chart {
        /// Chart name.
        chart: &'static str,
        /// What plotters said.
        message: String,
    },
}

/// Identity of a table row: a segment or category name split by direction
/// and connection state.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowKey {
    /// Segment name (segment rows), category (category rows) or `end-to-end`.
    pub name: String,
    /// Category of a segment row; `None` on other rows.
    pub category: Option<String>,
    /// Direction (`request`, `response`, `all`, ...); `-` when missing.
    pub direction: String,
    /// Connection state (`new`, `established`, `all`, ...); `-` when missing.
    pub conn_state: String,
}

/// Latency statistics of one row; `None` where the report lacks a field.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stat {
    /// Samples.
    pub count: Option<f64>,
    /// Median, µs.
    pub p50_us: Option<f64>,
    /// 90th percentile, µs.
    pub p90_us: Option<f64>,
    /// 99th percentile, µs.
    pub p99_us: Option<f64>,
    /// Maximum, µs.
    pub max_us: Option<f64>,
    /// Mean, µs.
    pub mean_us: Option<f64>,
    /// Share of the end-to-end time (0–1).
    pub share: Option<f64>,
}

/// Client-side latency of a lab run (`lab.client_latency`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientLatencyIn {
    /// Summary percentiles, µs.
    pub stat: Stat,
    /// `(value_us, percentile 0–100, count)` buckets, ascending.
    pub histogram: Vec<(f64, f64, f64)>,
}

/// Lab settings of an input (`lab.*`), as text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabInfo {
    /// Datapath (e.g. `iptables`, `cilium`).
    pub datapath: Option<String>,
    /// kube-proxy mode.
    pub kube_proxy: Option<String>,
    /// Number of services.
    pub services: Option<String>,
    /// Ingress proxy.
    pub ingress: Option<String>,
    /// Offered load, compact JSON.
    pub load: Option<String>,
}

/// One compared report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InputReport {
    /// Column label: `lab.datapath`, the run label or the file name.
    pub label: String,
    /// File it came from.
    pub source: PathBuf,
    /// `node`.
    pub node: Option<String>,
    /// `kernel`.
    pub kernel: Option<String>,
    /// `started_at`.
    pub started_at: Option<String>,
    /// `duration_s`.
    pub duration_s: Option<f64>,
    /// `lab`, when present.
    pub lab: Option<LabInfo>,
    /// `categories[]`.
    pub categories: Vec<(RowKey, Stat)>,
    /// `segments[]`.
    pub segments: Vec<(RowKey, Stat)>,
    /// `end_to_end[]` (name `end-to-end`).
    pub end_to_end: Vec<(RowKey, Stat)>,
    /// `lab.client_latency`, when present.
    pub client_latency: Option<ClientLatencyIn>,
}

impl InputReport {
    /// The overall end-to-end row: direction and conn_state `all`, else the
    /// row with the most samples.
    pub fn overall_end_to_end(&self) -> Option<&Stat> {
        preferred_row(self.end_to_end.iter())
    }

    /// p50 per category name, one row per name: the `all`/`all` row when there
    /// is one, else the row with the most samples. Order of first appearance.
    pub fn category_p50(&self) -> Vec<(String, f64)> {
        let mut names: Vec<&str> = Vec::new();
        for (key, _) in &self.categories {
            if !names.contains(&key.name.as_str()) {
                names.push(&key.name);
            }
        }
        names
            .into_iter()
            .filter_map(|name| {
                let rows = self.categories.iter().filter(|(key, _)| key.name == name);
                let p50 = preferred_row(rows)?.p50_us?;
                Some((name.to_owned(), p50))
            })
            .collect()
    }
}

fn preferred_row<'a>(rows: impl Iterator<Item = &'a (RowKey, Stat)> + Clone) -> Option<&'a Stat> {
    rows.clone()
        .find(|(key, _)| key.direction == "all" && key.conn_state == "all")
        .or_else(|| {
            rows.max_by(|a, b| {
                let count = |row: &&(RowKey, Stat)| row.1.count.unwrap_or(0.0);
                count(a).total_cmp(&count(b))
            })
        })
        .map(|(_, stat)| stat)
}

/// Reports to compare, the first one being the baseline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Comparison {
    /// Inputs in command-line order (a lab file contributes one per node).
    pub inputs: Vec<InputReport>,
}

/// Reads every file in `paths` (reports or lab files) into a [`Comparison`].
pub fn compare(paths: &[PathBuf]) -> Result<Comparison, CompareError> {
    if paths.is_empty() {
        return Err(CompareError::NoInputs);
    }
    let mut inputs = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|source| CompareError::Read {
            path: path.clone(),
            source,
        })?;
        let document: Value =
            serde_json::from_str(&text).map_err(|source| CompareError::Parse {
                path: path.clone(),
                source,
            })?;
        inputs.extend(inputs_from_document(&document, path)?);
    }
    make_labels_unique(&mut inputs);
    Ok(Comparison { inputs })
}

/// Turns one parsed file into its inputs.
pub fn inputs_from_document(
    document: &Value,
    path: &Path,
) -> Result<Vec<InputReport>, CompareError> {
    let file_label = path.file_stem().map_or_else(
        || path.display().to_string(),
        |stem| stem.to_string_lossy().into_owned(),
    );
    match document.get("schema").and_then(Value::as_str) {
        Some(LAB_SCHEMA) => {
            let mut inputs = Vec::new();
            let runs = document
                .get("runs")
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice);
            for (run_index, run) in runs.iter().enumerate() {
                let run_label =
                    text(run, "label").unwrap_or_else(|| format!("{file_label}#{}", run_index + 1));
                let nodes = run
                    .get("nodes")
                    .and_then(Value::as_array)
                    .map_or(&[][..], Vec::as_slice);
                for (node_index, node) in nodes.iter().enumerate() {
                    let mut input = parse_report(node, path);
                    let node_name = input
                        .node
                        .clone()
                        .unwrap_or_else(|| format!("node{}", node_index + 1));
                    input.label = if nodes.len() > 1 {
                        format!("{run_label}/{node_name}")
                    } else {
                        run_label.clone()
                    };
                    inputs.push(input);
                }
            }
            if inputs.is_empty() {
                return Err(CompareError::EmptyLab {
                    path: path.to_owned(),
                });
            }
            Ok(inputs)
        }
        Some(REPORT_SCHEMA) | None => {
            let mut input = parse_report(document, path);
            input.label = input
                .lab
                .as_ref()
                .and_then(|lab| lab.datapath.clone())
                .unwrap_or(file_label);
            Ok(vec![input])
        }
        Some(other) => Err(CompareError::UnknownSchema {
            path: path.to_owned(),
            schema: other.to_owned(),
        }),
    }
}

/// Appends ` (2)`, ` (3)` ... to repeated labels.
fn make_labels_unique(inputs: &mut [InputReport]) {
    let mut seen = HashSet::new();
    for input in inputs.iter_mut() {
        let base = input.label.clone();
        let mut candidate = base.clone();
        let mut n = 2;
        while !seen.insert(candidate.clone()) {
            candidate = format!("{base} ({n})");
            n += 1;
        }
        input.label = candidate;
    }
}

/// A field as text: strings as they are, numbers and booleans printed.
fn text(value: &Value, key: &str) -> Option<String> {
    match value.get(key)? {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

fn number(value: &Value, key: &str) -> Option<f64> {
    value.get(key)?.as_f64().filter(|x| x.is_finite())
}

fn parse_stat(row: &Value) -> Stat {
    Stat {
        count: number(row, "count"),
        p50_us: number(row, "p50_us"),
        p90_us: number(row, "p90_us"),
        p99_us: number(row, "p99_us"),
        max_us: number(row, "max_us"),
        mean_us: number(row, "mean_us"),
        share: number(row, "share"),
    }
}

fn parse_rows(report: &Value, field: &str, name_field: Option<&str>) -> Vec<(RowKey, Stat)> {
    let rows = report
        .get(field)
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    rows.iter()
        .filter(|row| row.is_object())
        .map(|row| {
            let category = text(row, "category");
            let (name, category) = match name_field {
                Some("segment") => (
                    text(row, "segment").unwrap_or_else(|| "-".to_owned()),
                    category,
                ),
                Some(_) => (category.unwrap_or_else(|| "-".to_owned()), None),
                None => ("end-to-end".to_owned(), None),
            };
            let key = RowKey {
                name,
                category,
                direction: text(row, "direction").unwrap_or_else(|| "-".to_owned()),
                conn_state: text(row, "conn_state").unwrap_or_else(|| "-".to_owned()),
            };
            (key, parse_stat(row))
        })
        .collect()
}

fn parse_report(report: &Value, path: &Path) -> InputReport {
    let lab_value = report.get("lab").filter(|lab| lab.is_object());
    let lab = lab_value.map(|lab| LabInfo {
        datapath: text(lab, "datapath"),
        kube_proxy: text(lab, "kube_proxy"),
        services: text(lab, "services"),
        ingress: text(lab, "ingress"),
        load: lab
            .get("load")
            .filter(|load| !load.is_null())
            .map(Value::to_string),
    });
    let client_latency = lab_value
        .and_then(|lab| lab.get("client_latency"))
        .filter(|latency| latency.is_object())
        .map(|latency| {
            let histogram = latency
                .get("histogram")
                .and_then(Value::as_array)
                .map(|buckets| {
                    buckets
                        .iter()
                        .filter_map(|bucket| {
                            let bucket = bucket.as_array()?;
                            let value = bucket.first()?.as_f64()?;
                            let percentile = bucket.get(1)?.as_f64()?;
                            let count = bucket.get(2).and_then(Value::as_f64).unwrap_or(0.0);
                            Some((value, percentile, count))
                        })
                        .collect()
                })
                .unwrap_or_default();
            ClientLatencyIn {
                stat: parse_stat(latency),
                histogram,
            }
        });
    InputReport {
        label: String::new(),
        source: path.to_owned(),
        node: text(report, "node"),
        kernel: text(report, "kernel"),
        started_at: text(report, "started_at"),
        duration_s: number(report, "duration_s"),
        lab,
        categories: parse_rows(report, "categories", Some("category")),
        segments: parse_rows(report, "segments", Some("segment")),
        end_to_end: parse_rows(report, "end_to_end", None),
        client_latency,
    }
}

/// Difference of `other` to `base`: (µs, percent). Percent is `None` when the
/// base is zero; the whole is `None` when a side is missing.
pub fn delta(base: Option<f64>, other: Option<f64>) -> Option<(f64, Option<f64>)> {
    let (base, other) = (base?, other?);
    let diff = other - base;
    let percent = (base != 0.0).then(|| diff / base * 100.0);
    Some((diff, percent))
}

/// A latency in µs, `-` when missing.
pub fn format_us(value: Option<f64>) -> String {
    match value {
        None => "-".to_owned(),
        Some(v) if v.abs() >= 100.0 || v.fract() == 0.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
    }
}

/// A delta as `+12 (+5.0%)`, `-` when a side is missing.
pub fn format_delta(delta: Option<(f64, Option<f64>)>) -> String {
    match delta {
        None => "-".to_owned(),
        Some((diff, percent)) => {
            let sign = if diff >= 0.0 { "+" } else { "" };
            let diff_text = format!("{sign}{}", format_us(Some(diff)));
            match percent {
                Some(p) => format!("{diff_text} ({}{p:.1}%)", if p >= 0.0 { "+" } else { "" }),
                None => format!("{diff_text} (n/a)"),
            }
        }
    }
}

/// Rows of one section across all inputs: the union of keys in order of
/// first appearance, with each input's statistics (or `None`).
fn section_rows<'a>(
    comparison: &'a Comparison,
    select: impl Fn(&'a InputReport) -> &'a [(RowKey, Stat)],
) -> Vec<(&'a RowKey, Vec<Option<&'a Stat>>)> {
    let mut keys: Vec<&RowKey> = Vec::new();
    let mut seen = HashSet::new();
    for input in &comparison.inputs {
        for (key, _) in select(input) {
            if seen.insert(key) {
                keys.push(key);
            }
        }
    }
    keys.into_iter()
        .map(|key| {
            let stats = comparison
                .inputs
                .iter()
                .map(|input| {
                    select(input)
                        .iter()
                        .find(|(k, _)| k == key)
                        .map(|(_, stat)| stat)
                })
                .collect();
            (key, stats)
        })
        .collect()
}

/// One comparison section (end to end, categories, segments) as rows of cells.
struct Section {
    title: &'static str,
    header: Vec<String>,
    /// Each cell with its delta sign (for colouring): -1 faster, 1 slower.
    rows: Vec<Vec<(String, i8)>>,
}

fn sections(comparison: &Comparison) -> Vec<Section> {
    let labels: Vec<&str> = comparison
        .inputs
        .iter()
        .map(|input| input.label.as_str())
        .collect();
    let value_header = |key_columns: &[&str]| {
        let mut header: Vec<String> = key_columns.iter().map(|c| (*c).to_owned()).collect();
        for (index, label) in labels.iter().enumerate() {
            header.push(format!("p50 µs\n{label}"));
            header.push(format!("p99 µs\n{label}"));
            if index > 0 {
                header.push(format!("Δp50\n{label}"));
                header.push(format!("Δp99\n{label}"));
            }
        }
        header
    };
    let value_cells = |stats: &[Option<&Stat>]| {
        let base = stats.first().copied().flatten();
        let mut cells = Vec::new();
        for (index, stat) in stats.iter().enumerate() {
            let p50 = stat.and_then(|s| s.p50_us);
            let p99 = stat.and_then(|s| s.p99_us);
            cells.push((format_us(p50), 0));
            cells.push((format_us(p99), 0));
            if index > 0 {
                for (base_value, value) in [
                    (base.and_then(|s| s.p50_us), p50),
                    (base.and_then(|s| s.p99_us), p99),
                ] {
                    let d = delta(base_value, value);
                    let sign = d.map_or(0, |(diff, _)| {
                        if diff > 0.0 {
                            1
                        } else if diff < 0.0 {
                            -1
                        } else {
                            0
                        }
                    });
                    cells.push((format_delta(d), sign));
                }
            }
        }
        cells
    };

    let mut end_to_end = Section {
        title: "End to end",
        header: value_header(&["measure", "dir", "conn"]),
        rows: Vec::new(),
    };
    for (key, stats) in section_rows(comparison, |input| &input.end_to_end) {
        let mut row = vec![
            (key.name.clone(), 0),
            (key.direction.clone(), 0),
            (key.conn_state.clone(), 0),
        ];
        row.extend(value_cells(&stats));
        end_to_end.rows.push(row);
    }
    if comparison
        .inputs
        .iter()
        .any(|input| input.client_latency.is_some())
    {
        let stats: Vec<Option<&Stat>> = comparison
            .inputs
            .iter()
            .map(|input| input.client_latency.as_ref().map(|latency| &latency.stat))
            .collect();
        let mut row = vec![
            ("client (load generator)".to_owned(), 0),
            ("-".to_owned(), 0),
            ("-".to_owned(), 0),
        ];
        row.extend(value_cells(&stats));
        end_to_end.rows.push(row);
    }

    let mut categories = Section {
        title: "Per category",
        header: value_header(&["category", "dir", "conn"]),
        rows: Vec::new(),
    };
    for (key, stats) in section_rows(comparison, |input| &input.categories) {
        let mut row = vec![
            (key.name.clone(), 0),
            (key.direction.clone(), 0),
            (key.conn_state.clone(), 0),
        ];
        row.extend(value_cells(&stats));
        categories.rows.push(row);
    }

    let mut segments = Section {
        title: "Per segment",
        header: value_header(&["segment", "category", "dir", "conn"]),
        rows: Vec::new(),
    };
    for (key, stats) in section_rows(comparison, |input| &input.segments) {
        let mut row = vec![
            (key.name.clone(), 0),
            (key.category.clone().unwrap_or_else(|| "-".to_owned()), 0),
            (key.direction.clone(), 0),
            (key.conn_state.clone(), 0),
        ];
        row.extend(value_cells(&stats));
        segments.rows.push(row);
    }
    vec![end_to_end, categories, segments]
}

fn inputs_overview(comparison: &Comparison) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let header = vec![
        "label",
        "file",
        "node",
        "kernel",
        "started",
        "duration s",
        "datapath",
        "kube-proxy",
        "services",
        "ingress",
    ];
    let dash = |value: Option<&String>| value.cloned().unwrap_or_else(|| "-".to_owned());
    let rows = comparison
        .inputs
        .iter()
        .map(|input| {
            let lab = input.lab.as_ref();
            vec![
                input.label.clone(),
                input.source.display().to_string(),
                dash(input.node.as_ref()),
                dash(input.kernel.as_ref()),
                dash(input.started_at.as_ref()),
                input
                    .duration_s
                    .map_or_else(|| "-".to_owned(), |d| format!("{d:.1}")),
                dash(lab.and_then(|l| l.datapath.as_ref())),
                dash(lab.and_then(|l| l.kube_proxy.as_ref())),
                dash(lab.and_then(|l| l.services.as_ref())),
                dash(lab.and_then(|l| l.ingress.as_ref())),
            ]
        })
        .collect();
    (header, rows)
}

/// The comparison as text tables (inputs, end to end, categories, segments).
pub fn render_table(comparison: &Comparison) -> String {
    let mut out = String::new();
    let (header, rows) = inputs_overview(comparison);
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header);
    for row in rows {
        table.add_row(row);
    }
    let _ = writeln!(
        out,
        "Inputs (deltas are against {}):\n{table}\n",
        baseline_label(comparison)
    );
    for section in sections(comparison) {
        let mut table = Table::new();
        table
            .load_preset(UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header(section.header.clone());
        let key_columns = section
            .header
            .iter()
            .take_while(|h| !h.starts_with("p50"))
            .count();
        for row in &section.rows {
            table.add_row(row.iter().enumerate().map(|(index, (cell, _))| {
                let cell = Cell::new(cell);
                if index >= key_columns {
                    cell.set_alignment(CellAlignment::Right)
                } else {
                    cell
                }
            }));
        }
        if section.rows.is_empty() {
            let _ = writeln!(out, "{}: no data\n", section.title);
        } else {
            let _ = writeln!(out, "{}:\n{table}\n", section.title);
        }
    }
    out
}

fn baseline_label(comparison: &Comparison) -> &str {
    comparison
        .inputs
        .first()
        .map_or("-", |input| input.label.as_str())
}

/// Colours of chart series, distinct and readable on white.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn chart_error(chart: &'static str) -> impl Fn(String) -> CompareError {
    move |message| CompareError::Chart { chart, message }
}

/// SVG of stacked p50 bars: one bar per input, one stack layer per category.
pub fn category_bars_svg(comparison: &Comparison) -> Result<String, CompareError> {
    const CHART: &str = "category p50";
    let per_input: Vec<Vec<(String, f64)>> = comparison
        .inputs
        .iter()
        .map(InputReport::category_p50)
        .collect();
    let mut categories: Vec<String> = Vec::new();
    for (name, _) in per_input.iter().flatten() {
        if !categories.contains(name) {
            categories.push(name.clone());
        }
    }
    let totals: Vec<f64> = per_input
        .iter()
        .map(|row| row.iter().map(|(_, v)| v).sum())
        .collect();
    let top = totals.iter().copied().fold(0.0, f64::max);
    let top = if top > 0.0 { top * 1.15 } else { 1.0 };
    let count = comparison.inputs.len().max(1) as i32;
    let labels: Vec<String> = comparison
        .inputs
        .iter()
        .map(|input| input.label.clone())
        .collect();
    let width = (260 + 140 * count as u32).clamp(720, 1400);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, 460)).into_drawing_area();
        let err = chart_error(CHART);
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption("p50 latency per category (stacked, µs)", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            // One slot more than there are inputs: the legend sits in the
            // empty last slot instead of over a bar.
            .build_cartesian_2d((0..count).into_segmented(), 0.0..top)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .max_light_lines(1)
            .y_desc("µs")
            .x_labels(count as usize)
            .x_label_formatter(&|value| match value {
                SegmentValue::CenterOf(index) | SegmentValue::Exact(index) => {
                    labels.get(*index as usize).cloned().unwrap_or_default()
                }
                SegmentValue::Last => String::new(),
            })
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        for (category_index, category) in categories.iter().enumerate() {
            let color = PALETTE[category_index % PALETTE.len()];
            let bars: Vec<Rectangle<(SegmentValue<i32>, f64)>> = per_input
                .iter()
                .enumerate()
                .filter_map(|(input_index, row)| {
                    let position = row.iter().position(|(name, _)| name == category)?;
                    let below: f64 = row[..position].iter().map(|(_, v)| v).sum();
                    let value = row[position].1;
                    let x = input_index as i32;
                    let mut bar = Rectangle::new(
                        [
                            (SegmentValue::Exact(x), below),
                            (SegmentValue::Exact(x + 1), below + value),
                        ],
                        color.filled(),
                    );
                    bar.set_margin(0, 0, 18, 18);
                    Some(bar)
                })
                .collect();
            chart
                .draw_series(bars)
                .map_err(|e| err(e.to_string()))?
                .label(category.as_str())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 12, y + 6)], color.filled())
                });
        }
        if categories.is_empty() {
            root.draw_text(
                "no category data in the inputs",
                &("sans-serif", 18).into_text_style(&root),
                (width as i32 / 2 - 140, 220),
            )
            .map_err(|e| err(e.to_string()))?;
        } else {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .draw()
                .map_err(|e| err(e.to_string()))?;
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}

/// CDF points `(value_us, fraction 0–1)` of an input and whether they come
/// from the client histogram (`true`) or from end-to-end percentiles.
pub fn cdf_points(input: &InputReport) -> (Vec<(f64, f64)>, bool) {
    if let Some(latency) = &input.client_latency
        && !latency.histogram.is_empty()
    {
        let mut points: Vec<(f64, f64)> = latency
            .histogram
            .iter()
            .filter(|(value, _, _)| *value > 0.0)
            .map(|(value, percentile, _)| (*value, (percentile / 100.0).clamp(0.0, 1.0)))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        return (points, true);
    }
    let Some(stat) = input.overall_end_to_end() else {
        return (Vec::new(), false);
    };
    let points = [
        (stat.p50_us, 0.5),
        (stat.p90_us, 0.9),
        (stat.p99_us, 0.99),
        (stat.max_us, 1.0),
    ]
    .into_iter()
    .filter_map(|(value, fraction)| Some((value.filter(|v| *v > 0.0)?, fraction)))
    .collect();
    (points, false)
}

/// SVG of the end-to-end latency CDF of every input (log µs axis).
pub fn cdf_svg(comparison: &Comparison) -> Result<String, CompareError> {
    const CHART: &str = "end-to-end CDF";
    let series: Vec<(String, Vec<(f64, f64)>)> = comparison
        .inputs
        .iter()
        .map(|input| {
            let (points, from_client) = cdf_points(input);
            let source = if from_client { "client" } else { "percentiles" };
            (format!("{} ({source})", input.label), points)
        })
        .collect();
    let values = series
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.0));
    let low = values.clone().fold(f64::INFINITY, f64::min);
    let high = values.fold(0.0, f64::max);
    let (low, high) = if low.is_finite() && high > 0.0 {
        (low / 1.5, high * 1.5)
    } else {
        (1.0, 1000.0)
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 460)).into_drawing_area();
        let err = chart_error(CHART);
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption("End-to-end latency CDF", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d((low..high).log_scale(), 0.0..1.0)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .max_light_lines(1)
            .x_label_formatter(&|value| format!("{value:.0}"))
            .x_desc("latency µs (log scale)")
            .y_desc("fraction of requests ≤ x")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        let mut any = false;
        for (index, (label, points)) in series.iter().enumerate() {
            if points.is_empty() {
                continue;
            }
            any = true;
            let color = PALETTE[index % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(|e| err(e.to_string()))?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], color.stroke_width(3))
                });
        }
        if any {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .draw()
                .map_err(|e| err(e.to_string()))?;
        } else {
            root.draw_text(
                "no end-to-end data in the inputs",
                &("sans-serif", 18).into_text_style(&root),
                (300, 220),
            )
            .map_err(|e| err(e.to_string()))?;
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Strips an XML declaration so the SVG can sit inline in HTML.
fn inline_svg(svg: &str) -> &str {
    match svg.find("<svg") {
        Some(start) => &svg[start..],
        None => svg,
    }
}

const PAGE_CSS: &str = "
body { font-family: sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 24px; margin-bottom: 4px; }
h2 { font-size: 19px; margin-top: 28px; border-bottom: 1px solid #ccc; padding-bottom: 4px; }
p.note { color: #555; margin-top: 0; }
figure { margin: 12px 0; }
figure svg { max-width: 100%; height: auto; border: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0 16px 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; }
th { background: #f0f0f0; white-space: pre-line; text-align: center; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.slower { color: #b00020; }
td.faster { color: #1b7f2a; }
";

fn html_table(out: &mut String, header: &[String], rows: &[Vec<(String, i8)>], key_columns: usize) {
    out.push_str("<table>\n<tr>");
    for cell in header {
        let _ = write!(out, "<th>{}</th>", escape(cell));
    }
    out.push_str("</tr>\n");
    for row in rows {
        out.push_str("<tr>");
        for (index, (cell, sign)) in row.iter().enumerate() {
            let class = match (index >= key_columns, sign) {
                (false, _) => "",
                (true, 1) => " class=\"num slower\"",
                (true, -1) => " class=\"num faster\"",
                (true, _) => " class=\"num\"",
            };
            let _ = write!(out, "<td{class}>{}</td>", escape(cell));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

/// The whole HTML page for `comparison` with the given chart SVGs inline.
pub fn render_html(comparison: &Comparison, charts: &[(&str, &str)]) -> String {
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<title>hoptrace compare</title>\n<style>");
    out.push_str(PAGE_CSS);
    out.push_str("</style>\n</head>\n<body>\n<h1>hoptrace compare</h1>\n");
    let _ = writeln!(
        out,
        "<p class=\"note\">{} input(s); deltas are against <b>{}</b> (red: slower, green: faster).</p>",
        comparison.inputs.len(),
        escape(baseline_label(comparison))
    );
    let (header, rows) = inputs_overview(comparison);
    out.push_str("<h2>Inputs</h2>\n");
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let rows: Vec<Vec<(String, i8)>> = rows
        .into_iter()
        .map(|row| row.into_iter().map(|cell| (cell, 0)).collect())
        .collect();
    html_table(&mut out, &header, &rows, usize::MAX);
    for (title, svg) in charts {
        let _ = writeln!(
            out,
            "<h2>{}</h2>\n<figure>{}</figure>",
            escape(title),
            inline_svg(svg)
        );
    }
    for section in sections(comparison) {
        let _ = writeln!(out, "<h2>{}</h2>", section.title);
        if section.rows.is_empty() {
            out.push_str("<p class=\"note\">no data</p>\n");
            continue;
        }
        let key_columns = section
            .header
            .iter()
            .take_while(|h| !h.starts_with("p50"))
            .count();
        html_table(&mut out, &section.header, &section.rows, key_columns);
    }
    out.push_str("</body>\n</html>\n");
    out
}

/// Writes the HTML page to `path` and each chart as `<stem>-<chart>.svg`
/// next to it. Returns the written files, the page first.
pub fn write_html(comparison: &Comparison, path: &Path) -> Result<Vec<PathBuf>, CompareError> {
    let bars = category_bars_svg(comparison)?;
    let cdf = cdf_svg(comparison)?;
    let stem = path.file_stem().map_or_else(
        || "compare".to_owned(),
        |stem| stem.to_string_lossy().into_owned(),
    );
    let dir = path.parent().unwrap_or_else(|| Path::new(""));
    let write = |target: &Path, content: &str| {
        std::fs::write(target, content).map_err(|source| CompareError::Write {
            path: target.to_owned(),
            source,
        })
    };
    let page = render_html(
        comparison,
        &[
            ("p50 latency per category", &bars),
            ("End-to-end latency CDF", &cdf),
        ],
    );
    write(path, &page)?;
    let mut written = vec![path.to_owned()];
    for (suffix, svg) in [("categories", &bars), ("cdf", &cdf)] {
        let target = dir.join(format!("{stem}-{suffix}.svg"));
        write(&target, svg)?;
        written.push(target);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(datapath: Option<&str>, scale: f64) -> Value {
        let mut report = json!({
            "schema": REPORT_SCHEMA,
            "node": "node-a",
            "kernel": "6.18.0",
            "started_at": "2025-01-01T00:00:00Z",
            "duration_s": 10.0,
            "segments": [
                {"segment": "pod-veth→bridge", "category": "bridge", "direction": "request", "conn_state": "established",
                 "count": 1000, "p50_us": 10.0 * scale, "p90_us": 15.0, "p99_us": 40.0 * scale, "max_us": 90.0, "mean_us": 12.0, "share": 0.1},
                {"segment": "dnat", "category": "netfilter", "direction": "request", "conn_state": "new",
                 "count": 50, "p50_us": 30.0 * scale, "p99_us": 80.0 * scale}
            ],
            "categories": [
                {"category": "bridge", "direction": "all", "conn_state": "all", "count": 1000, "p50_us": 10.0 * scale, "p99_us": 40.0 * scale},
                {"category": "netfilter", "direction": "all", "conn_state": "all", "count": 1000, "p50_us": 30.0 * scale, "p99_us": 80.0 * scale},
                {"category": "netfilter", "direction": "request", "conn_state": "new", "count": 50, "p50_us": 99.0, "p99_us": 120.0}
            ],
            "end_to_end": [
                {"direction": "all", "conn_state": "all", "count": 1000, "p50_us": 100.0 * scale, "p90_us": 150.0 * scale, "p99_us": 300.0 * scale, "max_us": 900.0 * scale, "mean_us": 120.0}
            ]
        });
        if let Some(datapath) = datapath {
            report["lab"] = json!({
                "datapath": datapath, "kube_proxy": "iptables", "services": 100, "ingress": "none",
                "load": {"rate": 1000},
                "client_latency": {"p50_us": 200 * scale as u64, "p90_us": 300, "p99_us": 500, "max_us": 800,
                    "histogram": [[150, 10.0, 100], [200, 50.0, 400], [400, 99.0, 490], [800, 100.0, 10]]}
            });
        }
        report
    }

    fn write_inputs(dir: &Path, documents: &[(&str, Value)]) -> Vec<PathBuf> {
        documents
            .iter()
            .map(|(name, document)| {
                let path = dir.join(name);
                std::fs::write(&path, serde_json::to_string_pretty(document).unwrap()).unwrap();
                path
            })
            .collect()
    }

    #[test]
    fn deltas_against_the_first_input() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_inputs(
            dir.path(),
            &[
                ("base.json", report(Some("iptables"), 1.0)),
                ("other.json", report(Some("cilium"), 1.5)),
            ],
        );
        let comparison = compare(&paths).expect("compare");
        let labels: Vec<&str> = comparison.inputs.iter().map(|i| i.label.as_str()).collect();
        assert_eq!(labels, ["iptables", "cilium"]);
        assert_eq!(delta(Some(30.0), Some(45.0)), Some((15.0, Some(50.0))));
        let table = render_table(&comparison);
        // netfilter all/all: p50 30 → 45 (+15, +50%), p99 80 → 120 (+40, +50%).
        let netfilter = table
            .lines()
            .find(|line| line.contains("netfilter") && line.contains("all"))
            .expect("netfilter row");
        assert!(netfilter.contains("+15 (+50.0%)"), "{netfilter}");
        assert!(netfilter.contains("+40 (+50.0%)"), "{netfilter}");
        // End to end: p50 100 → 150.
        let e2e = table
            .lines()
            .find(|line| line.contains("end-to-end"))
            .expect("e2e row");
        assert!(e2e.contains("+50 (+50.0%)"), "{e2e}");
        assert!(table.contains("client (load generator)"));
        // The category chart stacks the all/all rows, not the request/new one.
        assert_eq!(
            comparison.inputs[1].category_p50(),
            vec![("bridge".to_owned(), 15.0), ("netfilter".to_owned(), 45.0)]
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
    fn missing_fields_show_dashes() {
        let dir = tempfile::tempdir().unwrap();
        let sparse = json!({
            "schema": REPORT_SCHEMA,
            "categories": [{"category": "bridge"}, {"p50_us": "not a number"}, 17],
            "segments": "not a list",
        });
        let paths = write_inputs(
            dir.path(),
            &[("full.json", report(None, 1.0)), ("sparse.json", sparse)],
        );
        let comparison = compare(&paths).expect("compare");
        assert_eq!(comparison.inputs[0].label, "full");
        assert_eq!(comparison.inputs[1].label, "sparse");
        assert!(comparison.inputs[1].segments.is_empty());
        let table = render_table(&comparison);
        let bridge = table
            .lines()
            .find(|line| line.contains("bridge") && line.contains("all"))
            .expect("bridge row");
        assert!(bridge.contains(" - "), "{bridge}");
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
        node_b["node"] = json!("node-b");
        let lab = json!({
            "schema": LAB_SCHEMA,
            "runs": [
                {"label": "iptables-1k", "nodes": [report(Some("iptables"), 1.0), node_b]},
                {"nodes": [report(None, 3.0)]}
            ]
        });
        let paths = write_inputs(
            dir.path(),
            &[
                ("lab.json", lab),
                ("single.json", report(Some("iptables"), 1.0)),
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
                ("schema.json", json!({"schema": "other.v9"})),
                ("empty-lab.json", json!({"schema": LAB_SCHEMA, "runs": []})),
            ],
        );
        assert!(matches!(
            compare(&paths[..1]),
            Err(CompareError::UnknownSchema { .. })
        ));
        assert!(matches!(
            compare(&paths[1..]),
            Err(CompareError::EmptyLab { .. })
        ));
        std::fs::write(dir.path().join("bad.json"), "{ not json").unwrap();
        assert!(matches!(
            compare(&[dir.path().join("bad.json")]),
            Err(CompareError::Parse { .. })
        ));
    }

    #[test]
    fn single_input_and_empty_inputs_still_draw() {
        let single = Comparison {
            inputs: vec![parse_report(
                &report(Some("iptables"), 1.0),
                Path::new("a.json"),
            )],
        };
        let bars = category_bars_svg(&single).expect("bars");
        assert!(bars.contains("netfilter"));
        let empty = Comparison {
            inputs: vec![parse_report(&json!({}), Path::new("e.json"))],
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
                ("a.json", report(Some("cilium"), 1.0)),
                ("b.json", report(Some("cilium"), 1.1)),
            ],
        );
        let comparison = compare(&paths).expect("compare");
        assert_eq!(comparison.inputs[1].label, "cilium (2)");
    }

    #[test]
    fn html_is_self_contained() {
        let dir = tempfile::tempdir().unwrap();
        let mut nasty = report(Some("<script>alert(1)</script>"), 1.2);
        nasty["node"] = json!("n&<>");
        let paths = write_inputs(
            dir.path(),
            &[("a.json", report(Some("iptables"), 1.0)), ("b.json", nasty)],
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
        assert!(bars.contains("netfilter") && bars.contains("bridge"));
    }
}
