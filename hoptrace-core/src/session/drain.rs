//! The drain thread: empties the ring buffer on a timer (producers never
//! wake it), hands events to the correlator in time order, and, in a group
//! of sessions sharing one kernel's tracepoints, routes each tracepoint
//! event to the session of the namespace it belongs to.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{Receiver, Sender},
    },
    thread::JoinHandle,
    time::Duration,
};

use hoptrace_common::{HookKind, HopEvent};

use super::{ReorderBuffer, monotonic_ns};
use crate::{attribution::ledger::Ledger, correlate::Correlator, kernel::loader::EventReader};

/// How often the drain thread empties the ring buffer (producers never wake it).
pub(super) const DRAIN_INTERVAL: Duration = Duration::from_millis(5);

/// Tracepoint events of namespaces that belong to another session of the
/// group, and where to send them.
pub(super) struct TracepointRoute {
    pub(super) netns: HashSet<u32>,
    pub(super) to: Sender<HopEvent>,
    /// Every event older than this (bpf ktime) has been sent; `u64::MAX`
    /// once the routing session has stopped.
    pub(super) routed_until: Arc<AtomicU64>,
}

/// Tracepoint events routed to a session by the one that attached them.
pub(super) struct Feed {
    pub(super) events: Receiver<HopEvent>,
    pub(super) routed_until: Arc<AtomicU64>,
}

/// Two sources of events reach a fed session's correlator one drain apart:
/// they are put back in time order, up to what both have delivered, minus
/// this margin for events whose time was taken just before their commit.
const REORDER_SLACK_NS: u64 = 1_000_000;

/// How a session of a group shares the kernel's tracepoints.
#[derive(Default)]
pub(super) struct Sharing {
    /// Tracepoint events another session routes to this one.
    pub(super) feed: Option<Feed>,
    /// Namespaces whose tracepoint events go to other sessions.
    pub(super) routes: Vec<TracepointRoute>,
    /// What the tracepoints must know of the other sessions' nodes.
    pub(super) others: OtherNodes,
}

/// The other nodes a session's tracepoints serve.
#[derive(Debug, Default)]
pub(super) struct OtherNodes {
    /// Their namespaces (nodes and pods).
    pub(super) netns: Vec<u32>,
    /// Their devices timed by tc without a qdisc ([`hoptrace_common::device_key`]).
    pub(super) tc_covered: Vec<u64>,
    /// One of their devices has a qdisc.
    pub(super) qdisc: bool,
}

/// Events of hooks that fire in every namespace of the kernel.
fn is_tracepoint_event(ev: &HopEvent) -> bool {
    !matches!(
        HookKind::from_u8(ev.hook),
        HookKind::TcIngress | HookKind::TcEgress | HookKind::Netfilter
    )
}

/// Starts the drain thread; it runs until `stop` is set, drains once more,
/// and returns the correlator's ledger.
///
/// # Errors
/// When the thread cannot be spawned (out of threads or memory).
pub(super) fn spawn(
    mut reader: EventReader,
    mut correlator: Correlator,
    sharing: Sharing,
    stop: Arc<AtomicBool>,
    idle_timeout_ns: u64,
) -> std::io::Result<JoinHandle<Ledger>> {
    std::thread::Builder::new()
        .name("hoptrace-drain".into())
        .spawn(move || {
            // Drain often (the ring must not fill); look for idle journeys
            // (a scan of all in flight) only every half idle timeout, which
            // is as often as it can matter.
            let flush_every = (idle_timeout_ns / 2).max(DRAIN_INTERVAL.as_nanos() as u64);
            let mut last_flush = monotonic_ns();
            let Sharing { feed, routes, .. } = sharing;
            let mut pending = ReorderBuffer::default();
            loop {
                let stopping = stop.load(Ordering::Relaxed);
                let pass_start = monotonic_ns();
                match &feed {
                    Some(feed) => {
                        drain_fed(
                            &mut reader,
                            feed,
                            &mut pending,
                            &mut correlator,
                            stopping,
                            pass_start,
                        );
                    }
                    None => drain_routing(&mut reader, &routes, &mut correlator, pass_start),
                }
                let now = monotonic_ns();
                if now.saturating_sub(last_flush) >= flush_every {
                    correlator.flush_idle(now);
                    last_flush = now;
                }
                if stopping {
                    break;
                }
                std::thread::sleep(DRAIN_INTERVAL);
            }
            for route in &routes {
                route.routed_until.store(u64::MAX, Ordering::Release);
            }
            correlator.finish()
        })
}

/// One pass of a session fed by another: its own ring buffer and the
/// routed tracepoint events are merged in time order, up to what both have
/// delivered (everything once `stopping`).
fn drain_fed(
    reader: &mut EventReader,
    feed: &Feed,
    pending: &mut ReorderBuffer,
    correlator: &mut Correlator,
    stopping: bool,
    pass_start: u64,
) {
    reader.drain(|ev| pending.push(*ev));
    pending.extend_from(feed.events.try_iter());
    let watermark = if stopping {
        u64::MAX
    } else {
        pass_start
            .min(feed.routed_until.load(Ordering::Acquire))
            .saturating_sub(REORDER_SLACK_NS)
    };
    pending.release(watermark, |ev| correlator.push(ev));
}

/// One pass of a session that owns the ring buffer: tracepoint events of
/// another session's namespaces go to that session, the rest to ours.
fn drain_routing(
    reader: &mut EventReader,
    routes: &[TracepointRoute],
    correlator: &mut Correlator,
    pass_start: u64,
) {
    reader.drain(|ev| {
        if !routes.is_empty()
            && is_tracepoint_event(ev)
            && let Some(route) = routes.iter().find(|r| r.netns.contains(&ev.netns_ino))
        {
            // The other session may have stopped: then the event has no
            // ledger to go to.
            let _ = route.to.send(*ev);
            return;
        }
        correlator.push(ev);
    });
    for route in routes {
        route.routed_until.store(pass_start, Ordering::Release);
    }
}
