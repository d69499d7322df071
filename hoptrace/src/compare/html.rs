//! The HTML page of `hoptrace compare`: one self-contained file (inline CSS
//! and SVG, no scripts, no external references): the verdict, then the time
//! per request by category as grouped bars (the first chart), the latency
//! (a CDF from the load generator's histogram when every column has one of
//! at least [`MIN_CDF_POINTS`] points, else grouped p50/p90/p99 bars), then
//! the tables (slower deltas red, faster green) scrolling inside their box.
//! Each column has one colour in every chart and table header.
//! Each chart is also written next to the page as an SVG file.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::drawing::DrawingAreaErrorKind;
use plotters::prelude::*;

use super::{CompareError, Comparison, InputReport, Section, baseline_label, sections, verdict};

/// Colours of the columns, distinct and readable on white; column `i` has
/// `PALETTE[i % 10]` everywhere.
pub const PALETTE: [RGBColor; 10] = [
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

/// Fewest histogram points that make a CDF worth drawing; with fewer, the
/// latency chart shows p50/p90/p99 bars.
pub const MIN_CDF_POINTS: usize = 20;

/// Colour of column `index`.
pub fn column_colour(index: usize) -> RGBColor {
    PALETTE[index % PALETTE.len()]
}

fn css_colour(index: usize) -> String {
    let RGBColor(r, g, b) = column_colour(index);
    format!("#{r:02x}{g:02x}{b:02x}")
}

fn chart_error(
    chart: &'static str,
) -> impl Fn(DrawingAreaErrorKind<std::io::Error>) -> CompareError {
    move |source| CompareError::Chart { chart, source }
}

/// SVG of grouped bars: one group per entry of `groups` (x axis), one bar
/// per column in the column's colour; `values[group][column]` in µs.
///
/// # Errors
/// [`CompareError::Chart`] when plotters fails to draw.
pub fn grouped_bars_svg(
    chart_name: &'static str,
    caption: &str,
    groups: &[String],
    labels: &[&str],
    values: &[Vec<f64>],
) -> Result<String, CompareError> {
    let group_count = groups.len();
    let columns = labels.len().max(1);
    let top = values.iter().flatten().copied().fold(0.0, f64::max);
    let top = if top > 0.0 { top * 1.2 } else { 1.0 };
    let width = (160 + group_count as u32 * (40 + 26 * columns as u32)).clamp(720, 1400);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, 460)).into_drawing_area();
        let err = chart_error(chart_name);
        root.fill(&WHITE).map_err(&err)?;
        if group_count == 0 {
            root.draw_text(
                "no data in the inputs",
                &("sans-serif", 18).into_text_style(&root),
                (width as i32 / 2 - 100, 220),
            )
            .map_err(&err)?;
            root.present().map_err(&err)?;
            drop(root);
            return Ok(svg);
        }
        // One slot per group: values 0..=last plus the segment after the
        // last one, whose right edge is `Last`: no empty slot.
        let last = group_count as i32 - 1;
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d((0..last).into_segmented(), 0.0..top)
            .map_err(&err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .max_light_lines(1)
            .y_desc("µs")
            .x_labels(group_count)
            .x_label_formatter(&|value| match value {
                SegmentValue::CenterOf(index) | SegmentValue::Exact(index) => {
                    groups.get(*index as usize).cloned().unwrap_or_default()
                }
                SegmentValue::Last => String::new(),
            })
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(&err)?;
        let slot = chart.plotting_area().dim_in_pixel().0 as f64 / group_count as f64;
        let bar = slot * 0.8 / columns as f64;
        for (column, label) in labels.iter().enumerate() {
            let colour = column_colour(column);
            let bars: Vec<Rectangle<(SegmentValue<i32>, f64)>> = values
                .iter()
                .enumerate()
                .map(|(group, row)| {
                    let value = row.get(column).copied().unwrap_or(0.0);
                    let x = group as i32;
                    let right_edge = if x == last {
                        SegmentValue::Last
                    } else {
                        SegmentValue::Exact(x + 1)
                    };
                    let mut rectangle = Rectangle::new(
                        [(SegmentValue::Exact(x), 0.0), (right_edge, value)],
                        colour.filled(),
                    );
                    let left = slot * 0.1 + bar * column as f64;
                    let right = (slot - left - bar).max(0.0);
                    rectangle.set_margin(0, 0, left.round() as u32, right.round() as u32);
                    rectangle
                })
                .collect();
            chart
                .draw_series(bars)
                .map_err(&err)?
                .label(*label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 12, y + 6)], colour.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(&err)?;
        root.present().map_err(&err)?;
    }
    Ok(svg)
}

