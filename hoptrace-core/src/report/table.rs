//! Terminal tables of the node report: categories, segments (with the
//! netfilter rows of new connections apart), end to end, drops, notes and
//! the top finding in one sentence. Every table of hoptrace uses
//! [`styled_table`]: one preset, at most 100 columns.

use std::fmt::Write as _;

use comfy_table::{Cell, CellAlignment, ColumnConstraint, ContentArrangement, Table, presets};

use crate::attribution::ledger::ConnState;
use crate::attribution::taxonomy::Category;

use super::{ALL, Report, SegmentRow};

/// Netfilter categories: their rows for new connections are shown apart.
fn is_netfilter(category: Category) -> bool {
    matches!(
        category,
        Category::KubeProxy | Category::Conntrack | Category::NetfilterOther
    )
}

fn fmt_us(us: f64) -> String {
    if us >= 100.0 {
        format!("{us:.0}")
    } else if us >= 10.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.2}")
    }
}

fn fmt_share(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

/// A table in hoptrace's one style (comfy-table's `UTF8_FULL_CONDENSED`)
/// that wraps its cells to fit [`crate::diagnose::WIDTH`] (100) columns.
pub fn styled_table<S: ToString>(header: &[S]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(crate::diagnose::WIDTH as u16);
    table.set_header(header.iter().map(|h| Cell::new(h.to_string())));
    table
}

/// Keeps every word of the table's first column (the names: `netfilter-other`,
/// `netfilter.prerouting.conntrack`) whole when the table is fitted to
/// [`crate::diagnose::WIDTH`] columns: the column may not shrink below its
/// longest word (comfy-table would cut `netfilter-oth|er`); the other
/// columns give way. Call it once the rows are in.
pub fn keep_name_words(table: &mut Table) {
    let longest = table
        .column_cells_iter(0)
        .flatten()
        .flat_map(|cell| {
            cell.content()
                .split_whitespace()
                .map(|w| w.chars().count())
                .collect::<Vec<_>>()
        })
        .max()
        .unwrap_or(0);
    if let Some(column) = table.column_mut(0) {
        let width = u16::try_from(longest)
            .unwrap_or(u16::MAX)
            .saturating_add(column.padding_width());
        column.set_constraint(comfy_table::ColumnConstraint::LowerBoundary(
            comfy_table::Width::Fixed(width),
        ));
    }
}

/// The pieces of one line of a cell, for wrapping at word boundaries:
/// each with its width and whether a space stood before it. A line breaks
/// at a space or after a `-`, `.`, `/`, `_` or `,` (`flannel-|host-gw`,
/// `netfilter.|prerouting.|dnat`), never inside a run of letters or digits.
fn pieces(line: &str) -> Vec<(String, usize, bool)> {
    let mut out = Vec::new();
    for (index, word) in line.split(' ').filter(|w| !w.is_empty()).enumerate() {
        let mut start = 0;
        let mut chars = word.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            // Never inside a number: "-15.0%" stays whole.
            let before_digit = chars.peek().is_some_and(|(_, n)| n.is_ascii_digit());
            if "-./_,".contains(c) && at + 1 < word.len() && !before_digit {
                let piece = &word[start..=at];
                out.push((
                    piece.to_owned(),
                    piece.chars().count(),
                    index > 0 && start == 0,
                ));
                start = at + 1;
            }
        }
        let piece = &word[start..];
        out.push((
            piece.to_owned(),
            piece.chars().count(),
            index > 0 && start == 0,
        ));
    }
    out
}

/// `text` wrapped to `width` columns at the breaks of [`pieces`] (its own
/// line breaks kept).
fn wrap_cell(text: &str, width: usize) -> String {
    let mut lines = Vec::new();
    for line in text.split('\n') {
        let mut current = String::new();
        let mut used = 0;
        for (piece, w, space) in pieces(line) {
            let gap = usize::from(space && used > 0);
            if used > 0 && used + gap + w > width {
                lines.push(std::mem::take(&mut current));
                used = 0;
            }
            if space && used > 0 {
                current.push(' ');
                used += 1;
            }
            current.push_str(&piece);
            used += w;
        }
        lines.push(current);
    }
    lines.join("\n")
}

