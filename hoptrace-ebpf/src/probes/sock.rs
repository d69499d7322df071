//! Socket reads, writes and TCP state changes (tp_btf on `sock:*`): the
//! request timeline's hooks. Each program reads the `struct sock` the
//! tracepoint passes (typed by BTF) at offsets userspace read from BTF,
//! takes the thread from the helper, and writes one [`SockEvent`] into
//! its own ring buffer without waking the reader. They observe only: a
//! tracepoint has no verdict to change.
//!
//! Kernels without `sock:sock_recv_length`/`sock_send_length` (before
//! Linux 6.3) get the same events from the `syscalls:` tracepoints of
//! read(2), readv(2), recvfrom(2), recvmsg(2), write(2), writev(2),
//! sendto(2) and sendmsg(2) instead (the fallback, attached by the loader
//! in place of the two tp_btf programs): at the syscall's entry the file
//! descriptor is walked to its `struct sock` (`task->files->fdt->fd[fd]`,
//! a socket's file, `socket->sk`) with probe reads, and a traced IPv4 TCP
//! socket is remembered per thread; at its exit the event is written with
//! the syscall's return value. Other kinds of file are skipped after the
//! walk, before any map write.

use aya_ebpf::{EbpfContext as _, helpers::bpf_get_current_task, maps::LruHashMap};
use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
};
use hoptrace_common::{S_IFMT, S_IFSOCK, SockEvent, SockFdLayout, SockKind, SockLayout};
use hoptrace_ebpf::skb::{BtfPtr, KernelPtr, ProbePtr};

/// Offsets in `struct sock` and `struct net`, written by the loader.
#[unsafe(no_mangle)]
pub static HOPTRACE_SOCK_LAYOUT: SockLayout = SockLayout {
    sk_daddr: 0,
    sk_rcv_saddr: 0,
    sk_dport: 0,
    sk_num: 0,
    sk_family: 0,
    sk_net: 0,
    net_ns_inum: 0,
    sk_protocol: 0,
    filter_netns: 0,
    valid: 0,
};

/// Offsets from a task to the `struct sock` of one of its file descriptors,
/// written by the loader (read only by the `syscalls:` fallback).
#[unsafe(no_mangle)]
pub static HOPTRACE_SOCK_FD_LAYOUT: SockFdLayout = SockFdLayout {
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_f_inode: 0,
    inode_i_mode: 0,
    file_private_data: 0,
    socket_sk: 0,
};

/// Socket events; userspace drains it on a timer.
#[map]
pub static HOPTRACE_SOCK_EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Network namespaces whose sockets are traced when `filter_netns` is set.
#[map]
pub static HOPTRACE_SOCK_NETNS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// Per CPU: the thread that last entered a write syscall (write, writev,
/// sendto, sendmsg) there and when, `[tid, ns]`. The send tracepoint of the
/// same syscall runs on the same CPU unless the thread migrated meanwhile
/// (then the thread ids differ and the write is timed at its end). A
/// per-CPU slot costs far less than a hash update on every write of the
/// machine.
#[map]
pub static HOPTRACE_SOCK_WRITE_ENTRY: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// The `syscalls:` fallback: per thread (`pid_tgid`), the traced socket of
/// the read or write syscall it is in, `[sk, entry ns, syscall nr << 32 |
/// netns inode]`. Keyed by thread, not per CPU: a blocking read sleeps and
/// another thread runs on its CPU meanwhile. Written only at the entry of
/// a syscall on a traced IPv4 TCP socket and removed at its exit; LRU so a
/// thread that never returns (killed) cannot fill it.
#[map]
pub static HOPTRACE_SOCK_SYSCALL: LruHashMap<u64, [u64; 3]> =
    LruHashMap::with_max_entries(16384, 0);

/// Per-CPU counters: 0 emitted, 1 ring full, 2 filtered (namespace), 3
/// skipped (not IPv4 TCP, or an error/empty read or write).
#[map]
pub static HOPTRACE_SOCK_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(4, 0);

