//! Loads and runs the socket programs of the request timeline
//! (`hoptrace-sock` object: `sock:sock_recv_length`, `sock:sock_send_length`,
//! `sock:inet_sock_set_state` and `tcp:tcp_retransmit_skb` as tp_btf). The
//! object has its own ring buffer; a [`SockTracer`] drains it on its own
//! thread every 5 ms and keeps every event until [`SockTracer::stop`].
//!
//! Hooks are probed by trying: a tracepoint this kernel lacks (the sock
//! ones need Linux 6.3) is left out and named in [`SockCapture::notes`].

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::{
    EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
};
use hoptrace_common::{SockEvent, SockLayout};

use crate::kernel::{
    btf::Btf,
    objects,
    tracing::{self, RelocatedObject, TracingLink, TracingTarget, without_kernel_btf},
};

/// The programs of the socket object and the tracepoint each attaches to.
pub const SOCK_PROGRAMS: [(&str, &str); 3] = [
    ("hoptrace_sock_recv_length", "sock_recv_length"),
    ("hoptrace_sock_send_length", "sock_send_length"),
    ("hoptrace_inet_sock_set_state", "inet_sock_set_state"),
];

/// Programs of the socket object on `tcp:` tracepoints (tp_btf): a
/// retransmission marks the leg it delayed (`tcp.retransmit`,
/// docs/segments.md). Optional: without them a retransmission's wait
/// stays in the leg's `stack`.
pub const TCP_PROGRAMS: [(&str, &str); 1] = [("hoptrace_tcp_retransmit_skb", "tcp_retransmit_skb")];

/// Syscall-entry programs (`syscalls:` tracepoints) that time when a write
/// began: without them a write's time is its end.
pub const WRITE_ENTRY_PROGRAMS: [(&str, &str); 4] = [
    ("hoptrace_sys_enter_write", "sys_enter_write"),
    ("hoptrace_sys_enter_writev", "sys_enter_writev"),
    ("hoptrace_sys_enter_sendto", "sys_enter_sendto"),
    ("hoptrace_sys_enter_sendmsg", "sys_enter_sendmsg"),
];

const EVENTS_MAP: &str = "HOPTRACE_SOCK_EVENTS";

/// The socket events' ring buffer of [`SockTracer::start`], bytes (the
/// size the kernel object declares).
pub const SOCK_RING_BYTES: u32 = 4 * 1024 * 1024;
const NETNS_MAP: &str = "HOPTRACE_SOCK_NETNS";
const COUNTERS_MAP: &str = "HOPTRACE_SOCK_COUNTERS";

