//! The node report, `hoptrace.report.v1`: one traced node's latency per
//! segment, category and end to end, built from a [`Ledger`].

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::attribution::ledger::{
    ConnState, Direction, DropGroupRecords, Exemplar, IcmpCount, Ledger, LedgerCounters, Stat,
};
use crate::attribution::taxonomy::Category;

use super::{DocumentError, LabRequests, LabSection, read_document};

/// Schema id of the node report: the value of its `schema` field.
pub const REPORT_SCHEMA: &str = "hoptrace.report.v1";

/// Value of `direction` / `conn_state` in rows that aggregate all of them.
pub const ALL: &str = "all";

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
///
/// Percentiles and `max_us` come from an HDR histogram of nanoseconds with
/// 2 significant digits (within 1 % of the true value); `mean_us` and
/// `total_us` are exact.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Number of recorded values (0 or more).
    pub count: u64,
    /// Median, µs.
    pub p50_us: f64,
    /// 90th percentile, µs.
    pub p90_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Largest value, µs.
    pub max_us: f64,
    /// Exact mean (`total_us / count`, rounded to 1 ns), µs; 0 without values.
    pub mean_us: f64,
    /// Sum of all recorded values, µs.
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

/// One segment for one direction and connection state (`segments[]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SegmentRow {
    /// Segment name (`netfilter.prerouting.dnat`, `pod.veth.egress`, ...;
    /// see `docs/segments.md`).
    pub segment: String,
    /// Category the segment's time is attributed to.
    pub category: Category,
    /// Which way the journeys crossed the node.
    pub direction: Direction,
    /// Whether the journeys' packets opened a connection.
    pub conn_state: ConnState,
    /// One value per journey (the sum of the segment's occurrences in it),
    /// µs (flattened into the row).
    #[serde(flatten)]
    pub stats: Stats,
    /// Sum of this segment's time / sum of the end-to-end time of the
    /// journeys that crossed it, a fraction in 0..=1.
    pub share: f64,
    /// Median packet length at the segment's first hop (`skb->len`, from
    /// the network header on), bytes.
    #[serde(default)]
    pub len_p50_bytes: u64,
    /// Largest packet length at the segment's first hop, bytes.
    #[serde(default)]
    pub len_max_bytes: u64,
}

/// One category, per direction and connection state, or `all` (`categories[]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CategoryRow {
    /// The category.
    pub category: Category,
    /// `egress`, `ingress`, `local` or `all`.
    pub direction: String,
    /// `new`, `established` or `all`.
    pub conn_state: String,
    /// One value per journey: the sum of its segments in this category, µs
    /// (flattened into the row).
    #[serde(flatten)]
    pub stats: Stats,
    /// Sum of this category's time / sum of the end-to-end time of the
    /// journeys that crossed it, a fraction in 0..=1.
    pub share: f64,
}

/// End-to-end time, first to last hop on this node (`end_to_end[]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndToEndRow {
    /// `egress`, `ingress`, `local` or `all`.
    pub direction: String,
    /// `new`, `established` or `all`.
    pub conn_state: String,
    /// One value per journey with at least two hops, µs (flattened into the row).
    #[serde(flatten)]
    pub stats: Stats,
}

/// Drops of one kernel drop reason (`drops[]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropRow {
    /// Kernel drop reason name (`reason_<n>` when the name is unknown).
    pub reason: String,
    /// Drop events with this reason.
    pub count: u64,
}