macro_rules! layout {
    ($field:ident) => {
        // SAFETY: a field of a static, valid and initialised; the loader
        // writes it before any program runs, programs only read it.
        unsafe { core::ptr::read_volatile(&raw const HOPTRACE_SOCK_LAYOUT.$field) }
    };
}

#[inline(always)]
fn count(slot: u32) {
    if let Some(p) = HOPTRACE_SOCK_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: this CPU's u64 of a per-CPU array, valid for the run and
        // written by no other CPU.
        unsafe { *p += 1 };
    }
}

/// The process read from a socket (`ret` bytes, or -errno).
#[btf_tracepoint(function = "sock_recv_length")]
pub fn hoptrace_sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let ret: u64 = ctx.arg(1);
    observe(sk as u64, SockKind::Recv, ret as i32, 0, 0);
    0
}

#[inline(always)]
fn write_entry() -> u32 {
    // The low 32 bits are the thread id.
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(slot) = HOPTRACE_SOCK_WRITE_ENTRY.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU array, valid for the run and
        // written by no other CPU; a helper without arguments for the time.
        unsafe { *slot = [u64::from(tid), bpf_ktime_get_ns()] };
    }
    0
}

/// A thread enters write(2).
#[tracepoint(category = "syscalls", name = "sys_enter_write")]
pub fn hoptrace_sys_enter_write(_ctx: TracePointContext) -> u32 {
    write_entry()
}

/// A thread enters writev(2).
#[tracepoint(category = "syscalls", name = "sys_enter_writev")]
pub fn hoptrace_sys_enter_writev(_ctx: TracePointContext) -> u32 {
    write_entry()
}

/// A thread enters sendto(2) (and send(2)).
#[tracepoint(category = "syscalls", name = "sys_enter_sendto")]
pub fn hoptrace_sys_enter_sendto(_ctx: TracePointContext) -> u32 {
    write_entry()
}

/// A thread enters sendmsg(2).
#[tracepoint(category = "syscalls", name = "sys_enter_sendmsg")]
pub fn hoptrace_sys_enter_sendmsg(_ctx: TracePointContext) -> u32 {
    write_entry()
}

/// The process wrote to a socket (`ret` bytes, or -errno).
#[btf_tracepoint(function = "sock_send_length")]
pub fn hoptrace_sock_send_length(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let ret: u64 = ctx.arg(1);
    observe(sk as u64, SockKind::Send, ret as i32, 0, 0);
    0
}

/// A TCP socket changed state (connect, accept, close).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn hoptrace_inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let old: u64 = ctx.arg(1);
    let new: u64 = ctx.arg(2);
    observe(sk as u64, SockKind::State, 0, old as u8, new as u8);
    0
}

/// TCP retransmitted a segment of a socket (`tcp:tcp_retransmit_skb`,
/// args `sk, skb[, err]`): only the sk is read, so the program loads on
/// kernels with and without the later `err` argument. Runs in softirq or
/// timer context: the thread and comm are not the socket's owner's.
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn hoptrace_tcp_retransmit_skb(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    observe(sk as u64, SockKind::Retransmit, 0, 0, 0);
    0
}

/// The tp_btf programs' event: `addr` is the `struct sock *` the
/// tracepoint passed, typed by BTF. A send takes its start from the
/// per-CPU slot of the write's syscall entry.
#[inline(always)]
fn observe(addr: u64, kind: SockKind, bytes: i32, old_state: u8, new_state: u8) {
    if (kind as u8 == SockKind::Recv as u8 || kind as u8 == SockKind::Send as u8) && bytes <= 0 {
        count(3);
        return;
    }
    let sk = BtfPtr(addr);
    if sk.is_null() {
        return;
    }
    let Some(netns) = traced_netns(sk) else {
        return;
    };
    emit(sk, netns, kind, bytes, (old_state, new_state), |tid| {
        if kind as u8 != SockKind::Send as u8 {
            return 0;
        }
        match HOPTRACE_SOCK_WRITE_ENTRY.get_ptr(0) {
            Some(slot) => {
                // SAFETY: this CPU's slot, valid for the run; only this CPU
                // writes it and this program is not preempted by it.
                let [entry_tid, ts] = unsafe { *slot };
                if entry_tid == u64::from(tid) { ts } else { 0 }
            }
            None => 0,
        }
    });
}

