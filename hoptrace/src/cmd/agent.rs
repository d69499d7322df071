//! `hoptrace agent`: traces this node until SIGTERM/SIGINT and serves
//! `/metrics`, `/healthz` and `/readyz` (docs/agent.md).

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use hoptrace_common::{Counter, TraceMode};
use hoptrace_core::{
    kernel::{capabilities, loader::TcMode},
    node,
    session::{Session, SessionOptions, lost_events},
};

use super::choice;
use crate::{
    agent::{
        identity::{Identity, KubeIdentity, NetnsNames, watch_cluster},
        metrics::{AgentMetrics, PodLabels},
        server::{Readiness, serve},
    },
    stop,
};

/// How often the main loop copies the kernel's counters into the metrics.
const TICK: Duration = Duration::from_secs(1);
/// How often the names of /run/netns are read again.
const NETNS_REFRESH: Duration = Duration::from_secs(5);

/// Arguments of `hoptrace agent`.
#[derive(clap::Args)]
pub struct AgentArgs {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:9435")]
    metrics_addr: SocketAddr,
    /// This node's name (the `node` label); default: $NODE_NAME, else the host name.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Kubernetes labels on journeys: none, namespace (pod_namespace) or
    /// pod (pod_namespace, pod, service).
    #[arg(long, default_value = "namespace", value_parser = choice(&PodLabels::ALL))]
    pod_labels: PodLabels,
    /// Do not use the Kubernetes API; name pods after their network namespaces.
    #[arg(long)]
    no_kubernetes: bool,
    /// Trace the node whose network namespace is this path (e.g. /run/netns/NAME).
    #[arg(long)]
    netns: Option<PathBuf>,
    /// How to attach tc programs: tcx (default, falls back to clsact) or clsact.
    #[arg(long, value_parser = ["tcx", "clsact"])]
    tc_mode: Option<String>,
    /// Written once every hook is attached: `ready` and the metrics URL
    /// (useful with `--metrics-addr 127.0.0.1:0`).
    #[arg(long, value_parser = crate::cmd::output_file)]
    ready_file: Option<PathBuf>,
    /// Size of the kernel's event ring buffer (e.g. 4MiB, 16MiB; a power of
    /// two, at least 64KiB): larger survives longer bursts, costs memory.
    #[arg(long, default_value = "4MiB", value_parser = crate::cmd::trace::parse_ring_size)]
    ring_size: u32,
    /// aggregate (default): the kernel adds hop-to-hop times to histograms,
    /// cheap enough to leave running; full: every hop through the ring
    /// buffer to the correlator, as `hoptrace trace` (pod labels, exact
    /// per-journey categories).
    #[arg(long, default_value = "aggregate", value_parser = ["aggregate", "full"])]
    mode: String,
    /// Aggregate mode: 1 in N journeys also goes through the correlator
    /// (the `hoptrace_sampled_*` series; 0: none, 1: every journey).
    #[arg(long, default_value_t = 64)]
    sample: u32,
}

