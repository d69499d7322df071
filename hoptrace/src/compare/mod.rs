//! `hoptrace compare`: side-by-side latency of several reports.
//!
//! Inputs are node reports (`hoptrace.report.v1`, with or without a `lab`
//! section) or lab documents (`hoptrace.lab.v1`, one input per node report
//! of every run), read through the typed schema of
//! [`hoptrace_core::report`]: anything else is refused with the file's name
//! and what was expected.
//!
//! Output is a text table per category, per segment and end to end (p50 and
//! p99 of each input, and the difference to the first input); a row missing
//! from an input shows `-`. `html.rs` adds a self-contained HTML page with SVG
//! charts (no scripts, no external URLs).

mod html;
#[cfg(test)]
mod tests;

pub use html::write_html;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use comfy_table::{Cell, CellAlignment, ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use hoptrace_core::report::{ALL, ClientLatency, Document, DocumentError, Report, Stats};

/// Errors of `hoptrace compare`.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// No input file given.
    #[error("nothing to compare: give at least one report file")]
    NoInputs,
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// File.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not a hoptrace document this version reads.
    #[error("cannot compare {path}")]
    Document {
        /// File.
        path: PathBuf,
        /// What is wrong and what was expected.
        #[source]
        source: DocumentError,
    },
    /// A lab document without any node report.
    #[error("{path} contains no report (no runs[].nodes[])")]
    EmptyLab {
        /// File.
        path: PathBuf,
    },
    /// Writing the HTML page or an SVG failed.
    #[error("cannot write {path}")]
    Write {
        /// File.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Drawing a chart failed.
    #[error("cannot draw chart {chart}")]
    Chart {
        /// Chart name.
        chart: &'static str,
        /// What plotters said.
        #[source]
        source: plotters::drawing::DrawingAreaErrorKind<std::io::Error>,
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
    /// `egress`, `ingress`, `local` or `all`.
    pub direction: String,
    /// `new`, `established` or `all`.
    pub conn_state: String,
}

/// One compared report.
#[derive(Debug, Clone, PartialEq)]
pub struct InputReport {
    /// Column label: `lab.datapath`, the run label or the file name.
    pub label: String,
    /// File it came from.
    pub source: PathBuf,
    /// The report.
    pub report: Report,
}

impl InputReport {
    /// `end_to_end[]`, each row named `end-to-end`.
    pub fn end_to_end_rows(&self) -> Vec<(RowKey, &Stats)> {
        self.report
            .end_to_end
            .iter()
            .map(|row| {
                let key = RowKey {
                    name: "end-to-end".to_owned(),
                    category: None,
                    direction: row.direction.clone(),
                    conn_state: row.conn_state.clone(),
                };
                (key, &row.stats)
            })
            .collect()
    }

    /// `categories[]`, named by category.
    pub fn category_rows(&self) -> Vec<(RowKey, &Stats)> {
        self.report
            .categories
            .iter()
            .map(|row| {
                let key = RowKey {
                    name: row.category.name().to_owned(),
                    category: None,
                    direction: row.direction.clone(),
                    conn_state: row.conn_state.clone(),
                };
                (key, &row.stats)
            })
            .collect()
    }

    /// `segments[]`, named by segment, with their category.
    pub fn segment_rows(&self) -> Vec<(RowKey, &Stats)> {
        self.report
            .segments
            .iter()
            .map(|row| {
                let key = RowKey {
                    name: row.segment.clone(),
                    category: Some(row.category.name().to_owned()),
                    direction: row.direction.name().to_owned(),
                    conn_state: row.conn_state.name().to_owned(),
                };
                (key, &row.stats)
            })
            .collect()
    }

    /// `lab.client_latency`, when the report has a `lab` section.
    pub fn client_latency(&self) -> Option<&ClientLatency> {
        self.report.lab.as_ref().map(|lab| &lab.client_latency)
    }

    /// The overall end-to-end row: direction and conn_state `all`, else the
    /// row with the most samples.
    pub fn overall_end_to_end(&self) -> Option<&Stats> {
        preferred_row(
            self.report
                .end_to_end
                .iter()
                .map(|row| (row.direction.as_str(), row.conn_state.as_str(), &row.stats)),
        )
    }

    /// p50 per category name, one row per name: the `all`/`all` row when there
    /// is one, else the row with the most samples. Order of first appearance.
    pub fn category_p50(&self) -> Vec<(String, f64)> {
        let mut names: Vec<&str> = Vec::new();
        for row in &self.report.categories {
            if !names.contains(&row.category.name()) {
                names.push(row.category.name());
            }
        }
        names
            .into_iter()
            .filter_map(|name| {
                let rows = self
                    .report
                    .categories
                    .iter()
                    .filter(|row| row.category.name() == name)
                    .map(|row| (row.direction.as_str(), row.conn_state.as_str(), &row.stats));
                Some((name.to_owned(), preferred_row(rows)?.p50_us))
            })
            .collect()
    }
}

/// Of `(direction, conn_state, stats)` rows: the `all`/`all` one, else the
/// one with the most samples.
fn preferred_row<'a>(
    rows: impl Iterator<Item = (&'a str, &'a str, &'a Stats)> + Clone,
) -> Option<&'a Stats> {
    rows.clone()
        .find(|(direction, conn_state, _)| *direction == ALL && *conn_state == ALL)
        .or_else(|| rows.max_by_key(|(_, _, stats)| stats.count))
        .map(|(_, _, stats)| stats)
}

/// Reports to compare, the first one being the baseline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Comparison {
    /// Inputs in command-line order (a lab document contributes one per node).
    pub inputs: Vec<InputReport>,
}

