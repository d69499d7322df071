//! hoptrace's built-in lab: builds a flannel-, Calico- or Cilium-style
//! datapath of two or three nodes in network namespaces, programs services
//! the way kube-proxy does, runs backends and an ingress proxy, drives
//! fixed-rate load through it and traces every node with `hoptrace-core`.
//!
//! - [`topology`]: nodes, pods, bridges, tunnels and routes per datapath.
//! - [`kubeproxy`]: iptables and nftables rules of kube-proxy's modes.
//! - [`netns`]: namespaces, commands and threads inside them.
//! - [`servers`], [`ingress`]: the HTTP/UDP backends and the ingress proxies.
//! - [`loadgen`]: the fixed-rate load generator (no coordinated omission).
//! - [`loss`]: `--drop-probability`, real packet loss at the backends.
//! - [`run`]: one lab run, from build to teardown, and its document.
//! - [`accuracy`]: known causes injected into the lab against a run without
//!   them (`cargo xtask accuracy`).

pub mod accuracy;
pub mod cpulimit;
pub mod flood;
pub mod ingress;
pub mod kubeproxy;
pub mod loadgen;
pub mod loss;
pub mod netns;
pub mod run;
pub mod servers;
pub mod topology;

#[cfg(test)]
pub(crate) mod test_support;