/// SVG of the time per request by category, one bar per column.
///
/// # Errors
/// [`CompareError::Chart`] when plotters fails to draw.
pub fn category_bars_svg(comparison: &Comparison) -> Result<String, CompareError> {
    let table = comparison.category_table();
    let caption = format!("Time per {} by category (mean µs)", table.basis.unit());
    grouped_bars_svg(
        "time per request by category",
        &caption,
        &table.categories,
        &comparison.labels(),
        &table.values,
    )
}

/// CDF points `(value_us, fraction 0–1)` of a column from the load
/// generator's histogram (empty without one).
pub fn cdf_points(input: &InputReport) -> Vec<(f64, f64)> {
    let Some(latency) = input.client_latency() else {
        return Vec::new();
    };
    let mut points: Vec<(f64, f64)> = latency
        .histogram
        .iter()
        .filter(|(value, _, _)| *value > 0)
        .map(|(value, percentile, _)| (*value as f64, (percentile / 100.0).clamp(0.0, 1.0)))
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    points
}

/// Whether two CDFs would draw on top of each other: same number of points,
/// each within 0.5 % in value and 0.002 in fraction.
pub fn same_curve(a: &[(f64, f64)], b: &[(f64, f64)]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(p, q)| {
            (p.0 - q.0).abs() <= 0.005 * p.0.abs().max(q.0.abs()) && (p.1 - q.1).abs() <= 0.002
        })
}

/// Whether the latency chart is a CDF: every column has a histogram of at
/// least [`MIN_CDF_POINTS`] points.
pub fn latency_is_cdf(comparison: &Comparison) -> bool {
    !comparison.inputs.is_empty()
        && comparison
            .inputs
            .iter()
            .all(|input| cdf_points(input).len() >= MIN_CDF_POINTS)
}

