//! Issue 12, "the accuracy tests of the fidelity issue run in both modes":
//! one view of a node's ledger, per segment, direction and connection
//! state, read either from the full tracer's report or from the kernel's
//! aggregate histograms, so that one test asserts the same segment and
//! category results in both modes.

use hoptrace_common::TraceMode;
use hoptrace_core::{
    correlate::aggregate::{AggregateSnapshot, log_linear_quantile},
    report::{self, Report},
    session::{Session, SessionOptions},
};

/// How the node's programs time its packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every hop through the ring buffer to the correlator (`trace`).
    Full,
    /// In-kernel histograms (the agent's default), no journey sampled: the
    /// ledger is the kernel's alone.
    Aggregate,
}

impl Mode {
    /// Sets `opts` up for this mode (aggregate: `--sample 0`).
    pub fn configure(self, opts: &mut SessionOptions) {
        if self == Mode::Aggregate {
            opts.config.mode = TraceMode::Aggregate as u8;
            opts.config.sample_every = 0;
        }
    }

    /// A session options value for the node namespace `/run/netns/<netns>`
    /// in this mode.
    pub fn options(self, netns: &str) -> SessionOptions {
        let mut opts = SessionOptions::new();
        opts.netns = Some(std::path::PathBuf::from("/run/netns").join(netns));
        self.configure(&mut opts);
        opts
    }
}

/// One row of a ledger: a segment of journeys of one direction and
/// connection state.
#[derive(Clone, Debug)]
pub struct Row {
    /// Segment name.
    pub segment: String,
    /// Its category's name.
    pub category: String,
    /// `egress`, `ingress` or `local`.
    pub direction: String,
    /// `new`, `established` or `untracked`.
    pub conn_state: String,
    /// Full mode: journeys (repeats summed); aggregate mode: crossings.
    pub count: u64,
    /// Median, µs.
    pub p50_us: f64,
    /// Summed time, µs.
    pub total_us: f64,
}

/// A node's ledger in one mode, and the report of the same session (in
/// aggregate mode it holds what the ring buffer still carries: drops).
pub struct ModeLedger {
    /// The mode it was read in.
    pub mode: Mode,
    /// The rows.
    pub rows: Vec<Row>,
    /// The session's report.
    pub report: Report,
}

impl ModeLedger {
    /// Stops `session` (started with [`Mode::options`] of `mode`) and reads
    /// its ledger: the report's segments in full mode, the kernel's
    /// histograms (read just before stopping) in aggregate mode.
    pub fn finish(session: Session, mode: Mode, node: &str) -> Self {
        let snapshot = match mode {
            Mode::Full => None,
            Mode::Aggregate => Some(session.aggregate_snapshot().expect("kernel histograms")),
        };
        let report = report::finish(session, node.into(), serde_json::Value::Null)
            .unwrap_or_else(|e| panic!("finish {node}: {e}"));
        let rows = match &snapshot {
            None => report
                .segments
                .iter()
                .map(|s| Row {
                    segment: s.segment.clone(),
                    category: s.category.name().to_owned(),
                    direction: s.direction.name().to_owned(),
                    conn_state: s.conn_state.name().to_owned(),
                    count: s.stats.count,
                    p50_us: s.stats.p50_us,
                    total_us: s.stats.total_us,
                })
                .collect(),
            Some(snapshot) => rows_of_snapshot(snapshot),
        };
        Self { mode, rows, report }
    }

    /// Summed count of `segment`'s rows, of `direction` if given.
    pub fn count(&self, segment: &str, direction: Option<&str>) -> u64 {
        self.rows
            .iter()
            .filter(|r| r.segment == segment && direction.is_none_or(|d| r.direction == d))
            .map(|r| r.count)
            .sum()
    }

    /// Count of `category`: its largest row of the report's categories in
    /// full mode (journeys that crossed it), the sum of its segments'
    /// crossings in aggregate mode (the kernel keeps no per-journey sums).
    pub fn category_count(&self, category: &str) -> u64 {
        match self.mode {
            Mode::Full => self
                .report
                .categories
                .iter()
                .filter(|c| c.category.name() == category)
                .map(|c| c.stats.count)
                .max()
                .unwrap_or(0),
            Mode::Aggregate => self
                .rows
                .iter()
                .filter(|r| r.category == category)
                .map(|r| r.count)
                .sum(),
        }
    }

    /// p50 (µs) of `segment`'s row of `conn_state` with the most
    /// observations.
    pub fn p50_us(&self, segment: &str, conn_state: Option<&str>) -> Option<f64> {
        self.rows
            .iter()
            .filter(|r| r.segment == segment && conn_state.is_none_or(|c| r.conn_state == c))
            .max_by_key(|r| r.count)
            .map(|r| r.p50_us)
    }

    /// Share of the attributed time in segments no taxonomy rule names
    /// (`<a>..<b>`), and those segments with their time (µs), most first.
    pub fn unnamed_share(&self) -> (f64, Vec<(String, f64)>) {
        Self::unnamed_share_of(&[self])
    }

    /// [`ModeLedger::unnamed_share`] of several nodes' ledgers together.
    pub fn unnamed_share_of(ledgers: &[&ModeLedger]) -> (f64, Vec<(String, f64)>) {
        let rows = || ledgers.iter().flat_map(|l| l.rows.iter());
        let total: f64 = rows().map(|r| r.total_us).sum();
        let mut unnamed: Vec<(String, f64)> = Vec::new();
        for r in rows().filter(|r| r.segment.contains("..")) {
            match unnamed.iter_mut().find(|(n, _)| *n == r.segment) {
                Some((_, t)) => *t += r.total_us,
                None => unnamed.push((r.segment.clone(), r.total_us)),
            }
        }
        unnamed.sort_by(|a, b| b.1.total_cmp(&a.1));
        let sum: f64 = unnamed.iter().map(|u| u.1).sum();
        (sum / total.max(f64::MIN_POSITIVE), unnamed)
    }

    /// Prints the rows (and, in full mode, the report's table).
    pub fn dump(&self, name: &str) {
        eprintln!("==== {name} ({:?} mode)", self.mode);
        if self.mode == Mode::Full {
            eprintln!("{}", report::render_table(&self.report));
            return;
        }
        let mut rows = self.rows.clone();
        rows.sort_by(|a, b| (&a.category, &a.segment).cmp(&(&b.category, &b.segment)));
        for r in rows {
            eprintln!(
                "{:<16} {:<40} {:<8} {:<12} {:>7} {:>9.2} µs",
                r.category, r.segment, r.direction, r.conn_state, r.count, r.p50_us
            );
        }
    }
}

/// The rows of the kernel's histograms.
fn rows_of_snapshot(snapshot: &AggregateSnapshot) -> Vec<Row> {
    snapshot
        .series
        .iter()
        .map(|s| Row {
            segment: s.segment.name.clone(),
            category: s.segment.category.name().to_owned(),
            direction: s.direction.name().to_owned(),
            conn_state: s.conn_state.name().to_owned(),
            count: s.count,
            p50_us: log_linear_quantile(&s.buckets, 0.5).unwrap_or(f64::NAN) / 1e3,
            total_us: s.sum_ns as f64 / 1e3,
        })
        .collect()
}
