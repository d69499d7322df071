//! `hoptrace compare`: runs side by side, one column per run.
//!
//! Inputs are node reports (`hoptrace.report.v1`, with or without a `lab`
//! section: one column each) or lab documents (`hoptrace.lab.v1`: one
//! column per `runs[]` entry, its nodes summed), read through the typed
//! schema of [`hoptrace_core::report`]: anything else is refused with the
//! file's name and what was expected.
//!
//! Output (`render_table`): a one-line verdict (`verdict.rs`), the inputs,
//! the time per request by category (from the request timeline when every
//! run has one, else from the node reports summed over each run's nodes;
//! `summary.rs`), the client latency, the request timeline's join figures
//! and the time per request by segment; every value column after the first
//! has its difference to the first. `html.rs` writes the same as a
//! self-contained HTML page with SVG charts (no scripts, no external URLs).

mod html;
mod summary;
#[cfg(test)]
mod tests;
mod verdict;

pub use html::write_html;
pub use summary::{Basis, CategoryTable, SegmentTable};
pub use verdict::verdict;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use comfy_table::CellAlignment;
use hoptrace_core::report::{
    Document, DocumentError, LabRequests, LabSection, Report, word_wrapped_table,
};

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
    /// A lab document without any run.
    #[error("{path} contains no run (no runs[])")]
    EmptyLab {
        /// File.
        path: PathBuf,
    },
    /// A column without data: a report with no journey, a lab run that
    /// answered no request. Comparing it would call it the fastest.
    #[error("{} has no data ({what}): nothing to compare it with; trace while traffic flows", column_name(path, *run))]
    NoData {
        /// File.
        path: PathBuf,
        /// 1-based run of a lab document.
        run: Option<usize>,
        /// What is missing, e.g. `0 journeys`.
        what: &'static str,
    },
    /// `--label` given, but not once per column.
    #[error(
        "{given} --label given for {columns} columns (one per lab run or report, in order): {names}"
    )]
    Labels {
        /// Labels given.
        given: usize,
        /// Columns read.
        columns: usize,
        /// The columns' default labels, comma-separated.
        names: String,
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

/// One column of the comparison: a lab run (every node report of it) or
/// one node report.
#[derive(Debug, Clone, PartialEq)]
pub struct InputReport {
    /// Column label: `--label`, else the run's datapath (plus its
    /// kube-proxy mode and ingress where those differ between columns),
    /// else the file name.
    pub label: String,
    /// File it came from.
    pub source: PathBuf,
    /// 1-based position in the lab document's `runs[]`; `None` for a node
    /// report.
    pub run: Option<usize>,
    /// The run's node reports (one for a node report).
    pub nodes: Vec<Report>,
    /// The run's settings and client results, when it is a lab run.
    pub lab: Option<LabSection>,
    /// The run's request timeline, when it has one.
    pub requests: Option<LabRequests>,
}

/// Columns to compare, the first one being the baseline of every delta.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Comparison {
    /// Columns in command-line order (a lab document contributes one per run).
    pub inputs: Vec<InputReport>,
}

/// Reads every file in `paths` (node reports or lab documents) into a
/// [`Comparison`] with default labels.
///
/// # Errors
/// [`CompareError::NoInputs`] without paths, [`CompareError::Read`] when a
/// file cannot be read, [`CompareError::Document`] when it is not a
/// hoptrace document and [`CompareError::EmptyLab`] for a lab document
/// without runs.
pub fn compare(paths: &[PathBuf]) -> Result<Comparison, CompareError> {
    if paths.is_empty() {
        return Err(CompareError::NoInputs);
    }
    let mut inputs: Vec<InputReport> = Vec::new();
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
    if let Some((input, what)) = inputs
        .iter()
        .find_map(|input| input.missing_data().map(|what| (input, what)))
    {
        return Err(CompareError::NoData {
            path: input.source.clone(),
            run: input.run,
            what,
        });
    }
    default_labels(&mut inputs);
    Ok(Comparison { inputs })
}

