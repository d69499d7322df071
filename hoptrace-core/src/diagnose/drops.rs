//! Drops with their flows: a [`JourneyObserver`] that keeps, per (drop
//! reason, location), a count and the first few flows, so a finding can
//! name which traffic was dropped where. Bounded: at most
//! [`MAX_GROUPS`] groups and [`EXAMPLES_PER_GROUP`] flows each.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::attribution::ledger::FlowInfo;
use crate::attribution::taxonomy::Category;
use crate::correlate::{JourneyObserver, JourneySummary};
use hoptrace_common::Encap;

/// Example flows kept per (reason, location).
pub const EXAMPLES_PER_GROUP: usize = 3;
/// Groups kept; drops of further groups are counted in
/// [`DropObserver::overflow`].
pub const MAX_GROUPS: usize = 64;

/// Dropped journeys of one kernel drop reason at one location.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropGroup {
    /// Kernel drop reason name (`IP_RPFILTER`, `NETFILTER_DROP`, ...).
    pub reason: String,
    /// The journey's last hop before the drop (`nf.forward.-1`,
    /// `uplink.ingress`, ...): where the packet was last seen.
    pub location: String,
    /// Dropped journeys in this group.
    pub count: u64,
    /// The first flows dropped (innermost headers at the journey's first
    /// hop, before NAT), at most [`EXAMPLES_PER_GROUP`].
    pub examples: Vec<FlowInfo>,
}

/// Collects [`DropGroup`]s from the correlator's finished journeys.
#[derive(Debug, Default)]
pub struct DropObserver {
    groups: Mutex<Vec<DropGroup>>,
    overflow: std::sync::atomic::AtomicU64,
}

impl DropObserver {
    /// An empty collector.
    pub fn new() -> Self {
        Self::default()
    }

    /// The groups so far, most drops first.
    pub fn groups(&self) -> Vec<DropGroup> {
        let mut groups = self
            .groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        groups.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
        groups
    }

    /// Dropped journeys not kept because [`MAX_GROUPS`] groups were full.
    pub fn overflow(&self) -> u64 {
        self.overflow.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Adds one dropped journey (what [`JourneyObserver::journey`] does
    /// with a dropped one; public for tests).
    pub fn record(&self, reason: &str, location: &str, flow: impl FnOnce() -> FlowInfo) {
        let mut groups = self
            .groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(g) = groups
            .iter_mut()
            .find(|g| g.reason == reason && g.location == location)
        {
            g.count += 1;
            if g.examples.len() < EXAMPLES_PER_GROUP {
                let f = flow();
                if !g.examples.contains(&f) {
                    g.examples.push(f);
                }
            }
            return;
        }
        if groups.len() >= MAX_GROUPS {
            self.overflow
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        groups.push(DropGroup {
            reason: reason.to_owned(),
            location: location.to_owned(),
            count: 1,
            examples: vec![flow()],
        });
    }
}

impl JourneyObserver for DropObserver {
    fn journey(&self, journey: &JourneySummary<'_>) {
        let Some((reason, location)) = journey.drop else {
            return;
        };
        self.record(reason, location, || {
            // The journey's encapsulation: seen on an outer header, or
            // (a journey whose events lost it) from its tunnel segments.
            let encap = if journey.encap == Encap::None {
                journey
                    .named_segments()
                    .find(|(s, _)| s.category == Category::Encapsulation)
                    .map_or(Encap::None, |(s, _)| {
                        if s.name.contains("vxlan") {
                            Encap::Vxlan
                        } else if s.name.contains("geneve") {
                            Encap::Geneve
                        } else {
                            Encap::IpIp
                        }
                    })
            } else {
                journey.encap
            };
            FlowInfo::from_headers(journey.first_flow, encap)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(n: u16) -> FlowInfo {
        FlowInfo {
            proto: "udp".into(),
            src: format!("10.0.0.1:{n}"),
            dst: "10.0.0.2:53".into(),
            encap: "none".into(),
            icmp: None,
        }
    }

    #[test]
    fn groups_count_every_drop_and_keep_the_first_flows() {
        let o = DropObserver::new();
        for n in 0..10 {
            o.record("IP_RPFILTER", "nf.prerouting.101", || flow(n));
        }
        o.record("NETFILTER_DROP", "nf.forward.-1", || flow(99));
        let g = o.groups();
        assert_eq!(g.len(), 2);
        assert_eq!((g[0].reason.as_str(), g[0].count), ("IP_RPFILTER", 10));
        assert_eq!(g[0].examples, vec![flow(0), flow(1), flow(2)]);
        assert_eq!(g[1].count, 1);
    }

    #[test]
    fn groups_are_bounded() {
        let o = DropObserver::new();
        for n in 0..(MAX_GROUPS + 5) {
            o.record("R", &format!("loc{n}"), || flow(1));
        }
        assert_eq!(o.groups().len(), MAX_GROUPS);
        assert_eq!(o.overflow(), 5);
    }
}
