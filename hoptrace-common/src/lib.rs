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
pub use event::{COUNTER_SLOTS, Counter, HOP_HEADER_BYTES, HopEvent, HopHeader};
pub use hook::{
    CT_STATUS_KNOWN, CT_UNCONFIRMED, CtState, HookKind, IPS_CONFIRMED, NF_PRIORITY_SLOTS, NfHook,
};
pub use packet::{
    Encap, HEADER_WINDOW, HeaderWindow, L3Headers, PacketBytes, PacketMeta, ParseStatus,
};
pub use sock::{SockEvent, SockKind, SockLayout};
