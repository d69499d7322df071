//! Names the kernel's aggregate-mode histograms ([`hoptrace_common::agg`]):
//! each key (the raw sites of a segment's two hops, the journey's first
//! hop, its netfilter pass bits) becomes a segment, a direction and a
//! connection state with the correlator's own device table, segment table
//! and rules, so both modes share one taxonomy.

use hoptrace_common::{
    HookKind,
    agg::{
        AGG_BUCKETS, AGG_FLAG_SYN, AggHist, AggKey, AggSite, PASS_CHECKED, PASS_CTINFO_NEW,
        PASS_FOUND, PASS_SEEN, PASS_STATUS_KNOWN, PASS_UNCONFIRMED, agg_bucket, agg_bucket_lower,
    },
};

use super::{
    DeviceTable, PassStates, SegmentTable, hop_point,
    journey::{Hop, NetfilterPass, journey_direction},
};
use crate::{
    attribution::{
        ledger::{ConnState, Direction},
        taxonomy::{DevStage, HopPoint, Place, SegmentName},
    },
    node::NodeContext,
};

/// One named series: every key that names the same segment, direction and
/// connection state, summed over CPUs and keys.
#[derive(Clone, Debug)]
pub struct AggregateSeries {
    /// The segment, as the correlator names it.
    pub segment: SegmentName,
    /// Direction of the journeys (from their first hop).
    pub direction: Direction,
    /// Connection state of the pass the segment belongs to.
    pub conn_state: ConnState,
    /// Segments observed.
    pub count: u64,
    /// Their summed duration, ns.
    pub sum_ns: u64,
    /// Counts per log-linear bucket ([`hoptrace_common::agg::agg_bucket`]).
    pub buckets: Vec<u64>,
}

/// Everything read from the kernel's histograms at one moment.
#[derive(Clone, Debug, Default)]
pub struct AggregateSnapshot {
    /// Named series, cumulative since the session started.
    pub series: Vec<AggregateSeries>,
    /// Journeys by direction (segments that start at the journey's first
    /// hop), cumulative.
    pub journeys: Vec<(Direction, u64)>,
    /// Segments of keys that could not be named (a namespace or hook the
    /// device table does not know), cumulative.
    pub unnamed_segments: u64,
    /// Segments left out because their two hops cannot belong to one
    /// packet ([`recycled`]: the kernel joined the next packet of a
    /// recycled buffer to the previous one's journey), cumulative.
    pub recycled_segments: u64,
    /// Distinct kernel keys read.
    pub keys: usize,
}

/// Names aggregate keys; caches nothing itself (the segment table does).
pub struct AggregateNamer {
    devices: DeviceTable,
    table: SegmentTable,
    names: Vec<SegmentName>,
}

impl AggregateNamer {
    /// A namer for the node described by `ctx` (the session's devices).
    pub fn new(ctx: NodeContext) -> Self {
        let kube_proxy_absent = ctx.kube_proxy_absent;
        Self {
            devices: DeviceTable::new(ctx),
            table: SegmentTable {
                kube_proxy_absent,
                ..SegmentTable::default()
            },
            names: Vec::new(),
        }
    }

    /// The correlator's hop for a kernel site; `None` for a namespace the
    /// device table does not know or a site that makes no hop.
    fn hop(&self, site: &AggSite) -> Option<Hop> {
        let hook = HookKind::from_u8(site.hook);
        let in_pod = self.devices.namespace(site.netns_ino, hook)?;
        let point = hop_point(
            &self.devices,
            hook,
            site.netns_ino,
            site.ifindex,
            site.nf_hook,
            site.nf_slot,
            in_pod,
        )?;
        Some(Hop {
            ts_ns: 0,
            point,
            netns_ino: site.netns_ino,
            ifindex: site.ifindex,
            encap: site.encap,
            len: 0,
            waits: false,
            reassembled: false,
        })
    }

    /// Segment, direction and connection state of a key (`None`: unnamed).
    pub fn name(&mut self, key: &AggKey) -> Option<(SegmentName, Direction, ConnState)> {
        let (a, b) = (self.hop(&key.prev)?, self.hop(&key.cur)?);
        self.name_hops(key, &a, &b)
    }

