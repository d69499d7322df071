//! A tracing session on one node: discover, load, attach, drain, correlate.
//!
//! The node is a network namespace (the one hoptrace runs in, or one given by
//! path for the lab). Everything namespace-bound — tc attachment by interface
//! name, netfilter links, device discovery — happens on a thread that has
//! entered that namespace; the resulting file descriptors work from anywhere.

use std::{
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use hoptrace_common::{Counter, TraceConfig};

use crate::{
    btf,
    correlate::{Correlator, CorrelatorOptions, Ledger},
    devices::{self, DeviceKind, NodeDevices},
    loader::{LoadOptions, LoaderError, TcAttachment, TcMode, Tracer},
    netfilter::{self, NetfilterLinks, NetfilterPrograms},
    taxonomy::{DeviceInfo, DeviceRole, NodeContext},
};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("hoptrace needs root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON)")]
    NotRoot,
    #[error("cannot enter network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unknown interface {0:?} on this node (see `ip link`)")]
    UnknownInterface(String),
    #[error(transparent)]
    Devices(#[from] devices::DeviceError),
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error("reading kernel BTF: {0}")]
    Btf(String),
    #[error("netfilter: {0}")]
    Netfilter(String),
    #[error("the session thread panicked")]
    Panicked,
}

/// How often the drain thread empties the ring buffer (producers never wake it).
const DRAIN_INTERVAL: Duration = Duration::from_millis(5);

/// What to trace.
#[derive(Clone, Debug, Default)]
pub struct SessionOptions {
    /// Node namespace (a /run/netns path); None = the current namespace.
    pub netns: Option<PathBuf>,
    /// Interfaces for tc; empty = discover by device kind.
    pub ifaces: Vec<String>,
    pub config: TraceConfig,
    /// Force clsact instead of tcx.
    pub tc_mode: Option<TcMode>,
    pub netfilter: bool,
    pub tracepoints: bool,
    pub ring_bytes: u32,
    pub correlator: CorrelatorOptions,
}

impl SessionOptions {
    pub fn new() -> Self {
        Self {
            netfilter: true,
            tracepoints: true,
            ring_bytes: 32 * 1024 * 1024,
            ..Default::default()
        }
    }
}

/// What was attached, for the report.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Attachments {
    pub tc: Vec<TcAttachment>,
    pub netfilter_links: usize,
    pub tracepoints: Vec<String>,
    pub notes: Vec<String>,
}

/// A running session: events are drained on a timer by a background thread
/// into the correlator until [`Session::stop`].
pub struct Session {
    stop: Arc<AtomicBool>,
    drainer: Option<JoinHandle<Ledger>>,
    // Owned attachments: dropped (detached) after the drainer has finished.
    tracer: Option<Tracer>,
    _nf_links: Option<NetfilterLinks>,
    _nf_programs: Option<NetfilterPrograms>,
    /// The node namespace: clsact filters are deleted over netlink by
    /// ifindex in the calling thread's namespace, so detaching happens there.
    netns: Option<PathBuf>,
    pub node: NodeDevices,
    pub attachments: Attachments,
    pub started: Instant,
    pub started_at: std::time::SystemTime,
}

/// Runs `f` on a thread inside the namespace at `path` (or here).
pub fn in_netns<T: Send>(
    path: Option<&Path>,
    f: impl FnOnce() -> T + Send,
) -> Result<T, SessionError> {
    let Some(path) = path else { return Ok(f()) };
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(path).map_err(|source| SessionError::Netns {
                path: path.to_owned(),
                source,
            })?;
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                SessionError::Netns {
                    path: path.to_owned(),
                    source: std::io::Error::from_raw_os_error(e as i32),
                }
            })?;
            Ok(f())
        })
        .join()
        .map_err(|_| SessionError::Panicked)?
    })
}

fn role_of(dev: &devices::Device) -> DeviceRole {
    match dev.kind {
        _ if dev.uplink => DeviceRole::Uplink,
        DeviceKind::Veth if dev.peer_netnsid.is_some() => DeviceRole::PodVethHost,
        DeviceKind::Veth => DeviceRole::Other,
        DeviceKind::Bridge => DeviceRole::Bridge,
        DeviceKind::Vxlan => DeviceRole::Vxlan,
        DeviceKind::Geneve => DeviceRole::Geneve,
        DeviceKind::Ipip => DeviceRole::IpIp,
        DeviceKind::Loopback => DeviceRole::Loopback,
        _ if dev.uplink => DeviceRole::Uplink,
        _ => DeviceRole::Other,
    }
}

