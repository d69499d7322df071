//! hoptrace's node tracer, in the order a packet event travels:
//!
//! 1. [`kernel`]: BTF, the bpf syscalls aya lacks, the embedded kernel
//!    objects, the loader (tc, tracepoints), the netfilter loader, the
//!    capability probe and the cleanup of leftovers.
//! 2. [`node`]: device discovery and the role of every device on the route.
//! 3. [`session`]: one traced node: start, drain the ring buffer, put
//!    events back in time order, stop.
//! 4. [`correlate`]: follows each packet hop to hop (journeys).
//! 5. [`attribution`]: the segment taxonomy and the ledger of histograms.
//! 6. [`report`]: the typed documents (node report, lab document,
//!    diagnosis) and their tables.
//! 7. [`diagnose`]: findings from a report, the node's configuration and
//!    its counters.
//!
//! No command line, no lab, no HTTP: those live in the `hoptrace` binary and
//! the `hoptrace-lab` crate. `docs/architecture.md` follows one event
//! through these stages.
#![warn(missing_docs)]

pub mod attribution;
pub mod correlate;
pub mod diagnose;
pub mod kernel;
pub mod node;
pub mod report;
pub mod session;
