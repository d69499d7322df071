//! The `--ip`/`--port` filter, decided once per journey and followed
//! through NAT.
//!
//! The kernel programs emit every packet: a per-event filter would keep the
//! hops of a ClusterIP request before DNAT and lose those after it (the
//! destination is then the backend), and would lose a reply's hops until
//! the reverse NAT restores the ClusterIP, so journeys would break in the
//! middle and recycled buffers would join unrelated packets. Instead the
//! correlator follows every packet and decides from a journey's first
//! parsed hop whether it is reported: it is when that hop matches the
//! filter, or when its 5-tuple is one that a reported journey had (before
//! or after NAT, in either direction): the rest of its connection.

use std::net::IpAddr;

use hoptrace_common::{
    L3Headers, PacketMeta, TraceConfig,
    packet::{IPPROTO_ICMP, IPPROTO_ICMPV6, flow_matches},
};
use ipnet::IpNet;
use rustc_hash::FxHashMap as FastMap;

/// Which journeys a run reports: `--ip CIDR` (source or destination in the
/// prefix, any layer) and/or `--port N` (source or destination port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowFilter {
    /// The same match the kernel parser offers ([`flow_matches`]).
    cfg: TraceConfig,
}

impl FlowFilter {
    /// A filter for `--ip` and `--port`; `None` when both are absent (every
    /// journey is reported).
    pub fn new(ip: Option<IpNet>, port: Option<u16>) -> Option<Self> {
        if ip.is_none() && port.is_none() {
            return None;
        }
        let mut cfg = TraceConfig {
            filter_flow: 1,
            ..TraceConfig::default()
        };
        if let Some(net) = ip {
            cfg.match_prefix_len = net.prefix_len();
            match net.network() {
                IpAddr::V4(a) => {
                    cfg.match_family = 4;
                    cfg.match_addr[..4].copy_from_slice(&a.octets());
                }
                IpAddr::V6(a) => {
                    cfg.match_family = 6;
                    cfg.match_addr = a.octets();
                }
            }
        }
        if let Some(port) = port {
            cfg.match_port = port;
        }
        Some(Self { cfg })
    }

    /// Whether the packet's headers (outer or inner layer) match.
    pub fn matches(&self, packet: &PacketMeta) -> bool {
        flow_matches(packet, &self.cfg)
    }
}

/// A connection's 5-tuple in one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FlowKey {
    saddr: [u8; 16],
    daddr: [u8; 16],
    sport: u16,
    dport: u16,
    proto: u8,
}

impl FlowKey {
    pub(crate) fn of(h: &L3Headers) -> Self {
        Self {
            saddr: h.saddr,
            daddr: h.daddr,
            sport: h.sport,
            dport: h.dport,
            proto: h.l4_proto,
        }
    }

    /// The other direction. ICMP echo replies keep the identifier and
    /// sequence (`sport`, `dport`) of the request.
    fn reverse(self) -> Self {
        let icmp = matches!(self.proto, IPPROTO_ICMP | IPPROTO_ICMPV6);
        Self {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: if icmp { self.sport } else { self.dport },
            dport: if icmp { self.dport } else { self.sport },
            proto: self.proto,
        }
    }
}

/// 5-tuples of reported journeys, both directions, with the event time
/// (ns) they were last seen. Bounded: entries unseen for [`FOLLOW_TTL_NS`]
/// expire, and at `cap` entries the oldest half is forgotten.
#[derive(Default)]
pub(crate) struct FollowedFlows {
    seen: FastMap<FlowKey, u64>,
    last_sweep_ns: u64,
}

/// How long a followed 5-tuple is remembered without a reported journey:
/// longer than any idle gap inside a connection this tool times.
pub(crate) const FOLLOW_TTL_NS: u64 = 300_000_000_000;

impl FollowedFlows {
    pub(crate) fn contains(&self, key: &FlowKey) -> bool {
        self.seen.contains_key(key)
    }

