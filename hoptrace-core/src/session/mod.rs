//! A tracing session on one node: discover, load, attach, drain, correlate.
//!
//! The node is a network namespace (the one hoptrace runs in, or one given by
//! path for the lab). Everything namespace-bound — tc attachment by interface
//! name, netfilter links, device discovery — happens on a thread that has
//! entered that namespace; the resulting file descriptors work from anywhere.

use std::{
    collections::HashSet,
    os::fd::AsFd as _,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{Receiver, Sender, channel},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use std::net::IpAddr;

use hoptrace_common::{Counter, HookKind, HopEvent, TraceConfig, device_key};
use ipnet::IpNet;

mod reorder;

pub use reorder::ReorderBuffer;

use crate::{
    attribution::ledger::Ledger,
    correlate::{Correlator, CorrelatorOptions},
    kernel::{
        btf,
        loader::{LoadOptions, LoaderError, TcAttachment, TcMode, Tracer},
        netfilter::{self, NetfilterLinks, NetfilterPrograms},
    },
    node::{
        NetnsError,
        devices::{self, NodeDevices},
        in_netns, node_context,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("hoptrace needs root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON)")]
    NotRoot,
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("the session's drain thread panicked")]
    Panicked,
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
    /// This node's devices timed by tc without a qdisc ([`device_key`]).
    tc_covered: Vec<u64>,
    pub started: Instant,
    pub started_at: std::time::SystemTime,
}

/// Tracepoint events of namespaces that belong to another session of the
/// group, and where to send them.
struct TracepointRoute {
    netns: HashSet<u32>,
    to: Sender<HopEvent>,
    /// Every event older than this (bpf ktime) has been sent; `u64::MAX`
    /// once the routing session has stopped.
    routed_until: Arc<AtomicU64>,
}

/// Tracepoint events routed to a session by the one that attached them.
struct Feed {
    events: Receiver<HopEvent>,
    routed_until: Arc<AtomicU64>,
}

/// Two sources of events reach a fed session's correlator one drain apart:
/// they are put back in time order, up to what both have delivered, minus
/// this margin for events whose time was taken just before their commit.
const REORDER_SLACK_NS: u64 = 1_000_000;

/// How a session of a group shares the kernel's tracepoints.
#[derive(Default)]
struct Sharing {
    /// Tracepoint events another session routes to this one.
    feed: Option<Feed>,
    /// Namespaces whose tracepoint events go to other sessions.
    routes: Vec<TracepointRoute>,
    /// What the tracepoints must know of the other sessions' nodes.
    others: OtherNodes,
}

/// The other nodes a session's tracepoints serve.
#[derive(Debug, Default)]
struct OtherNodes {
    /// Their namespaces (nodes and pods).
    netns: Vec<u32>,
    /// Their devices timed by tc without a qdisc ([`device_key`]).
    tc_covered: Vec<u64>,
    /// One of their devices has a qdisc.
    qdisc: bool,
}

/// Events of hooks that fire in every namespace of the kernel.
fn is_tracepoint_event(ev: &HopEvent) -> bool {
    !matches!(
        HookKind::from_u8(ev.hook),
        HookKind::TcIngress | HookKind::TcEgress | HookKind::Netfilter
    )
}

impl Session {
    /// Loads and attaches everything, then starts draining.
    pub fn start(opts: &SessionOptions) -> Result<Self, SessionError> {
        Self::start_sharing(opts, Sharing::default())
    }

    /// Sessions for several node namespaces of one kernel (the lab's
    /// nodes): tc and netfilter per node, and one set of tracepoints, since
    /// a tracepoint program runs for the packets of every namespace. The
    /// first session attaches them for all nodes and hands each event to
    /// the session of the namespace it belongs to. Stop the sessions in the
    /// order returned (the first one last routes its remaining events).
    pub fn start_group(opts: &[SessionOptions]) -> Result<Vec<Self>, SessionError> {
        let Some((first, rest)) = opts.split_first() else {
            return Ok(Vec::new());
        };
        if rest.is_empty() || !first.tracepoints || rest.iter().any(|o| !o.tracepoints) {
            return opts.iter().map(Self::start).collect();
        }
        let mut others = Vec::with_capacity(rest.len());
        let mut routes = Vec::with_capacity(rest.len());
        let mut other_nodes = OtherNodes::default();
        for o in rest {
            let (to, events) = channel();
            let routed_until = Arc::new(AtomicU64::new(0));
            let mut o = o.clone();
            o.tracepoints = false;
            let mut session = Self::start_sharing(
                &o,
                Sharing {
                    feed: Some(Feed {
                        events,
                        routed_until: routed_until.clone(),
                    }),
                    ..Sharing::default()
                },
            )?;
            session.attachments.notes.push(
                "tracepoints: shared with the first session of this kernel, which hands over this node's events".into(),
            );
            let netns = session.node.traced_netns();
            other_nodes.netns.extend(&netns);
            other_nodes.tc_covered.extend(&session.tc_covered);
            other_nodes.qdisc |= session.node.devices.iter().any(|d| !d.noqueue);
            routes.push(TracepointRoute {
                netns: netns.into_iter().collect(),
                to,
                routed_until,
            });
            others.push(session);
        }
        let first = Self::start_sharing(
            first,
            Sharing {
                feed: None,
                routes,
                others: other_nodes,
            },
        )?;
        let mut sessions = vec![first];
        sessions.extend(others);
        Ok(sessions)
    }

