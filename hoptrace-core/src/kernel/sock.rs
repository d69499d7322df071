//! Loads and runs the socket programs of the request timeline
//! (`hoptrace-sock` object: `sock:sock_recv_length`, `sock:sock_send_length`,
//! `sock:inet_sock_set_state` and `tcp:tcp_retransmit_skb` as tp_btf). The
//! object has its own ring buffer; a [`SockTracer`] drains it on its own
//! thread every 5 ms and keeps every event until [`SockTracer::stop`].
//!
//! Hooks are probed by trying: a tracepoint this kernel lacks is left out
//! and named in [`SockCapture::notes`]. Where `sock_recv_length` or
//! `sock_send_length` cannot be attached (they came in Linux 6.3: EKS's
//! AL2023 and GKE's COS run 6.1, Ubuntu 22.04 5.15), reads and writes come
//! from the `syscalls:` tracepoints of read(2), readv(2), recvfrom(2),
//! recvmsg(2), write(2), writev(2), sendto(2) and sendmsg(2) instead
//! ([`SockHooks`], docs/segments.md "The syscalls fallback"): the same
//! events, minus what those syscalls do not carry (io_uring, splice,
//! sendfile, recvmmsg/sendmmsg).

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
use hoptrace_common::{SockEvent, SockFdLayout, SockLayout};

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

/// The `syscalls:` fallback's entry program (every read and write syscall
/// below): it remembers the thread's socket and when the syscall began.
pub const SYSCALL_ENTRY_PROGRAM: &str = "hoptrace_sys_enter_sock_fd";
/// The fallback's exit program of the read syscalls.
pub const SYSCALL_RECV_PROGRAM: &str = "hoptrace_sys_exit_sock_recv";
/// The fallback's exit program of the write syscalls.
pub const SYSCALL_SEND_PROGRAM: &str = "hoptrace_sys_exit_sock_send";
/// Syscalls whose return is a socket read in the fallback.
pub const FALLBACK_READS: [&str; 4] = ["read", "readv", "recvfrom", "recvmsg"];
/// Syscalls whose return is a socket write in the fallback.
pub const FALLBACK_WRITES: [&str; 4] = ["write", "writev", "sendto", "sendmsg"];
/// The fallback's entry tracepoints ([`SYSCALL_ENTRY_PROGRAM`]).
pub const FALLBACK_ENTRIES: [&str; 8] = [
    "sys_enter_read",
    "sys_enter_readv",
    "sys_enter_recvfrom",
    "sys_enter_recvmsg",
    "sys_enter_write",
    "sys_enter_writev",
    "sys_enter_sendto",
    "sys_enter_sendmsg",
];
/// The fallback's read exits ([`SYSCALL_RECV_PROGRAM`]).
pub const FALLBACK_READ_EXITS: [&str; 4] = [
    "sys_exit_read",
    "sys_exit_readv",
    "sys_exit_recvfrom",
    "sys_exit_recvmsg",
];
/// The fallback's write exits ([`SYSCALL_SEND_PROGRAM`]).
pub const FALLBACK_WRITE_EXITS: [&str; 4] = [
    "sys_exit_write",
    "sys_exit_writev",
    "sys_exit_sendto",
    "sys_exit_sendmsg",
];

/// Which hooks give the socket reads and writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SockHooks {
    /// tp_btf `sock:sock_recv_length`/`sock_send_length` where they attach
    /// (Linux >= 6.3), else the `syscalls:` fallback.
    #[default]
    Auto,
    /// The `syscalls:` fallback even where the sock tracepoints exist: for
    /// testing it, and for kernels whose sock tracepoints misbehave.
    Syscalls,
}

impl SockHooks {
    /// Every value, in `--help` order.
    pub const ALL: [SockHooks; 2] = [SockHooks::Auto, SockHooks::Syscalls];
}

impl std::fmt::Display for SockHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SockHooks::Auto => "auto",
            SockHooks::Syscalls => "syscalls",
        })
    }
}

impl std::str::FromStr for SockHooks {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|h| h.to_string() == s)
            .ok_or_else(|| format!("unknown socket hooks {s:?} (auto or syscalls)"))
    }
}

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

