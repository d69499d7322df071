//! Per-run figures of `hoptrace compare`: each column (a lab run or a trace
//! report) summed over its nodes, so that two runs compare as wholes and
//! never one node of a run with another node of the same run.
//!
//! Time per request by category comes from the request timeline
//! (`runs[].requests.categories`, lab documents with HTTP loads) when every
//! column has one; otherwise from the node reports' category rows, summed
//! over the run's nodes and divided by the requests the load generator
//! completed (or, for trace reports without a load generator, by the
//! journeys the nodes saw).

use std::collections::BTreeMap;

use hoptrace_core::report::{ALL, ClientLatency, Report, Stats};

use super::{Comparison, InputReport};

/// Where per-request category times come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// `runs[].requests.categories` of every column: mean µs per joined
    /// request, every node and process a request crossed.
    Timeline,
    /// Category `total_us` of every node of the run (all directions and
    /// connection states) divided by the load generator's successful
    /// requests (`lab.requests_ok`).
    LedgerPerRequest,
    /// Category `total_us` of every node divided by the nodes' end-to-end
    /// journeys (`end_to_end` `all`/`all` count): some column has no load
    /// generator to count requests.
    LedgerPerJourney,
}

impl Basis {
    /// What one unit is: `request` or `journey`.
    pub const fn unit(self) -> &'static str {
        match self {
            Self::Timeline | Self::LedgerPerRequest => "request",
            Self::LedgerPerJourney => "journey",
        }
    }

    /// Where the figures come from, for a table's title.
    pub const fn source(self) -> &'static str {
        match self {
            Self::Timeline => "the request timeline (runs[].requests), every node and process",
            Self::LedgerPerRequest => {
                "the kernel ledger: category time summed over the run's nodes / requests ok"
            }
            Self::LedgerPerJourney => {
                "the kernel ledger: category time summed over the nodes / end-to-end journeys"
            }
        }
    }
}

/// Time per request (or journey) by category, one value per column.
#[derive(Debug, Clone, PartialEq)]
pub struct CategoryTable {
    /// Where the values come from.
    pub basis: Basis,
    /// Category names (docs/segments.md), largest value over the columns
    /// first; categories that are zero in every column are left out.
    pub categories: Vec<String>,
    /// µs per unit, `values[category][column]` (0 when a run never
    /// crossed the category).
    pub values: Vec<Vec<f64>>,
    /// Whole time per unit of each column, µs: the client's mean latency
    /// (lab runs) or the mean end-to-end journey summed over the nodes
    /// (trace reports); `None` when the column has neither.
    pub totals: Vec<Option<f64>>,
}

impl CategoryTable {
    /// Sum of the category values of `column`, µs per unit.
    pub fn attributed(&self, column: usize) -> f64 {
        self.values.iter().map(|row| row[column]).sum()
    }
}

/// Time per unit by segment (from the node reports), one value per column.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentTable {
    /// `LedgerPerRequest` or `LedgerPerJourney`.
    pub basis: Basis,
    /// `(segment, category)`, largest value over the columns first.
    pub segments: Vec<(String, String)>,
    /// µs per unit, `values[segment][column]`.
    pub values: Vec<Vec<f64>>,
}

/// The `all`/`all` statistics of a category of one node report: its
/// `all`/`all` row, else the sum of the rows split by direction and state.
fn category_total_us(report: &Report, name: &str) -> f64 {
    let rows = report
        .categories
        .iter()
        .filter(|row| row.category.name() == name);
    match rows
        .clone()
        .find(|row| row.direction == ALL && row.conn_state == ALL)
    {
        Some(row) => row.stats.total_us,
        None => rows
            .filter(|row| row.direction != ALL && row.conn_state != ALL)
            .map(|row| row.stats.total_us)
            .sum(),
    }
}

impl InputReport {
    /// Requests the load generator completed, when this column is a lab run
    /// with at least one.
    pub fn requests_ok(&self) -> Option<f64> {
        self.lab
            .as_ref()
            .filter(|lab| lab.requests_ok > 0)
            .map(|lab| lab.requests_ok as f64)
    }

    /// End-to-end journeys (at least two hops) summed over the nodes.
    pub fn journeys(&self) -> u64 {
        self.nodes
            .iter()
            .filter_map(Report::end_to_end_total)
            .map(|row| row.stats.count)
            .sum()
    }

    /// Mean client latency, µs: the request timeline's, else the load
    /// generator's; `None` without a lab section.
    pub fn client_mean_us(&self) -> Option<f64> {
        if let Some(requests) = &self.requests
            && requests.client_mean_us > 0.0
        {
            return Some(requests.client_mean_us);
        }
        self.lab
            .as_ref()
            .map(|lab| lab.client_latency.mean_us)
            .filter(|mean| *mean > 0.0)
    }

    /// `lab.client_latency`, when the column is a lab run.
    pub fn client_latency(&self) -> Option<&ClientLatency> {
        self.lab.as_ref().map(|lab| &lab.client_latency)
    }

    /// End-to-end statistics of the node with the most journeys (trace
    /// reports have one node): percentiles cannot be summed over nodes.
    pub fn busiest_end_to_end(&self) -> Option<&Stats> {
        self.nodes
            .iter()
            .filter_map(Report::end_to_end_total)
            .map(|row| &row.stats)
            .max_by_key(|stats| stats.count)
    }

