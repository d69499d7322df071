//! The node agent: traces this node continuously and serves Prometheus
//! metrics, with Kubernetes names on journeys.
//!
//! - [`metrics`]: the journey observer and its histograms, and the scrape
//!   encoder;
//! - [`identity`]: pod and Service names (kube-rs reflectors, or network
//!   namespace names without the API);
//! - [`server`]: `/metrics`, `/healthz`, `/readyz`.

pub mod identity;
pub mod metrics;
pub mod server;