/// Runs the agent; returns the exit code (2 without privileges).
pub fn run(args: &AgentArgs) -> Result<i32> {
    if let Err(err) = capabilities::require_tracing(true) {
        eprintln!("hoptrace agent: {err}");
        return Ok(2);
    }
    if let Err(line) = super::check_node_args(args.netns.as_deref(), &[]) {
        eprintln!("hoptrace agent: {line}");
        return Ok(2);
    }
    let stop = stop::install().context("installing the SIGINT/SIGTERM handlers")?;
    let node_name = args.node_name.clone().unwrap_or_else(node::hostname);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("hoptrace-agent")
        .build()
        .context("starting the agent's runtime")?;
    // Bind first: a taken port is reported before anything is attached.
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(args.metrics_addr))
        .with_context(|| format!("listening on {}", args.metrics_addr))?;
    let metrics_addr = listener
        .local_addr()
        .with_context(|| format!("listening on {}", args.metrics_addr))?;

    let netns_names = Arc::new(NetnsNames::default());
    netns_names.refresh();
    let mut notes = Vec::new();
    let identity: Arc<dyn Identity> = if args.no_kubernetes {
        notes.push("names: network namespaces (--no-kubernetes)".to_owned());
        netns_names.clone()
    } else {
        match runtime.block_on(kube::Client::try_default()) {
            Ok(client) => {
                let identity = Arc::new(KubeIdentity::new(Arc::clone(&netns_names)));
                runtime.spawn(watch_cluster(
                    client,
                    node_name.clone(),
                    Arc::clone(&identity),
                ));
                notes.push(format!(
                    "names: Kubernetes API (pods of node {node_name}, services)"
                ));
                identity
            }
            Err(err) => {
                notes.push(format!(
                    "names: network namespaces (no Kubernetes API: {})",
                    capabilities::error_chain(&err)
                ));
                netns_names.clone()
            }
        }
    };
    let aggregate = args.mode == "aggregate";
    let metrics = Arc::new(if aggregate {
        AgentMetrics::new_aggregate(node_name.clone(), args.pod_labels, identity)
    } else {
        AgentMetrics::new(node_name.clone(), args.pod_labels, identity)
    });
    let readiness = Arc::new(Readiness::default());
    runtime.spawn(serve(
        listener,
        Arc::clone(&metrics),
        Arc::clone(&readiness),
    ));

    let mut opts = SessionOptions::new();
    opts.ring_bytes = args.ring_size;
    opts.netns.clone_from(&args.netns);
    opts.tc_mode = args.tc_mode.as_deref().map(|m| match m {
        "clsact" => TcMode::Clsact,
        _ => TcMode::Tcx,
    });
    opts.observer = Some(metrics.clone());
    if aggregate {
        opts.config.mode = TraceMode::Aggregate as u8;
        opts.config.sample_every = args.sample;
    }
    let session = Session::start(&opts)?;
    let attached = &session.attachments;
    let gauges = &metrics.session;
    gauges
        .hooks_tc
        .store(attached.tc.len() as u64, Ordering::Relaxed);
    gauges
        .hooks_netfilter
        .store(attached.netfilter_links as u64, Ordering::Relaxed);
    gauges
        .hooks_tracepoint
        .store(attached.tracepoints.len() as u64, Ordering::Relaxed);
    let mut status = vec![format!(
        "ready: node {node_name}: {} tc hooks, {} netfilter links, {} tracepoints",
        attached.tc.len(),
        attached.netfilter_links,
        attached.tracepoints.len()
    )];
    status.push(if aggregate {
        format!(
            "mode: aggregate (in-kernel histograms; 1 in {} journeys sampled through the correlator)",
            args.sample
        )
    } else {
        "mode: full tracer (every packet through the ring buffer)".to_owned()
    });
    status.extend(notes);
    status.extend(attached.notes.iter().map(|n| format!("degraded: {n}")));
    for line in &status {
        eprintln!("hoptrace agent: {line}");
    }
    eprintln!("hoptrace agent: serving http://{metrics_addr}/metrics; SIGTERM or Ctrl-C stops");
    readiness.set_ready(status.join("\n") + "\n");
    if let Some(ready) = &args.ready_file {
        std::fs::write(
            ready,
            format!("ready\nmetrics http://{metrics_addr}/metrics\n"),
        )
        .with_context(|| format!("write {}", ready.display()))?;
    }

    let mut last_refresh = Instant::now();
    let mut lost_hooks: Vec<String> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(TICK);
        if let Some(counters) = session.counters() {
            gauges
                .events_lost
                .store(lost_events(&counters), Ordering::Relaxed);
            gauges
                .aggregate_map_full
                .store(counters.get(Counter::AggFull), Ordering::Relaxed);
            gauges
                .aggregate_link_local_repeats
                .store(counters.get(Counter::AggLinkLocalRepeat), Ordering::Relaxed);
        }
        if aggregate {
            match session.aggregate_snapshot() {
                Ok(snap) => metrics.set_aggregate(&snap),
                Err(err) => eprintln!(
                    "hoptrace agent: reading the kernel's histograms: {}",
                    capabilities::error_chain(&err)
                ),
            }
        }
        if last_refresh.elapsed() >= NETNS_REFRESH {
            netns_names.refresh();
            last_refresh = Instant::now();
            let lost = session.lost_hooks();
            gauges
                .hooks_lost
                .store(lost.len() as u64, Ordering::Relaxed);
            if !lost.is_empty() && lost != lost_hooks {
                eprintln!(
                    "hoptrace agent: hooks removed by another process: {}; their hops are missing",
                    lost.join(" ")
                );
                readiness.set_not_ready(format!(
                    "hooks removed by another process: {}\n",
                    lost.join(" ")
                ));
                lost_hooks = lost;
            }
        }
    }
    readiness.set_not_ready("stopping: detaching every hook\n".into());
    session.stop()?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    eprintln!("hoptrace agent: stopped; every hook detached");
    Ok(if lost_hooks.is_empty() {
        0
    } else {
        crate::cmd::trace::EXIT_HOOKS_LOST
    })
}
