//! The netfilter kernel object, loaded by hoptrace-core/src/kernel/netfilter.rs.
#![no_std]
#![no_main]

#[path = "../probes/netfilter.rs"]
mod netfilter;

hoptrace_ebpf::kernel_object!();
