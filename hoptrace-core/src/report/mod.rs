//! The report (`hoptrace.report.v1`): a serde document built from a
//! [`Ledger`], and its table rendering. Every field and unit is documented
//! in `docs/report-schema.md`.

mod assemble;

pub use assemble::{build_report, finish};

use std::collections::HashMap;
use std::fmt::Write as _;

use comfy_table::{Cell, CellAlignment, Table, presets};
use serde::{Deserialize, Serialize};

use crate::attribution::ledger::{
    ConnState, Direction, Exemplar, Ledger, LedgerCounters, Stat,
};
use crate::attribution::taxonomy::Category;

/// Schema id written in every report.
pub const REPORT_SCHEMA: &str = "hoptrace.report.v1";

/// Value of `direction` / `conn_state` in rows that aggregate all of them.
pub const ALL: &str = "all";

/// Errors reading a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("report is not valid JSON for {REPORT_SCHEMA}: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported report schema {found:?}, expected {REPORT_SCHEMA:?}")]
    Schema { found: String },
}

/// What the caller knows about the run (the ledger does not).
#[derive(Clone, Debug, Default)]
pub struct ReportMeta {
    /// Node name (hostname or Kubernetes node name).
    pub node: String,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// Start of tracing, RFC 3339.
    pub started_at: String,
    /// Tracing duration, seconds.
    pub duration_s: f64,
    /// Output of `hoptrace check --json`.
    pub capabilities: serde_json::Value,
    /// Events lost in the kernel (ring buffer full), from the counters map.
    pub lost_events: u64,
    /// Notes from the caller (missing hooks and what that means).
    pub notes: Vec<String>,
}

/// Latency statistics of one row; durations in microseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Number of recorded values.
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// Exact mean (sum / count).
    pub mean_us: f64,
    /// Sum of all recorded values.
    pub total_us: f64,
}

fn ns_to_us(ns: u128) -> f64 {
    ns as f64 / 1000.0
}

impl Stats {
    fn from_stat(stat: &Stat) -> Self {
        let h = &stat.hist;
        let count = h.len();
        let mean_ns = if count == 0 {
            0.0
        } else {
            stat.total_ns as f64 / count as f64
        };
        Self {
            count,
            p50_us: ns_to_us(h.value_at_quantile(0.50).into()),
            p90_us: ns_to_us(h.value_at_quantile(0.90).into()),
            p99_us: ns_to_us(h.value_at_quantile(0.99).into()),
            max_us: ns_to_us(h.max().into()),
            mean_us: (mean_ns).round() / 1000.0,
            total_us: ns_to_us(stat.total_ns),
        }
    }
}

fn share(stat: &Stat) -> f64 {
    if stat.e2e_ns == 0 {
        0.0
    } else {
        stat.total_ns as f64 / stat.e2e_ns as f64
    }
}

/// One segment for one direction and connection state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SegmentRow {
    pub segment: String,
    pub category: Category,
    pub direction: Direction,
    pub conn_state: ConnState,
    #[serde(flatten)]
    pub stats: Stats,
    /// Sum of this segment's time / sum of the end-to-end time of the
    /// journeys that crossed it (0..=1).
    pub share: f64,
}

/// One category, per direction and connection state, or `all`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CategoryRow {
    pub category: Category,
    /// `egress`, `ingress`, `local` or `all`.
    pub direction: String,
    /// `new`, `established` or `all`.
    pub conn_state: String,
    /// One value per journey: the sum of its segments in this category.
    #[serde(flatten)]
    pub stats: Stats,
    /// Sum of this category's time / sum of the end-to-end time of the
    /// journeys that crossed it.
    pub share: f64,
}

/// End-to-end time (first to last hop on this node).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndToEndRow {
    /// `egress`, `ingress`, `local` or `all`.
    pub direction: String,
    /// `new`, `established` or `all`.
    pub conn_state: String,
    #[serde(flatten)]
    pub stats: Stats,
}

