//! `hoptrace trace`: one session on this node for a duration or until
//! SIGINT/SIGTERM, then the ledger as a table and as `hoptrace.report.v1`.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use hoptrace_core::{
    kernel::{capabilities, loader::TcMode, sock::SockHooks},
    node, report,
    session::{Session, SessionOptions, timeline::NodeTimeline},
};

use crate::stop;

/// Arguments of `hoptrace trace`.
#[derive(clap::Args)]
pub struct TraceArgs {
    /// How long to trace (e.g. 10s, 2m); Ctrl-C stops earlier with a report.
    #[arg(long, default_value = "10s", value_parser = super::positive_duration, allow_hyphen_values = true)]
    duration: Duration,
    /// Interfaces for the tc hooks (repeatable); default: found by kind
    /// (pod veths, bridges, tunnels, the uplink).
    #[arg(long = "iface")]
    ifaces: Vec<String>,
    /// Report only journeys whose first packet is from or to this network
    /// (outer or inner header; a bare address is a /32 or /128), and the
    /// rest of their connections, through NAT.
    #[arg(long, value_parser = super::flow_net)]
    ip: Option<ipnet::IpNet>,
    /// Report only journeys whose first packet has this TCP/UDP source or
    /// destination port (1-65535), and the rest of their connections,
    /// through NAT.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,
    /// Write the `hoptrace.report.v1` JSON report here (the directory must exist).
    #[arg(long, value_parser = super::output_file)]
    json: Option<PathBuf>,
    /// Trace the node whose network namespace is this path (e.g. /run/netns/NAME).
    #[arg(long)]
    netns: Option<PathBuf>,
    /// How to attach tc programs: tcx (default, falls back to clsact) or clsact.
    #[arg(long, value_parser = ["tcx", "clsact"])]
    tc_mode: Option<String>,
    /// Do not attach netfilter links.
    #[arg(long)]
    no_netfilter: bool,
    /// Written once every hook is attached (for scripts and readiness probes).
    #[arg(long, value_parser = super::output_file)]
    ready_file: Option<PathBuf>,
    /// Size of the kernel's event ring buffer (e.g. 4MiB, 16MiB; a power of
    /// two, at least 64KiB): larger survives longer bursts, costs memory.
    #[arg(long, default_value = "4MiB", value_parser = parse_ring_size)]
    ring_size: u32,
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
    #[arg(long, default_value = "auto", value_parser = super::choice(&SockHooks::ALL))]
    sock_hooks: SockHooks,
}

/// Exit code when hooks were removed by another process while tracing: the
/// report is printed, but it misses their hops.
pub const EXIT_HOOKS_LOST: i32 = 4;

/// `--ring-size`: bytes with an optional KiB/MiB/GiB (or K/M/G) suffix; a
/// power of two from 64 KiB to 1 GiB.
pub fn parse_ring_size(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 4MiB"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        other => return Err(format!("unknown unit {other:?} (use KiB, MiB or GiB)")),
    };
    let bytes = number.saturating_mul(scale);
    if !bytes.is_power_of_two() || !(64 << 10..=1 << 30).contains(&bytes) {
        return Err(format!(
            "{text:?}: the ring buffer size must be a power of two from 64KiB to 1GiB"
        ));
    }
    Ok(bytes as u32)
}

/// Runs `hoptrace trace`; returns the exit code (2 without privileges).
pub fn run(args: TraceArgs) -> Result<i32> {
    if let Err(err) = capabilities::require_tracing(args.netns.is_some()) {
        eprintln!("hoptrace trace: {err}");
        return Ok(2);
    }
    if let Err(line) = super::check_node_args(args.netns.as_deref(), &args.ifaces) {
        eprintln!("hoptrace trace: {line}");
        return Ok(2);
    }
    let stop = stop::install().context("installing the SIGINT/SIGTERM handlers")?;
    let caps = capabilities::probe_all();
    let mut opts = SessionOptions::new();
    opts.ring_bytes = args.ring_size;
    opts.netns.clone_from(&args.netns);
    opts.ifaces = args.ifaces;
    // Decided per journey in userspace, never per event in the kernel: a
    // journey is followed whole through NAT (docs/trace.md).
    opts.correlator.filter = hoptrace_core::correlate::FlowFilter::new(args.ip, args.port);
    opts.netfilter = !args.no_netfilter;
    opts.tc_mode = args.tc_mode.as_deref().map(|m| match m {
        "clsact" => TcMode::Clsact,
        _ => TcMode::Tcx,
    });
    // The request timeline: socket hooks beside the session.
    let timeline = NodeTimeline::start(args.sock_hooks);
    opts.observer = Some(timeline.observer());
    let mut session = Session::start(&opts)?;
    eprintln!(
        "hoptrace: tracing {} tc hooks, {} netfilter links, {} tracepoints for {}; Ctrl-C stops early",
        session.attachments.tc.len(),
        session.attachments.netfilter_links,
        session.attachments.tracepoints.len(),
        humantime::format_duration(args.duration)
    );
    for note in session.attachments.notes.iter().chain(timeline.notes()) {
        eprint!(
            "{}",
            hoptrace_core::diagnose::wrap("hoptrace: note: ", "  ", note)
        );
    }
    if let Some(ready) = &args.ready_file {
        std::fs::write(ready, b"ready\n").with_context(|| format!("write {}", ready.display()))?;
    }
    stop::wait(args.duration, &stop);
    let lost = session.lost_hooks();
    if !lost.is_empty() {
        let message = format!(
            "hooks removed by another process while tracing: {}; their hops are missing from this report",
            lost.join(" ")
        );
        eprintln!("hoptrace: {message}");
        session.attachments.notes.push(message);
    }
    let node = match &args.netns {
        Some(path) => path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        None => node::hostname(),
    };
    let mut report = report::finish(session, node, caps.to_json())?;
    report.requests = timeline.finish(&args.proxy);
    println!("{}", report::render_table(&report));
    if let Some(requests) = &report.requests {
        println!("{}", report::timeline::render_node_view(requests));
    }
    if report.journeys == 0 {
        eprintln!(
            "hoptrace: no packet crossed the traced hooks: is there traffic through this node's pods, and do --iface/--ip/--port match it?"
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(path, report.to_json_pretty()?)
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("hoptrace: report written to {}", path.display());
    }
    Ok(if lost.is_empty() { 0 } else { EXIT_HOOKS_LOST })
}

#[cfg(test)]
mod tests {
    use super::parse_ring_size;

    #[test]
    fn ring_sizes() {
        assert_eq!(parse_ring_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_ring_size("64k"), Ok(64 << 10));
        assert_eq!(parse_ring_size("1G"), Ok(1 << 30));
        assert_eq!(parse_ring_size("262144"), Ok(256 << 10));
        assert!(parse_ring_size("3MiB").is_err(), "not a power of two");
        assert!(parse_ring_size("4KiB").is_err(), "too small");
        assert!(parse_ring_size("2GiB").is_err(), "too large");
        assert!(parse_ring_size("lots").is_err());
    }
}
