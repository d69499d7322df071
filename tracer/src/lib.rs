//! hoptrace userspace: loader, capability probes, correlation, reports and the lab.
pub mod bench;
pub mod btf;
pub mod capabilities;
pub mod cleanup;
pub mod compare;
pub mod correlate;
pub mod devices;
pub mod ebpf_objects;
pub mod ingress;
pub mod kubeproxy;
pub mod lab;
pub mod loader;
pub mod loadgen;
pub mod netfilter;
pub mod netns;
pub mod report;
pub mod servers;
pub mod session;
pub mod sys;
pub mod taxonomy;
pub mod topology;
pub mod trace;

/// Helpers shared by the unit tests of several modules.
#[cfg(test)]
pub(crate) mod test_support {
    /// A two-worker tokio runtime for tests of the async servers and clients.
    pub fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    }
}
