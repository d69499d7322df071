//! Types shared by the kernel programs (`hoptrace-ebpf`) and userspace (`hoptrace-core`).
//!
//! Everything here is `no_std`, `#[repr(C)]`, `Copy`, with explicit padding and
//! compile-time size assertions, so the byte layout seen by the kernel and by
//! userspace cannot drift apart silently.
#![no_std]
#![warn(missing_docs)]

pub mod agg;
pub mod config;
pub mod event;
pub mod hook;
pub mod packet;
pub mod sock;

pub use config::{Floor, KernelLayout, TraceConfig, TraceMode};

/// A device's key across namespaces: the network namespace inode in the high
/// 32 bits, the ifindex (unique only inside that namespace) in the low 32.
/// Keys the `HOPTRACE_TC_COVERED` map and userspace's device tables.
#[inline(always)]
pub const fn device_key(netns_ino: u32, ifindex: u32) -> u64 {
    ((netns_ino as u64) << 32) | ifindex as u64
}

/// Longest gap between two hops of one link-local multicast packet
/// ([`L3Headers::link_local_multicast`]), ns, unless the earlier hop may
/// be followed by a wait in a qdisc: a node delivers and floods such a
/// packet in one softirq (microseconds apart; 5 ms leaves room for a
/// softirq deferred to ksoftirqd on a busy node). A later hop in the same
/// buffer is another packet: a sender repeats an MLD or IGMP report
/// identically (same fingerprint) 2-3 times within a second, and the lab
/// saw repeats 8-32 ms apart take a recycled buffer. The correlator (full
/// mode) and the kernel's per-packet state (aggregate mode) both start a
/// new journey there.
pub const LINK_LOCAL_MULTICAST_GAP_NS: u64 = 5_000_000;

pub use event::{COUNTER_SLOTS, Counter, HOP_HEADER_BYTES, HopEvent, HopHeader};
pub use hook::{
    CT_STATUS_KNOWN, CT_UNCONFIRMED, CtState, HookKind, IPS_CONFIRMED, NF_PRIORITY_SLOTS, NfHook,
};
pub use packet::{
    Encap, HEADER_WINDOW, HeaderWindow, L3Headers, PacketBytes, PacketMeta, ParseStatus,
};
pub use sock::{S_IFMT, S_IFSOCK, SockEvent, SockFdLayout, SockKind, SockLayout};
