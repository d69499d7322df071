//! `hoptrace trace`: one session on this node for a duration or until
//! SIGINT/SIGTERM, then the ledger as a table and as `hoptrace.report.v1`.

use std::{
    net::IpAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use hoptrace_common::TraceConfig;
use ipnet::IpNet;

use crate::{
    correlate::Ledger,
    loader::Counters,
    report::{Report, ReportMeta},
    session::{Attachments, Session, lost_events},
};

static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM request a clean stop (detach, report) instead of
/// killing the process with programs attached.
pub fn install_stop_handler() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        let _ = unsafe { sigaction(signal, &action) };
    }
}

pub fn stop_requested() -> bool {
    STOP_REQUESTED.load(Ordering::SeqCst)
}

/// Sleeps until `duration` has passed or a stop signal arrived; returns the
/// time actually waited.
pub fn wait(duration: Duration, mut tick: impl FnMut(Duration)) -> Duration {
    let start = Instant::now();
    while start.elapsed() < duration && !stop_requested() {
        std::thread::sleep(Duration::from_millis(50).min(duration.saturating_sub(start.elapsed())));
        tick(start.elapsed());
    }
    start.elapsed()
}

/// Kernel-side flow filter from `--ip` and `--port`.
pub fn trace_config(ip: Option<IpNet>, port: Option<u16>) -> TraceConfig {
    let mut cfg = TraceConfig::default();
    if let Some(net) = ip {
        cfg.filter_flow = 1;
        cfg.match_prefix_len = net.prefix_len();
        match net.network() {
            IpAddr::V4(a) => {
                cfg.match_family = 4;
                cfg.match_addr[..4].copy_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                cfg.match_family = 6;
                cfg.match_addr = a.octets();
            }
        }
    }
    if let Some(port) = port {
        cfg.filter_flow = 1;
        cfg.match_port = port;
    }
    cfg
}

/// Kernel release, as `uname -r` prints it.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "node".into())
}

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
pub fn finish(
    session: Session,
    node: String,
    capabilities: serde_json::Value,
) -> anyhow::Result<Report> {
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