/// A [`styled_table`] of `header` and `rows` (text and alignment per cell)
/// within [`crate::diagnose::WIDTH`] columns whose cells break only between
/// words (at spaces, or after `-`, `.`, `/`, `_`, `,`): no column gets
/// narrower than its longest word, and the width left is shared out so
/// that the narrowest columns grow first. Where even the longest words do
/// not fit side by side, comfy-table's own wrapping is the fallback.
pub fn word_wrapped_table(header: &[&str], rows: &[Vec<(String, CellAlignment)>]) -> Table {
    let columns = header.len();
    let cells = || {
        rows.iter()
            .flat_map(|row| row.iter().map(|(text, _)| text.as_str()).enumerate())
            .chain(header.iter().copied().enumerate())
    };
    let mut shortest = vec![1usize; columns];
    let mut longest = vec![1usize; columns];
    for (column, text) in cells() {
        if column >= columns {
            continue;
        }
        for line in text.split('\n') {
            let word = pieces(line).iter().map(|p| p.1).max().unwrap_or(0);
            shortest[column] = shortest[column].max(word);
            longest[column] = longest[column].max(line.chars().count());
        }
    }
    // Borders and padding: "│ a ┆ b │".
    let room = crate::diagnose::WIDTH.saturating_sub(3 * columns + 1);
    let widths: Option<Vec<usize>> = if longest.iter().sum::<usize>() <= room {
        Some(longest.clone())
    } else if shortest.iter().sum::<usize>() > room {
        None
    } else {
        // The largest common width `level` with every column at
        // clamp(level, shortest, longest) that still fits.
        let at = |level: usize| -> Vec<usize> {
            (0..columns)
                .map(|c| level.clamp(shortest[c], longest[c]))
                .collect()
        };
        let mut level = 0;
        while at(level + 1).iter().sum::<usize>() <= room
            && level < longest.iter().copied().max().unwrap_or(0)
        {
            level += 1;
        }
        Some(at(level))
    };
    let Some(widths) = widths else {
        let mut table = styled_table(header);
        for row in rows {
            table.add_row(
                row.iter()
                    .map(|(text, align)| Cell::new(text).set_alignment(*align)),
            );
        }
        keep_name_words(&mut table);
        return table;
    };
    let head: Vec<String> = header
        .iter()
        .zip(&widths)
        .map(|(text, width)| wrap_cell(text, *width))
        .collect();
    let mut table = styled_table(&head);
    table.set_content_arrangement(ContentArrangement::Disabled);
    for row in rows {
        table.add_row(row.iter().zip(&widths).map(|((text, align), width)| {
            Cell::new(wrap_cell(text, *width)).set_alignment(*align)
        }));
    }
    table
}

