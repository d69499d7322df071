//! The node agent: traces this node continuously and serves Prometheus
//! metrics, with Kubernetes names on journeys.
//!
//! - [`metrics`]: the journey observer and its histograms, and the scrape
//!   encoder;
//! - [`identity`]: pod and Service names (kube-rs reflectors, or network
//!   namespace names without the API);
//! - [`histograms`]: the `/histograms` document (log-linear histograms
//!   and their quantiles at the kernel's resolution);
//! - [`server`]: `/metrics`, `/histograms`, `/healthz`, `/readyz`.

pub mod histograms;
pub mod identity;
pub mod metrics;
pub mod server;
