//! The `hoptrace` command line.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use hoptrace::{capabilities, cleanup, compare, loader::TcMode, report, servers, session, trace};

#[derive(Parser)]
#[command(name = "hoptrace", version, about = "Where does each microsecond of a Kubernetes node's datapath go?")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Probe what this kernel offers (by trying) and what hoptrace can time.
    Check {
        /// Machine-readable output: every item with true/false and the kernel's reason.
        #[arg(long)]
        json: bool,
    },
    /// Trace every packet crossing this node's datapath and attribute its latency.
    Trace(TraceArgs),
    /// Remove clsact tc filters left behind by a killed hoptrace (only hoptrace's own).
    Cleanup {
        /// Network namespace to clean (a /run/netns path); default: this one.
        #[arg(long)]
        netns: Option<PathBuf>,
    },
    /// Compare reports side by side (per category and segment, with deltas).
    Compare {
        #[arg(required = true)]
        reports: Vec<PathBuf>,
        /// Also write a self-contained HTML page with charts (and SVG files beside it).
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// Built-in HTTP and UDP echo server (used by the lab inside namespaces).
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        http: Option<std::net::SocketAddr>,
        #[arg(long)]
        udp: Option<std::net::SocketAddr>,
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
    },
}

#[derive(clap::Args)]
struct TraceArgs {
    /// How long to trace (e.g. 10s, 2m); Ctrl-C stops earlier with a report.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Interfaces for the tc hooks (repeatable); default: found by kind
    /// (pod veths, bridges, tunnels, the uplink).
    #[arg(long = "iface")]
    ifaces: Vec<String>,
    /// Keep only packets from or to this network (outer or inner header).
    #[arg(long)]
    ip: Option<ipnet::IpNet>,
    /// Keep only packets with this TCP/UDP source or destination port.
    #[arg(long)]
    port: Option<u16>,
    /// Write the `hoptrace.report.v1` JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Trace the node whose network namespace is this path (e.g. /run/netns/NAME).
    #[arg(long)]
    netns: Option<PathBuf>,
    /// How to attach tc programs: tcx (default, falls back to clsact) or clsact.
    #[arg(long, value_enum)]
    tc_mode: Option<TcModeArg>,
    /// Do not attach netfilter links.
    #[arg(long)]
    no_netfilter: bool,
    /// Written once every hook is attached (for scripts and readiness probes).
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TcModeArg {
    Tcx,
    Clsact,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Check { json } => capabilities::run_check(json),
        Command::Cleanup { netns } => cleanup::run_cleanup(netns.as_deref()),
        Command::Trace(args) => exit_code(run_trace(args)),
        Command::Compare { reports, html } => exit_code(run_compare(&reports, html)),
        Command::Serve { http, udp, duration } => exit_code(servers::run_serve(http, udp, duration).map(|()| 0).map_err(Into::into)),
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn exit_code(result: Result<i32>) -> i32 {
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("hoptrace: {err:#}");
            1
        }
    }
}

fn run_trace(args: TraceArgs) -> Result<i32> {
    if let Err(err) = capabilities::require_root() {
        eprintln!("hoptrace trace: {err}");
        return Ok(2);
    }
    trace::install_stop_handler();
    let caps = capabilities::probe_all();
    let mut opts = session::SessionOptions::new();
    opts.netns = args.netns.clone();
    opts.ifaces = args.ifaces;
    opts.config = trace::trace_config(args.ip, args.port);
    opts.netfilter = !args.no_netfilter;
    opts.tc_mode = args.tc_mode.map(|m| match m {
        TcModeArg::Tcx => TcMode::Tcx,
        TcModeArg::Clsact => TcMode::Clsact,
    });
    let session = session::Session::start(&opts)?;
    eprintln!(
        "hoptrace: tracing {} tc hooks, {} netfilter links, {} tracepoints for {}; Ctrl-C stops early",
        session.attachments.tc.len(),
        session.attachments.netfilter_links,
        session.attachments.tracepoints.len(),
        humantime::format_duration(args.duration)
    );
    for note in &session.attachments.notes {
        eprintln!("hoptrace: note: {note}");
    }
    if let Some(ready) = &args.ready_file {
        std::fs::write(ready, b"ready\n").with_context(|| format!("write {}", ready.display()))?;
    }
    trace::wait(args.duration, |_| {});
    let node = match &args.netns {
        Some(path) => path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        None => trace::hostname(),
    };
    let report = trace::finish(session, node, caps.to_json())?;
    println!("{}", report::render_table(&report));
    if let Some(path) = &args.json {
        std::fs::write(path, report.to_json_pretty()?).with_context(|| format!("write {}", path.display()))?;
        eprintln!("hoptrace: report written to {}", path.display());
    }
    Ok(0)
}

fn run_compare(paths: &[PathBuf], html: Option<PathBuf>) -> Result<i32> {
    let comparison = compare::compare(paths)?;
    println!("{}", compare::render_table(&comparison));
    if let Some(path) = html {
        let written = compare::write_html(&comparison, &path)?;
        for file in written {
            eprintln!("hoptrace: wrote {}", file.display());
        }
    }
    Ok(0)
}
