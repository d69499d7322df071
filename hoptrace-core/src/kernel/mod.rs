//! Everything that talks to the kernel's BPF side: BTF, raw bpf(2) calls,
//! the embedded objects, the loaders, the capability probe and cleanup.

pub mod btf;
pub mod capabilities;
pub mod cleanup;
pub mod loader;
pub mod netfilter;
pub mod objects;
pub mod owner;
pub mod sock;
pub mod sys;
pub mod tracing;
