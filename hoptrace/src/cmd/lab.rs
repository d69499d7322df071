//! `hoptrace lab`: builds a datapath in network namespaces, drives load
//! through it, traces every node; `--compare` runs several in turn.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use hoptrace_core::{
    kernel::{capabilities, sock::SockHooks},
    report::{self, Document},
};
use hoptrace_lab::{
    ingress::IngressKind,
    loadgen::LoadMode,
    run::{self as lab, LabError, LabOptions, LabRun},
    topology::{self, Datapath, KubeProxyMode, TopologyError},
};

use super::choice;
use crate::{compare, stop};

/// Arguments of `hoptrace lab`.
#[derive(clap::Args)]
pub struct LabArgs {
    /// Datapath to build: flannel-vxlan, flannel-host-gw, calico-bgp,
    /// calico-vxlan, calico-ipip, cilium-like, host-network.
    #[arg(long, default_value = "flannel-vxlan", value_parser = choice(&Datapath::ALL))]
    datapath: Datapath,
    /// Run several datapaths in turn and compare them (comma-separated).
    #[arg(long, value_delimiter = ',', value_parser = choice(&Datapath::ALL))]
    compare: Vec<Datapath>,
    /// Nodes (2 or 3).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..=3))]
    nodes: u8,
    /// How services are programmed: iptables, iptables-legacy (the same rules through the legacy backend), nftables or none.
    #[arg(long, default_value = "iptables", value_parser = choice(&KubeProxyMode::ALL))]
    kube_proxy: KubeProxyMode,
    /// Extra (non-matching) services in front of the lab's own.
    #[arg(long, default_value_t = 100)]
    services: u32,
    /// Proxy pod in front of the backend.
    #[arg(long, default_value = "builtin", value_parser = choice(&IngressKind::ALL))]
    ingress: IngressKind,
    /// Traffic: HTTP keep-alive, HTTP with a new connection per request, or UDP request/response.
    #[arg(long, default_value = "http-keep-alive", value_parser = choice(&LoadMode::ALL))]
    load: LoadMode,
    /// Requests per second (fixed rate, no coordinated omission).
    #[arg(long, default_value = "500", value_parser = super::positive_rate)]
    rate: f64,
    /// Connections (keep-alive) or requests in flight (other modes).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    connections: u16,
    /// How long the load runs.
    #[arg(long, default_value = "10s", value_parser = super::positive_duration, allow_hyphen_values = true)]
    duration: Duration,
    /// Write the reports of every node (schema hoptrace.lab.v1) here.
    #[arg(long, value_parser = super::output_file)]
    json: Option<PathBuf>,
    /// Also write an HTML page with charts (one column per datapath run).
    #[arg(long, value_parser = super::output_file)]
    html: Option<PathBuf>,
    /// Prefix of every namespace the lab creates (1 to 40 letters, digits,
    /// '-', '_', '.').
    #[arg(long, default_value = "ht-lab-", value_parser = super::lab_prefix)]
    prefix: String,
    /// Only remove what an earlier lab with this prefix left (namespaces and
    /// the processes in them, CPU limits and proxy files of labs that are
    /// gone), then exit.
    #[arg(long)]
    cleanup: bool,
    /// Print every node's full ledger too.
    #[arg(long)]
    verbose: bool,
    /// The ingress proxy holds each request this long before forwarding it:
    /// builtin (a tokio timer; it reports the hold it measured) or haproxy
    /// (Lua `core.msleep`, whole milliseconds).
    #[arg(long, value_parser = super::positive_duration, allow_hyphen_values = true)]
    proxy_delay: Option<Duration>,
    /// Pin the ingress proxy's processes to this many CPUs (the first N this
    /// process may use): the builtin proxy's thread, or nginx with N
    /// workers / HAProxy with N threads. Reproduces a saturated ingress.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    proxy_cpus: Option<u16>,
    /// Run the ingress proxy under a CPU limit, as Kubernetes'
    /// `resources.limits.cpu` does: a CFS quota of the quantity (`50m`,
    /// `0.5`) × 100 ms per 100 ms. A proxy that needs more is throttled and
    /// its requests wait: a saturated ingress on any machine. The builtin
    /// proxy needs cgroup v1; nginx and HAProxy work with v1 and v2.
    #[arg(long, value_parser = hoptrace_lab::cpulimit::parse_millicores)]
    proxy_cpu_limit: Option<u32>,
    /// Also join the requests as this node alone sees them (node0, node1,
    /// node2): its own and its pods' sockets and its own hops, as `hoptrace
    /// diagnose` on that node would, beside the lab's view of every node.
    /// A client or backend on another node is stood in for from this
    /// node's packets (docs/segments.md).
    #[arg(long, value_parser = super::lab_node)]
    node_view: Option<usize>,
    /// Drop this fraction (above 0, at most 0.5) of the service's response
    /// data segments where they arrive (the ingress proxy's pod, or the
    /// client's; an iptables `statistic` rule in its namespace, gone with
    /// the lab): TCP retransmits, and the request timeline shows the wait
    /// as `tcp.retransmit`.
    #[arg(long, value_parser = hoptrace_lab::loss::parse_drop_probability)]
    drop_probability: Option<f64>,
    /// Thread names (comm) of proxies for the request timeline
    /// (comma-separated); the lab's builtin proxy is always one.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "envoy,nginx,haproxy,traefik"
    )]
    proxy: Vec<String>,
    /// Where the request timeline's socket reads and writes come from:
    /// auto (tp_btf sock: tracepoints, else the syscalls: fallback) or
    /// syscalls (the fallback, even where the sock: ones exist).
    #[arg(long, default_value = "auto", value_parser = choice(&SockHooks::ALL))]
    sock_hooks: SockHooks,
}