    /// [`AggregateNamer::name`] of a key whose hops are `a` and `b`.
    fn name_hops(
        &mut self,
        key: &AggKey,
        a: &Hop,
        b: &Hop,
    ) -> Option<(SegmentName, Direction, ConnState)> {
        let (a, b) = (*a, *b);
        let first = self.hop(&key.first)?;
        let direction = journey_direction(&first);
        let states = pass_states(key);
        let conn_state = states.of_segment(&a, &b);
        let untracked = conn_state == ConnState::Untracked;
        let id = self.table.id(&mut self.names, &a, &b, untracked);
        Some((self.names[id as usize].clone(), direction, conn_state))
    }

    /// Names and merges the kernel's per-key totals.
    pub fn snapshot(&mut self, totals: &[(AggKey, AggHist64)]) -> AggregateSnapshot {
        let mut out = AggregateSnapshot {
            keys: totals.len(),
            ..AggregateSnapshot::default()
        };
        let mut index: std::collections::HashMap<(String, Direction, ConnState), usize> =
            std::collections::HashMap::new();
        let mut journeys: std::collections::BTreeMap<Direction, u64> = Default::default();
        for (key, hist) in totals {
            let hops = self.hop(&key.prev).zip(self.hop(&key.cur));
            if let Some((a, b)) = &hops
                && recycled(a, b)
            {
                out.recycled_segments += hist.count;
                continue;
            }
            let Some((segment, direction, conn_state)) =
                hops.and_then(|(a, b)| self.name_hops(key, &a, &b))
            else {
                out.unnamed_segments += hist.count;
                continue;
            };
            if key.prev == key.first {
                *journeys.entry(direction).or_default() += hist.count;
            }
            let i = *index
                .entry((segment.name.clone(), direction, conn_state))
                .or_insert_with(|| {
                    out.series.push(AggregateSeries {
                        segment,
                        direction,
                        conn_state,
                        count: 0,
                        sum_ns: 0,
                        buckets: vec![0; AGG_BUCKETS],
                    });
                    out.series.len() - 1
                });
            let s = &mut out.series[i];
            s.count += hist.count;
            s.sum_ns += hist.sum_ns;
            for (total, n) in s.buckets.iter_mut().zip(&hist.buckets) {
                *total += n;
            }
        }
        out.journeys = journeys.into_iter().collect();
        out
    }
}

/// Whether hop `b` cannot follow hop `a` for one packet: the correlator's
/// rules for a buffer that now carries another packet, applied to one pair
/// of hops (the kernel keeps only the newest hop, so journey-wide history
/// is not available). A packet that left the node does not arrive again,
/// one on the wire or handed to a pod takes only that device's or pod's
/// hops next (a pod receiving it: only a socket in the pod or a drop), a
/// pod sends a packet only at its journey's start, and one
/// arrives from the wire only at its start. The kernel's per-packet state
/// joins such a pair when a buffer is reused within its 50 ms idle gap by
/// a packet with the same header fingerprint (or one hop did not parse).
pub(crate) fn recycled(a: &Hop, b: &Hop) -> bool {
    let (a, b) = (&a.point, &b.point);
    let pod_receives = matches!(
        a,
        HopPoint::Device {
            place: Place::Pod,
            stage: DevStage::Receive,
        }
    );
    (a.leaves_node() && b.enters_node())
        || (a.hands_to_uplink() && !b.may_follow_uplink())
        || ((a.hands_to_pod() || pod_receives) && !b.may_follow_pod_handoff())
        || (!a.sent_by_pod() && b.sent_by_pod())
        || (!a.is_wire_receive() && b.arrives_on_uplink())
}

/// A kernel histogram summed over CPUs (64-bit buckets).
#[derive(Clone, Debug)]
pub struct AggHist64 {
    /// Segments observed.
    pub count: u64,
    /// Summed duration, ns.
    pub sum_ns: u64,
    /// Counts per bucket.
    pub buckets: Vec<u64>,
}

impl Default for AggHist64 {
    fn default() -> Self {
        Self::empty()
    }
}

impl AggHist64 {
    /// No observation yet: [`AGG_BUCKETS`] zero buckets.
    pub fn empty() -> Self {
        Self {
            count: 0,
            sum_ns: 0,
            buckets: vec![0; AGG_BUCKETS],
        }
    }