/// The network namespace inode of `sk` when it is an IPv4 TCP socket this
/// run traces; `None` (counted) otherwise.
#[inline(always)]
fn traced_netns<P: KernelPtr>(sk: P) -> Option<u32> {
    let family: u16 = sk.load(layout!(sk_family));
    let protocol: u16 = sk.load(layout!(sk_protocol));
    if family != 2 || protocol != 6 {
        count(3);
        return None;
    }
    let net = sk.ptr(layout!(sk_net));
    let netns: u32 = if net.is_null() {
        0
    } else {
        net.load(layout!(net_ns_inum))
    };
    // SAFETY: only the key's presence is used, never the value.
    if layout!(filter_netns) != 0 && unsafe { HOPTRACE_SOCK_NETNS.get(netns) }.is_none() {
        count(2);
        return None;
    }
    Some(netns)
}

/// Writes one [`SockEvent`] for the IPv4 TCP socket `sk` of namespace
/// `netns`; `entry_ns(tid)` gives a send's syscall entry (0: unknown).
#[inline(always)]
fn emit<P: KernelPtr>(
    sk: P,
    netns: u32,
    kind: SockKind,
    bytes: i32,
    (old_state, new_state): (u8, u8),
    entry_ns: impl FnOnce(u32) -> u64,
) {
    let Some(mut entry) = HOPTRACE_SOCK_EVENTS.reserve::<SockEvent>(0) else {
        count(1);
        return;
    };
    let words = entry.as_mut_ptr() as *mut u64;
    let mut i = 0;
    while i < core::mem::size_of::<SockEvent>() / 8 {
        // SAFETY: in bounds (80 bytes, 10 words); ring records are 8-aligned.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
        i += 1;
    }
    // SAFETY: every byte was zeroed above: a valid `SockEvent`.
    let ev = unsafe { entry.assume_init_mut() };
    // SAFETY: a helper without arguments that touches no memory.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.pid_tgid = bpf_get_current_pid_tgid();
    ev.sk_addr = sk.addr();
    ev.netns_ino = netns;
    ev.bytes = bytes;
    ev.saddr = sk.load(layout!(sk_rcv_saddr));
    ev.daddr = sk.load(layout!(sk_daddr));
    ev.sport = sk.load(layout!(sk_num));
    ev.dport = u16::from_be(sk.load(layout!(sk_dport)));
    ev.family = 2;
    ev.kind = kind as u8;
    ev.old_state = old_state;
    ev.new_state = new_state;
    if let Ok(comm) = bpf_get_current_comm() {
        ev.comm = comm;
    }
    ev.entry_ns = entry_ns(ev.pid_tgid as u32);
    count(0);
    entry.submit(BPF_RB_NO_WAKEUP as u64);
}

macro_rules! fd_layout {
    ($field:ident) => {
        // SAFETY: a field of a static, valid and initialised; the loader
        // writes it before any program runs, programs only read it.
        unsafe { core::ptr::read_volatile(&raw const HOPTRACE_SOCK_FD_LAYOUT.$field) }
    };
}

/// The `struct sock` behind file descriptor `fd` of the current task, when
/// that descriptor is an open socket; `None` for any other file, a closed
/// or out-of-range descriptor, or an unreadable pointer on the way.
#[inline(always)]
fn fd_sock(fd: u64) -> Option<ProbePtr> {
    // SAFETY: a helper without arguments; the task pointer is only read
    // through `bpf_probe_read_kernel` (ProbePtr).
    let task = ProbePtr(unsafe { bpf_get_current_task() });
    let fdt = task.ptr(fd_layout!(task_files)).ptr(fd_layout!(files_fdt));
    if fdt.is_null() {
        return None;
    }
    let max_fds: u32 = fdt.load(fd_layout!(fdt_max_fds));
    if fd >= u64::from(max_fds) {
        return None;
    }
    let table = fdt.ptr(fd_layout!(fdt_fd));
    if table.is_null() {
        return None;
    }
    let file = ProbePtr(table.addr() + fd * 8).ptr(0);
    if file.is_null() {
        return None;
    }
    let inode = file.ptr(fd_layout!(file_f_inode));
    if inode.is_null() {
        return None;
    }
    let mode: u16 = inode.load(fd_layout!(inode_i_mode));
    if mode & S_IFMT != S_IFSOCK {
        return None;
    }
    let sk = file
        .ptr(fd_layout!(file_private_data))
        .ptr(fd_layout!(socket_sk));
    (!sk.is_null()).then_some(sk)
}