/// Drops of one kernel drop reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropRow {
    pub reason: String,
    pub count: u64,
}

/// The report document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Always [`REPORT_SCHEMA`].
    pub schema: String,
    pub node: String,
    pub kernel: String,
    pub started_at: String,
    pub duration_s: f64,
    pub capabilities: serde_json::Value,
    /// Journeys finalized (including single-hop ones).
    pub journeys: u64,
    pub segments: Vec<SegmentRow>,
    pub categories: Vec<CategoryRow>,
    pub end_to_end: Vec<EndToEndRow>,
    pub exemplars: Vec<Exemplar>,
    pub drops: Vec<DropRow>,
    pub lost_events: u64,
    pub unparsed_packets: u64,
    pub foreign_events: u64,
    /// All correlator counters (superset of the three above).
    pub counters: LedgerCounters,
    pub notes: Vec<String>,
}

impl Report {
    /// Builds the report from a finished ledger.
    pub fn from_ledger(ledger: Ledger, meta: ReportMeta) -> Report {
        let mut segments: Vec<SegmentRow> = ledger
            .segments
            .iter()
            .map(|(key, stat)| {
                let name = &ledger.segment_names[key.segment as usize];
                SegmentRow {
                    segment: name.name.clone(),
                    category: name.category,
                    direction: key.direction,
                    conn_state: key.conn_state,
                    stats: Stats::from_stat(stat),
                    share: share(stat),
                }
            })
            .collect();
        segments.sort_by(|a, b| {
            a.category
                .cmp(&b.category)
                .then(b.stats.total_us.total_cmp(&a.stats.total_us))
                .then_with(|| a.segment.cmp(&b.segment))
                .then(a.direction.cmp(&b.direction))
                .then(a.conn_state.cmp(&b.conn_state))
        });

        let mut categories = Vec::new();
        for category in Category::ALL {
            let mut all = Stat::empty();
            let mut rows = Vec::new();
            for direction in Direction::ALL {
                for conn_state in ConnState::ALL {
                    if let Some(stat) = ledger.categories.get(&(category, direction, conn_state)) {
                        all.merge(stat);
                        rows.push(CategoryRow {
                            category,
                            direction: direction.name().to_string(),
                            conn_state: conn_state.name().to_string(),
                            stats: Stats::from_stat(stat),
                            share: share(stat),
                        });
                    }
                }
            }
            if !rows.is_empty() {
                categories.push(CategoryRow {
                    category,
                    direction: ALL.to_string(),
                    conn_state: ALL.to_string(),
                    stats: Stats::from_stat(&all),
                    share: share(&all),
                });
                categories.extend(rows);
            }
        }

        let mut end_to_end = Vec::new();
        let mut all = Stat::empty();
        for direction in Direction::ALL {
            for conn_state in ConnState::ALL {
                if let Some(stat) = ledger.end_to_end.get(&(direction, conn_state)) {
                    all.merge(stat);
                    end_to_end.push(EndToEndRow {
                        direction: direction.name().to_string(),
                        conn_state: conn_state.name().to_string(),
                        stats: Stats::from_stat(stat),
                    });
                }
            }
        }
        end_to_end.insert(
            0,
            EndToEndRow {
                direction: ALL.to_string(),
                conn_state: ALL.to_string(),
                stats: Stats::from_stat(&all),
            },
        );

        let mut drops: Vec<DropRow> = ledger
            .drops
            .iter()
            .map(|(reason, count)| DropRow {
                reason: reason.clone(),
                count: *count,
            })
            .collect();
        drops.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.reason.cmp(&b.reason)));

        let c = &ledger.counters;
        let mut notes = meta.notes;
        if c.evicted_journeys > 0 {
            notes.push(format!(
                "{} journeys were finalized early because too many were in flight: their segments may be split",
                c.evicted_journeys
            ));
        }
        if c.late_events > 0 {
            notes.push(format!(
                "{} events arrived after their buffer carried another packet and were not used",
                c.late_events
            ));
        }
        if meta.lost_events > 0 {
            notes.push(format!(
                "{} events were lost in the kernel (ring buffer full): some journeys miss hops",
                meta.lost_events
            ));
        }

        Report {
            schema: REPORT_SCHEMA.to_string(),
            node: meta.node,
            kernel: meta.kernel,
            started_at: meta.started_at,
            duration_s: meta.duration_s,
            capabilities: meta.capabilities,
            journeys: c.journeys,
            segments,
            categories,
            end_to_end,
            exemplars: ledger.exemplars,
            drops,
            lost_events: meta.lost_events,
            unparsed_packets: c.unparsed_packets,
            foreign_events: c.foreign_events,
            counters: ledger.counters,
            notes,
        }
    }

    /// Pretty-printed JSON.
    pub fn to_json_pretty(&self) -> Result<String, ReportError> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// Reads a report written by [`Report::to_json_pretty`]; rejects other schemas.
    pub fn from_json(json: &str) -> Result<Report, ReportError> {
        #[derive(Deserialize)]
        struct SchemaOnly {
            schema: String,
        }
        let probe: SchemaOnly = serde_json::from_str(json)?;
        if probe.schema != REPORT_SCHEMA {
            return Err(ReportError::Schema {
                found: probe.schema,
            });
        }
        Ok(serde_json::from_str(json)?)
    }

    /// The `all`/`all` row of a category.
    pub fn category_total(&self, category: Category) -> Option<&CategoryRow> {
        self.categories
            .iter()
            .find(|r| r.category == category && r.direction == ALL && r.conn_state == ALL)
    }

    /// The `all`/`all` end-to-end row.
    pub fn end_to_end_total(&self) -> Option<&EndToEndRow> {
        self.end_to_end
            .iter()
            .find(|r| r.direction == ALL && r.conn_state == ALL)
    }
}