/// The offsets the `syscalls:` fallback needs to go from a file descriptor
/// of the current task to its `struct sock`, from BTF.
///
/// # Errors
///
/// [`crate::kernel::btf::BtfError`] for the first member not found.
pub fn sock_fd_layout(btf: &Btf) -> Result<SockFdLayout, crate::kernel::btf::BtfError> {
    Ok(SockFdLayout {
        task_files: btf.member_offset("task_struct", &["files"])?,
        files_fdt: btf.member_offset("files_struct", &["fdt"])?,
        fdt_max_fds: btf.member_offset("fdtable", &["max_fds"])?,
        fdt_fd: btf.member_offset("fdtable", &["fd"])?,
        file_f_inode: btf.member_offset("file", &["f_inode"])?,
        inode_i_mode: btf.member_offset("inode", &["i_mode"])?,
        file_private_data: btf.member_offset("file", &["private_data"])?,
        socket_sk: btf.member_offset("socket", &["sk"])?,
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
    /// Reads and writes came from the `syscalls:` fallback.
    pub syscalls_fallback: bool,
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
    syscalls_fallback: bool,
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
    pub fn start(netns: &[u32], hooks: SockHooks) -> Result<Self, SockError> {
        Self::start_bounded(netns, usize::MAX, SOCK_RING_BYTES, hooks)
    }

    /// [`SockTracer::start`] keeping at most `max_events` events (a node's
    /// every socket, traced for a while, can read and write millions of
    /// times); the ones beyond are counted in [`SockCapture::lost`].
    /// `ring_bytes`: the socket events' ring buffer, a power of two of at
    /// least one page (the kernel's rule for `BPF_MAP_TYPE_RINGBUF`,
    /// kernel/bpf/ringbuf.c); its pages are mapped twice, so it counts
    /// twice its size in the resident set. `hooks`: where reads and writes
    /// come from ([`SockHooks`]).
    ///
    /// # Errors
    ///
    /// As [`SockTracer::start`].
    pub fn start_bounded(
        netns: &[u32],
        max_events: usize,
        ring_bytes: u32,
        hooks: SockHooks,
    ) -> Result<Self, SockError> {
        let object = objects::sock_object()?;
        let kernel_btf = Btf::vmlinux()?;
        let layout = sock_layout(&kernel_btf, !netns.is_empty())?;
        // Missing members only matter when the fallback is needed: it then
        // says why it cannot run.
        let fd_layout = sock_fd_layout(&kernel_btf);
        // Without aya's copy of the kernel's BTF (see `kernel::tracing`).
        let mut ebpf = without_kernel_btf(|| {
            EbpfLoader::new()
                .override_global("HOPTRACE_SOCK_LAYOUT", &layout, true)
                .override_global(
                    "HOPTRACE_SOCK_FD_LAYOUT",
                    fd_layout.as_ref().unwrap_or(&SockFdLayout::default()),
                    true,
                )
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
        let sock_rw = ["sock_recv_length", "sock_send_length"];
        // Why a read or write tracepoint did not attach (the first one).
        let mut rw_failure = None;
        for (name, tracepoint) in SOCK_PROGRAMS {
            let read_or_write = sock_rw.contains(&tracepoint);
            if hooks == SockHooks::Syscalls && read_or_write {
                continue;
            }
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
                Err(why) if read_or_write => {
                    rw_failure.get_or_insert(format!("sock:{tracepoint}: {why}"));
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
        let fallback_why = fallback_reason(hooks, rw_failure.as_deref());
        let syscalls_fallback = fallback_why.is_some();
        if let Some(why) = fallback_why {
            // Both directions from one kind of hook: a read seen by one and
            // its answer by the other would be timed at different points.
            while let Some(i) = attached.iter().position(|t| sock_rw.contains(t)) {
                attached.remove(i);
                drop(links.remove(i));
            }
            match fd_layout {
                Ok(_) => match attach_syscalls_fallback(&mut ebpf) {
                    Ok(mut names) => {
                        notes.push(fallback_note(&why));
                        attached.append(&mut names);
                    }
                    Err(fail) => notes.push(format!(
                        "request timeline: the syscalls: fallback could not be attached ({fail}); {why}"
                    )),
                },
                Err(e) => notes.push(format!(
                    "request timeline: the syscalls: fallback needs kernel BTF member offsets ({e}); {why}"
                )),
            }
        } else {
            attach_write_entries(&mut ebpf, &mut attached, &mut notes);
        }
        if !attached
            .iter()
            .any(|t| t.starts_with("sock_") || t.starts_with("sys_exit_"))
        {
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
            syscalls_fallback,
        })
    }

    /// Reads and writes come from the `syscalls:` fallback.
    pub fn syscalls_fallback(&self) -> bool {
        self.syscalls_fallback
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
            syscalls_fallback: self.syscalls_fallback,
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

/// Why reads and writes come from the `syscalls:` fallback, or `None` when
/// the tp_btf `sock:` read and write tracepoints are used: `hooks` asks
/// for it, or one of them did not attach (`rw_failure`: which and why).
fn fallback_reason(hooks: SockHooks, rw_failure: Option<&str>) -> Option<String> {
    match (hooks, rw_failure) {
        (SockHooks::Syscalls, _) => Some("as --sock-hooks syscalls asks".to_owned()),
        (SockHooks::Auto, Some(failure)) => {
            Some(format!("because tp_btf {failure} did not attach"))
        }
        (SockHooks::Auto, None) => None,
    }
}

/// The run's note when the fallback is in use: which hooks, why, and what
/// they cannot see (one line).
fn fallback_note(why: &str) -> String {
    format!(
        "request timeline: reads and writes from the syscalls: tracepoints of {} and {}, {why}; io_uring, splice, sendfile, recvmmsg and sendmmsg are not seen",
        FALLBACK_READS.join("/"),
        FALLBACK_WRITES.join("/"),
    )
}

/// Attaches the write-entry programs ([`WRITE_ENTRY_PROGRAMS`]) of the
/// tp_btf mode; a missing one is a note (such writes are timed at their end).
fn attach_write_entries(
    ebpf: &mut aya::Ebpf,
    attached: &mut Vec<&'static str>,
    notes: &mut Vec<String>,
) {
    for (name, tracepoint) in WRITE_ENTRY_PROGRAMS {
        match attach_syscall_tracepoints(ebpf, name, &[tracepoint]) {
            Ok(_) => attached.push(tracepoint),
            Err(why) => notes.push(format!(
                "request timeline: syscalls:{tracepoint} is not available ({why}); such writes are timed at their end"
            )),
        }
    }
}

/// Attaches the `syscalls:` fallback: every exit first, then the entries,
/// so that no entry is remembered whose exit is not hooked. All or
/// nothing: the tracepoints attached, or why one failed (the aya object
/// detaches what was attached when it is dropped).
fn attach_syscalls_fallback(ebpf: &mut aya::Ebpf) -> Result<Vec<&'static str>, String> {
    let mut attached =
        attach_syscall_tracepoints(ebpf, SYSCALL_RECV_PROGRAM, &FALLBACK_READ_EXITS)?;
    attached.extend(attach_syscall_tracepoints(
        ebpf,
        SYSCALL_SEND_PROGRAM,
        &FALLBACK_WRITE_EXITS,
    )?);
    attached.extend(attach_syscall_tracepoints(
        ebpf,
        SYSCALL_ENTRY_PROGRAM,
        &FALLBACK_ENTRIES,
    )?);
    Ok(attached)
}

/// Loads the classic tracepoint program `name` (once) and attaches it to
/// each `syscalls:<tracepoint>`; returns the tracepoints attached.
fn attach_syscall_tracepoints(
    ebpf: &mut aya::Ebpf,
    name: &str,
    tracepoints: &[&'static str],
) -> Result<Vec<&'static str>, String> {
    let prog: &mut aya::programs::TracePoint = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} missing"))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    if prog.fd().is_err() {
        prog.load().map_err(|e| format!("load {name}: {e}"))?;
    }
    for tracepoint in tracepoints {
        prog.attach("syscalls", tracepoint)
            .map_err(|e| format!("attach syscalls:{tracepoint}: {e}"))?;
    }
    Ok(tracepoints.to_vec())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sock_hooks_names_round_trip() {
        for hooks in SockHooks::ALL {
            assert_eq!(hooks.to_string().parse::<SockHooks>(), Ok(hooks));
        }
        let err = "kprobes".parse::<SockHooks>().unwrap_err();
        assert!(err.contains("auto or syscalls"), "{err}");
    }

    #[test]
    fn fallback_only_when_asked_or_a_read_write_tracepoint_failed() {
        assert_eq!(fallback_reason(SockHooks::Auto, None), None);
        let forced = fallback_reason(SockHooks::Syscalls, None).unwrap();
        assert!(forced.contains("--sock-hooks syscalls"), "{forced}");
        let failed = "sock:sock_recv_length: kernel BTF has no btf_trace_sock_recv_length";
        let why = fallback_reason(SockHooks::Auto, Some(failed)).unwrap();
        assert!(why.contains(failed), "{why}");
        let note = fallback_note(&why);
        assert!(
            note.contains("read/readv/recvfrom/recvmsg and write/writev/sendto/sendmsg")
                && note.contains(failed)
                && note.contains("io_uring")
                && !note.contains('\n'),
            "{note}"
        );
    }

    /// The fallback's layout from this machine's kernel BTF: `fdtable`
    /// has begun with `max_fds` then `fd` since Linux 2.6.14; the other
    /// members differ by kernel and must at least all be found, inside
    /// their structs.
    #[test]
    fn fd_layout_from_this_kernel() {
        let Ok(btf) = Btf::vmlinux() else {
            eprintln!("skipping: no readable {}", crate::kernel::btf::VMLINUX_BTF);
            return;
        };
        let layout = sock_fd_layout(&btf).expect("every member of the fd walk");
        assert_eq!((layout.fdt_max_fds, layout.fdt_fd), (0, 8));
        assert_ne!(layout.task_files, 0);
        assert_ne!(layout.file_f_inode, layout.file_private_data);
        assert!(layout.socket_sk > 0 && layout.socket_sk < 64, "{layout:?}");
    }

    /// The walk's structs missing (a BTF without them) are named, so the
    /// fallback's note says what it lacks.
    #[test]
    fn fd_layout_names_what_is_missing() {
        // A BTF blob with no types: header (magic, version 1, 24 bytes,
        // empty type section) and a string section of one NUL.
        let mut blob = Vec::new();
        blob.extend_from_slice(&0xeb9f_u16.to_le_bytes());
        blob.extend_from_slice(&[1, 0]);
        for word in [24u32, 0, 0, 0, 1] {
            blob.extend_from_slice(&word.to_le_bytes());
        }
        blob.push(0);
        let btf = Btf::parse(&blob).expect("parse");
        let err = sock_fd_layout(&btf).unwrap_err();
        assert!(err.to_string().contains("task_struct"), "{err}");
    }
}
