//! The node diagnosis: findings from a node report, the node's
//! configuration and its counters, each with a severity, the measured
//! evidence, the likely cause and the advice.
//!
//! - `rules.rs`: one function per finding family (kube-proxy, conntrack,
//!   MTU, tunnel checksums, drops, queueing, visibility, latency), with the
//!   thresholds as named constants; `docs/diagnose.md` lists them.
//! - `drops.rs`: the [`DropObserver`] that keeps example flows per drop
//!   reason and location.
//! - `render.rs`: the findings as terminal text, at most 100 columns.
//!
//! Everything here is host-testable: the inputs are plain data.

mod drops;
mod render;
mod rules;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use drops::{DropGroup, DropObserver, EXAMPLES_PER_GROUP, MAX_GROUPS};
pub use render::{WIDTH, render_findings, wrap};
pub use rules::thresholds;

use crate::attribution::ledger::FlowInfo;
use crate::node::config::{NodeConfig, NodeCounters};
use crate::report::Report;

/// How bad a finding is. Ordered: `Critical` < `Warning` < `Info`, so a
/// sort puts the worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Packets are being lost or the node is about to fail: act now
    /// (`hoptrace diagnose` exits with 3).
    Critical,
    /// A cost or risk worth changing.
    Warning,
    /// Context: where the time goes, what hoptrace could not see.
    Info,
}

impl Severity {
    /// `critical`, `warning` or `info`.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// One number behind a finding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Number {
    /// What it is (`kube_proxy_mean_us`, `services`, `drops`, ...).
    pub name: String,
    /// Its value.
    pub value: f64,
    /// Its unit: `us`, `count`, `bytes`, `fraction` (0..=1).
    pub unit: String,
}

/// One finding of the diagnosis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Stable id (`kube-proxy.rule-cost`, `drops.rp-filter`, ...), listed
    /// in `docs/diagnose.md`.
    pub id: String,
    /// How bad it is.
    pub severity: Severity,
    /// One sentence with the headline number.
    pub title: String,
    /// What was measured or read, with numbers, one line each.
    pub evidence: Vec<String>,
    /// The likely cause.
    pub cause: String,
    /// What to change.
    pub advice: String,
    /// The numbers behind the finding.
    pub numbers: Vec<Number>,
    /// Example flows (dropped ones for drop findings), at most a few.
    pub examples: Vec<FlowInfo>,
}

impl Finding {
    /// A finding without numbers or examples.
    pub fn new(id: &str, severity: Severity, title: String) -> Self {
        Self {
            id: id.to_owned(),
            severity,
            title,
            evidence: Vec::new(),
            cause: String::new(),
            advice: String::new(),
            numbers: Vec::new(),
            examples: Vec::new(),
        }
    }

    /// Adds a number (builder style).
    #[must_use]
    pub fn number(mut self, name: &str, value: f64, unit: &str) -> Self {
        self.numbers.push(Number {
            name: name.to_owned(),
            value,
            unit: unit.to_owned(),
        });
        self
    }

    /// The value of the number called `name`, if present.
    pub fn value(&self, name: &str) -> Option<f64> {
        self.numbers
            .iter()
            .find(|n| n.name == name)
            .map(|n| n.value)
    }
}

/// What the diagnosis looks at. `config`, `counters` and `drops` are
/// optional: `trace` and `lab` diagnose from the report alone.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// The node report of the trace.
    pub report: &'a Report,
    /// The node's configuration, read once.
    pub config: Option<&'a NodeConfig>,
    /// The counters' growth during the trace ([`NodeCounters::since`]).
    pub counters: Option<&'a NodeCounters>,
    /// Drops with their flows, from a [`DropObserver`].
    pub drops: &'a [DropGroup],
}

impl<'a> Input<'a> {
    /// Only the report.
    pub fn report_only(report: &'a Report) -> Self {
        Self {
            report,
            config: None,
            counters: None,
            drops: &[],
        }
    }
}

/// Every finding for `input`, worst first (critical, warning, info; within
/// a severity in the order of the rules, the measured cost first).
pub fn diagnose(input: &Input<'_>) -> Vec<Finding> {
    let mut findings = rules::all(input);
    // Stable: keeps the rules' order within a severity.
    findings.sort_by_key(|f| f.severity);
    findings
}

/// Findings of a request timeline (`requests` of a lab run), worst first.
pub fn diagnose_requests(requests: &crate::report::LabRequests) -> Vec<Finding> {
    let mut findings = rules::requests(requests);
    findings.sort_by_key(|f| f.severity);
    findings
}

/// The worst severity among `findings`, `None` when there are none.
pub fn worst(findings: &[Finding]) -> Option<Severity> {
    findings.iter().map(|f| f.severity).min()
}

/// The closing sentence of `trace`, `lab` and `diagnose`: the top
/// finding's title with its severity and id, or `None` without findings.
pub fn headline(findings: &[Finding]) -> Option<String> {
    let top = findings.first()?;
    Some(format!(
        "Top finding ({}, {}): {}",
        top.severity.name(),
        top.id,
        top.title
    ))
}
