//! The socket object (request timeline), loaded by hoptrace-core/src/kernel/sock.rs.
#![no_std]
#![no_main]

#[path = "../probes/sock.rs"]
mod sock;

hoptrace_ebpf::kernel_object!();
