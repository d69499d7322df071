//! Socket reads, writes and TCP state changes (tp_btf on `sock:*`): the
//! request timeline's hooks. Each program reads the `struct sock` the
//! tracepoint passes (typed by BTF) at offsets userspace read from BTF,
//! takes the thread from the helper, and writes one [`SockEvent`] into
//! its own ring buffer without waking the reader. They observe only: a
//! tracepoint has no verdict to change.

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
};
use hoptrace_common::{SockEvent, SockKind, SockLayout};
use hoptrace_ebpf::skb::BtfPtr;

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
    let family: u16 = sk.load(layout!(sk_family));
    let protocol: u16 = sk.load(layout!(sk_protocol));
    if family != 2 || protocol != 6 {
        count(3);
        return;
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
        return;
    }
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
    ev.sk_addr = addr;
    ev.netns_ino = netns;
    ev.bytes = bytes;
    ev.saddr = sk.load(layout!(sk_rcv_saddr));
    ev.daddr = sk.load(layout!(sk_daddr));
    ev.sport = sk.load(layout!(sk_num));
    ev.dport = u16::from_be(sk.load(layout!(sk_dport)));
    ev.family = family;
    ev.kind = kind as u8;
    ev.old_state = old_state;
    ev.new_state = new_state;
    if let Ok(comm) = bpf_get_current_comm() {
        ev.comm = comm;
    }
    if kind as u8 == SockKind::Send as u8 {
        if let Some(slot) = HOPTRACE_SOCK_WRITE_ENTRY.get_ptr(0) {
            // SAFETY: this CPU's slot, valid for the run; only this CPU
            // writes it and this program is not preempted by it.
            let [tid, ts] = unsafe { *slot };
            if tid == u64::from(ev.pid_tgid as u32) {
                ev.entry_ns = ts;
            }
        }
    }
    count(0);
    entry.submit(BPF_RB_NO_WAKEUP as u64);
}
