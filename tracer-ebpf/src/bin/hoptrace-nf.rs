//! The netfilter kernel object, loaded by tracer/src/netfilter.rs.
#![no_std]
#![no_main]

#[path = "../probes/netfilter.rs"]
mod netfilter;

tracer_ebpf::kernel_object!();
