//! Kernel-side parts shared by hoptrace's programs: maps, load-time globals,
//! reading `struct sk_buff` through BTF offsets, and event emission.
//!
//! The programs themselves live in `src/probes/`, one file per hook family.
#![no_std]

pub mod emit;
pub mod globals;
pub mod maps;
pub mod skb;
