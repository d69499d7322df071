//! hoptrace userspace: loader, capability probes, correlation and reports.
pub mod btf;
pub mod capabilities;
pub mod cleanup;
pub mod devices;
pub mod ebpf_objects;
pub mod loader;
pub mod netfilter;
pub mod sys;