    /// Remembers `key` and its reverse as part of a reported connection.
    pub(crate) fn follow(&mut self, key: FlowKey, ts_ns: u64, cap: usize) {
        if self.seen.len() + 2 > cap.max(4) {
            self.expire(ts_ns, true);
        }
        for k in [key, key.reverse()] {
            let last = self.seen.entry(k).or_insert(ts_ns);
            *last = (*last).max(ts_ns);
        }
    }

    /// Forgets tuples unseen for [`FOLLOW_TTL_NS`] (checked at most once a
    /// second of event time), or, when `full`, the older half.
    pub(crate) fn expire(&mut self, now_ns: u64, full: bool) {
        if !full && now_ns.saturating_sub(self.last_sweep_ns) < 1_000_000_000 {
            return;
        }
        self.last_sweep_ns = now_ns;
        self.seen
            .retain(|_, last| now_ns.saturating_sub(*last) <= FOLLOW_TTL_NS);
        if full && !self.seen.is_empty() {
            let mut times: Vec<u64> = self.seen.values().copied().collect();
            let mid = times.len() / 2;
            let (_, &mut median, _) = times.select_nth_unstable(mid);
            self.seen.retain(|_, last| *last > median);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: [u8; 4], d: [u8; 4], sport: u16, dport: u16) -> L3Headers {
        let mut h = L3Headers::zeroed();
        h.version = 4;
        h.l4_proto = 6;
        h.saddr[..4].copy_from_slice(&s);
        h.daddr[..4].copy_from_slice(&d);
        h.sport = sport;
        h.dport = dport;
        h
    }

    #[test]
    fn no_flags_no_filter() {
        assert!(FlowFilter::new(None, None).is_none());
    }

    #[test]
    fn prefix_and_port_match_either_end() {
        let f = FlowFilter::new(Some("10.96.0.0/12".parse().unwrap()), None).unwrap();
        let mut p = PacketMeta::zeroed();
        p.outer = v4([10, 244, 0, 2], [10, 96, 0, 10], 40000, 80);
        assert!(f.matches(&p));
        p.outer = v4([10, 96, 0, 10], [10, 244, 0, 2], 80, 40000);
        assert!(f.matches(&p));
        p.outer = v4([10, 244, 0, 2], [10, 244, 1, 2], 40000, 8080);
        assert!(!f.matches(&p), "after DNAT the packet alone does not match");
        let f = FlowFilter::new(None, Some(8080)).unwrap();
        assert!(f.matches(&p));
    }

    #[test]
    fn followed_flows_cover_the_reply() {
        let mut flows = FollowedFlows::default();
        let after_dnat = FlowKey::of(&v4([10, 244, 0, 2], [10, 244, 1, 2], 40000, 8080));
        flows.follow(after_dnat, 1, 100);
        let reply = FlowKey::of(&v4([10, 244, 1, 2], [10, 244, 0, 2], 8080, 40000));
        assert!(flows.contains(&reply));
        assert!(!flows.contains(&FlowKey::of(&v4(
            [10, 244, 1, 2],
            [10, 244, 0, 2],
            8080,
            40001
        ))));
    }

    #[test]
    fn followed_flows_are_bounded() {
        let mut flows = FollowedFlows::default();
        for i in 0..1000u16 {
            flows.follow(
                FlowKey::of(&v4([10, 0, 0, 1], [10, 0, 0, 2], i, 80)),
                u64::from(i),
                64,
            );
            assert!(flows.len() <= 64, "{} entries", flows.len());
        }
        // The newest are kept.
        assert!(flows.contains(&FlowKey::of(&v4([10, 0, 0, 1], [10, 0, 0, 2], 999, 80))));
        // Unseen for the TTL: gone.
        flows.expire(FOLLOW_TTL_NS + 2000, false);
        assert_eq!(flows.len(), 0);
    }
}