fn new_table(header: &[&str]) -> Table {
    let mut table = styled_table(header);
    for (i, _) in header.iter().enumerate().skip(1) {
        if let Some(col) = table.column_mut(i) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

fn segment_table(rows: &[&SegmentRow]) -> Table {
    let mut table = new_table(&[
        "segment", "dir", "conn", "count", "p50 µs", "p99 µs", "share",
    ]);
    for r in rows {
        table.add_row(vec![
            r.segment.clone(),
            r.direction.name().to_string(),
            r.conn_state.name().to_string(),
            r.stats.count.to_string(),
            fmt_us(r.stats.p50_us),
            fmt_us(r.stats.p99_us),
            fmt_share(r.share),
        ]);
    }
    for i in [1, 2] {
        if let Some(col) = table.column_mut(i) {
            col.set_cell_alignment(CellAlignment::Left);
        }
    }
    // Names stay whole (they are searched for); the numbers' headers
    // wrap to keep the table within 100 columns.
    for i in 0..3 {
        if let Some(col) = table.column_mut(i) {
            col.set_constraint(ColumnConstraint::ContentWidth);
        }
    }
    table
}

/// The per-category table (`all` rows) of a report, with its title.
pub fn render_categories(report: &Report) -> String {
    let mut cats = new_table(&[
        "category", "count", "p50 µs", "p90 µs", "p99 µs", "max µs", "share",
    ]);
    for r in report
        .categories
        .iter()
        .filter(|r| r.direction == ALL && r.conn_state == ALL)
    {
        cats.add_row(vec![
            r.category.name().to_string(),
            r.stats.count.to_string(),
            fmt_us(r.stats.p50_us),
            fmt_us(r.stats.p90_us),
            fmt_us(r.stats.p99_us),
            fmt_us(r.stats.max_us),
            fmt_share(r.share),
        ]);
    }
    keep_name_words(&mut cats);
    format!("Categories (per journey, all directions)\n{cats}")
}

/// Human-readable rendering: categories, segments (new-connection netfilter
/// rows apart), end-to-end, drops, notes and the biggest contributor.
pub fn render_table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "hoptrace report ({})\nnode {} kernel {} started {} duration {:.1}s, {} journeys",
        report.schema,
        report.node,
        report.kernel,
        report.started_at,
        report.duration_s,
        report.journeys
    );

    let _ = writeln!(out, "\n{}", render_categories(report));

    // Segments are already sorted by category, then total time.
    let (new_nf, rest): (Vec<&SegmentRow>, Vec<&SegmentRow>) = report
        .segments
        .iter()
        .partition(|r| r.conn_state == ConnState::New && is_netfilter(r.category));
    let _ = writeln!(out, "\nSegments\n{}", segment_table(&rest));
    if !new_nf.is_empty() {
        let _ = writeln!(
            out,
            "\nNetfilter on new connections (kube-proxy/conntrack cost per new connection)\n{}",
            segment_table(&new_nf)
        );
    }

    let mut e2e = new_table(&[
        "dir", "conn", "count", "p50 µs", "p90 µs", "p99 µs", "max µs", "mean µs",
    ]);
    for r in &report.end_to_end {
        e2e.add_row(vec![
            r.direction.clone(),
            r.conn_state.clone(),
            r.stats.count.to_string(),
            fmt_us(r.stats.p50_us),
            fmt_us(r.stats.p90_us),
            fmt_us(r.stats.p99_us),
            fmt_us(r.stats.max_us),
            fmt_us(r.stats.mean_us),
        ]);
    }
    if let Some(col) = e2e.column_mut(1) {
        col.set_cell_alignment(CellAlignment::Left);
    }
    keep_name_words(&mut e2e);
    let _ = writeln!(out, "\nEnd to end (first to last hop on this node)\n{e2e}");

    if !report.drops.is_empty() {
        let mut drops = new_table(&["drop reason", "count"]);
        for d in &report.drops {
            drops.add_row(vec![d.reason.clone(), d.count.to_string()]);
        }
        let _ = writeln!(out, "\nDrops\n{drops}");
    }
    if !report.drop_records.is_empty() {
        let mut groups = new_table(&["drop reason", "location", "count", "first dropped packet"]);
        for g in report.drop_records.iter().take(12) {
            let first = g.records.first().map_or_else(String::new, |r| {
                let icmp = r.flow.icmp.as_ref().map_or_else(String::new, |i| {
                    let mtu = i.mtu.map_or_else(String::new, |m| format!(" mtu {m}"));
                    format!(" ({} {}/{}{mtu})", i.name, i.kind, i.code)
                });
                format!(
                    "{} {} -> {}{icmp}, {} bytes",
                    r.flow.proto, r.flow.src, r.flow.dst, r.len_bytes
                )
            });
            groups.add_row(vec![
                g.reason.clone(),
                g.location.clone(),
                g.count.to_string(),
                first,
            ]);
        }
        let _ = writeln!(
            out,
            "Dropped packets by reason and location (every flow in the JSON report)\n{groups}"
        );
    }
    let _ = writeln!(
        out,
        "\nlost events {}, unparsed packets {}, foreign events {}",
        report.lost_events, report.unparsed_packets, report.foreign_events
    );
    for note in &report.notes {
        out.push_str(&crate::diagnose::wrap("note: ", "      ", note));
    }
    let findings = crate::diagnose::diagnose(&crate::diagnose::Input::report_only(report));
    if let Some(line) = crate::diagnose::headline(&findings) {
        let _ = write!(out, "\n{}", crate::diagnose::wrap("", "", &line));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::tests::ctx;

    /// The lab's per-node category table (seven columns with long
    /// headers) cut `netfilter-oth|er` at 100 columns.
    #[test]
    fn names_stay_whole_within_100_columns() {
        let mut table = styled_table(&[
            "category",
            "node0 p50 µs",
            "node0 p99 µs",
            "node1 p50 µs",
            "node1 p99 µs",
            "µs per request (all nodes)",
            "share",
        ]);
        table.add_row(vec![
            "netfilter-other",
            "0.54",
            "3.89",
            "0.61",
            "2.59",
            "16.09",
            "0.5%",
        ]);
        table.add_row(vec![
            "kube-proxy",
            "3.52",
            "69.12",
            "2.96",
            "38.91",
            "154.86",
            "5.1%",
        ]);
        keep_name_words(&mut table);
        let text = table.to_string();
        assert!(text.contains("netfilter-other"), "{text}");
        assert!(
            text.lines()
                .all(|l| l.chars().count() <= crate::diagnose::WIDTH),
            "{text}"
        );
    }
    use crate::correlate::{Correlator, CorrelatorOptions};
    use crate::report::ReportMeta;
    use crate::report::sample::{ledger, meta};

    #[test]
    fn table_names_dropped_packets_and_icmp() {
        let report = crate::report::sample::full_report();
        let text = render_table(&report);
        assert!(
            text.contains("Dropped packets by reason and location"),
            "{text}"
        );
        assert!(text.contains("fragmentation-needed 3/4"), "{text}");
        assert!(text.contains("mtu 1450"), "{text}");
        assert!(text.contains("576 bytes"), "{text}");
    }

    #[test]
    fn table_shows_categories_segments_and_contributor() {
        let report = Report::from_ledger(ledger(), meta());
        let text = render_table(&report);
        println!("{text}");
        for cat in [
            "cni",
            "kube-proxy",
            "conntrack",
            "encapsulation",
            "kernel-other",
            "netfilter-other",
        ] {
            assert!(text.contains(cat), "{cat} missing:\n{text}");
        }
        let new_nf = text
            .find("Netfilter on new connections")
            .expect("new-connection section");
        let dnat = text.find("netfilter.prerouting.dnat").expect("dnat row");
        assert!(dnat > new_nf, "dnat (new connection) must be listed apart");
        assert!(text.contains("NETFILTER_DROP"));
        let findings = crate::diagnose::diagnose(&crate::diagnose::Input::report_only(&report));
        let top = crate::diagnose::headline(&findings).expect("a top finding");
        assert!(
            text.contains(&crate::diagnose::wrap("", "", &top)),
            "closing sentence is the top finding: {top}"
        );
        assert!(!text.contains("Biggest contributor"));
        for l in text.lines() {
            assert!(
                l.chars().count() <= 100,
                "{} columns: {l}",
                l.chars().count()
            );
        }
    }

    #[test]
    fn empty_ledger_renders() {
        let ledger = Correlator::new(ctx(), CorrelatorOptions::default()).finish();
        let report = Report::from_ledger(ledger, ReportMeta::default());
        assert_eq!(report.end_to_end.len(), 1);
        assert_eq!(report.end_to_end[0].stats.count, 0);
        let text = render_table(&report);
        assert!(text.contains("Categories"));
        assert!(Report::from_json(&report.to_json_pretty().unwrap()).is_ok());
    }
}

#[cfg(test)]
mod wrap_tests {
    use super::wrap_cell;

    /// Compare's cells break between words and after `-` in names, never
    /// inside a number ("-19.0 (-15.0%)" once read as "-15." and "0%").
    #[test]
    fn numbers_are_never_split() {
        assert_eq!(wrap_cell("-19.0 (-15.0%)", 10), "-19.0\n(-15.0%)");
        assert_eq!(wrap_cell("flannel-host-gw", 10), "flannel-\nhost-gw");
        assert_eq!(wrap_cell("10.244.0.2", 5), "10.244.0.2");
    }
}
