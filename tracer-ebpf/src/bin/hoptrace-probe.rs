//! Capability probe programs for `hoptrace check`.
#![no_std]
#![no_main]

#[path = "../probes/capability.rs"]
mod capability;

tracer_ebpf::kernel_object!();
