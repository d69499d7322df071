//! hoptrace userspace: loader, capability probes, correlation and reports.
pub mod devices;
pub mod ebpf_objects;
pub mod loader;