/// Builds the correlator's view of the node: its devices, and the pods'
/// interfaces (discovered inside each pod namespace).
pub fn node_context(
    node: &NodeDevices,
    drop_reasons: &std::collections::HashMap<u32, String>,
) -> NodeContext {
    let mut infos: Vec<DeviceInfo> = node
        .devices
        .iter()
        .map(|d| DeviceInfo {
            netns_ino: node.netns_inode,
            ifindex: d.ifindex,
            name: d.name.clone(),
            role: role_of(d),
        })
        .collect();
    for pod in &node.pods {
        let path = Path::new("/run/netns").join(&pod.name);
        if let Ok(Ok(pod_devices)) = in_netns(Some(&path), devices::discover) {
            infos.extend(pod_devices.devices.iter().map(|d| DeviceInfo {
                netns_ino: pod.inode,
                ifindex: d.ifindex,
                name: format!("{}:{}", pod.name, d.name),
                role: if d.kind == DeviceKind::Loopback {
                    DeviceRole::Loopback
                } else {
                    DeviceRole::PodInterface
                },
            }));
        }
    }
    NodeContext {
        node_netns_ino: node.netns_inode,
        devices: infos,
        drop_reasons: drop_reasons.clone(),
        kube_proxy_absent: !node.kube_proxy_present,
    }
}