/// SVG of the latency: the CDF of every column's client histogram (log µs
/// axis; a curve identical to an earlier one is dashed and its legend says
/// which it hides under), else p50/p90/p99 bars.
///
/// # Errors
/// [`CompareError::Chart`] when plotters fails to draw.
pub fn latency_svg(comparison: &Comparison) -> Result<String, CompareError> {
    if !latency_is_cdf(comparison) {
        let groups = ["p50", "p90", "p99"].map(str::to_owned);
        let stats: Vec<Option<hoptrace_core::report::Stats>> = comparison
            .inputs
            .iter()
            .map(|input| match input.client_latency() {
                Some(latency) => Some(latency.stats()),
                None => input.busiest_end_to_end().cloned(),
            })
            .collect();
        let any = stats.iter().any(Option::is_some);
        let values: Vec<Vec<f64>> = if any {
            [0, 1, 2]
                .into_iter()
                .map(|which| {
                    stats
                        .iter()
                        .map(|s| {
                            s.as_ref().map_or(0.0, |s| match which {
                                0 => s.p50_us,
                                1 => s.p90_us,
                                _ => s.p99_us,
                            })
                        })
                        .collect()
                })
                .collect()
        } else {
            Vec::new()
        };
        return grouped_bars_svg(
            "latency percentiles",
            "Latency p50 / p90 / p99, µs (too few histogram points for a CDF)",
            if any { &groups } else { &[] },
            &comparison.labels(),
            &values,
        );
    }
    const CHART: &str = "latency CDF";
    let series: Vec<Vec<(f64, f64)>> = comparison.inputs.iter().map(cdf_points).collect();
    let values = series.iter().flat_map(|points| points.iter().map(|p| p.0));
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
            .caption("Client latency CDF (load generator)", ("sans-serif", 20))
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
        for (index, points) in series.iter().enumerate() {
            let colour = column_colour(index);
            let label = &comparison.inputs[index].label;
            let hidden_under = (0..index).find(|earlier| same_curve(&series[*earlier], points));
            match hidden_under {
                None => {
                    chart
                        .draw_series(LineSeries::new(
                            points.iter().copied(),
                            colour.stroke_width(2),
                        ))
                        .map_err(&err)?
                        .label(label.as_str())
                        .legend(move |(x, y)| {
                            PathElement::new([(x, y), (x + 16, y)], colour.stroke_width(3))
                        });
                }
                Some(earlier) => {
                    let text = format!(
                        "{label} (dashed: same curve as {})",
                        comparison.inputs[earlier].label
                    );
                    chart
                        .draw_series(DashedLineSeries::new(
                            points.iter().copied(),
                            8,
                            6,
                            colour.stroke_width(3),
                        ))
                        .map_err(&err)?
                        .label(text)
                        .legend(move |(x, y)| {
                            PathElement::new([(x, y), (x + 6, y)], colour.stroke_width(3))
                        });
                }
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(&err)?;
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
body { font-family: sans-serif; margin: 24px; color: #222; background: #fff; max-width: 1400px; }
h1 { font-size: 24px; margin-bottom: 4px; }
h2 { font-size: 19px; margin-top: 28px; border-bottom: 1px solid #ccc; padding-bottom: 4px; }
p.verdict { font-size: 18px; font-weight: bold; margin: 12px 0; }
p.note { color: #555; margin-top: 0; }
figure { margin: 12px 0; }
figure svg { max-width: 100%; height: auto; border: 1px solid #ddd; }
div.scroll { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0 16px 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; }
th { background: #f0f0f0; white-space: pre-line; text-align: center; }
span.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.slower { color: #b00020; }
td.faster { color: #1b7f2a; }
";

fn html_table(out: &mut String, section: &Section) {
    out.push_str("<div class=\"scroll\"><table>\n<tr>");
    for header in &section.header {
        let swatch = header.column.map_or_else(String::new, |column| {
            format!(
                "<span class=\"swatch\" style=\"background:{}\"></span>",
                css_colour(column)
            )
        });
        let _ = write!(out, "<th>{swatch}{}</th>", escape(&header.text));
    }
    out.push_str("</tr>\n");
    for row in &section.rows {
        out.push_str("<tr>");
        for cell in row {
            let class = match (cell.numeric, cell.sign) {
                (false, _) => "",
                (true, 1) => " class=\"num slower\"",
                (true, -1) => " class=\"num faster\"",
                (true, _) => " class=\"num\"",
            };
            let _ = write!(out, "<td{class}>{}</td>", escape(&cell.text));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table></div>\n");
}

/// The whole HTML page for `comparison` with the given charts (title, SVG)
/// inline after the first table.
pub fn render_html(comparison: &Comparison, charts: &[(&str, &str)]) -> String {
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<title>hoptrace compare</title>\n<style>");
    out.push_str(PAGE_CSS);
    out.push_str("</style>\n</head>\n<body>\n<h1>hoptrace compare</h1>\n");
    let _ = writeln!(
        out,
        "<p class=\"verdict\">{}</p>",
        escape(&verdict(comparison))
    );
    let _ = writeln!(
        out,
        "<p class=\"note\">{} column(s), one per lab run or trace report, each summed over its nodes; deltas are against <b>{}</b> (red: slower, green: faster).</p>",
        comparison.inputs.len(),
        escape(baseline_label(comparison))
    );
    let mut sections = sections(comparison).into_iter();
    // The per-request categories: first table, then the charts.
    if let Some(first) = sections.next() {
        let _ = writeln!(out, "<h2>{}</h2>", escape(&first.title));
        for (title, svg) in charts.iter().take(1) {
            let _ = writeln!(
                out,
                "<figure aria-label=\"{}\">{}</figure>",
                escape(title),
                inline_svg(svg)
            );
        }
        html_table(&mut out, &first);
    }
    for (title, svg) in charts.iter().skip(1) {
        let _ = writeln!(
            out,
            "<h2>{}</h2>\n<figure>{}</figure>",
            escape(title),
            inline_svg(svg)
        );
    }
    for section in sections {
        let _ = writeln!(out, "<h2>{}</h2>", escape(&section.title));
        if section.rows.is_empty() {
            out.push_str("<p class=\"note\">no data</p>\n");
            continue;
        }
        html_table(&mut out, &section);
    }
    out.push_str("</body>\n</html>\n");
    out
}

/// Writes the HTML page to `path` and each chart as `<stem>-categories.svg`
/// and `<stem>-latency.svg` next to it. Returns the written files, the page
/// first.
///
/// # Errors
/// [`CompareError::Chart`] when a chart cannot be drawn,
/// [`CompareError::Write`] when a file cannot be written.
pub fn write_html(comparison: &Comparison, path: &Path) -> Result<Vec<PathBuf>, CompareError> {
    let bars = category_bars_svg(comparison)?;
    let latency = latency_svg(comparison)?;
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
    let latency_title = if latency_is_cdf(comparison) {
        "Client latency CDF"
    } else {
        "Latency p50 / p90 / p99"
    };
    let page = render_html(
        comparison,
        &[
            ("Time per request by category", &bars),
            (latency_title, &latency),
        ],
    );
    write(path, &page)?;
    let mut written = vec![path.to_owned()];
    for (suffix, svg) in [("categories", &bars), ("latency", &latency)] {
        let target = dir.join(format!("{stem}-{suffix}.svg"));
        write(&target, svg)?;
        written.push(target);
    }
    Ok(written)
}
