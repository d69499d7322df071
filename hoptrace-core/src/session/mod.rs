//! A tracing session on one node: discover, load, attach, drain, correlate.
//!
//! The node is a network namespace (the one hoptrace runs in, or one given by
//! path for the lab). Everything namespace-bound — tc attachment by interface
//! name, netfilter links, device discovery — happens on a thread that has
//! entered that namespace; the resulting file descriptors work from anywhere.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::channel,
    },
    thread::JoinHandle,
    time::Instant,
};

use hoptrace_common::{Counter, TraceConfig};

mod attach;
mod drain;
mod reorder;
pub mod timeline;

pub use reorder::ReorderBuffer;

use crate::{
    attribution::ledger::Ledger,
    correlate::{
        Correlator, CorrelatorOptions, JourneyObserver,
        aggregate::{AggregateNamer, AggregateSnapshot},
    },
    kernel::{
        btf,
        loader::{LoaderError, TcAttachment, TcMode, Tracer},
        netfilter::{NetfilterLinks, NetfilterPrograms},
        owner,
    },
    node::{
        NetnsError,
        devices::{self, NodeDevices},
        in_netns, node_context,
    },
};
use drain::{Feed, OtherNodes, Sharing, TracepointRoute};

/// Why a session could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Not privileged enough to load BPF programs (names the missing capabilities).
    #[error(transparent)]
    Privileges(#[from] crate::kernel::capabilities::PrivilegeError),
    /// The node's network namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The drain thread panicked; its ledger is lost.
    #[error("the session's drain thread panicked")]
    Panicked,
    /// An `--iface` name that the node does not have.
    #[error("unknown interface {0:?} on this node (see `ip link`)")]
    UnknownInterface(String),
    /// Device discovery failed.
    #[error(transparent)]
    Devices(#[from] devices::DeviceError),
    /// Loading or attaching the kernel programs failed.
    #[error(transparent)]
    Loader(#[from] LoaderError),
    /// The sk_buff/net_device offsets could not be read from
    /// /sys/kernel/btf/vmlinux.
    #[error("reading kernel BTF")]
    Btf(#[from] btf::BtfError),
    /// The drain thread could not be spawned.
    #[error("cannot start the drain thread")]
    Thread(#[source] std::io::Error),
}

/// What to trace.
#[derive(Clone, Debug, Default)]
pub struct SessionOptions {
    /// Node namespace (a /run/netns path); None = the current namespace.
    pub netns: Option<PathBuf>,
    /// Interfaces for tc; empty = discover by device kind.
    pub ifaces: Vec<String>,
    /// Load-time configuration of the kernel programs (flow filter,
    /// dispatch-only mode); the node's netns inode is filled in at start.
    pub config: TraceConfig,
    /// Force a tc attach mode; `None` tries tcx and falls back to clsact.
    pub tc_mode: Option<TcMode>,
    /// Attach netfilter BPF links (conntrack, kube-proxy's bands).
    pub netfilter: bool,
    /// Attach tracepoints (pod side, qdisc, driver, socket, drops).
    pub tracepoints: bool,
    /// Ring buffer size in bytes (a power of two, a multiple of the page size).
    pub ring_bytes: u32,
    /// Timeouts and bounds of the correlator.
    pub correlator: CorrelatorOptions,
    /// Also receives every journey as it is recorded (the agent's metrics).
    pub observer: Option<Arc<dyn JourneyObserver>>,
}

/// Default size of the event ring buffer: 4 MiB holds about 24,000 events
/// (176 bytes each), 5 ms of a 4.7 million events/s burst, since it is
/// drained every 5 ms; its pages count in the process's resident memory
/// once written (see docs/trace.md, "Memory").
pub const DEFAULT_RING_BYTES: u32 = 4 * 1024 * 1024;

impl SessionOptions {
    /// Every hook, a [`DEFAULT_RING_BYTES`] ring buffer, no filter.
    pub fn new() -> Self {
        Self {
            netfilter: true,
            tracepoints: true,
            ring_bytes: DEFAULT_RING_BYTES,
            ..Default::default()
        }
    }
}

/// What was attached, for the report.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Attachments {
    /// tc programs attached (device, direction, tcx or clsact).
    pub tc: Vec<TcAttachment>,
    /// Netfilter BPF links made (brackets around the priority bands).
    pub netfilter_links: usize,
    /// Tracepoints attached, as `category:name`.
    pub tracepoints: Vec<String>,
    /// What could not be attached and what that hides, one line each.
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
    /// This session's run record (removed on drop, after detaching).
    _run: Option<owner::RunGuard>,
    /// The node's devices as discovered at start.
    pub node: NodeDevices,
    /// What was attached and what was not.
    pub attachments: Attachments,
    /// This node's devices timed by tc without a qdisc
    /// ([`hoptrace_common::device_key`]).
    tc_covered: Vec<u64>,
    /// When tracing started (monotonic, for the duration).
    pub started: Instant,
    /// When tracing started (wall clock, for the report).
    pub started_at: std::time::SystemTime,
    /// Names aggregate-mode histogram keys with the node's devices.
    namer: std::sync::Mutex<AggregateNamer>,
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
                "tracepoints: one set for this kernel, attached by the first node's session, which hands this node its own events (nothing is missing)".into(),
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
        crate::kernel::capabilities::require_tracing(opts.netns.is_some())?;
        // One parse of the kernel's BTF for the whole start (offsets, drop
        // reasons, the tracepoints' type ids), dropped once attached.
        let kernel_btf = btf::Btf::vmlinux()?;
        let layout = kernel_btf.kernel_layout()?;
        let drop_reasons = kernel_btf.drop_reason_names().unwrap_or_default();
        let netns = opts.netns.clone();
        let others = std::mem::take(&mut sharing.others);
        // Say who owns what before attaching: a second hoptrace that starts
        // at the same time sees this record.
        let netns_ino = in_netns(netns.as_deref(), devices::own_netns_inode)??;
        let other_runs = owner::other_live_runs(netns_ino);
        let run = owner::RunGuard::register(netns_ino, Vec::new(), Vec::new()).ok();
        let attached = in_netns(netns.as_deref(), || {
            attach::attach_node(opts, &kernel_btf, layout, others)
        })??;
        drop(kernel_btf);
        let attach::Attached {
            mut tracer,
            netfilter: nf,
            node,
            mut attachments,
            tc_covered,
        } = attached;
        if !other_runs.is_empty() {
            let pids: Vec<String> = other_runs.iter().map(|r| r.pid.to_string()).collect();
            attachments.notes.insert(
                0,
                format!(
                    "another hoptrace is running on this node (pid {}): both trace every packet and each pays its own cost; this run took the netfilter and tc priorities next to the other's",
                    pids.join(", ")
                ),
            );
        }
        if let Some(run) = &run {
            let mut programs = tracer.program_ids();
            if let Some((p, _)) = &nf {
                programs.extend(p.program_ids().unwrap_or_default());
            }
            let filters = attachments
                .tc
                .iter()
                .filter(|a| a.mode == TcMode::Clsact)
                .map(|a| owner::FilterRecord {
                    iface: a.iface.clone(),
                    ifindex: a.ifindex,
                    direction: a.direction.to_owned(),
                    priority: a.priority,
                    handle: a.handle,
                })
                .collect();
            let _ = run.update(programs, filters);
        }
        let reader = tracer.take_events()?;
        return_startup_heap();
        let ctx = node_context(&node, &drop_reasons);
        let namer = std::sync::Mutex::new(AggregateNamer::new(ctx.clone()));
        let mut correlator = Correlator::new(ctx, opts.correlator.clone());
        if let Some(observer) = &opts.observer {
            correlator.set_observer(Arc::clone(observer));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let drainer = drain::spawn(
            reader,
            correlator,
            sharing,
            Arc::clone(&stop),
            opts.correlator.idle_timeout_ns,
        )
        .map_err(SessionError::Thread)?;
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
            _run: run,
            node,
            attachments,
            tc_covered,
            started: Instant::now(),
            started_at: std::time::SystemTime::now(),
            namer,
        })
    }

    /// Kernel ids of the programs this session loaded (as `bpftool prog`
    /// shows them).
    pub fn program_ids(&self) -> Vec<u32> {
        // The tracer's own list: its tracing programs are loaded beside
        // the aya object, not in it.
        let mut ids: Vec<u32> = self.tracer.iter().flat_map(Tracer::program_ids).collect();
        if let Some(nf) = &self._nf_programs {
            ids.extend(nf.program_ids().unwrap_or_default());
        }
        ids
    }

    /// Kernel ids and full names of this session's tc and tracepoint
    /// programs. The kernel's own program info cuts names at 15 bytes
    /// (`hoptrace_tc_ing`); these are the names in the object.
    pub fn program_names(&self) -> Vec<(u32, String)> {
        self.tracer.iter().flat_map(Tracer::program_names).collect()
    }

    /// Hooks of this session that another process removed while it ran
    /// (clsact filters deleted by `tc` or by a cleanup), as
    /// `iface/direction`: their hops are missing from the ledger.
    pub fn lost_hooks(&self) -> Vec<String> {
        let Some(tracer) = &self.tracer else {
            return Vec::new();
        };
        in_netns(self.netns.as_deref(), || tracer.missing_filters()).unwrap_or_default()
    }

    /// Kernel-side counters so far.
    pub fn counters(&self) -> Option<crate::kernel::loader::Counters> {
        self.tracer.as_ref().and_then(|t| t.counters().ok())
    }

    /// Aggregate mode: the kernel's histograms so far, named with the
    /// node's devices and the correlator's taxonomy. Empty in full mode.
    ///
    /// # Errors
    ///
    /// The histogram map cannot be read.
    pub fn aggregate_snapshot(&self) -> Result<AggregateSnapshot, SessionError> {
        let Some(tracer) = &self.tracer else {
            return Ok(AggregateSnapshot::default());
        };
        let totals = tracer.aggregate_totals()?;
        let mut namer = self
            .namer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(namer.snapshot(&totals))
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
/// Gives the heap that start-up freed back to the kernel.
///
/// Loading and attaching read the kernel's BTF (a 5.5 MB blob on 6.18,
/// held until the programs are attached); glibc keeps freed memory mapped
/// until the top of the heap is free. A node agent is judged
/// by its resident set for hours, not by its first second: `malloc_trim`
/// returns every free page (glibc `malloc/malloc.c`, `malloc_trim(0)`).
fn return_startup_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free pages of glibc's own heap; it
    // touches no memory the program still holds.
    unsafe {
        libc::malloc_trim(0);
    }
}
