//! Types shared by the kernel programs (`tracer-ebpf`) and userspace (`tracer`).
//!
//! Everything here is `no_std`, `#[repr(C)]`, `Copy`, with explicit padding and
//! compile-time size assertions, so the byte layout seen by the kernel and by
//! userspace cannot drift apart silently.
#![no_std]

pub mod config;
pub mod event;
pub mod hook;
pub mod packet;

pub use config::{KernelLayout, TraceConfig};
pub use event::{COUNTER_SLOTS, Counter, HopEvent};
pub use hook::{CtState, HookKind, NF_PRIORITY_SLOTS, NfHook};
pub use packet::{
    Encap, HEADER_WINDOW, HeaderWindow, L3Headers, PacketBytes, PacketMeta, ParseStatus,
};
