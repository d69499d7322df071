//! Capability probe programs for `hoptrace check`.
#![no_std]
#![no_main]

#[path = "../probes/capability.rs"]
mod capability;

hoptrace_ebpf::kernel_object!();