/// Netfilter categories: their rows for new connections are shown apart.
fn is_netfilter(category: Category) -> bool {
    matches!(
        category,
        Category::KubeProxy | Category::Conntrack | Category::NetfilterOther
    )
}

/// One sentence naming the category with the most total time, or `None`
/// when no journey had a segment.
pub fn biggest_contributor(report: &Report) -> Option<String> {
    let best = report
        .categories
        .iter()
        .filter(|r| r.direction == ALL && r.conn_state == ALL && r.stats.total_us > 0.0)
        .max_by(|a, b| a.stats.total_us.total_cmp(&b.stats.total_us))?;
    let e2e_total = report.end_to_end_total().map_or(0.0, |r| r.stats.total_us);
    let of_all = if e2e_total > 0.0 {
        100.0 * best.stats.total_us / e2e_total
    } else {
        0.0
    };
    Some(format!(
        "Biggest contributor: {} with {:.1}% of all end-to-end time ({} of {} µs; p99 {} µs per journey that crossed it).",
        best.category.name(),
        of_all,
        fmt_us(best.stats.total_us),
        fmt_us(e2e_total),
        fmt_us(best.stats.p99_us),
    ))
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

fn new_table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::ASCII_FULL_CONDENSED);
    table.set_header(header.iter().map(Cell::new));
    for (i, _) in header.iter().enumerate().skip(1) {
        if let Some(col) = table.column_mut(i) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

fn segment_table(rows: &[&SegmentRow]) -> Table {
    let mut table = new_table(&[
        "segment", "category", "dir", "conn", "count", "p50 µs", "p90 µs", "p99 µs", "max µs",
        "share",
    ]);
    for r in rows {
        table.add_row(vec![
            r.segment.clone(),
            r.category.name().to_string(),
            r.direction.name().to_string(),
            r.conn_state.name().to_string(),
            r.stats.count.to_string(),
            fmt_us(r.stats.p50_us),
            fmt_us(r.stats.p90_us),
            fmt_us(r.stats.p99_us),
            fmt_us(r.stats.max_us),
            fmt_share(r.share),
        ]);
    }
    for i in [1, 2, 3] {
        if let Some(col) = table.column_mut(i) {
            col.set_cell_alignment(CellAlignment::Left);
        }
    }
    table
}

/// Human-readable rendering: categories, segments (new-connection netfilter
/// rows apart), end-to-end, drops, notes and the biggest contributor.
pub fn render_table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "hoptrace report ({}) node {} kernel {} started {} duration {:.1}s, {} journeys",
        report.schema,
        report.node,
        report.kernel,
        report.started_at,
        report.duration_s,
        report.journeys
    );

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
    let _ = writeln!(out, "\nCategories (per journey, all directions)\n{cats}");

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
    let _ = writeln!(out, "\nEnd to end (first to last hop on this node)\n{e2e}");

    if !report.drops.is_empty() {
        let mut drops = new_table(&["drop reason", "count"]);
        for d in &report.drops {
            drops.add_row(vec![d.reason.clone(), d.count.to_string()]);
        }
        let _ = writeln!(out, "\nDrops\n{drops}");
    }
    let _ = writeln!(
        out,
        "\nlost events {}, unparsed packets {}, foreign events {}",
        report.lost_events, report.unparsed_packets, report.foreign_events
    );
    for note in &report.notes {
        let _ = writeln!(out, "note: {note}");
    }
    if let Some(line) = biggest_contributor(report) {
        let _ = writeln!(out, "\n{line}");
    }
    out
}