    /// Adds one duration of `ns` nanoseconds, in the kernel's bucket
    /// ([`agg_bucket`]): what userspace does to put the correlator's
    /// journeys on the kernel's resolution.
    pub fn observe(&mut self, ns: u64) {
        self.count += 1;
        self.sum_ns += ns;
        if let Some(bucket) = self.buckets.get_mut(agg_bucket(ns)) {
            *bucket += 1;
        }
    }

    /// Adds another histogram of the same buckets.
    pub fn merge(&mut self, other: &[u64], count: u64, sum_ns: u64) {
        self.count += count;
        self.sum_ns += sum_ns;
        for (total, n) in self.buckets.iter_mut().zip(other) {
            *total += n;
        }
    }

    /// The sum of one key's per-CPU values.
    pub fn sum<'a>(per_cpu: impl IntoIterator<Item = &'a AggHist>) -> Self {
        let mut out = Self::empty();
        for h in per_cpu {
            out.count += h.count;
            out.sum_ns += h.sum_ns;
            for (total, &n) in out.buckets.iter_mut().zip(&h.buckets) {
                *total += u64::from(n);
            }
        }
        out
    }
}

/// Quantile `q` (0 to 1) of counts per log-linear bucket
/// ([`hoptrace_common::agg::agg_bucket`]), in ns: linear interpolation
/// inside the bucket that holds rank `q × total`, as Prometheus's
/// `histogram_quantile` does with cumulative buckets. A bucket is at most
/// 25 % wide, so this is within 25 % of the true quantile; two histograms
/// of the same values give the same answer. The open last bucket answers
/// its lower bound. `None` without observations.
pub fn log_linear_quantile(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        if n == 0 {
            continue;
        }
        if (below + n) as f64 >= rank {
            let lower = agg_bucket_lower(i) as f64;
            if i + 1 >= AGG_BUCKETS {
                return Some(lower);
            }
            let upper = agg_bucket_lower(i + 1) as f64;
            let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
            return Some(lower + (upper - lower) * within);
        }
        below += n;
    }
    Some(agg_bucket_lower(AGG_BUCKETS - 1) as f64)
}

/// The correlator's netfilter pass of a kernel pass's bits.
fn pass(bits: u8) -> NetfilterPass {
    NetfilterPass {
        seen: bits & PASS_SEEN != 0,
        checked: bits & PASS_CHECKED != 0,
        found: bits & PASS_FOUND != 0,
        ctinfo_new: bits & PASS_CTINFO_NEW != 0,
        status_known: bits & PASS_STATUS_KNOWN != 0,
        unconfirmed: bits & PASS_UNCONFIRMED != 0,
    }
}

