//! The agent's `/histograms` document (`hoptrace.agent.histograms.v1`):
//! per segment, direction and connection state, the merged log-linear
//! histograms at the kernel's own resolution ([`hoptrace_common::agg`]: 4
//! buckets per power of two of ns, each at most 25 % wide) and their
//! quantiles. In aggregate mode it carries the kernel's histograms and,
//! bucketed the same way, the correlator's sampled journeys; the
//! Prometheus exposition keeps its 23 coarse buckets per series.
//!
//! This module owns the document's shape; [`super::metrics::AgentMetrics`]
//! fills it.

use hoptrace_common::agg::{AGG_BUCKETS, agg_bucket_lower};
use hoptrace_core::correlate::aggregate::log_linear_quantile;
use serde::Serialize;

/// The document's schema name.
pub const SCHEMA: &str = "hoptrace.agent.histograms.v1";

/// `/histograms`: everything the agent holds at the kernel's resolution.
#[derive(Clone, Debug, Serialize)]
pub struct HistogramsDocument {
    /// [`SCHEMA`].
    pub schema: &'static str,
    /// The `node` label of the agent's metrics.
    pub node: String,
    /// `aggregate` or `full`.
    pub mode: &'static str,
    /// Lower bound of each bucket in ns ([`AGG_BUCKETS`] of them; bucket
    /// `i` holds `[bounds_ns[i], bounds_ns[i+1])`, the last one is open).
    pub bucket_lower_bounds_ns: Vec<u64>,
    /// The kernel's histograms (aggregate mode; empty in full mode), one
    /// observation per segment crossing, cumulative since the start.
    pub kernel: Vec<HistogramSeries>,
    /// The correlator's journeys (aggregate mode: the sampled ones, one in
    /// `--sample N`; empty in full mode), one observation per journey and
    /// segment (repeats summed), put in the same buckets.
    pub sampled: Vec<HistogramSeries>,
}

/// One series: a segment of journeys of one direction and connection state.
#[derive(Clone, Debug, Serialize)]
pub struct HistogramSeries {
    /// Segment name ([docs/segments.md](../../../docs/segments.md)).
    pub segment: String,
    /// Its category.
    pub category: &'static str,
    /// `egress`, `ingress` or `local`.
    pub direction: &'static str,
    /// `new`, `established` or `untracked`.
    pub conn_state: &'static str,
    /// Observations.
    pub count: u64,
    /// Their summed duration, ns.
    pub sum_ns: u64,
    /// Median, ns, interpolated inside its bucket (`null` without
    /// observations).
    pub p50_ns: Option<f64>,
    /// 99th percentile, ns, likewise.
    pub p99_ns: Option<f64>,
    /// Non-empty buckets as `[index, count]` (index into
    /// `bucket_lower_bounds_ns`).
    pub buckets: Vec<(usize, u64)>,
}

/// Segment, category, direction and connection state of a series.
pub type SeriesLabels = (String, &'static str, &'static str, &'static str);

impl HistogramSeries {
    /// A series from counts per log-linear bucket.
    pub fn new(
        (segment, category, direction, conn_state): SeriesLabels,
        count: u64,
        sum_ns: u64,
        buckets: &[u64],
    ) -> Self {
        Self {
            segment,
            category,
            direction,
            conn_state,
            count,
            sum_ns,
            p50_ns: log_linear_quantile(buckets, 0.5),
            p99_ns: log_linear_quantile(buckets, 0.99),
            buckets: buckets
                .iter()
                .enumerate()
                .filter(|&(_, &n)| n != 0)
                .map(|(i, &n)| (i, n))
                .collect(),
        }
    }
}

/// The lower bounds of the kernel's buckets, ns.
pub fn bucket_lower_bounds_ns() -> Vec<u64> {
    (0..AGG_BUCKETS).map(agg_bucket_lower).collect()
}
