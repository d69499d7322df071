//! The `hoptrace` command line.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use hoptrace::{
    bench, capabilities, cleanup, compare,
    ingress::IngressKind,
    lab::{self, LabError, LabOptions},
    loader::TcMode,
    loadgen::LoadMode,
    report, servers, session,
    topology::{self, Datapath, KubeProxyMode, TopologyError},
    trace,
};

#[derive(Parser)]
#[command(
    name = "hoptrace",
    version,
    about = "Where does each microsecond of a Kubernetes node's datapath go?"
)]
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
    /// Build a flannel-, Calico- or Cilium-style datapath in network namespaces,
    /// put load through it, trace every node and say where the time went.
    Lab(LabArgs),
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
    /// Measure tracing's cost on a two-node lab against an untraced baseline
    /// (throughput, request/response p99, ns per program run, lost events).
    #[command(hide = true)]
    Bench(BenchArgs),
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Rounds of each kind (untraced, traced), alternating; medians are reported.
    #[arg(long, default_value_t = bench::MIN_ROUNDS)]
    rounds: u32,
    /// Seconds per iperf3 run and per request/response run.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Request/response rate (HTTP keep-alive), requests per second.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Also write the results as Markdown (BENCHMARKS.md) here.
    #[arg(long)]
    write: Option<PathBuf>,
    /// Ablation: traced rounds without netfilter links.
    #[arg(long)]
    no_netfilter: bool,
    /// Ablation: traced rounds without tracepoints.
    #[arg(long)]
    no_tracepoints: bool,
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

#[derive(clap::Args)]
struct LabArgs {
    /// Datapath to build: flannel-vxlan, flannel-host-gw, calico-bgp,
    /// calico-vxlan, calico-ipip, cilium-like, host-network.
    #[arg(long, default_value = "flannel-vxlan", value_parser = parse_datapath)]
    datapath: Datapath,
    /// Run several datapaths in turn and compare them (comma-separated).
    #[arg(long, value_delimiter = ',', value_parser = parse_datapath)]
    compare: Vec<Datapath>,
    /// Nodes (2 or 3).
    #[arg(long, default_value_t = 2)]
    nodes: u8,
    /// How services are programmed: iptables, nftables or none.
    #[arg(long, default_value = "iptables", value_parser = parse_kube_proxy)]
    kube_proxy: KubeProxyMode,
    /// Extra (non-matching) services in front of the lab's own.
    #[arg(long, default_value_t = 100)]
    services: u32,
    /// Proxy pod in front of the backend.
    #[arg(long, value_enum, default_value = "builtin")]
    ingress: IngressKind,
    /// Traffic: HTTP keep-alive, HTTP with a new connection per request, or UDP request/response.
    #[arg(long, value_enum, default_value = "http-keep-alive")]
    load: LoadMode,
    /// Requests per second (fixed rate, no coordinated omission).
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Connections (keep-alive) or requests in flight (other modes).
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// How long the load runs.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Write the reports of every node (schema hoptrace.lab.v1) here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// With --compare: also write an HTML page with charts.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Prefix of every namespace the lab creates.
    #[arg(long, default_value = "ht-lab-")]
    prefix: String,
    /// Only remove namespaces left by an earlier lab with this prefix, then exit.
    #[arg(long)]
    cleanup: bool,
    /// Print every node's full ledger too.
    #[arg(long)]
    verbose: bool,
}

fn parse_datapath(s: &str) -> Result<Datapath, String> {
    s.parse::<Datapath>().map_err(|e| e.to_string())
}

fn parse_kube_proxy(s: &str) -> Result<KubeProxyMode, String> {
    s.parse::<KubeProxyMode>().map_err(|e| e.to_string())
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
        Command::Lab(args) => exit_code(run_lab(args)),
        Command::Compare { reports, html } => exit_code(run_compare(&reports, html)),
        Command::Bench(args) => exit_code(run_bench(args)),
        Command::Serve {
            http,
            udp,
            duration,
        } => exit_code(
            servers::run_serve(http, udp, duration)
                .map(|()| 0)
                .map_err(Into::into),
        ),
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
        Some(path) => path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        None => trace::hostname(),
    };
    let report = trace::finish(session, node, caps.to_json())?;
    println!("{}", report::render_table(&report));
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
    Ok(0)
}

