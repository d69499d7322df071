//! hoptrace userspace: loader, capability probes, correlation and reports.
pub mod compare;
pub mod ebpf_objects;
pub mod ingress;
pub mod loadgen;
pub mod servers;
