//! From a finished session to its [`Report`]: what the ledger knows, plus
//! what the caller knows (node name, kernel, capabilities, attachments).

use std::time::Duration;

use crate::{
    attribution::ledger::Ledger,
    kernel::loader::Counters,
    node::kernel_release,
    report::{Report, ReportMeta},
    session::{Attachments, Session, SessionError, lost_events},
};

/// Assembles the report of one finished session.
pub fn build_report(
    ledger: Ledger,
    counters: &Counters,
    attachments: &Attachments,
    node: String,
    started_at: std::time::SystemTime,
    duration: Duration,
    capabilities: serde_json::Value,
) -> Report {
    let mut notes = attachments.notes.clone();
    notes.push(format!(
        "attached: {} tc hooks ({}), {} netfilter links, tracepoints: {}",
        attachments.tc.len(),
        attachments
            .tc
            .iter()
            .map(|t| format!("{}/{}", t.iface, t.direction))
            .collect::<Vec<_>>()
            .join(" "),
        attachments.netfilter_links,
        if attachments.tracepoints.is_empty() {
            "none".to_string()
        } else {
            attachments.tracepoints.join(" ")
        }
    ));
    Report::from_ledger(
        ledger,
        ReportMeta {
            node,
            kernel: kernel_release(),
            started_at: humantime::format_rfc3339_seconds(started_at).to_string(),
            duration_s: duration.as_secs_f64(),
            capabilities,
            lost_events: lost_events(counters),
            notes,
        },
    )
}

/// Stops a session and builds its report.
///
/// # Errors
/// [`SessionError`] when the session's drain thread cannot be joined.
pub fn finish(
    session: Session,
    node: String,
    capabilities: serde_json::Value,
) -> Result<Report, SessionError> {
    let started_at = session.started_at;
    let duration = session.started.elapsed();
    let attachments = session.attachments.clone();
    let (ledger, counters) = session.stop()?;
    Ok(build_report(
        ledger,
        &counters,
        &attachments,
        node,
        started_at,
        duration,
        capabilities,
    ))
}