/// Index of rows by segment name, for comparisons between reports.
pub fn segments_by_name(report: &Report) -> HashMap<&str, Vec<&SegmentRow>> {
    let mut map: HashMap<&str, Vec<&SegmentRow>> = HashMap::new();
    for r in &report.segments {
        map.entry(r.segment.as_str()).or_default().push(r);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::tests::{SKB, ctx, node_a_journey, node_b_journey};
    use crate::correlate::{Correlator, CorrelatorOptions};

    fn ledger() -> Ledger {
        let mut c = Correlator::new(ctx(), CorrelatorOptions::default());
        let (a, _) = node_a_journey(0, SKB, 100);
        let (b, _) = node_b_journey(1_000_000, SKB + 0x1000);
        for e in a.iter().chain(b.iter()) {
            c.push(e);
        }
        let mut drop = b[0];
        drop.skb_addr = 0x9000;
        drop.packet.inner.ip_id = 4242;
        drop.hook = hoptrace_common::HookKind::Drop as u8;
        drop.drop_reason = 6;
        c.push(&drop);
        c.finish()
    }

    fn meta() -> ReportMeta {
        ReportMeta {
            node: "node-a".into(),
            kernel: "6.18.0".into(),
            started_at: "2026-11-21T06:00:00Z".into(),
            duration_s: 10.0,
            capabilities: serde_json::json!({"tc": true, "netfilter": true}),
            lost_events: 3,
            notes: vec!["netfilter links unavailable: netfilter time stays inside routing".into()],
        }
    }

    #[test]
    fn rows_shares_and_totals() {
        let report = Report::from_ledger(ledger(), meta());
        assert_eq!(report.schema, REPORT_SCHEMA);
        assert_eq!(report.journeys, 2);
        let kube = report
            .category_total(Category::KubeProxy)
            .expect("kube-proxy row");
        // Node A: 4300 ns of 13400; node B: 700 ns of 11000.
        assert_eq!(kube.stats.count, 2);
        assert!((kube.stats.total_us - 5.0).abs() < 1e-9);
        assert!((kube.share - 5_000.0 / 24_400.0).abs() < 1e-9);
        let e2e = report.end_to_end_total().expect("all row");
        assert_eq!(e2e.stats.count, 2);
        assert!((e2e.stats.total_us - 24.4).abs() < 1e-9);
        assert!((e2e.stats.mean_us - 12.2).abs() < 1e-9);
        assert_eq!(report.end_to_end.len(), 3);
        let dnat = report
            .segments
            .iter()
            .find(|r| r.segment == "netfilter.prerouting.dnat")
            .expect("dnat row");
        assert_eq!(dnat.direction, Direction::Egress);
        assert_eq!(dnat.conn_state, ConnState::New);
        assert!((dnat.share - 3_000.0 / 13_400.0).abs() < 1e-9);
        // 2 significant digits: within 1 %.
        assert!(
            (dnat.stats.p50_us - 3.0).abs() / 3.0 < 0.01,
            "{}",
            dnat.stats.p50_us
        );
        // Sorted by category, then total time.
        let order: Vec<(Category, f64)> = report
            .segments
            .iter()
            .map(|r| (r.category, r.stats.total_us))
            .collect();
        assert!(
            order
                .windows(2)
                .all(|w| w[0].0 < w[1].0 || (w[0].0 == w[1].0 && w[0].1 >= w[1].1))
        );
        assert_eq!(
            report.drops,
            vec![DropRow {
                reason: "NETFILTER_DROP".into(),
                count: 1
            }]
        );
        assert_eq!(report.lost_events, 3);
        assert!(report.notes.iter().any(|n| n.contains("ring buffer full")));
        assert_eq!(report.exemplars.len(), 2);
        assert_eq!(report.exemplars[0].direction, Direction::Egress);
    }

    #[test]
    fn json_round_trip_and_required_fields() {
        let report = Report::from_ledger(ledger(), meta());
        let json = report.to_json_pretty().expect("serialize");
        let back = Report::from_json(&json).expect("parse");
        assert_eq!(back, report);
        let value: serde_json::Value = serde_json::from_str(&json).expect("json");
        for field in [
            "schema",
            "node",
            "kernel",
            "started_at",
            "duration_s",
            "capabilities",
            "segments",
            "categories",
            "end_to_end",
            "exemplars",
            "drops",
            "lost_events",
            "unparsed_packets",
            "foreign_events",
            "notes",
        ] {
            assert!(value.get(field).is_some(), "missing {field}");
        }
        let seg = &value["segments"][0];
        for field in [
            "segment",
            "category",
            "direction",
            "conn_state",
            "count",
            "p50_us",
            "p90_us",
            "p99_us",
            "max_us",
            "mean_us",
            "share",
        ] {
            assert!(seg.get(field).is_some(), "segment row misses {field}");
        }
        assert_eq!(value["schema"], REPORT_SCHEMA);
        let hop = &value["exemplars"][0]["hops"][0];
        assert!(hop["ts_ns"].is_u64() && hop["hop"].is_string());
        assert!(
            value["categories"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["category"] == "kube-proxy")
        );
    }

    #[test]
    fn other_schemas_are_rejected() {
        let report = Report::from_ledger(ledger(), meta());
        let json = report
            .to_json_pretty()
            .unwrap()
            .replace(REPORT_SCHEMA, "hoptrace.report.v0");
        assert!(matches!(
            Report::from_json(&json),
            Err(ReportError::Schema { .. })
        ));
        assert!(matches!(Report::from_json("{"), Err(ReportError::Json(_))));
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
        let line = biggest_contributor(&report).expect("a contributor");
        // cni: node A 2000+1500+400+400+500 = 4800, node B 500+300+200+500+3000 = 4500.
        assert!(line.contains("cni"), "{line}");
        assert!(text.contains(&line));
    }

    #[test]
    fn empty_ledger_renders() {
        let ledger = Correlator::new(ctx(), CorrelatorOptions::default()).finish();
        let report = Report::from_ledger(ledger, ReportMeta::default());
        assert!(biggest_contributor(&report).is_none());
        assert_eq!(report.end_to_end.len(), 1);
        assert_eq!(report.end_to_end[0].stats.count, 0);
        let text = render_table(&report);
        assert!(text.contains("Categories"));
        assert!(Report::from_json(&report.to_json_pretty().unwrap()).is_ok());
    }
}