/// A comparison of several runs (through `hoptrace compare`'s logic), from
/// their typed lab document.
fn compare_runs(runs: &[LabRun]) -> Result<compare::Comparison, compare::CompareError> {
    let document = Document::Lab(lab::lab_document(runs));
    let inputs = compare::inputs_from_document(document, Path::new("lab"))?;
    Ok(compare::Comparison { inputs })
}

/// Runs `hoptrace lab`; returns the exit code (2 without privileges, 130
/// when interrupted).
pub fn run(args: LabArgs) -> Result<i32> {
    if let Err(err) = capabilities::require_tracing(true) {
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
        for dir in hoptrace_lab::ingress::remove_stale_dirs() {
            eprintln!(
                "hoptrace lab: removed the files of a proxy whose lab is gone: {}",
                dir.display()
            );
        }
        for cgroup in hoptrace_lab::cpulimit::remove_stale() {
            eprintln!(
                "hoptrace lab: removed the CPU limit of a lab that is gone: {}",
                cgroup.display()
            );
        }
        return Ok(0);
    }
    if args.proxy_delay.is_some()
        && !matches!(args.ingress, IngressKind::Builtin | IngressKind::Haproxy)
    {
        eprintln!(
            "hoptrace lab: --proxy-delay needs --ingress builtin or haproxy (the proxies that can hold requests)"
        );
        return Ok(2);
    }
    if let Some(n) = args.proxy_cpus {
        if args.ingress == IngressKind::None {
            eprintln!(
                "hoptrace lab: --proxy-cpus needs an ingress proxy (--ingress builtin, nginx or haproxy)"
            );
            return Ok(2);
        }
        if let Err(e) = hoptrace_lab::ingress::proxy_cpu_set(usize::from(n)) {
            eprintln!("hoptrace lab: --proxy-cpus {n}: {e}");
            return Ok(2);
        }
    }
    if args.proxy_cpu_limit.is_some() && args.ingress == IngressKind::None {
        eprintln!(
            "hoptrace lab: --proxy-cpu-limit needs an ingress proxy (--ingress builtin, nginx or haproxy)"
        );
        return Ok(2);
    }
    if let Some(n) = args.node_view
        && n >= usize::from(args.nodes)
    {
        eprintln!(
            "hoptrace lab: --node-view node{n} needs --nodes {} (this lab has {})",
            n + 1,
            (0..args.nodes)
                .map(|i| format!("node{i}"))
                .collect::<Vec<_>>()
                .join(" and ")
        );
        return Ok(2);
    }
    // The request timeline's options need HTTP load (UDP has no timeline).
    if args.load == LoadMode::Udp {
        for (given, flag) in [
            (args.node_view.is_some(), "--node-view joins HTTP requests"),
            (
                args.drop_probability.is_some(),
                "--drop-probability loses HTTP responses",
            ),
            (
                args.sock_hooks != SockHooks::Auto,
                "--sock-hooks chooses the request timeline's hooks",
            ),
        ] {
            if given {
                eprintln!(
                    "hoptrace lab: {flag}: it needs --load http-keep-alive or http-new-connection"
                );
                return Ok(2);
            }
        }
    }
    if (args.rate * args.duration.as_secs_f64()).floor() < 1.0 {
        // A usage error: exit 2, as clap's and the other refusals.
        eprintln!(
            "hoptrace: --rate {} for --duration {} gives no request to send",
            args.rate,
            humantime::format_duration(args.duration)
        );
        return Ok(2);
    }
    let mut datapaths = if args.compare.is_empty() {
        vec![args.datapath]
    } else {
        args.compare
    };
    // IPIP devices are a kernel option: ask before building anything.
    if datapaths.contains(&Datapath::CalicoIpip)
        && let Err(reason) = capabilities::probe_ipip_device()
    {
        let why = format!("this kernel cannot create IPIP tunnel devices ({reason})");
        if datapaths.iter().all(|d| *d == Datapath::CalicoIpip) {
            eprintln!("hoptrace lab: calico-ipip cannot run here: {why}");
            return Ok(2);
        }
        eprintln!("hoptrace lab: skipping calico-ipip: {why}");
        datapaths.retain(|d| *d != Datapath::CalicoIpip);
    }
    let stop = stop::install().context("installing the SIGINT/SIGTERM handlers")?;
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
            connections: usize::from(args.connections),
            duration: args.duration,
            prefix: args.prefix.clone(),
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            stop: std::sync::Arc::clone(&stop),
            proxy_delay: args.proxy_delay.unwrap_or_default(),
            proxies: args.proxy.clone(),
            proxy_cpus: args.proxy_cpus.map(usize::from),
            proxy_cpu_limit: args.proxy_cpu_limit,
            node_view: args.node_view,
            sock_hooks: args.sock_hooks,
            drop_probability: args.drop_probability,
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
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!("hoptrace lab: interrupted; every namespace, link and hook was removed");
            return Ok(130);
        }
    }
    if runs.is_empty() {
        anyhow::bail!("no datapath could be built on this machine");
    }
    if runs.len() > 1 || args.html.is_some() {
        let comparison = compare_runs(&runs)?;
        if runs.len() > 1 {
            println!("{}", compare::render_table(&comparison));
        }
        if let Some(path) = &args.html {
            for file in compare::write_html(&comparison, path)? {
                eprintln!("hoptrace: wrote {}", file.display());
            }
        }
    }
    if let Some(path) = &args.json {
        lab::write_json(&runs, path)?;
        eprintln!("hoptrace: lab reports written to {}", path.display());
    }
    Ok(0)
}