impl Session {
    /// Loads and attaches everything, then starts draining.
    pub fn start(opts: &SessionOptions) -> Result<Self, SessionError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(SessionError::NotRoot);
        }
        let layout = btf::kernel_layout().map_err(|e| SessionError::Btf(e.to_string()))?;
        let drop_reasons = btf::drop_reason_names().unwrap_or_default();
        let kernel_btf = aya::Btf::from_sys_fs().map_err(|e| SessionError::Btf(e.to_string()))?;
        let netns = opts.netns.clone();
        let correlator_opts = opts.correlator.clone();
        let correlator_idle_ns = correlator_opts.idle_timeout_ns;
        let opts = opts.clone();
        let (tracer, nf, node, attachments) = in_netns(
            netns.as_deref(),
            move || -> Result<_, SessionError> {
                let node = devices::discover()?;
                let mut config = opts.config;
                config.node_netns_ino = node.netns_inode;
                config.filter_netns = 1;
                let mut tracer = Tracer::load(&LoadOptions {
                    layout,
                    config,
                    ring_bytes: opts.ring_bytes,
                })?;
                tracer.set_traced_netns(&node.traced_netns())?;
                let mut attachments = Attachments::default();
                let mode = opts.tc_mode.unwrap_or(TcMode::Tcx);
                let targets: Vec<(String, bool)> = if opts.ifaces.is_empty() {
                    node.default_tc_targets()
                        .iter()
                        .map(|d| (d.name.clone(), d.has_l2))
                        .collect()
                } else {
                    opts.ifaces
                        .iter()
                        .map(|name| {
                            node.by_name(name)
                                .map(|d| (d.name.clone(), d.has_l2))
                                .ok_or_else(|| SessionError::UnknownInterface(name.clone()))
                        })
                        .collect::<Result<_, _>>()?
                };
                for (iface, has_l2) in &targets {
                    match tracer.attach_tc(iface, *has_l2, mode) {
                        Ok(()) => {}
                        Err(err) if mode == TcMode::Tcx && opts.tc_mode.is_none() => {
                            // No tcx here: fall back to clsact, and say so.
                            attachments
                                .notes
                                .push(format!("tcx unavailable on {iface} ({err}); used clsact"));
                            tracer.attach_tc(iface, *has_l2, TcMode::Clsact)?;
                        }
                        Err(err) => return Err(err.into()),
                    }
                }
                // Device tracepoints on noqueue devices that tc already times
                // fire back to back with tc: skip them in the kernel.
                let covered: Vec<u32> = targets
                    .iter()
                    .filter_map(|(iface, _)| node.by_name(iface))
                    .filter(|d| d.noqueue)
                    .map(|d| d.ifindex)
                    .collect();
                tracer.set_tc_covered(&covered)?;
                // Queueing needs a qdisc: when every device of the node is
                // noqueue (veths, bridges and tunnels are), the qdisc
                // tracepoint fires back to back with the driver's.
                let qdisc = node.devices.iter().any(|d| !d.noqueue);
                if opts.tracepoints {
                    match tracer.attach_tracepoints(&kernel_btf, qdisc, false) {
                        Ok(()) if !qdisc => attachments.notes.push(
                            "net:net_dev_queue not attached: every device of the node is noqueue, so no packet waits in a qdisc".into(),
                        ),
                        Ok(()) => {}
                        Err(err) => attachments.notes.push(format!(
                            "tracepoints unavailable ({err}): pod-side, qdisc, driver and socket hops are not timed"
                        )),
                    }
                }
                let mut nf = None;
                if opts.netfilter {
                    let plan = netfilter::default_plan();
                    let nf_config = TraceConfig {
                        nf_parse_slots: netfilter::parse_slots(&plan),
                        ..config
                    };
                    match netfilter::load_netfilter_programs(
                    crate::ebpf_objects::netfilter_object().map_err(|e| SessionError::Netfilter(e.to_string()))?,
                    tracer.ebpf(),
                    &layout,
                    &nf_config,
                )
                .and_then(|progs| {
                    let links = progs.attach(&plan)?;
                    Ok((progs, links))
                }) {
                    Ok((progs, links)) => {
                        attachments.netfilter_links = links.len();
                        nf = Some((progs, links));
                    }
                    Err(err) => attachments.notes.push(format!(
                        "netfilter links unavailable ({err}): netfilter time (conntrack, kube-proxy chains) stays inside `routing`/`ip.receive`"
                    )),
                }
                }
                attachments.tc = tracer.tc_attachments().to_vec();
                attachments.tracepoints =
                    tracer.tracepoints().iter().map(|s| s.to_string()).collect();
                Ok((tracer, nf, node, attachments))
            },
        )??;
        let mut tracer = tracer;
        let mut reader = tracer.take_events()?;
        let ctx = node_context(&node, &drop_reasons);
        let mut correlator = Correlator::new(ctx, correlator_opts);
        let stop = Arc::new(AtomicBool::new(false));
        let drainer = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("hoptrace-drain".into())
                .spawn(move || {
                    // Producers never wake us: drain on a short timer.
                    // Drain often (the ring must not fill); look for idle
                    // journeys (a scan of all in flight) only every half
                    // idle timeout, which is as often as it can matter.
                    let flush_every =
                        (correlator_idle_ns / 2).max(DRAIN_INTERVAL.as_nanos() as u64);
                    let mut last_flush = monotonic_ns();
                    loop {
                        let stopping = stop.load(Ordering::Relaxed);
                        reader.drain(|ev| correlator.push(ev));
                        let now = monotonic_ns();
                        if now.saturating_sub(last_flush) >= flush_every {
                            correlator.flush_idle(now);
                            last_flush = now;
                        }
                        if stopping {
                            break;
                        }
                        std::thread::sleep(DRAIN_INTERVAL);
                    }
                    correlator.finish()
                })
                .expect("spawn drain thread")
        };
        let (progs, links) = match nf {
            Some((p, l)) => (Some(p), Some(l)),
            None => (None, None),
        };
        Ok(Self {
            stop,
            drainer: Some(drainer),
            tracer: Some(tracer),
            _nf_links: links,
            _nf_programs: progs,
            netns,
            node,
            attachments,
            started: Instant::now(),
            started_at: std::time::SystemTime::now(),
        })
    }

    /// Kernel-side counters so far.
    pub fn counters(&self) -> Option<crate::loader::Counters> {
        self.tracer.as_ref().and_then(|t| t.counters().ok())
    }

    /// Stops draining, detaches everything, returns the ledger and the counters.
    pub fn stop(mut self) -> Result<(Ledger, crate::loader::Counters), SessionError> {
        // Detach everything first so no new events arrive (the reader keeps
        // its own handle on the ring buffer), then drain what is left.
        let counters = self.counters().unwrap_or_default();
        self.detach();
        self.stop.store(true, Ordering::Relaxed);
        let ledger = self
            .drainer
            .take()
            .ok_or(SessionError::Panicked)?
            .join()
            .map_err(|_| SessionError::Panicked)?;
        Ok((ledger, counters))
    }
}

impl Session {
    /// Detaches everything. The tracer is dropped on a thread inside the
    /// node's namespace: aya deletes clsact filters by ifindex over a netlink
    /// socket of the calling thread, which elsewhere would miss ours (and
    /// could hit another namespace's filter of the same ifindex).
    fn detach(&mut self) {
        self._nf_links.take();
        self._nf_programs.take();
        if let Some(tracer) = self.tracer.take() {
            // If the namespace is gone, so are its filters: the closure (and
            // the tracer with it) is then dropped unused.
            let _ = in_netns(self.netns.as_deref(), move || drop(tracer));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.detach();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(drainer) = self.drainer.take() {
            let _ = drainer.join();
        }
    }
}

/// CLOCK_MONOTONIC in ns: the clock of bpf_ktime_get_ns.
pub fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64,
        Err(_) => 0,
    }
}

/// Lost events: ring buffer full.
pub fn lost_events(counters: &crate::loader::Counters) -> u64 {
    counters.get(Counter::RingFull)
}