/// A column's source in a sentence: the file, and the run of a lab document.
fn column_name(path: &Path, run: Option<usize>) -> String {
    match run {
        Some(run) => format!("{} run {run}", path.display()),
        None => path.display().to_string(),
    }
}

impl InputReport {
    /// What this column lacks to be compared (`None` when it has data): a
    /// lab run that answered no request, a report without any journey or
    /// category row.
    fn missing_data(&self) -> Option<&'static str> {
        if let Some(lab) = &self.lab {
            return (lab.requests_ok == 0).then_some("0 requests answered");
        }
        let journeys: u64 = self.nodes.iter().map(|n| n.journeys).sum();
        let rows = self
            .nodes
            .iter()
            .flat_map(|n| &n.categories)
            .any(|row| row.stats.count > 0);
        (journeys == 0 && !rows).then_some("0 journeys")
    }
}

/// Turns one document into its columns: a node report is one column, a
/// lab document one per run (all its nodes). `path` names the source.
/// Labels are the defaults among these columns.
///
/// # Errors
/// [`CompareError::EmptyLab`] for a lab document without runs.
pub fn inputs_from_document(
    document: Document,
    path: &Path,
) -> Result<Vec<InputReport>, CompareError> {
    let mut inputs = match document {
        Document::Lab(lab) => lab
            .runs
            .into_iter()
            .enumerate()
            .map(|(index, run)| InputReport {
                label: String::new(),
                source: path.to_owned(),
                run: Some(index + 1),
                nodes: run.nodes,
                lab: Some(run.lab),
                requests: run.requests,
            })
            .collect(),
        Document::Report(report) => {
            let report = *report;
            vec![InputReport {
                label: String::new(),
                source: path.to_owned(),
                run: None,
                lab: report.lab.clone(),
                nodes: vec![report],
                requests: None,
            }]
        }
    };
    if inputs.is_empty() {
        return Err(CompareError::EmptyLab {
            path: path.to_owned(),
        });
    }
    default_labels(&mut inputs);
    Ok(inputs)
}

/// The file name without extension, or the whole path.
fn file_label(path: &Path) -> String {
    path.file_stem().map_or_else(
        || path.display().to_string(),
        |stem| stem.to_string_lossy().into_owned(),
    )
}

/// Default labels: a lab run (or a report with a `lab` section) is named
/// `datapath/kube-proxy/ingress`, keeping the kube-proxy mode and the
/// ingress only when they differ between the lab columns; a trace report by
/// its file name. Repeated labels get ` (2)`, ` (3)`...
pub fn default_labels(inputs: &mut [InputReport]) {
    let parts = |lab: &LabSection| {
        [
            lab.datapath.clone(),
            lab.kube_proxy.clone(),
            lab.ingress.clone(),
        ]
    };
    let labs: Vec<[String; 3]> = inputs
        .iter()
        .filter_map(|input| input.lab.as_ref().map(parts))
        .collect();
    let varies: Vec<bool> = (0..3)
        .map(|i| i == 0 || labs.iter().any(|p| p[i] != labs[0][i]))
        .collect();
    for input in inputs.iter_mut() {
        input.label = match &input.lab {
            Some(lab) if !lab.datapath.is_empty() => parts(lab)
                .into_iter()
                .zip(&varies)
                .filter(|(_, keep)| **keep)
                .map(|(part, _)| part)
                .collect::<Vec<_>>()
                .join("/"),
            _ => file_label(&input.source),
        };
    }
    make_labels_unique(inputs);
}

