//! The HTML page of `hoptrace compare`: one self-contained file (inline CSS
//! and SVG, no scripts, no external references) with stacked p50 bars per
//! category and the end-to-end latency CDF (drawn with plotters), then the
//! comparison tables with slower deltas in red and faster ones in green.
//! Each chart is also written next to the page as an SVG file.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::drawing::DrawingAreaErrorKind;
use plotters::prelude::*;

use super::{CompareError, Comparison, InputReport, baseline_label, inputs_overview, sections};

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

fn chart_error(
    chart: &'static str,
) -> impl Fn(DrawingAreaErrorKind<std::io::Error>) -> CompareError {
    move |source| CompareError::Chart { chart, source }
}

/// SVG of stacked p50 bars: one bar per input, one stack layer per category.
///
/// # Errors
/// [`CompareError::Chart`] when plotters fails to draw.
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
        root.fill(&WHITE).map_err(&err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("p50 latency per category (stacked, µs)", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            // One slot more than there are inputs: the legend sits in the
            // empty last slot instead of over a bar.
            .build_cartesian_2d((0..count).into_segmented(), 0.0..top)
            .map_err(&err)?;
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
            .map_err(&err)?;
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
                .map_err(&err)?
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
            .map_err(&err)?;
        } else {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .draw()
                .map_err(&err)?;
        }
        root.present().map_err(&err)?;
    }
    Ok(svg)
}

/// CDF points `(value_us, fraction 0–1)` of an input and whether they come
/// from the client histogram (`true`) or from end-to-end percentiles.
pub fn cdf_points(input: &InputReport) -> (Vec<(f64, f64)>, bool) {
    if let Some(latency) = input.client_latency()
        && !latency.histogram.is_empty()
    {
        let mut points: Vec<(f64, f64)> = latency
            .histogram
            .iter()
            .filter(|(value, _, _)| *value > 0)
            .map(|(value, percentile, _)| (*value as f64, (percentile / 100.0).clamp(0.0, 1.0)))
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
    .filter(|(value, _)| *value > 0.0)
    .collect();
    (points, false)
}

/// SVG of the end-to-end latency CDF of every input (log µs axis).
///
/// # Errors
/// [`CompareError::Chart`] when plotters fails to draw.
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
        root.fill(&WHITE).map_err(&err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("End-to-end latency CDF", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d((low..high).log_scale(), 0.0..1.0)
            .map_err(&err)?;
        chart
            .configure_mesh()
            .max_light_lines(1)
            .x_label_formatter(&|value| format!("{value:.0}"))
            .x_desc("latency µs (log scale)")
            .y_desc("fraction of requests ≤ x")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(&err)?;
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
                .map_err(&err)?
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
                .map_err(&err)?;
        } else {
            root.draw_text(
                "no end-to-end data in the inputs",
                &("sans-serif", 18).into_text_style(&root),
                (300, 220),
            )
            .map_err(&err)?;
        }
        root.present().map_err(&err)?;
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
        html_table(
            &mut out,
            &section.header,
            &section.rows,
            section.key_columns(),
        );
    }
    out.push_str("</body>\n</html>\n");
    out
}

/// Writes the HTML page to `path` and each chart as `<stem>-<chart>.svg`
/// next to it. Returns the written files, the page first.
///
/// # Errors
/// [`CompareError::Chart`] when a chart cannot be drawn,
/// [`CompareError::Write`] when a file cannot be written.
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