/// Connection states as the correlator's `PassStates::of` decides them,
/// from what the journey's passes said up to the segment's end.
fn pass_states(key: &AggKey) -> PassStates {
    let (inner, outer) = (pass(key.inner_pass), pass(key.outer_pass));
    let state = inner.conn_state().or(outer.conn_state()).unwrap_or({
        if key.flags & AGG_FLAG_SYN != 0 {
            ConnState::New
        } else {
            ConnState::Established
        }
    });
    PassStates {
        inner: state,
        outer: outer.conn_state().unwrap_or(state),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{DeviceInfo, DeviceRole};
    use hoptrace_common::Encap;

    fn site(hook: HookKind, netns_ino: u32, ifindex: u32, encap: Encap) -> AggSite {
        AggSite {
            netns_ino,
            ifindex,
            hook: hook as u8,
            nf_hook: 0,
            nf_slot: 0,
            encap: encap as u8,
        }
    }

    fn ctx() -> NodeContext {
        NodeContext {
            node_netns_ino: 1,
            devices: vec![
                DeviceInfo {
                    netns_ino: 1,
                    ifindex: 5,
                    name: "veth-a".into(),
                    role: DeviceRole::PodVethHost,
                    queues: false,
                },
                DeviceInfo {
                    netns_ino: 7,
                    ifindex: 2,
                    name: "pod-a:eth0".into(),
                    role: DeviceRole::PodInterface,
                    queues: false,
                },
            ],
            drop_reasons: Default::default(),
            kube_proxy_absent: false,
        }
    }

    /// The first segment of a journey from the pod: its device's transmit
    /// to tc ingress on the host side of its veth.
    fn pod_veth_egress(flags: u8) -> AggKey {
        let first = site(HookKind::DevXmit, 7, 2, Encap::None);
        AggKey {
            prev: first,
            cur: site(HookKind::TcIngress, 1, 5, Encap::None),
            first,
            inner_pass: 0,
            outer_pass: 0,
            flags,
            _pad: 0,
        }
    }

    #[test]
    fn keys_get_the_correlators_names_direction_and_state() {
        let mut namer = AggregateNamer::new(ctx());
        let key = pod_veth_egress(AGG_FLAG_SYN);
        let (seg, dir, state) = namer.name(&key).expect("named");
        assert_eq!(seg.name, "pod.veth.egress");
        assert_eq!(dir, Direction::Egress);
        assert_eq!(state, ConnState::New);
        // A foreign namespace is not named.
        let mut foreign = key;
        foreign.cur.netns_ino = 99;
        assert!(namer.name(&foreign).is_none());
    }

    #[test]
    fn quantiles_interpolate_inside_the_kernels_buckets() {
        let mut h = AggHist64::empty();
        assert_eq!(log_linear_quantile(&h.buckets, 0.5), None);
        // 100 values of 1,000 ns: all in the bucket [896, 1024) ns.
        for _ in 0..100 {
            h.observe(1_000);
        }
        let bucket = agg_bucket(1_000);
        assert_eq!(h.buckets[bucket], 100);
        assert_eq!((h.count, h.sum_ns), (100, 100_000));
        let (lo, hi) = (
            agg_bucket_lower(bucket) as f64,
            agg_bucket_lower(bucket + 1) as f64,
        );
        let p50 = log_linear_quantile(&h.buckets, 0.5).expect("p50");
        assert!(
            (p50 - (lo + hi) / 2.0).abs() < 1e-9,
            "{p50} in [{lo}, {hi})"
        );
        // One slow value: p99 stays in the first bucket, p100 is in the slow one.
        h.observe(1_000_000);
        let p99 = log_linear_quantile(&h.buckets, 0.99).expect("p99");
        assert!(p99 >= lo && p99 <= hi, "{p99}");
        let max = log_linear_quantile(&h.buckets, 1.0).expect("max");
        assert!((max - 1e6).abs() <= 0.25 * 1e6, "{max}");
        // The same values give the same quantiles, however they were added.
        let mut other = AggHist64::empty();
        other.merge(&h.buckets, h.count, h.sum_ns);
        assert_eq!(log_linear_quantile(&other.buckets, 0.99), Some(p99));
    }

    #[test]
    fn a_pair_of_hops_of_two_packets_is_left_out() {
        let mut namer = AggregateNamer::new(ctx());
        // The pod received a packet (its last hop: TCP consumed it), then
        // sent another in the same buffer: the kernel joined them.
        let pod_rx = site(HookKind::DevReceive, 7, 2, Encap::None);
        let joined = AggKey {
            prev: pod_rx,
            cur: site(HookKind::TcIngress, 1, 5, Encap::None),
            first: pod_rx,
            ..pod_veth_egress(0)
        };
        let mut h = AggHist::zeroed();
        h.count = 2;
        h.sum_ns = 64_000_000;
        h.buckets[100] = 2;
        let legit = pod_veth_egress(0);
        let snap = namer.snapshot(&[
            (joined, AggHist64::sum([&h])),
            (legit, AggHist64::sum([&h])),
        ]);
        assert_eq!(snap.recycled_segments, 2);
        assert_eq!(snap.unnamed_segments, 0);
        assert_eq!(snap.series.len(), 1);
        assert_eq!(snap.series[0].segment.name, "pod.veth.egress");
    }

    #[test]
    fn snapshot_merges_keys_and_counts_journeys() {
        let mut namer = AggregateNamer::new(ctx());
        let key = pod_veth_egress(0);
        let mut h = AggHist::zeroed();
        h.count = 3;
        h.sum_ns = 3000;
        h.buckets[10] = 3;
        let hist = AggHist64::sum([&h, &h]);
        let snap = namer.snapshot(&[(key, hist)]);
        assert_eq!(snap.series.len(), 1);
        assert_eq!(snap.series[0].count, 6);
        assert_eq!(snap.series[0].buckets[10], 6);
        assert_eq!(snap.journeys, vec![(Direction::Egress, 6)]);
    }
}