/// `__syscall_nr` (offset 8) and the first argument (offset 16) of a
/// `syscalls:sys_enter_*` record, or the return value (offset 16) of a
/// `sys_exit_*` one: see /sys/kernel/tracing/events/syscalls/*/format.
#[inline(always)]
fn syscall_record(ctx: &TracePointContext) -> (u32, u64) {
    let base = ctx.as_ptr() as *const u8;
    // SAFETY: a tracepoint program may read its record directly; both
    // fields lie inside every `syscalls:` record (at least 24 bytes) and
    // are aligned to their size; the verifier checks the offsets.
    unsafe {
        (
            core::ptr::read_volatile(base.add(8) as *const u32),
            core::ptr::read_volatile(base.add(16) as *const u64),
        )
    }
}

/// The fallback's syscall entry (read, readv, recvfrom, recvmsg, write,
/// writev, sendto, sendmsg: the file descriptor is the first argument of
/// each): remembers the thread's traced socket and when it entered.
#[tracepoint(category = "syscalls", name = "sys_enter_read")]
pub fn hoptrace_sys_enter_sock_fd(ctx: TracePointContext) -> u32 {
    let (nr, fd) = syscall_record(&ctx);
    // `unsigned int fd` of read(2) and write(2), `int fd` of the others,
    // stored in 8 bytes: a negative descriptor is out of range either way.
    let Some(sk) = fd_sock(fd & 0xffff_ffff) else {
        return 0;
    };
    let Some(netns) = traced_netns(sk) else {
        return 0;
    };
    // SAFETY: a helper without arguments that touches no memory.
    let now = unsafe { bpf_ktime_get_ns() };
    let value = [sk.addr(), now, u64::from(nr) << 32 | u64::from(netns)];
    let _ = HOPTRACE_SOCK_SYSCALL.insert(bpf_get_current_pid_tgid(), value, 0);
    0
}

/// The fallback's exit of a read syscall: a [`SockKind::Recv`] event.
#[tracepoint(category = "syscalls", name = "sys_exit_read")]
pub fn hoptrace_sys_exit_sock_recv(ctx: TracePointContext) -> u32 {
    syscall_exit(&ctx, SockKind::Recv)
}

/// The fallback's exit of a write syscall: a [`SockKind::Send`] event,
/// with its entry time.
#[tracepoint(category = "syscalls", name = "sys_exit_write")]
pub fn hoptrace_sys_exit_sock_send(ctx: TracePointContext) -> u32 {
    syscall_exit(&ctx, SockKind::Send)
}

#[inline(always)]
fn syscall_exit(ctx: &TracePointContext, kind: SockKind) -> u32 {
    let key = bpf_get_current_pid_tgid();
    let Some(slot) = HOPTRACE_SOCK_SYSCALL.get_ptr(key) else {
        return 0;
    };
    // SAFETY: a value of this map, valid until removed below; only this
    // thread writes its key and it is here, not in another syscall.
    let [sk, entry, nr_netns] = unsafe { *slot };
    let _ = HOPTRACE_SOCK_SYSCALL.remove(key);
    let (nr, ret) = syscall_record(ctx);
    // The entry of another syscall (its exit missed while hooks attached).
    if (nr_netns >> 32) as u32 != nr {
        return 0;
    }
    let bytes = ret as i64;
    if bytes <= 0 || bytes > i64::from(i32::MAX) {
        count(3);
        return 0;
    }
    let entry_ns = if kind as u8 == SockKind::Send as u8 {
        entry
    } else {
        0
    };
    emit(
        ProbePtr(sk),
        nr_netns as u32,
        kind,
        bytes as i32,
        (0, 0),
        |_| entry_ns,
    );
    0
}
