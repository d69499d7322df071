//! `hoptrace lab`: build a flannel-, Calico- or Cilium-style datapath in
//! network namespaces, put load through it, trace every node, and say where
//! the time went. `--compare` runs several datapaths in turn.
//!
//! Everything runs on this machine, in namespaces named `<prefix>*`, and is
//! torn down at the end — also on error and on Ctrl-C.

use std::{
    net::{SocketAddr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde_json::Value;

use hoptrace_core::{
    correlate::{
        Observers,
        requests::{self, BUILTIN_PROXY_COMM, DEFAULT_PROXIES, JoinOptions, LegRecorder},
    },
    kernel::sock::{SockHooks, SockTracer},
    report::{
        self, DocumentError, LabDocument, LabLoad, LabNodeView, LabRequests, LabRunDocument,
        LabSection, Report,
    },
    session::{Session, SessionError, SessionOptions},
};

use crate::{
    ingress::{self, IngressKind},
    kubeproxy::Protocol,
    loadgen::{self, LoadMode, LoadResult, LoadSpec},
    netns,
    servers::{self, NetnsTask, stopped},
    topology::{Datapath, KubeProxyMode, Lab, LabSpec, TopologyError},
};

/// The ingress proxy the lab actually builds and drives: none for UDP load
/// (every proxy is HTTP), whatever `--ingress` asked.
pub fn effective_ingress(opts: &LabOptions) -> IngressKind {
    if opts.load == LoadMode::Udp {
        IngressKind::None
    } else {
        opts.ingress
    }
}

/// Port of the built-in ingress proxy, nginx or haproxy in the proxy pod.
pub const INGRESS_PORT: u16 = 8081;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(
        "{tool} is not installed (Debian package {package}); run `cargo xtask setup` or pick another --ingress"
    )]
    MissingTool { tool: String, package: String },
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error("{0}")]
    Ingress(#[from] ingress::IngressError),
    #[error("tracing node {node}: {source}")]
    Session {
        node: String,
        #[source]
        source: Box<SessionError>,
    },
    #[error("load: {0}")]
    Load(#[from] loadgen::LoadError),
    #[error("lab server: {0}")]
    Serve(#[from] servers::ServeError),
    #[error("interrupted: the lab was torn down")]
    Interrupted,
    #[error("cannot start the load generator's runtime")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Document(#[from] DocumentError),
    #[error("cannot write {path}")]
    WriteJson {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

/// Everything `hoptrace lab` can be told.
#[derive(Clone, Debug)]
pub struct LabOptions {
    pub datapath: Datapath,
    pub nodes: u8,
    pub kube_proxy: KubeProxyMode,
    pub services: u32,
    pub ingress: IngressKind,
    pub load: LoadMode,
    pub rate: f64,
    pub connections: usize,
    pub duration: Duration,
    pub prefix: String,
    pub progress: bool,
    /// Set (by a signal handler) to stop the run early; the lab is torn down.
    pub stop: Arc<AtomicBool>,
    /// `--proxy-delay`: the builtin proxy holds each request this long.
    pub proxy_delay: Duration,
    /// `--proxy`: thread names of proxies for the request timeline (the
    /// lab adds its builtin proxy's own).
    pub proxies: Vec<String>,
    /// `--proxy-cpus N`: the ingress proxy's processes run on N CPUs only
    /// (the first N this process may use): the builtin proxy's one thread,
    /// or nginx with N workers / HAProxy with N threads. `None`: unpinned.
    pub proxy_cpus: Option<usize>,
    /// `--proxy-cpu-limit`: the ingress proxy runs under a CFS quota of
    /// this many millicores, as a Kubernetes CPU limit
    /// ([`crate::cpulimit`]). `None`: no limit.
    pub proxy_cpu_limit: Option<u32>,
    /// `--node-view`: also join the requests as this node (index into
    /// the lab's nodes) alone sees them ([`LabRun::node_view`]).
    pub node_view: Option<usize>,
    /// `--sock-hooks`: where the request timeline's socket reads and writes
    /// come from (tp_btf `sock:` tracepoints, or the `syscalls:` fallback).
    pub sock_hooks: SockHooks,
    /// `--drop-probability`: the pod that connects to the service drops
    /// this fraction of the response data segments that arrive from it
    /// ([`crate::loss`]), so TCP retransmits.
    /// `None`: no loss.
    pub drop_probability: Option<f64>,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self {
            datapath: Datapath::FlannelVxlan,
            nodes: 2,
            kube_proxy: KubeProxyMode::Iptables,
            services: 100,
            ingress: IngressKind::Builtin,
            load: LoadMode::HttpKeepAlive,
            rate: 500.0,
            connections: 8,
            duration: Duration::from_secs(10),
            prefix: "ht-lab-".into(),
            progress: true,
            stop: Arc::new(AtomicBool::new(false)),
            proxy_delay: Duration::ZERO,
            proxies: DEFAULT_PROXIES.iter().map(|p| (*p).to_owned()).collect(),
            proxy_cpus: None,
            proxy_cpu_limit: None,
            node_view: None,
            sock_hooks: SockHooks::Auto,
            drop_probability: None,
        }
    }
}

/// One finished lab run: a report per node, and the run's `lab` section.
pub struct LabRun {
    /// The run's name (its datapath).
    pub label: String,
    /// Settings and client-side results, as written in `hoptrace.lab.v1`.
    pub lab: LabSection,
    /// One report per lab node, without the `lab` section.
    pub reports: Vec<Report>,
    /// What the load generator saw.
    pub load: LoadResult,
    /// The request timeline (HTTP loads with the socket tracepoints).
    pub requests: Option<LabRequests>,
    /// The same requests as one node alone joins them (`--node-view`).
    pub node_view: Option<LabNodeView>,
}

impl LabRun {
    /// The node reports, each with this run's `lab` section.
    pub fn node_documents(&self) -> Vec<Report> {
        self.document().nodes
    }

    /// This run's entry of the `hoptrace.lab.v1` document.
    pub fn document(&self) -> LabRunDocument {
        let mut run =
            LabRunDocument::new(self.label.clone(), self.lab.clone(), self.reports.clone());
        run.requests = self.requests.clone();
        run.node_view = self.node_view.clone();
        run
    }
}

/// The `hoptrace.lab.v1` document of several runs.
pub fn lab_document(runs: &[LabRun]) -> LabDocument {
    LabDocument::new(runs.iter().map(LabRun::document).collect())
}

/// Checks what a run needs before anything is built.
pub fn preflight(opts: &LabOptions) -> Result<(), LabError> {
    if let Some((tool, package)) = effective_ingress(opts).external_tool()
        && ingress::find_tool(tool).is_none()
    {
        return Err(LabError::MissingTool {
            tool: tool.into(),
            package: package.into(),
        });
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("iptables-restore", "iptables"),
        ("nft", "nftables"),
    ] {
        if netns::find_tool(tool).is_err() {
            return Err(LabError::MissingTool {
                tool: tool.into(),
                package: package.into(),
            });
        }
    }
    Ok(())
}

/// Runs one lab: build, serve, trace every node, load, report, tear down.
pub fn run_once(opts: &LabOptions) -> Result<LabRun, LabError> {
    run_once_prepared(opts, |_| Ok(()))
}

/// Like [`run_once`], with `prepare` run on the built lab before its
/// servers start and tracing begins (`cargo xtask accuracy` injects a known
/// cause there); the lab is torn down whatever `prepare` returns.
pub fn run_once_prepared(
    opts: &LabOptions,
    prepare: impl FnOnce(&Lab) -> Result<(), LabError>,
) -> Result<LabRun, LabError> {
    preflight(opts)?;
    let spec = LabSpec {
        prefix: opts.prefix.clone(),
        nodes: opts.nodes,
        pods_per_node: 2,
        datapath: opts.datapath,
        kube_proxy: opts.kube_proxy,
        services: opts.services,
    };
    eprintln!(
        "hoptrace lab: building {} ({} nodes, kube-proxy {}, {} services, ingress {}{})",
        opts.datapath,
        opts.nodes,
        spec.effective_kube_proxy(),
        opts.services,
        effective_ingress(opts),
        if effective_ingress(opts) == opts.ingress {
            ""
        } else {
            ": the UDP load goes straight to the service"
        }
    );
    let lab = Lab::build(&spec)?;
    let result = prepare(&lab).and_then(|()| run_on(&lab, opts));
    // Servers and sessions are gone by now; the namespaces go last.
    let teardown = lab.teardown();
    let run = result?;
    teardown?;
    Ok(run)
}

fn run_on(lab: &Lab, opts: &LabOptions) -> Result<LabRun, LabError> {
    let service = lab.service();
    let backend = service
        .backends
        .first()
        .ok_or_else(|| LabError::Other("the lab has no backend".into()))?
        .clone();
    let http_port = service.port(Protocol::Tcp).map_or(8080, |p| p.target_port);
    let udp_port = service.port(Protocol::Udp).map_or(5353, |p| p.target_port);
    // Every endpoint of the service serves: kube-proxy spreads new
    // connections over all of them (with three nodes, one in two went to a
    // pod with nothing listening and was refused).
    let _backends = service
        .backends
        .iter()
        .map(|b| {
            servers::start_backend(
                &b.netns,
                Some(SocketAddrV4::new(b.ip, http_port).into()),
                Some(SocketAddrV4::new(b.ip, udp_port).into()),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let service_tcp: SocketAddr = service
        .connect_addr(Protocol::Tcp)
        .ok_or_else(|| LabError::Other("no TCP service".into()))?
        .into();
    let service_udp: SocketAddr = service
        .connect_addr(Protocol::Udp)
        .ok_or_else(|| LabError::Other("no UDP service".into()))?
        .into();

    // The ingress proxy pod: the second pod of the backend's node.
    let proxy_pod = lab
        .pods_on(backend.node_index)
        .find(|p| p.netns != backend.netns)
        .or_else(|| {
            lab.pods()
                .iter()
                .find(|p| p.netns != backend.netns && p.netns != lab.client_pod().netns)
        })
        .cloned();
    // Declared before the proxy, so that it is dropped after the proxy's
    // threads and processes have left it.
    let cpu_limit = opts
        .proxy_cpu_limit
        .filter(|_| effective_ingress(opts) != IngressKind::None)
        .map(crate::cpulimit::CpuLimit::new)
        .transpose()
        .map_err(ingress::IngressError::from)?;
    let mut _proxy_task = None;
    let proxy_hold = Arc::new(ingress::ProxyHold::default());
    let mut _proxy_process = None;
    let mut target = match opts.load {
        LoadMode::Udp => service_udp,
        _ => service_tcp,
    };
    let mut timeline_notes = Vec::new();
    let pinned = opts
        .proxy_cpus
        .filter(|_| effective_ingress(opts) != IngressKind::None)
        .map(ingress::proxy_cpu_set)
        .transpose()?;
    if let Some((_, cpus)) = &pinned {
        timeline_notes.push(format!(
            "the ingress proxy runs on CPU(s) {} only (--proxy-cpus)",
            cpus.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    if let Some(limit) = &cpu_limit {
        timeline_notes.push(format!(
            "the ingress proxy runs under a CPU limit of {} (--proxy-cpu-limit)",
            limit.describe()
        ));
    }
    if effective_ingress(opts) != IngressKind::None {
        let pod = proxy_pod
            .clone()
            .ok_or_else(|| LabError::Other("no pod for the ingress proxy".into()))?;
        let listen = SocketAddr::V4(SocketAddrV4::new(pod.ip, INGRESS_PORT));
        match opts.ingress {
            IngressKind::Builtin => {
                let delay = opts.proxy_delay;
                let hold = Arc::clone(&proxy_hold);
                let cpus = pinned.as_ref().map(|(set, _)| *set);
                let limit_tasks = cpu_limit
                    .as_ref()
                    .map(crate::cpulimit::CpuLimit::thread_file)
                    .transpose()
                    .map_err(ingress::IngressError::from)?;
                _proxy_task = Some(NetnsTask::spawn(
                    pod.netns.clone(),
                    move || std::net::TcpListener::bind(listen),
                    move |listener, stop| {
                        // The request timeline knows the proxy by its thread name.
                        ingress::name_this_thread(BUILTIN_PROXY_COMM);
                        if let Some(set) = cpus
                            && let Err(e) = ingress::pin_this_thread(&set)
                        {
                            eprintln!("hoptrace lab: {e}");
                        }
                        // "0": this thread only (cgroup v1 `tasks`).
                        if let Some(tasks) = &limit_tasks
                            && let Err(e) = std::fs::write(tasks, "0")
                        {
                            eprintln!("hoptrace lab: --proxy-cpu-limit: {}: {e}", tasks.display());
                        }
                        async move {
                            let _ = ingress::serve_builtin_proxy_with(
                                listener,
                                service_tcp,
                                stopped(stop),
                                delay,
                                hold,
                            )
                            .await;
                        }
                    },
                )?);
            }
            kind => {
                let mut proxy = ingress::ExternalProxy::prepare_with_delay(
                    kind,
                    listen,
                    service_tcp,
                    opts.proxy_delay,
                )?;
                if let Some((set, cpus)) = &pinned {
                    proxy.pin(*set, cpus.len())?;
                }
                if let Some(limit) = &cpu_limit {
                    proxy.limit(limit);
                }
                let process =
                    netns::with_netns(&pod.netns, move || -> Result<_, ingress::IngressError> {
                        let mut process = proxy.spawn()?;
                        process.wait_ready(Duration::from_secs(10))?;
                        Ok(process)
                    })??;
                _proxy_process = Some(process);
            }
        }
        target = listen;
    }

    // Warm up neighbours and connection tracking outside the measurement.
    let client_ns = lab.client_pod().netns.clone();
    let warmup = LoadSpec {
        mode: opts.load,
        connections: 1,
        rate: 50.0,
        duration: Duration::from_millis(200),
        ..LoadSpec::default()
    };
    let warm = run_load_in(Arc::clone(&opts.stop), &client_ns, warmup, target, None)?;
    if warm.ok == 0 {
        return Err(LabError::Other(format!(
            "the lab carries no traffic: {} warm-up requests to {target} failed",
            warm.scheduled
        )));
    }

    // Loss after the warm-up: it must not stall the lab's first requests.
    if let Some(p) = opts.drop_probability {
        // The pod that connects to the service receives the responses.
        let (receiver, who) = match (effective_ingress(opts), &proxy_pod) {
            (IngressKind::None, _) | (_, None) => (&client_ns, "client"),
            (_, Some(pod)) => (&pod.netns, "ingress proxy"),
        };
        let SocketAddr::V4(from) = service_tcp else {
            return Err(LabError::Other(
                "--drop-probability needs an IPv4 service".into(),
            ));
        };
        crate::loss::drop_responses(receiver, from, p)?;
        timeline_notes.push(format!(
            "the {who} drops {:.1}% of the response data segments from {from} on arrival (--drop-probability {p})",
            100.0 * p
        ));
    }

    // Trace every node: tc and netfilter per node, one set of tracepoints
    // for the lab's one kernel (as one session per node would have on a
    // real cluster).
    let timeline = opts.load != LoadMode::Udp;
    let legs = Arc::new(LegRecorder::default());
    // `--node-view`: that node's session also records its journeys apart.
    let node_legs = Arc::new(LegRecorder::default());
    let node_options: Vec<SessionOptions> = lab
        .nodes()
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let mut session_opts = SessionOptions::new();
            session_opts.netns = Some(netns::netns_path(&node.netns));
            if timeline {
                session_opts.observer = Some(if opts.node_view == Some(i) {
                    Arc::new(Observers(vec![
                        Arc::clone(&legs) as _,
                        Arc::clone(&node_legs) as _,
                    ])) as _
                } else {
                    Arc::clone(&legs) as _
                });
            }
            session_opts
        })
        .collect();
    let started = Session::start_group(&node_options).map_err(|source| LabError::Session {
        node: lab
            .nodes()
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        source: Box::new(source),
    })?;
    let sessions: Vec<(String, Session)> = lab
        .nodes()
        .iter()
        .map(|node| node.name.clone())
        .zip(started)
        .collect();

    // The request timeline: socket reads and writes of the lab's namespaces.
    let sock_tracer = if timeline {
        match SockTracer::start(&lab_netns_inodes(lab), opts.sock_hooks) {
            Ok(tracer) => Some(tracer),
            Err(e) => {
                timeline_notes.push(format!("request timeline unavailable: {e}"));
                None
            }
        }
    } else {
        None
    };
    let spec = LoadSpec {
        mode: opts.load,
        connections: opts.connections,
        rate: opts.rate,
        duration: opts.duration,
        ..LoadSpec::default()
    };
    let progress = opts.progress.then(|| {
        let bar = indicatif::ProgressBar::new((opts.rate * opts.duration.as_secs_f64()) as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {pos}/{len} requests ({elapsed})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(format!("{} load", opts.datapath));
        bar
    });
    let load = run_load_in(
        Arc::clone(&opts.stop),
        &client_ns,
        spec.clone(),
        target,
        progress.clone(),
    );
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let sock_capture = sock_tracer.map(SockTracer::stop);
    if opts.stop.load(Ordering::Relaxed) {
        return Err(LabError::Interrupted);
    }
    let load = load?;

    let mut reports = Vec::new();
    for (name, session) in sessions {
        let report = report::finish(session, name.clone(), Value::Null).map_err(|source| {
            LabError::Session {
                node: name.clone(),
                source: Box::new(source),
            }
        })?;
        reports.push(report);
    }
    let lab_section = LabSection {
        datapath: opts.datapath.to_string(),
        nodes: u32::from(opts.nodes),
        kube_proxy: lab.spec().effective_kube_proxy().to_string(),
        services: opts.services,
        ingress: effective_ingress(opts).to_string(),
        target: target.to_string(),
        load: load_section(&spec),
        requests_ok: load.ok,
        errors: load.errors,
        timeouts: load.timeouts,
        error_kinds: load.error_kinds,
        achieved_rate: load.achieved_rate,
        client_latency: load.client_latency.clone(),
    };
    if let Some((periods, throttled)) = cpu_limit
        .as_ref()
        .and_then(crate::cpulimit::CpuLimit::throttled)
    {
        timeline_notes.push(format!(
            "the ingress proxy's CPU limit throttled it in {throttled} of {periods} periods"
        ));
    }
    let mut node_view = None;
    let requests = if timeline {
        for note in &timeline_notes {
            eprintln!("hoptrace lab: {note}");
        }
        sock_capture.map(|capture| {
            let mut join_opts = JoinOptions {
                proxies: opts.proxies.clone(),
                ..JoinOptions::default()
            };
            join_opts.proxies.push(BUILTIN_PROXY_COMM.to_owned());
            let journeys = legs.take();
            let mut joined = requests::join(&capture.events, &journeys, &join_opts);
            let with_client =
                requests::add_client_times(&mut joined.requests, &load.request_times);
            let mut notes = capture.notes;
            if capture.lost > 0 {
                notes.push(format!(
                    "{} socket events were lost (ring buffer full): some requests are not joined",
                    capture.lost
                ));
            }
            if with_client < joined.requests.len() {
                notes.push(format!(
                    "{} joined requests found no load-generator record (their client.wait and client.process are missing)",
                    joined.requests.len() - with_client
                ));
            }
            let unjoined = joined.seen.saturating_sub(joined.requests.len() as u64);
            if unjoined > 0 {
                notes.push(format!(
                    "{unjoined} request(s) not joined (opened before tracing, cut at its end, or not one request per read and write)"
                ));
            }
            let hold = (opts.ingress == IngressKind::Builtin && !opts.proxy_delay.is_zero())
                .then(|| proxy_hold.mean_us())
                .flatten();
            if let Some(n) = opts.node_view {
                node_view = lab_node_view(lab, n, &capture.events, &node_legs.take(), &join_opts);
                if node_view.is_none() {
                    notes.push(format!(
                        "--node-view node{n}: node{n} alone joined no request: none of the requests reached its processes (kube-proxy's random pick sent none to its backend), or their socket events were lost"
                    ));
                }
            }
            let client = &load.client_latency;
            hoptrace_core::report::timeline::requests_section(
                &joined,
                (client.mean_us, client.p50_us as f64, client.p99_us as f64),
                hold,
                notes,
            )
        })
    } else {
        None
    };
    Ok(LabRun {
        label: opts.datapath.to_string(),
        lab: lab_section,
        reports,
        load,
        requests,
        node_view,
    })
}

/// Node `n`'s own view of the run: the socket events of its namespace
/// and its pods' (out of `events`, every lab namespace's) joined with the
/// journeys its own session saw, as `hoptrace trace`/`diagnose` on that
/// node would join them (`session::timeline::node_view`). `None` when
/// nothing was joined; the section's notes say which namespaces.
fn lab_node_view(
    lab: &Lab,
    n: usize,
    events: &[hoptrace_common::SockEvent],
    journeys: &[requests::LegJourney],
    join_opts: &JoinOptions,
) -> Option<LabNodeView> {
    let node = lab.nodes().get(n)?;
    let own = netns_inodes(std::iter::once(&node.netns).chain(lab.pods_on(n).map(|p| &p.netns)));
    let events: Vec<_> = events
        .iter()
        .filter(|e| own.contains(&e.netns_ino))
        .copied()
        .collect();
    let pods = lab.pods_on(n).count();
    let note = format!(
        "{}'s view: the socket events of its namespace and its {pods} pods' and the journeys of its own session only",
        node.name
    );
    let requests = hoptrace_core::session::timeline::node_view(
        &events,
        journeys,
        &join_opts.proxies,
        vec![note],
    )?;
    Some(LabNodeView {
        node: node.name.clone(),
        requests,
    })
}

/// Inode numbers of every namespace of `lab` (nodes and pods): what the
/// request timeline's socket hooks trace.
pub fn lab_netns_inodes(lab: &Lab) -> Vec<u32> {
    netns_inodes(
        lab.nodes()
            .iter()
            .map(|n| &n.netns)
            .chain(lab.pods().iter().map(|p| &p.netns)),
    )
}

/// Inode numbers of the named namespaces that exist.
fn netns_inodes<'a>(names: impl Iterator<Item = &'a String>) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt as _;
    names
        .filter_map(|ns| std::fs::metadata(netns::netns_path(ns)).ok())
        .map(|m| m.ino() as u32)
        .collect()
}

/// The `lab.load` section: the load generator's spec under its own field
/// names, durations in seconds.
fn load_section(spec: &LoadSpec) -> LabLoad {
    LabLoad {
        mode: spec.mode.to_string(),
        connections: spec.connections as u64,
        rate: spec.rate,
        duration: spec.duration.as_secs_f64(),
        request_timeout: spec.request_timeout.as_secs_f64(),
        http_path: spec.http_path.clone(),
        udp_payload_len: spec.udp_payload_len as u64,
    }
}

/// Runs the load generator on a thread inside `ns` (its sockets live there).
fn run_load_in(
    stop: Arc<AtomicBool>,
    ns: &str,
    spec: LoadSpec,
    target: SocketAddr,
    progress: Option<indicatif::ProgressBar>,
) -> Result<LoadResult, LabError> {
    netns::with_netns(ns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(LabError::Runtime)?;
        runtime.block_on(async {
            tokio::select! {
                result = loadgen::run_load(&spec, target, progress.as_ref()) => result.map_err(LabError::from),
                () = async {
                    while !stop.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                } => Err(LabError::Interrupted),
            }
        })
    })?
}

/// Sum of a category's time over every node's report: each node's
/// `all`/`all` row (one value per journey, the journey's time in the
/// category), so that `total / requests` is the time per request and the
/// categories add up to the attributed datapath time.
pub fn category_totals(reports: &[Report]) -> Vec<(String, f64, u64)> {
    let mut totals: Vec<(String, f64, u64)> = Vec::new();
    for report in reports {
        let all = hoptrace_core::report::ALL;
        for row in report
            .categories
            .iter()
            .filter(|r| r.direction == all && r.conn_state == all)
        {
            let name = row.category.name().to_string();
            match totals.iter_mut().find(|t| t.0 == name) {
                Some(t) => {
                    t.1 += row.stats.total_us;
                    t.2 += row.stats.count;
                }
                None => totals.push((name, row.stats.total_us, row.stats.count)),
            }
        }
    }
    totals.sort_by(|a, b| b.1.total_cmp(&a.1));
    totals
}

/// The human summary of one run.
pub fn render_run(run: &LabRun) -> String {
    use comfy_table::Cell;
    use hoptrace_core::report::styled_table;
    let mut out = String::new();
    let requests = run.load.ok.max(1) as f64;
    let mut header = vec!["category".to_owned()];
    for report in &run.reports {
        header.push(format!("{} p50 µs", report.node));
        header.push(format!("{} p99 µs", report.node));
    }
    header.push("µs per request (all nodes)".to_owned());
    header.push("share".to_owned());
    let mut table = styled_table(&header);
    let totals = category_totals(&run.reports);
    let attributed: f64 = totals.iter().map(|t| t.1).sum();
    for (category, total_us, _) in &totals {
        let mut row = vec![Cell::new(category)];
        for report in &run.reports {
            let best = report
                .categories
                .iter()
                .filter(|c| c.category.name() == category)
                .max_by_key(|c| c.stats.count);
            match best {
                Some(c) => {
                    row.push(Cell::new(format!("{:.2}", c.stats.p50_us)));
                    row.push(Cell::new(format!("{:.2}", c.stats.p99_us)));
                }
                None => {
                    row.push(Cell::new("-"));
                    row.push(Cell::new("-"));
                }
            }
        }
        row.push(Cell::new(format!("{:.2}", total_us / requests)));
        row.push(Cell::new(format!(
            "{:.1}%",
            100.0 * total_us / attributed.max(f64::MIN_POSITIVE)
        )));
        table.add_row(row);
    }
    hoptrace_core::report::keep_name_words(&mut table);
    out.push_str(&format!("\n== {} ==\nCategories (per journey on each node; per request summed over nodes)\n{table}\n", run.label));

    // Top segments by total time over all nodes.
    let mut segs: Vec<(String, String, f64, u64, f64)> = Vec::new();
    for report in &run.reports {
        for s in &report.segments {
            match segs.iter_mut().find(|x| x.0 == s.segment) {
                Some(x) => {
                    x.2 += s.stats.total_us;
                    x.3 += s.stats.count;
                    x.4 = x.4.max(s.stats.p99_us);
                }
                None => segs.push((
                    s.segment.clone(),
                    s.category.name().to_string(),
                    s.stats.total_us,
                    s.stats.count,
                    s.stats.p99_us,
                )),
            }
        }
    }
    segs.sort_by(|a, b| b.2.total_cmp(&a.2));
    let mut seg_table = styled_table(&[
        "segment",
        "category",
        "count",
        "mean µs",
        "p99 µs (worst node)",
        "µs per request",
    ]);
    for (name, category, total, count, p99) in segs.iter().take(12) {
        seg_table.add_row(vec![
            name.clone(),
            category.clone(),
            count.to_string(),
            format!("{:.2}", total / (*count).max(1) as f64),
            format!("{:.2}", p99),
            format!("{:.2}", total / requests),
        ]);
    }
    hoptrace_core::report::keep_name_words(&mut seg_table);
    out.push_str(&format!("Top segments\n{seg_table}\n"));

    let client = &run.load.client_latency;
    let wrap = |text: &str| hoptrace_core::diagnose::wrap("", "  ", text.trim_end());
    out.push_str(&wrap(&format!(
        "Client: {} requests ok ({} errors: {} reset, {} refused, {} short read, {} bad status, {} other; {} timeouts) at {:.0}/s; latency p50 {} µs, p99 {} µs, mean {:.1} µs.\n",
        run.load.ok, run.load.errors, run.load.error_kinds.reset, run.load.error_kinds.refused, run.load.error_kinds.short_read, run.load.error_kinds.bad_status, run.load.error_kinds.other, run.load.timeouts, run.load.achieved_rate, client.p50_us, client.p99_us, client.mean_us
    )));
    let text = if run.requests.is_some() {
        // The node ledger's socket.delivery runs to the reader's copy, so
        // it holds the wait to be read that the timeline gives the reader.
        "Attributed datapath time per request (the node ledger above: sum of segments on every node, both directions): {attributed} µs of the client's mean {mean} µs. Its socket.delivery includes the time bytes wait to be read, which the request timeline below counts as its reader's socket.queue, so the two tables' kernel-other differ.\n"
    } else {
        "Attributed datapath time per request (sum of segments on every node, both directions): {attributed} µs of the client's mean {mean} µs; the rest is the endpoints' stacks, scheduling and the applications.\n"
    };
    out.push_str(&wrap(
        &text
            .replace("{attributed}", &format!("{:.1}", attributed / requests))
            .replace("{mean}", &format!("{:.1}", client.mean_us)),
    ));
    // The closing sentence is the worst top finding over the run's nodes,
    // in the words `hoptrace diagnose` and `trace` use.
    // The request timeline's findings (the ingress proxy) come first
    // among equal severities: they are about the whole request.
    let top = run
        .requests
        .iter()
        .filter_map(|requests| {
            let first = hoptrace_core::diagnose::diagnose_requests(requests)
                .into_iter()
                .next()?;
            Some((None, first))
        })
        .chain(run.reports.iter().filter_map(|report| {
            let findings = hoptrace_core::diagnose::diagnose(
                &hoptrace_core::diagnose::Input::report_only(report),
            );
            let first = findings.into_iter().next()?;
            Some((Some(report.node.clone()), first))
        }))
        .min_by_key(|(_, f)| f.severity);
    if let Some((node, finding)) = top
        && let Some(line) = hoptrace_core::diagnose::headline(std::slice::from_ref(&finding))
    {
        let line = match node {
            Some(node) => format!("{line} (on {node})"),
            None => format!("{line} (request timeline)"),
        };
        out.push_str(&hoptrace_core::diagnose::wrap("", "", &line));
    }
    if let Some(requests) = &run.requests {
        out.push_str(&hoptrace_core::report::timeline::render(requests));
    }
    if let Some(view) = &run.node_view {
        out.push_str(&format!(
            "\nAs {} alone sees them (--node-view: how `hoptrace diagnose` there would join them)\n",
            view.node
        ));
        out.push_str(&hoptrace_core::report::timeline::render_node_view(
            &view.requests,
        ));
        if let Some(all) = &run.requests {
            out.push_str(&wrap(&node_view_comparison(
                &view.node,
                &view.requests,
                all,
            )));
        }
    }
    let lost: u64 = run.reports.iter().map(|r| r.lost_events).sum();
    if lost > 0 {
        out.push_str(&wrap(&format!(
            "Warning: {lost} events were lost (ring buffer full); counts are lower bounds."
        )));
    }
    for report in &run.reports {
        for note in report.notes.iter().filter(|n| !n.starts_with("attached:")) {
            out.push_str(&wrap(&format!("note ({}): {note}", report.node)));
        }
    }
    out
}

/// One line setting a node's view beside the lab's, µs per request:
/// the client's mean and each category the lab's view has.
fn node_view_comparison(node: &str, view: &LabRequests, all: &LabRequests) -> String {
    let mean = |r: &LabRequests, c: &str| r.categories.get(c).map_or(0.0, |c| c.mean_us);
    let parts: Vec<String> = all
        .categories
        .keys()
        .filter(|c| c.as_str() != "client")
        .map(|c| format!("{c} {:.0} ({:.0})", mean(view, c), mean(all, c)))
        .collect();
    format!(
        "{node} alone against every node (in brackets), µs per request: the client's mean {:.0} ({:.0}, the load generator's), {}; joined {} of {} ({} of {}).\n",
        view.client_mean_us,
        all.client_mean_us,
        parts.join(", "),
        view.joined,
        view.count,
        all.joined,
        all.count
    )
}

/// Writes the `hoptrace.lab.v1` document of `runs` to `path`.
///
/// # Errors
/// [`LabError::Document`] when the document does not serialize,
/// [`LabError::WriteJson`] when the file cannot be written.
pub fn write_json(runs: &[LabRun], path: &std::path::Path) -> Result<(), LabError> {
    let json = lab_document(runs).to_json_pretty()?;
    std::fs::write(path, json).map_err(|source| LabError::WriteJson {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per-request figures add up: each node's `all`/`all` row counts once,
    /// not again with its per-direction rows.
    #[test]
    fn category_totals_take_each_journey_once() {
        use hoptrace_core::report::{ALL, Category, CategoryRow, Stats};
        let row = |direction: &str, conn_state: &str, total_us: f64, count: u64| CategoryRow {
            category: Category::KubeProxy,
            direction: direction.into(),
            conn_state: conn_state.into(),
            stats: Stats {
                count,
                p50_us: 0.0,
                p90_us: 0.0,
                p99_us: 0.0,
                max_us: 0.0,
                mean_us: total_us / count as f64,
                total_us,
            },
            share: 0.0,
        };
        let report: Report = serde_json::from_value(serde_json::json!({
            "schema": "hoptrace.report.v1", "node": "n", "kernel": "k",
            "started_at": "", "duration_s": 1.0, "capabilities": null,
            "journeys": 3, "segments": [], "categories": [], "end_to_end": [],
            "exemplars": [], "drops": [], "lost_events": 0, "unparsed_packets": 0,
            "foreign_events": 0, "counters": serde_json::to_value(
                hoptrace_core::report::LedgerCounters::default()).unwrap(),
            "notes": []
        }))
        .expect("a minimal report");
        let mut a = report.clone();
        a.categories = vec![
            row(ALL, ALL, 30.0, 3),
            row("egress", "new", 10.0, 1),
            row("ingress", "established", 20.0, 2),
        ];
        let mut b = report;
        b.categories = vec![row(ALL, ALL, 5.0, 1), row("egress", "new", 5.0, 1)];
        let totals = category_totals(&[a, b]);
        assert_eq!(totals, vec![("kube-proxy".to_owned(), 35.0, 4)]);
    }

    /// `--load udp` drives no proxy: the lab document must not claim one.
    #[test]
    fn udp_load_builds_no_ingress() {
        let udp = LabOptions {
            load: LoadMode::Udp,
            ingress: IngressKind::Builtin,
            ..LabOptions::default()
        };
        assert_eq!(effective_ingress(&udp), IngressKind::None);
        let http = LabOptions {
            ingress: IngressKind::Builtin,
            ..LabOptions::default()
        };
        assert_eq!(effective_ingress(&http), IngressKind::Builtin);
    }

    /// The typed `lab` section keeps the field names and values the lab's
    /// own types serialize to (what `hoptrace.lab.v1` held before it was typed).
    #[test]
    fn lab_section_matches_the_lab_types() {
        let spec = LoadSpec {
            mode: LoadMode::Udp,
            connections: 3,
            rate: 250.5,
            duration: Duration::from_millis(1500),
            ..LoadSpec::default()
        };
        assert_eq!(
            serde_json::to_value(load_section(&spec)).unwrap(),
            serde_json::to_value(&spec).unwrap()
        );
        for mode in LoadMode::ALL {
            assert_eq!(serde_json::to_value(mode).unwrap(), mode.to_string());
        }
        for kind in IngressKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.to_string());
        }
    }
}
