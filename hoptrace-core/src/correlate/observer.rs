//! A hook for whoever wants every finished journey as it is recorded (the
//! node agent's Prometheus histograms), without waiting for the ledger at
//! the end of a session.

use hoptrace_common::{Encap, L3Headers};

use crate::attribution::{
    ledger::{ConnState, Direction},
    taxonomy::{Category, SegmentName},
};

/// One finished journey with at least one segment, as the ledger records
/// it. Borrowed for the duration of one [`JourneyObserver::journey`] call.
#[derive(Debug)]
pub struct JourneySummary<'a> {
    /// Which way the journey crossed the node.
    pub direction: Direction,
    /// `new` when its packet was a connection's first (conntrack created
    /// the entry), else `established`.
    pub conn_state: ConnState,
    /// First to last hop on this node, ns.
    pub end_to_end_ns: u64,
    /// Time of the first hop, ns (bpf ktime, CLOCK_MONOTONIC): places the
    /// journey on the request timeline.
    pub start_ns: u64,
    /// `(segment id, duration in ns)` in order of first occurrence; a
    /// segment that repeats within the journey appears once, its
    /// occurrences summed (as in the ledger).
    pub segments: &'a [(u32, u64)],
    /// Names and categories of segment ids (index = id).
    pub segment_names: &'a [SegmentName],
    /// Time per category in ns, summed over the journey's segments; only
    /// categories the journey crossed.
    pub categories: &'a [(Category, u64)],
    /// Headers of the journey's first parsed event (the innermost layer):
    /// the addresses before DNAT for a request from a pod.
    pub first_flow: &'a L3Headers,
    /// The tunnel the packet was carried in on this node, from any hop
    /// that saw an outer header (a packet dropped before decapsulation
    /// still has it); [`Encap::None`] for a packet never encapsulated.
    pub encap: Encap,
    /// Network namespace inode of the pod the journey left (egress) or
    /// reached (ingress), when one of its hops was in a pod.
    pub pod_netns: Option<u32>,
    /// For a journey that ended in a drop: the kernel's drop reason name
    /// (`enum skb_drop_reason`, include/net/dropreason-core.h) and the hop
    /// before the drop.
    pub drop: Option<(&'a str, &'a str)>,
}

impl JourneySummary<'_> {
    /// Each segment's name, category and duration in ns, in hop order.
    pub fn named_segments(&self) -> impl Iterator<Item = (&SegmentName, u64)> {
        self.segments
            .iter()
            .map(|&(id, ns)| (&self.segment_names[id as usize], ns))
    }
}

/// Receives every journey the correlator records, on the drain thread:
/// keep the work per call small (a few map updates), never block.
pub trait JourneyObserver: Send + Sync {
    /// Called once per finished journey that has at least one segment.
    fn journey(&self, journey: &JourneySummary<'_>);

    /// Called for every event whose headers did not parse (the report's
    /// `unparsed_packets`).
    fn unparsed_packet(&self) {}
}

impl std::fmt::Debug for dyn JourneyObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JourneyObserver")
    }
}

/// Several observers behind one: each journey goes to every one of them,
/// in order (`hoptrace diagnose`'s drop examples and its request
/// timeline).
#[derive(Default)]
pub struct Observers(pub Vec<std::sync::Arc<dyn JourneyObserver>>);

impl JourneyObserver for Observers {
    fn journey(&self, journey: &JourneySummary<'_>) {
        for o in &self.0 {
            o.journey(journey);
        }
    }

    fn unparsed_packet(&self) {
        for o in &self.0 {
            o.unparsed_packet();
        }
    }
}