/// The node report document, `hoptrace.report.v1`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Always [`REPORT_SCHEMA`].
    pub schema: String,
    /// Node name.
    pub node: String,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// Start of tracing, RFC 3339.
    pub started_at: String,
    /// Tracing duration, seconds.
    pub duration_s: f64,
    /// Output of `hoptrace check --json` (`null` in lab runs).
    pub capabilities: serde_json::Value,
    /// Journeys finalized (including single-hop ones).
    pub journeys: u64,
    /// Segment rows, sorted by category, then total time descending.
    pub segments: Vec<SegmentRow>,
    /// Per category: an `all`/`all` row, then one row per direction and state.
    pub categories: Vec<CategoryRow>,
    /// The `all`/`all` row first, then one row per direction and state.
    pub end_to_end: Vec<EndToEndRow>,
    /// The slowest journeys, hop by hop, slowest first.
    pub exemplars: Vec<Exemplar>,
    /// Drop events by reason, most frequent first.
    pub drops: Vec<DropRow>,
    /// Every dropped journey by reason and location, most frequent first,
    /// each group listing its first 100 packets (flow, length).
    #[serde(default)]
    pub drop_records: Vec<DropGroupRecords>,
    /// ICMP and ICMPv6 journeys by type, code and direction, most frequent
    /// first.
    #[serde(default)]
    pub icmp: Vec<IcmpCount>,
    /// Events lost in the kernel (ring buffer full).
    pub lost_events: u64,
    /// Events whose headers did not parse.
    pub unparsed_packets: u64,
    /// Events from namespaces neither the node's nor a known pod's.
    pub foreign_events: u64,
    /// All correlator counters (superset of the three above).
    pub counters: LedgerCounters,
    /// Caveats for the reader.
    pub notes: Vec<String>,
    /// The lab run that produced this report; only in reports written by
    /// `hoptrace lab` (absent from the JSON otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lab: Option<LabSection>,
    /// The request timeline of what this node's socket hooks saw
    /// (`hoptrace trace` and `diagnose`): the same object as a lab run's
    /// `runs[].requests`; absent without socket hooks or requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<LabRequests>,
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
                    len_p50_bytes: stat.len_hist.value_at_quantile(0.5),
                    len_max_bytes: stat.len_hist.max(),
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

        let mut drop_records: Vec<DropGroupRecords> = ledger.drop_records.into_values().collect();
        drop_records.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.reason.cmp(&b.reason))
                .then_with(|| a.location.cmp(&b.location))
        });

        let mut icmp: Vec<IcmpCount> = ledger.icmp.into_values().collect();
        icmp.sort_by_key(|row| std::cmp::Reverse(row.count));

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
            drop_records,
            icmp,
            lost_events: meta.lost_events,
            unparsed_packets: c.unparsed_packets,
            foreign_events: c.foreign_events,
            counters: ledger.counters,
            notes,
            lab: None,
            requests: None,
        }
    }

    /// Pretty-printed JSON.
    ///
    /// # Errors
    /// [`DocumentError::Serialize`] when serde_json refuses a value (it does
    /// not for reports built by [`Report::from_ledger`]).
    pub fn to_json_pretty(&self) -> Result<String, DocumentError> {
        serde_json::to_string_pretty(self).map_err(|source| DocumentError::Serialize {
            schema: REPORT_SCHEMA,
            source,
        })
    }

    /// Reads a report written by [`Report::to_json_pretty`].
    ///
    /// # Errors
    /// [`DocumentError::Json`] when `json` is not JSON,
    /// [`DocumentError::NotADocument`] when it has no `schema` string,
    /// [`DocumentError::Schema`] for any schema but [`REPORT_SCHEMA`] and
    /// [`DocumentError::Invalid`] when a field is missing or mistyped.
    pub fn from_json(json: &str) -> Result<Report, DocumentError> {
        read_document(json, &[REPORT_SCHEMA])?;
        serde_json::from_str(json).map_err(|source| DocumentError::Invalid {
            schema: REPORT_SCHEMA,
            source,
        })
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
    use crate::report::sample::{ledger, meta};

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
        // A report outside the lab has no `lab` key at all.
        assert!(value.get("lab").is_none());
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
            Err(DocumentError::Schema { .. })
        ));
        assert!(matches!(
            Report::from_json("{"),
            Err(DocumentError::Json(_))
        ));
        let lab = crate::report::sample::lab_document()
            .to_json_pretty()
            .unwrap();
        assert!(matches!(
            Report::from_json(&lab),
            Err(DocumentError::Schema { .. })
        ));
        let bad_category = report
            .to_json_pretty()
            .unwrap()
            .replace("\"kube-proxy\"", "\"veth\"");
        assert!(matches!(
            Report::from_json(&bad_category),
            Err(DocumentError::Invalid { .. })
        ));
    }
}
