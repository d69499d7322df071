//! hoptrace userspace: loader, capability probes, correlation and reports.
pub mod btf;
pub mod capabilities;
pub mod cleanup;
pub mod compare;
pub mod correlate;
pub mod devices;
pub mod ebpf_objects;
pub mod ingress;
pub mod loader;
pub mod loadgen;
pub mod netfilter;
pub mod report;
pub mod servers;
pub mod session;
pub mod sys;
pub mod taxonomy;