impl Comparison {
    /// Names the columns by `labels` (`--label`), one per column in order.
    ///
    /// # Errors
    /// [`CompareError::Labels`] when `labels` does not have one entry per
    /// column.
    pub fn set_labels(&mut self, labels: &[String]) -> Result<(), CompareError> {
        if labels.len() != self.inputs.len() {
            return Err(CompareError::Labels {
                given: labels.len(),
                columns: self.inputs.len(),
                names: self
                    .inputs
                    .iter()
                    .map(|input| input.label.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        for (input, label) in self.inputs.iter_mut().zip(labels) {
            input.label.clone_from(label);
        }
        make_labels_unique(&mut self.inputs);
        Ok(())
    }

    /// Labels of the columns, in order.
    pub fn labels(&self) -> Vec<&str> {
        self.inputs
            .iter()
            .map(|input| input.label.as_str())
            .collect()
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

/// One cell of a section: its text, whether it is a number (right-aligned)
/// and, for deltas, its sign (-1 faster, 1 slower, 0 otherwise).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TableCell {
    pub(crate) text: String,
    pub(crate) numeric: bool,
    pub(crate) sign: i8,
}

impl TableCell {
    fn key(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            numeric: false,
            sign: 0,
        }
    }

    fn number(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            numeric: true,
            sign: 0,
        }
    }

    fn delta(base: Option<f64>, value: Option<f64>) -> Self {
        let d = delta(base, value);
        let sign = match d {
            Some((diff, _)) if diff > 0.0 => 1,
            Some((diff, _)) if diff < 0.0 => -1,
            _ => 0,
        };
        Self {
            text: format_delta(d),
            numeric: true,
            sign,
        }
    }
}

/// A column header: its text and the column it belongs to (for its colour
/// in the HTML page).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Header {
    pub(crate) text: String,
    pub(crate) column: Option<usize>,
}

/// One table of the comparison, rendered as text and as HTML.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Section {
    pub(crate) title: String,
    pub(crate) header: Vec<Header>,
    pub(crate) rows: Vec<Vec<TableCell>>,
}

/// Header of `keys` then, per column, its value header and (after the
/// first) its delta header.
fn value_header(comparison: &Comparison, keys: &[&str], value: &str) -> Vec<Header> {
    let mut header: Vec<Header> = keys
        .iter()
        .map(|key| Header {
            text: (*key).to_owned(),
            column: None,
        })
        .collect();
    for (index, label) in comparison.labels().into_iter().enumerate() {
        header.push(Header {
            text: format!("{label}\n{value}"),
            column: Some(index),
        });
        if index > 0 {
            header.push(Header {
                text: format!("Δ {label}"),
                column: Some(index),
            });
        }
    }
    header
}

/// Value cells of one row: each column's value (formatted by `show`) and,
/// after the first, its delta to the first.
fn value_cells(
    values: &[Option<f64>],
    show: impl Fn(usize, Option<f64>) -> String,
) -> Vec<TableCell> {
    let base = values.first().copied().flatten();
    let mut cells = Vec::new();
    for (index, value) in values.iter().enumerate() {
        cells.push(TableCell::number(show(index, *value)));
        if index > 0 {
            cells.push(TableCell::delta(base, *value));
        }
    }
    cells
}

/// The inputs: one row per column.
fn inputs_section(comparison: &Comparison) -> Section {
    let header = [
        "column",
        "source",
        "nodes",
        "datapath / kube-proxy / ingress",
        "load",
        "requests ok",
    ]
    .into_iter()
    .map(|text| Header {
        text: text.to_owned(),
        column: None,
    })
    .collect();
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
            let file = input.source.file_name().map_or_else(
                || input.source.display().to_string(),
                |name| name.to_string_lossy().into_owned(),
            );
            let source = match input.run {
                Some(run) => format!("{file} run {run}"),
                None => file,
            };
            let nodes = input
                .nodes
                .iter()
                .map(|node| dash(&node.node))
                .collect::<Vec<_>>()
                .join(", ");
            let mut row = vec![
                TableCell::key(input.label.clone()),
                TableCell::key(source),
                TableCell::key(nodes),
            ];
            match &input.lab {
                Some(lab) => row.extend([
                    TableCell::key(format!(
                        "{} / {} / {}",
                        dash(&lab.datapath),
                        dash(&lab.kube_proxy),
                        dash(&lab.ingress)
                    )),
                    TableCell::key(format!(
                        "{} {}/s, {} conns, {}s",
                        lab.load.mode, lab.load.rate, lab.load.connections, lab.load.duration
                    )),
                    TableCell::number(lab.requests_ok.to_string()),
                ]),
                None => {
                    row.extend(std::iter::repeat_n(TableCell::key("-"), 3));
                }
            }
            row
        })
        .collect();
    Section {
        title: "Inputs (one column per lab run or trace report, summed over its nodes)".to_owned(),
        header,
        rows,
    }
}