fn run_bench(args: BenchArgs) -> Result<i32> {
    if let Err(err) = capabilities::require_root() {
        eprintln!("hoptrace bench: {err}");
        return Ok(2);
    }
    trace::install_stop_handler();
    let mut opts =
        bench::BenchOptions::new(std::env::current_exe().context("path of the hoptrace binary")?);
    opts.rounds = args.rounds;
    opts.seconds = args.seconds;
    opts.rr_rate = args.rate;
    opts.netfilter = !args.no_netfilter;
    opts.tracepoints = !args.no_tracepoints;
    let result = bench::run(&opts, |line| eprintln!("hoptrace bench: {line}"))?;
    println!("{}", bench::render_text(&result));
    if let Some(path) = &args.write {
        let command = format!(
            "hoptrace bench --rounds {} --seconds {} --rate {}{}{} --write {}",
            args.rounds,
            args.seconds,
            args.rate,
            if args.no_netfilter {
                " --no-netfilter"
            } else {
                ""
            },
            if args.no_tracepoints {
                " --no-tracepoints"
            } else {
                ""
            },
            path.display()
        );
        let existing = std::fs::read_to_string(path).unwrap_or_default();
        let markdown = bench::render_markdown(&result, &command, bench::preserved_notes(&existing));
        std::fs::write(path, markdown).with_context(|| format!("write {}", path.display()))?;
        eprintln!("hoptrace bench: wrote {}", path.display());
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

fn run_lab(args: LabArgs) -> Result<i32> {
    if let Err(err) = capabilities::require_root() {
        eprintln!("hoptrace lab: {err}");
        return Ok(2);
    }
    if args.cleanup {
        let removed = topology::cleanup(&args.prefix)?;
        eprintln!(
            "hoptrace lab: removed {} namespaces with prefix {}",
            removed.len(),
            args.prefix
        );
        return Ok(0);
    }
    trace::install_stop_handler();
    let datapaths = if args.compare.is_empty() {
        vec![args.datapath]
    } else {
        args.compare.clone()
    };
    let mut runs = Vec::new();
    for datapath in &datapaths {
        let opts = LabOptions {
            datapath: *datapath,
            nodes: args.nodes,
            kube_proxy: args.kube_proxy,
            services: args.services,
            ingress: args.ingress,
            load: args.load,
            rate: args.rate,
            connections: args.connections,
            duration: args.duration,
            prefix: args.prefix.clone(),
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        };
        match lab::run_once(&opts) {
            Ok(run) => {
                if args.verbose {
                    for report in &run.reports {
                        println!("{}", report::render_table(report));
                    }
                }
                println!("{}", lab::render_run(&run));
                runs.push(run);
            }
            Err(LabError::Topology(TopologyError::Unsupported { datapath, reason })) => {
                eprintln!("hoptrace lab: skipping {datapath}: {reason}");
            }
            Err(LabError::Interrupted) => {
                eprintln!("hoptrace lab: interrupted; every namespace, link and hook was removed");
                return Ok(130);
            }
            Err(err) => return Err(err.into()),
        }
        if trace::stop_requested() {
            eprintln!("hoptrace lab: interrupted; every namespace, link and hook was removed");
            return Ok(130);
        }
    }
    if runs.is_empty() {
        anyhow::bail!("no datapath could be built on this machine");
    }
    if runs.len() > 1 {
        let comparison = lab::compare_runs(&runs)?;
        println!("{}", compare::render_table(&comparison));
        if let Some(path) = &args.html {
            for file in compare::write_html(&comparison, path)? {
                eprintln!("hoptrace: wrote {}", file.display());
            }
        }
    }
    if let Some(path) = &args.json {
        lab::write_json(&runs, path).with_context(|| format!("write {}", path.display()))?;
        eprintln!("hoptrace: lab reports written to {}", path.display());
    }
    Ok(0)
}
