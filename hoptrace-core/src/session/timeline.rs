//! The request timeline of one node (`hoptrace trace`, `hoptrace
//! diagnose`): the socket hooks ([`SockTracer`]) beside a session, the
//! session's journeys of TCP payload and handshakes ([`LegRecorder`]), and
//! their join into the report's `requests` section when the session ends.
//!
//! One node sees its own processes and its own hops: a request whose
//! client is on another node is joined from the first event this node
//! sees, and legs crossing other nodes keep their time in `stack`. There
//! is no load generator: the client's figures are the joined requests'
//! own (first event to the client's last read).

use std::sync::Arc;

use crate::{
    correlate::{
        JourneyObserver,
        requests::{self, JoinOptions, LegRecorder},
    },
    kernel::sock::{SockHooks, SockTracer},
    report::{LabRequests, timeline},
};

/// Socket events kept at most (80 bytes each: 160 MB); beyond, events are
/// counted as lost and some requests are not joined.
pub const MAX_SOCK_EVENTS: usize = 2_000_000;

/// The socket events' ring buffer of a node's timeline, bytes: 1 MiB holds
/// about 11,900 events (88 bytes with the ring's header), 2.4 million a
/// second at the 5 ms drain interval, and counts 2 MiB in the resident set
/// (mapped twice) where the lab's 4 MiB would count 8.
pub const NODE_SOCK_RING_BYTES: u32 = 1024 * 1024;

/// Longest a new connection may stay idle after its handshake for its
/// connect to count in its first request, ns (`JoinOptions::connect_idle_ns`):
/// a client that connects to send writes within microseconds; one that
/// opened its connections ahead (a pool, a load generator) waits longer.
pub const CONNECT_IDLE_NS: u64 = 1_000_000;

/// The socket hooks and the journey recorder of one node's timeline.
pub struct NodeTimeline {
    tracer: Option<SockTracer>,
    legs: Arc<LegRecorder>,
    notes: Vec<String>,
}

impl NodeTimeline {
    /// Attaches the socket hooks for every network namespace of this
    /// kernel (a node's pods live in namespaces of their own); `hooks`:
    /// where reads and writes come from (`--sock-hooks`). Never fails:
    /// without the hooks, [`NodeTimeline::finish`] returns `None` and
    /// [`NodeTimeline::notes`] says why.
    pub fn start(hooks: SockHooks) -> Self {
        let (tracer, notes) =
            match SockTracer::start_bounded(&[], MAX_SOCK_EVENTS, NODE_SOCK_RING_BYTES, hooks) {
                Ok(tracer) => (Some(tracer), Vec::new()),
                Err(e) => (None, vec![format!("request timeline unavailable: {e}")]),
            };
        Self {
            tracer,
            legs: Arc::new(LegRecorder::default()),
            notes,
        }
    }

    /// Why the timeline is missing, if it is.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The observer to give the session (`SessionOptions::observer`).
    pub fn observer(&self) -> Arc<dyn JourneyObserver> {
        Arc::clone(&self.legs) as _
    }

    /// Detaches the socket hooks and joins what they saw with the
    /// session's journeys (call after the session's report is built, so
    /// every journey has been recorded). `proxies`: thread names of
    /// ingress proxies (`--proxy`). `None` without socket hooks or when no
    /// request was joined.
    pub fn finish(self, proxies: &[String]) -> Option<LabRequests> {
        let capture = self.tracer?.stop();
        let mut notes = capture.notes;
        if capture.lost > 0 {
            notes.push(format!(
                "{} socket events were lost (ring buffer full or over {MAX_SOCK_EVENTS} kept): some requests are not joined",
                capture.lost
            ));
        }
        node_view(&capture.events, &self.legs.take(), proxies, notes)
    }
}

/// One node's request timeline: `events` (the socket events of the
/// node's own processes) joined with `journeys` (the node's own) as a
/// node sees them, with no load generator: a client or backend this
/// kernel does not see is stood in for (`JoinOptions::remote_peers`), a
/// connection opened ahead does not count in `client.connect`, and the
/// client's figures are the joined requests' own. `notes` are kept and
/// one is added saying so. `None` when no request was joined.
///
/// Used by `trace` and `diagnose` ([`NodeTimeline::finish`]) and by the
/// lab's `--node-view` (one lab node's events out of the lab's).
pub fn node_view(
    events: &[hoptrace_common::SockEvent],
    journeys: &[requests::LegJourney],
    proxies: &[String],
    mut notes: Vec<String>,
) -> Option<LabRequests> {
    let opts = JoinOptions {
        proxies: proxies.to_vec(),
        connect_idle_ns: Some(CONNECT_IDLE_NS),
        remote_peers: true,
        ..JoinOptions::default()
    };
    let joined = requests::join(events, journeys, &opts);
    if joined.requests.is_empty() {
        return None;
    }
    notes.push(
        "one node's view: no load generator, the client's figures are the joined requests' own; a client this kernel does not see is stood in for from its packets' first and last hops here, and a server or backend it does not see is one round trip, app.remote (docs/segments.md)"
            .into(),
    );
    Some(timeline::requests_section(
        &joined,
        timeline::joined_latency(&joined),
        None,
        notes,
    ))
}