    fn start_sharing(opts: &SessionOptions, mut sharing: Sharing) -> Result<Self, SessionError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(SessionError::NotRoot);
        }
        let layout = btf::kernel_layout().map_err(|e| SessionError::Btf(e.to_string()))?;
        let drop_reasons = btf::drop_reason_names().unwrap_or_default();
        let kernel_btf = aya::Btf::from_sys_fs().map_err(|e| SessionError::Btf(e.to_string()))?;
        let netns = opts.netns.clone();
        let others = std::mem::take(&mut sharing.others);
        let correlator_opts = opts.correlator.clone();
        let correlator_idle_ns = correlator_opts.idle_timeout_ns;
        let opts = opts.clone();
        let (tracer, nf, node, attachments, tc_covered) = in_netns(
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
                let mut traced_netns = node.traced_netns();
                traced_netns.extend(others.netns);
                tracer.set_traced_netns(&traced_netns)?;
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
                let tc_covered: Vec<u64> = targets
                    .iter()
                    .filter_map(|(iface, _)| node.by_name(iface))
                    .filter(|d| d.noqueue)
                    .map(|d| device_key(node.netns_inode, d.ifindex))
                    .collect();
                let mut covered = tc_covered.clone();
                covered.extend(others.tc_covered);
                tracer.set_tc_covered(&covered)?;
                // Queueing needs a qdisc: when every device of the node is
                // noqueue (veths, bridges and tunnels are), the qdisc
                // tracepoint fires back to back with the driver's.
                let qdisc = others.qdisc || node.devices.iter().any(|d| !d.noqueue);
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
                    crate::kernel::objects::netfilter_object().map_err(|e| SessionError::Netfilter(e.to_string()))?,
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
                Ok((tracer, nf, node, attachments, tc_covered))
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
                    let Sharing { feed, routes, .. } = sharing;
                    let mut pending = ReorderBuffer::default();
                    loop {
                        let stopping = stop.load(Ordering::Relaxed);
                        let pass_start = monotonic_ns();
                        if let Some(feed) = &feed {
                            reader.drain(|ev| pending.push(*ev));
                            pending.extend_from(feed.events.try_iter());
                            let watermark = if stopping {
                                u64::MAX
                            } else {
                                pass_start
                                    .min(feed.routed_until.load(Ordering::Acquire))
                                    .saturating_sub(REORDER_SLACK_NS)
                            };
                            pending.release(watermark, |ev| correlator.push(ev));
                        } else {
                            reader.drain(|ev| {
                                if !routes.is_empty()
                                    && is_tracepoint_event(ev)
                                    && let Some(route) =
                                        routes.iter().find(|r| r.netns.contains(&ev.netns_ino))
                                {
                                    // The other session may have stopped: then
                                    // the event has no ledger to go to.
                                    let _ = route.to.send(*ev);
                                    return;
                                }
                                correlator.push(ev);
                            });
                            for route in &routes {
                                route.routed_until.store(pass_start, Ordering::Release);
                            }
                        }
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
                    for route in &routes {
                        route.routed_until.store(u64::MAX, Ordering::Release);
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
            tc_covered,
            started: Instant::now(),
            started_at: std::time::SystemTime::now(),
        })
    }

    /// Kernel ids of the programs this session loaded (as `bpftool prog`
    /// shows them).
    pub fn program_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .tracer
            .iter()
            .flat_map(|t| t.ebpf().programs())
            .filter_map(|(_, p)| p.fd().ok())
            .filter_map(|fd| crate::kernel::sys::object_id(fd.as_fd()).ok())
            .collect();
        if let Some(nf) = &self._nf_programs {
            ids.extend(nf.program_ids().unwrap_or_default());
        }
        ids
    }

    /// Kernel ids and full names of this session's tc and tracepoint
    /// programs. The kernel's own program info cuts names at 15 bytes
    /// (`hoptrace_tc_ing`); these are the names in the object.
    pub fn program_names(&self) -> Vec<(u32, String)> {
        self.tracer
            .iter()
            .flat_map(|t| t.ebpf().programs())
            .filter_map(|(name, p)| {
                let id = crate::kernel::sys::object_id(p.fd().ok()?.as_fd()).ok()?;
                Some((id, name.to_owned()))
            })
            .collect()
    }

    /// Kernel-side counters so far.
    pub fn counters(&self) -> Option<crate::kernel::loader::Counters> {
        self.tracer.as_ref().and_then(|t| t.counters().ok())
    }

    /// Stops draining, detaches everything, returns the ledger and the counters.
    pub fn stop(mut self) -> Result<(Ledger, crate::kernel::loader::Counters), SessionError> {
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
pub fn lost_events(counters: &crate::kernel::loader::Counters) -> u64 {
    counters.get(Counter::RingFull)
}

/// Kernel-side flow filter from `--ip` and `--port`.
pub fn flow_filter(ip: Option<IpNet>, port: Option<u16>) -> TraceConfig {
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

