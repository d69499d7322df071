//! hoptrace userspace: loader, capability probes, correlation and reports.
pub mod ebpf_objects;
pub mod kubeproxy;
pub mod netns;
pub mod topology;
