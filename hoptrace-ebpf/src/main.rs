//! The main kernel object: tc and tracepoint programs, loaded with aya.
#![no_std]
#![no_main]

#[path = "probes/tc.rs"]
mod tc;
#[path = "probes/tracepoints.rs"]
mod tracepoints;

hoptrace_ebpf::kernel_object!();