/// Time per request by category: µs and share of the client's mean.
fn categories_section(comparison: &Comparison, table: &CategoryTable) -> Section {
    let unit = table.basis.unit();
    let share = |column: usize, value: Option<f64>| match (value, table.totals[column]) {
        (Some(v), Some(total)) if total > 0.0 => {
            format!("{} ({:.0}%)", format_us(Some(v)), 100.0 * v / total)
        }
        (value, _) => format_us(value),
    };
    let mut rows: Vec<Vec<TableCell>> = table
        .categories
        .iter()
        .zip(&table.values)
        .map(|(name, values)| {
            let values: Vec<Option<f64>> = values.iter().copied().map(Some).collect();
            let mut row = vec![TableCell::key(name.clone())];
            row.extend(value_cells(&values, share));
            row
        })
        .collect();
    let columns = comparison.inputs.len();
    let attributed: Vec<Option<f64>> = (0..columns).map(|c| Some(table.attributed(c))).collect();
    let mut row = vec![TableCell::key("all categories")];
    row.extend(value_cells(&attributed, share));
    rows.push(row);
    if table.totals.iter().any(Option::is_some) {
        let whole = match table.basis {
            Basis::LedgerPerJourney => "end-to-end (sum over nodes)",
            _ => "client mean latency",
        };
        let mut row = vec![TableCell::key(whole)];
        row.extend(value_cells(&table.totals, |_, v| format_us(v)));
        rows.push(row);
    }
    Section {
        title: format!(
            "Time per {unit} by category, µs (share of the client's mean), from {}",
            table.basis.source()
        ),
        header: value_header(comparison, &["category"], &format!("µs per {unit}")),
        rows,
    }
}

/// Client latency (load generator), else the busiest node's end to end.
fn latency_section(comparison: &Comparison) -> Option<Section> {
    if comparison
        .inputs
        .iter()
        .all(|input| input.client_latency().is_none() && input.busiest_end_to_end().is_none())
    {
        return None;
    }
    type Pick = fn(&hoptrace_core::report::Stats) -> f64;
    let measures: [(&str, Pick); 5] = [
        ("p50", |s| s.p50_us),
        ("p90", |s| s.p90_us),
        ("p99", |s| s.p99_us),
        ("max", |s| s.max_us),
        ("mean", |s| s.mean_us),
    ];
    let stats: Vec<Option<hoptrace_core::report::Stats>> = comparison
        .inputs
        .iter()
        .map(|input| match input.client_latency() {
            Some(latency) => Some(latency.stats()),
            None => input.busiest_end_to_end().cloned(),
        })
        .collect();
    let mut rows = Vec::new();
    for (name, pick) in measures {
        let values: Vec<Option<f64>> = stats.iter().map(|s| s.as_ref().map(pick)).collect();
        let mut row = vec![TableCell::key(name)];
        row.extend(value_cells(&values, |_, v| format_us(v)));
        rows.push(row);
    }
    let mut row = vec![TableCell::key("measured by")];
    for (index, input) in comparison.inputs.iter().enumerate() {
        let by = if input.client_latency().is_some() {
            "load generator"
        } else if input.busiest_end_to_end().is_some() {
            "node end to end"
        } else {
            "-"
        };
        row.push(TableCell::key(by));
        if index > 0 {
            row.push(TableCell::key(""));
        }
    }
    rows.push(row);
    Some(Section {
        title: "Latency, µs (the load generator's; a trace report's first to last hop on its node)"
            .to_owned(),
        header: value_header(comparison, &["measure"], "µs"),
        rows,
    })
}

