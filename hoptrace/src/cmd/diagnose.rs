//! `hoptrace diagnose`: probe the kernel, read the node's configuration and
//! counters, trace for a while, read the counters again, and print the
//! findings worst first (then the per-category table); `--json` writes
//! `hoptrace.diagnosis.v1`. Exit code 0 when nothing is critical, 3 when
//! something is, 2 without privileges.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use hoptrace_core::{
    correlate::Observers,
    diagnose::{self, DropObserver, Input, Severity},
    kernel::capabilities,
    node::{self, config},
    report::{self, DIAGNOSIS_SCHEMA, DiagnosisDocument},
    session::{Session, SessionOptions, timeline::NodeTimeline},
};

use crate::stop;

/// Exit code when a finding is critical.
pub const EXIT_CRITICAL: i32 = 3;

/// Arguments of `hoptrace diagnose`.
#[derive(clap::Args)]
pub struct DiagnoseArgs {
    /// How long to trace (e.g. 30s, 2m); Ctrl-C stops earlier with the diagnosis.
    #[arg(long, default_value = "30s", value_parser = super::positive_duration, allow_hyphen_values = true)]
    duration: Duration,
    /// Write the `hoptrace.diagnosis.v1` JSON document here (the directory must exist).
    #[arg(long, value_parser = super::output_file)]
    json: Option<PathBuf>,
    /// Diagnose the node whose network namespace is this path (e.g. /run/netns/NAME).
    #[arg(long)]
    netns: Option<PathBuf>,
    /// Written once every hook is attached (for scripts and tests).
    #[arg(long, value_parser = super::output_file)]
    ready_file: Option<PathBuf>,
    /// Thread names (comm) of ingress proxies for the request timeline
    /// (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "envoy,nginx,haproxy,traefik,ht-lab-proxy"
    )]
    proxy: Vec<String>,
    /// Where the request timeline's socket reads and writes come from:
    /// auto (tp_btf sock: tracepoints, else the syscalls: fallback) or
    /// syscalls (the fallback, even where the sock: ones exist).
    #[arg(long, default_value = "auto", value_parser = super::choice(&hoptrace_core::kernel::sock::SockHooks::ALL))]
    sock_hooks: hoptrace_core::kernel::sock::SockHooks,
}

/// Runs `hoptrace diagnose`; returns the exit code.
pub fn run(args: &DiagnoseArgs) -> Result<i32> {
    if let Err(err) = capabilities::require_tracing(args.netns.is_some()) {
        eprintln!("hoptrace diagnose: {err}");
        return Ok(2);
    }
    if let Err(line) = super::check_node_args(args.netns.as_deref(), &[]) {
        eprintln!("hoptrace diagnose: {line}");
        return Ok(2);
    }
    let stop = stop::install().context("installing the SIGINT/SIGTERM handlers")?;
    let caps = capabilities::probe_all();
    let netns = args.netns.as_deref();
    let (node_config, before) =
        node::in_netns(netns, || (config::read_config(), config::read_counters()))?;
    let drops = Arc::new(DropObserver::new());
    let mut opts = SessionOptions::new();
    opts.netns = args.netns.clone();
    // The request timeline (the ingress proxy's saturation) beside the drops.
    let timeline = NodeTimeline::start(args.sock_hooks);
    opts.observer = Some(Arc::new(Observers(vec![
        drops.clone(),
        timeline.observer(),
    ])));
    let session = Session::start(&opts)?;
    for note in timeline.notes() {
        eprint!(
            "{}",
            hoptrace_core::diagnose::wrap("hoptrace: note: ", "  ", note)
        );
    }
    eprintln!(
        "hoptrace: diagnosing for {} ({} tc hooks, {} netfilter links, {} tracepoints); Ctrl-C stops early",
        humantime::format_duration(args.duration),
        session.attachments.tc.len(),
        session.attachments.netfilter_links,
        session.attachments.tracepoints.len(),
    );
    if let Some(ready) = &args.ready_file {
        std::fs::write(ready, b"ready\n").with_context(|| format!("write {}", ready.display()))?;
    }
    stop::wait(args.duration, &stop);
    let node_name = match netns {
        Some(path) => path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        None => node::hostname(),
    };
    let mut report = report::finish(session, node_name.clone(), caps.to_json())?;
    report.requests = timeline.finish(&args.proxy);
    let after = node::in_netns(netns, config::read_counters)?;
    let counters = after.since(&before);
    let drop_groups = drops.groups();
    // The request timeline's findings first among equal severities.
    let mut findings = report
        .requests
        .as_ref()
        .map(diagnose::diagnose_requests)
        .unwrap_or_default();
    findings.extend(diagnose::diagnose(&Input {
        report: &report,
        config: Some(&node_config),
        counters: Some(&counters),
        drops: &drop_groups,
    }));
    findings.sort_by_key(|f| f.severity);
    println!(
        "hoptrace diagnosis of node {} ({:.1} s, {} journeys): {} critical, {} warning, {} info\n",
        node_name,
        report.duration_s,
        report.journeys,
        findings
            .iter()
            .filter(|f| f.severity == Severity::Critical)
            .count(),
        findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
            .count(),
        findings
            .iter()
            .filter(|f| f.severity == Severity::Info)
            .count(),
    );
    print!("{}", diagnose::render_findings(&findings));
    println!("{}", report::render_categories(&report));
    if let Some(requests) = &report.requests {
        println!("{}", report::timeline::render_node_view(requests));
    }
    for note in node_config.notes.iter().chain(&counters.notes) {
        println!("{}", diagnose::wrap("note: ", "      ", note).trim_end());
    }
    if let Some(line) = diagnose::headline(&findings) {
        print!("\n{}", diagnose::wrap("", "", &line));
    }
    let code = if diagnose::worst(&findings) == Some(Severity::Critical) {
        EXIT_CRITICAL
    } else {
        0
    };
    if let Some(path) = &args.json {
        let doc = DiagnosisDocument {
            schema: DIAGNOSIS_SCHEMA.to_owned(),
            node: node_name,
            started_at: report.started_at.clone(),
            findings,
            node_config,
            counters,
            drop_groups,
            report,
        };
        std::fs::write(path, doc.to_json_pretty()?)
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("hoptrace: diagnosis written to {}", path.display());
    }
    Ok(code)
}