    /// Category time over every node, µs, by category name.
    pub fn ledger_category_totals(&self) -> BTreeMap<String, f64> {
        let mut totals = BTreeMap::new();
        for report in &self.nodes {
            for row in &report.categories {
                let name = row.category.name();
                if !totals.contains_key(name) {
                    let sum: f64 = self
                        .nodes
                        .iter()
                        .map(|node| category_total_us(node, name))
                        .sum();
                    totals.insert(name.to_owned(), sum);
                }
            }
        }
        totals
    }

    /// Segment time over every node, direction and connection state, µs,
    /// by `(segment, category)`.
    pub fn ledger_segment_totals(&self) -> BTreeMap<(String, String), f64> {
        let mut totals = BTreeMap::new();
        for report in &self.nodes {
            for row in &report.segments {
                *totals
                    .entry((row.segment.clone(), row.category.name().to_owned()))
                    .or_insert(0.0) += row.stats.total_us;
            }
        }
        totals
    }

    /// Denominator of the ledger figures for `basis`: requests ok or
    /// journeys (at least 1).
    fn units(&self, basis: Basis) -> f64 {
        match basis {
            Basis::LedgerPerJourney => self.journeys().max(1) as f64,
            Basis::Timeline | Basis::LedgerPerRequest => self.requests_ok().unwrap_or(1.0),
        }
    }

    /// Whole time per unit for `basis` (see [`CategoryTable::totals`]).
    fn total_per_unit(&self, basis: Basis) -> Option<f64> {
        match basis {
            Basis::Timeline | Basis::LedgerPerRequest => self.client_mean_us(),
            Basis::LedgerPerJourney => {
                let total: f64 = self
                    .nodes
                    .iter()
                    .filter_map(Report::end_to_end_total)
                    .map(|row| row.stats.total_us)
                    .sum();
                (total > 0.0).then(|| total / self.units(basis))
            }
        }
    }
}

/// Rows ordered by their largest value, zero rows dropped.
fn ordered<K: Clone + Ord>(per_column: &[BTreeMap<K, f64>]) -> (Vec<K>, Vec<Vec<f64>>) {
    let mut keys: Vec<K> = per_column
        .iter()
        .flat_map(|map| map.keys().cloned())
        .collect();
    keys.sort();
    keys.dedup();
    let mut rows: Vec<(K, Vec<f64>)> = keys
        .into_iter()
        .map(|key| {
            let values = per_column
                .iter()
                .map(|map| map.get(&key).copied().unwrap_or(0.0))
                .collect();
            (key, values)
        })
        .filter(|(_, values): &(K, Vec<f64>)| values.iter().any(|v| *v > 0.0))
        .collect();
    let peak = |values: &[f64]| values.iter().copied().fold(0.0, f64::max);
    rows.sort_by(|a, b| peak(&b.1).total_cmp(&peak(&a.1)));
    rows.into_iter().unzip()
}

impl Comparison {
    /// The basis every column can be compared on (see [`Basis`]).
    pub fn basis(&self) -> Basis {
        let all =
            |f: &dyn Fn(&InputReport) -> bool| !self.inputs.is_empty() && self.inputs.iter().all(f);
        if all(&|input| input.requests.as_ref().is_some_and(|r| r.joined > 0)) {
            Basis::Timeline
        } else if all(&|input| input.requests_ok().is_some()) {
            Basis::LedgerPerRequest
        } else {
            Basis::LedgerPerJourney
        }
    }

    /// Time per request (or journey) by category, each column summed over
    /// its nodes.
    pub fn category_table(&self) -> CategoryTable {
        let basis = self.basis();
        let per_column: Vec<BTreeMap<String, f64>> = self
            .inputs
            .iter()
            .map(|input| match (&input.requests, basis) {
                (Some(requests), Basis::Timeline) => requests
                    .categories
                    .iter()
                    .map(|(name, category)| (name.clone(), category.mean_us))
                    .collect(),
                _ => {
                    let units = input.units(basis);
                    input
                        .ledger_category_totals()
                        .into_iter()
                        .map(|(name, total)| (name, total / units))
                        .collect()
                }
            })
            .collect();
        let (categories, values) = ordered(&per_column);
        CategoryTable {
            basis,
            categories,
            values,
            totals: self
                .inputs
                .iter()
                .map(|input| input.total_per_unit(basis))
                .collect(),
        }
    }

    /// Time per request (or journey) by segment from the node reports,
    /// each column summed over its nodes, directions and states.
    pub fn segment_table(&self) -> SegmentTable {
        let basis = match self.basis() {
            Basis::Timeline => Basis::LedgerPerRequest,
            other => other,
        };
        let per_column: Vec<BTreeMap<(String, String), f64>> = self
            .inputs
            .iter()
            .map(|input| {
                let units = input.units(basis);
                input
                    .ledger_segment_totals()
                    .into_iter()
                    .map(|(key, total)| (key, total / units))
                    .collect()
            })
            .collect();
        let (segments, values) = ordered(&per_column);
        SegmentTable {
            basis,
            segments,
            values,
        }
    }
}