/// The request timeline's join figures, when some column has one.
fn timeline_section(comparison: &Comparison) -> Option<Section> {
    if comparison
        .inputs
        .iter()
        .all(|input| input.requests.is_none())
    {
        return None;
    }
    type Pick = fn(&LabRequests) -> String;
    let measures: [(&str, Pick); 5] = [
        ("requests seen", |r| r.count.to_string()),
        ("joined", |r| r.joined.to_string()),
        ("join rate", |r| format!("{:.1}%", 100.0 * r.join_rate)),
        ("coverage of the client's mean", |r| {
            format!("{:.0}%", 100.0 * r.coverage)
        }),
        ("builtin proxy's own hold", |r| {
            r.proxy_hold_mean_us
                .map_or_else(|| "-".to_owned(), |hold| format!("{hold:.0} µs"))
        }),
    ];
    let header = std::iter::once(Header {
        text: "request timeline".to_owned(),
        column: None,
    })
    .chain(
        comparison
            .labels()
            .into_iter()
            .enumerate()
            .map(|(index, label)| Header {
                text: label.to_owned(),
                column: Some(index),
            }),
    )
    .collect();
    let rows = measures
        .into_iter()
        .map(|(name, pick)| {
            std::iter::once(TableCell::key(name))
                .chain(comparison.inputs.iter().map(|input| {
                    TableCell::number(input.requests.as_ref().map_or_else(|| "-".to_owned(), pick))
                }))
                .collect()
        })
        .collect();
    Some(Section {
        title: "Request timeline".to_owned(),
        header,
        rows,
    })
}

/// Time per request by segment (node reports, summed over nodes).
fn segments_section(comparison: &Comparison, table: &SegmentTable) -> Section {
    let unit = table.basis.unit();
    let rows = table
        .segments
        .iter()
        .zip(&table.values)
        .map(|((segment, category), values)| {
            let values: Vec<Option<f64>> = values.iter().copied().map(Some).collect();
            let mut row = vec![
                TableCell::key(segment.clone()),
                TableCell::key(category.clone()),
            ];
            row.extend(value_cells(&values, |_, v| format_us(v)));
            row
        })
        .collect();
    Section {
        title: format!(
            "Time per {unit} by segment, µs (node reports: every node, direction and state)"
        ),
        header: value_header(
            comparison,
            &["segment", "category"],
            &format!("µs per {unit}"),
        ),
        rows,
    }
}

/// Every table of the comparison, in page order.
pub(crate) fn sections(comparison: &Comparison) -> Vec<Section> {
    let categories = comparison.category_table();
    let mut out = vec![
        categories_section(comparison, &categories),
        inputs_section(comparison),
    ];
    out.extend(latency_section(comparison));
    out.extend(timeline_section(comparison));
    out.push(segments_section(comparison, &comparison.segment_table()));
    out
}

/// The comparison as text: the verdict, then every table wrapped to 100
/// columns.
pub fn render_table(comparison: &Comparison) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}",
        hoptrace_core::diagnose::wrap("Verdict: ", "  ", &verdict(comparison)).trim_end()
    );
    let _ = writeln!(
        out,
        "Deltas are against {} (the first column).\n",
        baseline_label(comparison)
    );
    for section in sections(comparison) {
        if section.rows.is_empty() {
            let _ = writeln!(out, "{}: no data\n", section.title);
            continue;
        }
        let header: Vec<&str> = section.header.iter().map(|h| h.text.as_str()).collect();
        let rows: Vec<Vec<(String, CellAlignment)>> = section
            .rows
            .iter()
            .map(|row| {
                row.iter()
                    .map(|cell| {
                        let align = if cell.numeric {
                            CellAlignment::Right
                        } else {
                            CellAlignment::Left
                        };
                        (cell.text.clone(), align)
                    })
                    .collect()
            })
            .collect();
        let table = word_wrapped_table(&header, &rows);
        let title = hoptrace_core::diagnose::wrap("", "", &format!("{}:", section.title));
        let _ = writeln!(out, "{}\n{table}\n", title.trim_end());
    }
    out
}

fn baseline_label(comparison: &Comparison) -> &str {
    comparison
        .inputs
        .first()
        .map_or("-", |input| input.label.as_str())
}
