//! Test fixtures for the root tests (verdict.rs): tc programs that drop or
//! redirect, to check that hoptrace never changes another program's verdict.
#![no_std]
#![no_main]

#[path = "../probes/fixtures.rs"]
mod fixtures;

hoptrace_ebpf::kernel_object!();