/// Reads every file in `paths` (node reports or lab documents) into a
/// [`Comparison`].
///
/// # Errors
/// [`CompareError::NoInputs`] without paths, [`CompareError::Read`] when a
/// file cannot be read, [`CompareError::Document`] when it is not a
/// hoptrace document and [`CompareError::EmptyLab`] for a lab document
/// without node reports.
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
        let document = Document::from_json(&text).map_err(|source| CompareError::Document {
            path: path.clone(),
            source,
        })?;
        inputs.extend(inputs_from_document(document, path)?);
    }
    make_labels_unique(&mut inputs);
    Ok(Comparison { inputs })
}

/// Turns one document into its inputs: a node report is one input, a lab
/// document one per node report of every run. `path` names the source.
///
/// # Errors
/// [`CompareError::EmptyLab`] for a lab document without node reports.
pub fn inputs_from_document(
    document: Document,
    path: &Path,
) -> Result<Vec<InputReport>, CompareError> {
    let file_label = path.file_stem().map_or_else(
        || path.display().to_string(),
        |stem| stem.to_string_lossy().into_owned(),
    );
    match document {
        Document::Lab(lab) => {
            let mut inputs = Vec::new();
            for (run_index, run) in lab.runs.into_iter().enumerate() {
                let run_label = if run.label.is_empty() {
                    format!("{file_label}#{}", run_index + 1)
                } else {
                    run.label
                };
                let several = run.nodes.len() > 1;
                for (node_index, report) in run.nodes.into_iter().enumerate() {
                    let label = if several {
                        let node_name = if report.node.is_empty() {
                            format!("node{}", node_index + 1)
                        } else {
                            report.node.clone()
                        };
                        format!("{run_label}/{node_name}")
                    } else {
                        run_label.clone()
                    };
                    inputs.push(InputReport {
                        label,
                        source: path.to_owned(),
                        report,
                    });
                }
            }
            if inputs.is_empty() {
                return Err(CompareError::EmptyLab {
                    path: path.to_owned(),
                });
            }
            Ok(inputs)
        }
        Document::Report(report) => {
            let label = report
                .lab
                .as_ref()
                .map_or(file_label, |lab| lab.datapath.clone());
            Ok(vec![InputReport {
                label,
                source: path.to_owned(),
                report: *report,
            }])
        }
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
    select: impl Fn(&'a InputReport) -> Vec<(RowKey, &'a Stats)>,
) -> Vec<(RowKey, Vec<Option<&'a Stats>>)> {
    let per_input: Vec<Vec<(RowKey, &Stats)>> = comparison.inputs.iter().map(select).collect();
    let mut keys: Vec<&RowKey> = Vec::new();
    let mut seen = HashSet::new();
    for (key, _) in per_input.iter().flatten() {
        if seen.insert(key) {
            keys.push(key);
        }
    }
    keys.into_iter()
        .map(|key| {
            let stats = per_input
                .iter()
                .map(|rows| rows.iter().find(|(k, _)| k == key).map(|(_, stats)| *stats))
                .collect();
            (key.clone(), stats)
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

impl Section {
    /// Columns before the first value column (`p50 ...`).
    fn key_columns(&self) -> usize {
        self.header
            .iter()
            .take_while(|h| !h.starts_with("p50"))
            .count()
    }
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
    let value_cells = |stats: &[Option<&Stats>]| {
        let base = stats.first().copied().flatten();
        let mut cells = Vec::new();
        for (index, stat) in stats.iter().enumerate() {
            let p50 = stat.map(|s| s.p50_us);
            let p99 = stat.map(|s| s.p99_us);
            cells.push((format_us(p50), 0));
            cells.push((format_us(p99), 0));
            if index > 0 {
                for (base_value, value) in
                    [(base.map(|s| s.p50_us), p50), (base.map(|s| s.p99_us), p99)]
                {
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
    let key_cells = |key: &RowKey, with_category: bool| {
        let mut cells = vec![(key.name.clone(), 0)];
        if with_category {
            cells.push((key.category.clone().unwrap_or_else(|| "-".to_owned()), 0));
        }
        cells.push((key.direction.clone(), 0));
        cells.push((key.conn_state.clone(), 0));
        cells
    };

    let mut end_to_end = Section {
        title: "End to end",
        header: value_header(&["measure", "dir", "conn"]),
        rows: Vec::new(),
    };
    for (key, stats) in section_rows(comparison, InputReport::end_to_end_rows) {
        let mut row = key_cells(&key, false);
        row.extend(value_cells(&stats));
        end_to_end.rows.push(row);
    }
    let client: Vec<Option<Stats>> = comparison
        .inputs
        .iter()
        .map(|input| input.client_latency().map(ClientLatency::stats))
        .collect();
    if client.iter().any(Option::is_some) {
        let stats: Vec<Option<&Stats>> = client.iter().map(Option::as_ref).collect();
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
    for (key, stats) in section_rows(comparison, InputReport::category_rows) {
        let mut row = key_cells(&key, false);
        row.extend(value_cells(&stats));
        categories.rows.push(row);
    }

    let mut segments = Section {
        title: "Per segment",
        header: value_header(&["segment", "category", "dir", "conn"]),
        rows: Vec::new(),
    };
    for (key, stats) in section_rows(comparison, InputReport::segment_rows) {
        let mut row = key_cells(&key, true);
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
    let dash = |value: &str| {
        if value.is_empty() {
            "-".to_owned()
        } else {
            value.to_owned()
        }
    };
    let rows = comparison
        .inputs
        .iter()
        .map(|input| {
            let report = &input.report;
            let mut row = vec![
                input.label.clone(),
                input.source.display().to_string(),
                dash(&report.node),
                dash(&report.kernel),
                dash(&report.started_at),
                format!("{:.1}", report.duration_s),
            ];
            match &report.lab {
                Some(lab) => row.extend([
                    dash(&lab.datapath),
                    dash(&lab.kube_proxy),
                    lab.services.to_string(),
                    dash(&lab.ingress),
                ]),
                None => row.extend(std::iter::repeat_n("-".to_owned(), 4)),
            }
            row
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
        let key_columns = section.key_columns();
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
