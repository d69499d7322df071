//! hoptrace userspace: loader, capability probes, correlation and reports.
pub mod ebpf_objects;
pub mod taxonomy;
pub mod correlate;
pub mod report;