/// Why the socket tracer could not start.
#[derive(Debug, thiserror::Error)]
pub enum SockError {
    /// This build carries no kernel objects.
    #[error(transparent)]
    NoObjects(#[from] objects::NoKernelObjects),
    /// The kernel's BTF is missing or lacks a `struct sock` member.
    #[error("kernel BTF: {0}")]
    Btf(#[from] crate::kernel::btf::BtfError),
    /// The object's programs could not be relocated against its maps.
    #[error("socket object: {0}")]
    Relocate(#[from] tracing::TracingError),
    /// aya or the kernel rejected the object.
    #[error("loading the socket object failed: {0}")]
    Load(#[from] aya::EbpfError),
    /// A map of the object is missing or cannot be used.
    #[error("socket object map {name}: {detail}")]
    Map {
        /// The map's name.
        name: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// No socket tracepoint could be attached; the notes say why.
    #[error("no socket tracepoint attached: {0}")]
    NothingAttached(String),
    /// The drain thread could not be spawned.
    #[error("cannot spawn the socket drain thread")]
    Thread(#[source] std::io::Error),
}

/// The offsets the socket programs need, from BTF.
///
/// # Errors
///
/// [`crate::kernel::btf::BtfError`] for the first member not found.
pub fn sock_layout(
    btf: &Btf,
    filter_netns: bool,
) -> Result<SockLayout, crate::kernel::btf::BtfError> {
    Ok(SockLayout {
        sk_daddr: btf.member_offset("sock", &["__sk_common", "skc_daddr"])?,
        sk_rcv_saddr: btf.member_offset("sock", &["__sk_common", "skc_rcv_saddr"])?,
        sk_dport: btf.member_offset("sock", &["__sk_common", "skc_dport"])?,
        sk_num: btf.member_offset("sock", &["__sk_common", "skc_num"])?,
        sk_family: btf.member_offset("sock", &["__sk_common", "skc_family"])?,
        sk_net: btf.member_offset("sock", &["__sk_common", "skc_net", "net"])?,
        net_ns_inum: btf.member_offset("net", &["ns", "inum"])?,
        sk_protocol: btf.member_offset("sock", &["sk_protocol"])?,
        filter_netns: u32::from(filter_netns),
        valid: 1,
    })
}

/// What a stopped [`SockTracer`] collected.
#[derive(Debug, Default)]
pub struct SockCapture {
    /// Every event, in the order drained (not necessarily time order
    /// across CPUs: sort by `ts_ns`).
    pub events: Vec<SockEvent>,
    /// Events the ring buffer had no room for.
    pub lost: u64,
    /// Hooks that could not be attached, one line each.
    pub notes: Vec<String>,
    /// The tracepoints attached.
    pub attached: Vec<&'static str>,
}

/// The running socket programs and their drain thread. Dropping it
/// detaches everything (the aya object owns the links).
pub struct SockTracer {
    /// CLOCK_MONOTONIC (bpf ktime) when every hook was attached, ns.
    ready_ns: u64,
    ebpf: aya::Ebpf,
    /// The tp_btf programs, attached; dropping them detaches them.
    links: Vec<TracingLink>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    events: Arc<Mutex<Vec<SockEvent>>>,
    /// Events beyond the bound of [`SockTracer::start_bounded`].
    over: Arc<AtomicU64>,
    notes: Vec<String>,
    attached: Vec<&'static str>,
}

impl SockTracer {
    /// Loads the socket object, attaches every socket tracepoint this
    /// kernel has, and starts draining. With `netns` non-empty, only
    /// sockets of those network namespaces (inode numbers) are traced.
    ///
    /// # Errors
    ///
    /// [`SockError`]: no objects in this build, BTF, load, maps, or no
    /// tracepoint at all could be attached.
    pub fn start(netns: &[u32]) -> Result<Self, SockError> {
        Self::start_bounded(netns, usize::MAX, SOCK_RING_BYTES)
    }

    /// [`SockTracer::start`] keeping at most `max_events` events (a node's
    /// every socket, traced for a while, can read and write millions of
    /// times); the ones beyond are counted in [`SockCapture::lost`].
    /// `ring_bytes`: the socket events' ring buffer, a power of two of at
    /// least one page (the kernel's rule for `BPF_MAP_TYPE_RINGBUF`,
    /// kernel/bpf/ringbuf.c); its pages are mapped twice, so it counts
    /// twice its size in the resident set.
    ///
    /// # Errors
    ///
    /// As [`SockTracer::start`].
    pub fn start_bounded(
        netns: &[u32],
        max_events: usize,
        ring_bytes: u32,
    ) -> Result<Self, SockError> {
        let object = objects::sock_object()?;
        let kernel_btf = Btf::vmlinux()?;
        let layout = sock_layout(&kernel_btf, !netns.is_empty())?;
        // Without aya's copy of the kernel's BTF (see `kernel::tracing`).
        let mut ebpf = without_kernel_btf(|| {
            EbpfLoader::new()
                .override_global("HOPTRACE_SOCK_LAYOUT", &layout, true)
                .map_max_entries(EVENTS_MAP, ring_bytes)
                .load(object)
        })?;
        {
            let map = ebpf.map_mut(NETNS_MAP).ok_or(SockError::Map {
                name: NETNS_MAP,
                detail: "missing".into(),
            })?;
            let mut map: BpfHashMap<_, u32, u8> =
                BpfHashMap::try_from(map).map_err(|e| SockError::Map {
                    name: NETNS_MAP,
                    detail: e.to_string(),
                })?;
            for ino in netns {
                map.insert(ino, 1, 0).map_err(|e| SockError::Map {
                    name: NETNS_MAP,
                    detail: e.to_string(),
                })?;
            }
        }
        let relocated = RelocatedObject::against(object, &ebpf)?;
        let mut notes = Vec::new();
        let mut attached = Vec::new();
        let mut links = Vec::new();
        for (name, tracepoint) in SOCK_PROGRAMS {
            let result = tracing::attach(
                &relocated,
                name,
                TracingTarget::Tracepoint(tracepoint),
                &kernel_btf,
            )
            .map_err(|e| crate::kernel::capabilities::error_chain(&e));
            match result {
                Ok(link) => {
                    links.push(link);
                    attached.push(tracepoint);
                }
                Err(why) => notes.push(format!(
                    "request timeline: tp_btf sock:{tracepoint} is not available ({why}); its part of the timeline is missing"
                )),
            }
        }
        for (name, tracepoint) in TCP_PROGRAMS {
            match tracing::attach(
                &relocated,
                name,
                TracingTarget::Tracepoint(tracepoint),
                &kernel_btf,
            ) {
                Ok(link) => {
                    links.push(link);
                    attached.push(tracepoint);
                }
                Err(e) => notes.push(format!(
                    "request timeline: tp_btf tcp:{tracepoint} is not available ({}); retransmissions stay in the legs' stack",
                    crate::kernel::capabilities::error_chain(&e)
                )),
            }
        }
        for (name, tracepoint) in WRITE_ENTRY_PROGRAMS {
            let result = (|| -> Result<(), String> {
                let prog: &mut aya::programs::TracePoint = ebpf
                    .program_mut(name)
                    .ok_or_else(|| format!("program {name} missing"))?
                    .try_into()
                    .map_err(|e: aya::programs::ProgramError| e.to_string())?;
                prog.load().map_err(|e| format!("load: {e}"))?;
                prog.attach("syscalls", tracepoint)
                    .map_err(|e| format!("attach: {e}"))?;
                Ok(())
            })();
            match result {
                Ok(()) => attached.push(tracepoint),
                Err(why) => notes.push(format!(
                    "request timeline: syscalls:{tracepoint} is not available ({why}); such writes are timed at their end"
                )),
            }
        }
        if !attached.iter().any(|t| t.starts_with("sock_")) {
            return Err(SockError::NothingAttached(notes.join("; ")));
        }
        let ring = RingBuf::try_from(ebpf.take_map(EVENTS_MAP).ok_or(SockError::Map {
            name: EVENTS_MAP,
            detail: "missing".into(),
        })?)
        .map_err(|e| SockError::Map {
            name: EVENTS_MAP,
            detail: e.to_string(),
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(Mutex::new(Vec::new()));
        let over = Arc::new(AtomicU64::new(0));
        let thread = spawn_drain(
            ring,
            Arc::clone(&stop),
            Arc::clone(&events),
            (max_events, Arc::clone(&over)),
        )
        .map_err(SockError::Thread)?;
        drop(relocated);
        drop(kernel_btf);
        // Hooks attach one after the other: before the last one, a read
        // may be seen without the write that answered it, and two reads
        // would make one message. Events before this are left out.
        let ready_ns = crate::session::monotonic_ns();
        Ok(Self {
            ready_ns,
            ebpf,
            links,
            stop,
            thread: Some(thread),
            events,
            over,
            notes,
            attached,
        })
    }

    /// Events drained so far, kept or over the bound (not those still in
    /// the ring buffer).
    pub fn events_so_far(&self) -> u64 {
        let kept = self.events.lock().map_or(0, |e| e.len()) as u64;
        kept + self.over.load(Ordering::Relaxed)
    }

    /// Kernel ids of the attached programs (the tp_btf ones and the
    /// `syscalls:` ones), e.g. to read their run-time statistics.
    pub fn program_ids(&self) -> Vec<u32> {
        tracing::program_ids(&self.ebpf, &self.links)
    }

    /// Stops draining (after one last pass), detaches, and returns every
    /// event from the moment all hooks were attached on.
    pub fn stop(mut self) -> SockCapture {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let lost = self.counter(1) + self.over.load(Ordering::Relaxed);
        let mut events = std::mem::take(
            &mut *self
                .events
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        events.retain(|e| e.ts_ns >= self.ready_ns);
        SockCapture {
            events,
            lost,
            notes: std::mem::take(&mut self.notes),
            attached: std::mem::take(&mut self.attached),
        }
    }

    fn counter(&self, slot: u32) -> u64 {
        let Some(map) = self.ebpf.map(COUNTERS_MAP) else {
            return 0;
        };
        let Ok(array) = PerCpuArray::<&MapData, u64>::try_from(map) else {
            return 0;
        };
        array.get(&slot, 0).map_or(0, |v| v.iter().sum())
    }
}

impl Drop for SockTracer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn spawn_drain(
    mut ring: RingBuf<MapData>,
    stop: Arc<AtomicBool>,
    events: Arc<Mutex<Vec<SockEvent>>>,
    (max_events, over): (usize, Arc<AtomicU64>),
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("hoptrace-sock".into())
        .spawn(move || {
            let mut batch = Vec::new();
            loop {
                let stopping = stop.load(Ordering::Relaxed);
                while let Some(item) = ring.next() {
                    if item.len() >= std::mem::size_of::<SockEvent>() {
                        // SAFETY: `SockEvent` is a plain repr(C) Pod written
                        // by the socket programs; read_unaligned copes with
                        // any alignment.
                        batch.push(unsafe {
                            std::ptr::read_unaligned(item.as_ptr().cast::<SockEvent>())
                        });
                    }
                }
                if !batch.is_empty() {
                    let mut events = events
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let room = max_events.saturating_sub(events.len());
                    if batch.len() > room {
                        over.fetch_add((batch.len() - room) as u64, Ordering::Relaxed);
                        batch.truncate(room);
                    }
                    events.append(&mut batch);
                }
                if stopping {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
}
