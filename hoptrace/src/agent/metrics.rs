//! The agent's metrics: a [`JourneyObserver`] that adds every journey into
//! fixed-bucket histograms keyed by small ids, and a prometheus-client
//! [`Collector`] that turns them into text on each scrape.
//!
//! Per journey the work is a few hash-map updates under one mutex; names
//! and label values are resolved once per series, not per packet. Label
//! sets are capped: past [`MAX_LABEL_SETS`] distinct pod label sets, new
//! ones are counted under `other`.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use hoptrace_common::agg::agg_bucket_mid;
use hoptrace_core::{
    attribution::{
        ledger::{ConnState, Direction},
        taxonomy::Category,
    },
    correlate::{
        JourneyObserver, JourneySummary,
        aggregate::{AggHist64, AggregateSeries, AggregateSnapshot},
    },
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, MetricEncoder, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use super::{
    histograms::{self, HistogramSeries, HistogramsDocument},
    identity::Identity,
};

/// Upper bounds of the histogram buckets, seconds: 1-2.5-5 steps from
/// 1 µs to 10 s (the `+Inf` bucket follows).
pub const BUCKETS_S: [f64; 22] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
    5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The same bounds in ns, for placing observations without floats.
const BUCKETS_NS: [u64; 22] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Most distinct pod label sets (pod namespace, pod, service) kept; the
/// rest are counted under `other`.
pub const MAX_LABEL_SETS: usize = 512;

/// Which Kubernetes labels journeys carry (`--pod-labels`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodLabels {
    /// No pod labels.
    None,
    /// `pod_namespace` only (the default: bounded by the namespaces).
    Namespace,
    /// `pod_namespace`, `pod` and `service`.
    Pod,
}

impl PodLabels {
    /// Every value, in the order `--help` lists them.
    pub const ALL: [PodLabels; 3] = [PodLabels::None, PodLabels::Namespace, PodLabels::Pod];

    /// The name on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            PodLabels::None => "none",
            PodLabels::Namespace => "namespace",
            PodLabels::Pod => "pod",
        }
    }
}

impl std::fmt::Display for PodLabels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for PodLabels {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown --pod-labels {s:?} (none, namespace, pod)"))
    }
}

/// Counts per bucket (not cumulative), the sum in ns and the count.
#[derive(Clone, Debug, Default)]
struct Hist {
    buckets: [u64; BUCKETS_NS.len() + 1],
    sum_ns: u128,
    count: u64,
}

impl Hist {
    fn observe(&mut self, ns: u64) {
        self.buckets[BUCKETS_NS.partition_point(|&bound| bound < ns)] += 1;
        self.sum_ns += u128::from(ns);
        self.count += 1;
    }

    /// The agent's buckets of a kernel aggregate series: each log-linear
    /// bucket's count goes to the bucket holding its middle (a kernel
    /// bucket is at most 25 % wide, so only those that straddle one of
    /// these bounds are placed approximately); count and sum are exact.
    fn from_aggregate(series: &AggregateSeries) -> Self {
        let mut hist = Self {
            sum_ns: u128::from(series.sum_ns),
            count: series.count,
            ..Self::default()
        };
        for (i, &n) in series.buckets.iter().enumerate() {
            if n != 0 {
                let mid = agg_bucket_mid(i);
                hist.buckets[BUCKETS_NS.partition_point(|&bound| bound < mid)] += n;
            }
        }
        hist
    }

    fn merge(&mut self, other: &Hist) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.sum_ns += other.sum_ns;
        self.count += other.count;
    }

    /// Writes the series: sum in seconds, count, and `(upper bound in s,
    /// count)` per bucket with `+Inf` last.
    fn encode(&self, mut series: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = BUCKETS_S
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.buckets)
            .collect();
        series.encode_histogram::<NoLabelSet>(self.sum_ns as f64 / 1e9, self.count, &buckets, None)
    }
}

/// Key of a segment series: segment id (the correlator's), direction,
/// connection state, pod label set id.
type SegmentKey = (u32, Direction, ConnState, u32);
/// Key of a category series.
type CategoryKey = (Category, Direction, ConnState, u32);

/// Pod label values of one label set; empty strings are left out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct PodLabelSet {
    pod_namespace: String,
    pod: String,
    service: String,
}

#[derive(Debug, Default)]
struct Store {
    /// Segment names and categories by the correlator's id.
    segment_names: Vec<(String, Category)>,
    segments: HashMap<SegmentKey, Hist>,
    /// Aggregate mode: the sampled journeys' segments at the kernel's
    /// resolution (no pod labels: bounded by segments × directions ×
    /// connection states), for `/histograms`.
    fine: HashMap<(u32, Direction, ConnState), AggHist64>,
    categories: HashMap<CategoryKey, Hist>,
    drops: HashMap<(String, String), u64>,
    journeys: HashMap<Direction, u64>,
    /// Label sets by id; id 0 is the empty set, id 1 `other`.
    label_sets: Vec<PodLabelSet>,
    label_ids: HashMap<PodLabelSet, u32>,
}

impl Store {
    fn new() -> Self {
        let other = PodLabelSet {
            pod_namespace: "other".into(),
            pod: String::new(),
            service: String::new(),
        };
        Self {
            label_ids: HashMap::from([(PodLabelSet::default(), 0), (other.clone(), 1)]),
            label_sets: vec![PodLabelSet::default(), other],
            ..Self::default()
        }
    }

    fn label_id(&mut self, set: PodLabelSet) -> u32 {
        if let Some(&id) = self.label_ids.get(&set) {
            return id;
        }
        if self.label_sets.len() >= MAX_LABEL_SETS {
            return 1;
        }
        let id = u32::try_from(self.label_sets.len()).unwrap_or(1);
        self.label_sets.push(set.clone());
        self.label_ids.insert(set, id);
        id
    }
}

/// Values the agent's main loop sets from the session (not per journey).
#[derive(Debug, Default)]
pub struct SessionGauges {
    /// Events lost in the kernel (ring buffer full), cumulative.
    pub events_lost: AtomicU64,
    /// tc programs attached.
    pub hooks_tc: AtomicU64,
    /// Netfilter links attached.
    pub hooks_netfilter: AtomicU64,
    /// Tracepoints attached.
    pub hooks_tracepoint: AtomicU64,
    /// tc hooks another process removed since the agent attached them.
    pub hooks_lost: AtomicU64,
    /// Aggregate mode: segments not counted because the kernel's histogram
    /// map was full, cumulative.
    pub aggregate_map_full: AtomicU64,
    /// Aggregate mode: link-local multicast journeys the kernel ended at a
    /// gap over 5 ms (`Counter::AggLinkLocalRepeat`), cumulative.
    pub aggregate_link_local_repeats: AtomicU64,
}

/// Series of the kernel's aggregate histograms, as the agent exports them
/// (replaced on every read: the kernel's totals are cumulative).
#[derive(Debug, Default)]
struct AggregateStore {
    /// (segment name, category, direction, conn state) -> histogram.
    segments: Vec<((String, Category, Direction, ConnState), Hist)>,
    /// (category, direction, conn state) -> histogram of segment crossings.
    categories: Vec<((Category, Direction, ConnState), Hist)>,
    journeys: Vec<(Direction, u64)>,
    unnamed_segments: u64,
    recycled_segments: u64,
    keys: usize,
    /// The snapshot's series at the kernel's resolution, for `/histograms`.
    fine: Vec<AggregateSeries>,
}

/// The agent's metrics: fed by the correlator, read by the scraper.
#[derive(Debug)]
pub struct AgentMetrics {
    node: String,
    pod_labels: PodLabels,
    identity: Arc<dyn Identity>,
    store: Mutex<Store>,
    /// `Some` in aggregate mode: the segment, category and journey series
    /// come from the kernel's histograms; the correlator's (sampled)
    /// journeys are exported as `hoptrace_sampled_*` and give the drops.
    aggregate: Option<Mutex<AggregateStore>>,
    unparsed: AtomicU64,
    /// Set by the main loop.
    pub session: SessionGauges,
}

impl AgentMetrics {
    /// Metrics for node `node`, labelling journeys as `pod_labels` says
    /// with names from `identity`.
    pub fn new(node: String, pod_labels: PodLabels, identity: Arc<dyn Identity>) -> Self {
        Self {
            node,
            pod_labels,
            identity,
            store: Mutex::new(Store::new()),
            aggregate: None,
            unparsed: AtomicU64::new(0),
            session: SessionGauges::default(),
        }
    }

    /// The same metrics for an agent in aggregate mode (see
    /// [`AgentMetrics::set_aggregate`]).
    pub fn new_aggregate(node: String, pod_labels: PodLabels, identity: Arc<dyn Identity>) -> Self {
        Self {
            aggregate: Some(Mutex::new(AggregateStore::default())),
            ..Self::new(node, pod_labels, identity)
        }
    }

    /// Replaces the aggregate series with a snapshot of the kernel's
    /// histograms (cumulative totals). Categories are the sums of their
    /// segments' crossings: the kernel keeps no per-journey sums.
    pub fn set_aggregate(&self, snap: &AggregateSnapshot) {
        let Some(aggregate) = &self.aggregate else {
            return;
        };
        let mut segments = Vec::with_capacity(snap.series.len());
        let mut categories: HashMap<(Category, Direction, ConnState), Hist> = HashMap::new();
        for series in &snap.series {
            let hist = Hist::from_aggregate(series);
            let category = series.segment.category;
            categories
                .entry((category, series.direction, series.conn_state))
                .or_default()
                .merge(&hist);
            segments.push((
                (
                    series.segment.name.clone(),
                    category,
                    series.direction,
                    series.conn_state,
                ),
                hist,
            ));
        }
        segments.sort_by(|a, b| a.0.cmp(&b.0));
        let mut categories: Vec<_> = categories.into_iter().collect();
        categories.sort_by_key(|(key, _)| *key);
        let mut store = aggregate.lock().unwrap_or_else(PoisonError::into_inner);
        *store = AggregateStore {
            segments,
            categories,
            journeys: snap.journeys.clone(),
            unnamed_segments: snap.unnamed_segments,
            recycled_segments: snap.recycled_segments,
            keys: snap.keys,
            fine: snap.series.clone(),
        };
    }

    /// The `/histograms` document: the kernel's histograms and the sampled
    /// journeys', both at the kernel's resolution, with their quantiles.
    pub fn histograms(&self) -> HistogramsDocument {
        let labels = |name: &str, category: Category, direction: Direction, state: ConnState| {
            (
                name.to_owned(),
                category.name(),
                direction.name(),
                state.name(),
            )
        };
        let mut kernel = Vec::new();
        if let Some(aggregate) = &self.aggregate {
            let store = aggregate.lock().unwrap_or_else(PoisonError::into_inner);
            for s in &store.fine {
                kernel.push(HistogramSeries::new(
                    labels(
                        &s.segment.name,
                        s.segment.category,
                        s.direction,
                        s.conn_state,
                    ),
                    s.count,
                    s.sum_ns,
                    &s.buckets,
                ));
            }
        }
        let store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        let mut sampled: Vec<HistogramSeries> = store
            .fine
            .iter()
            .filter_map(|(&(segment, direction, state), h)| {
                let (name, category) = store.segment_names.get(segment as usize)?;
                Some(HistogramSeries::new(
                    labels(name, *category, direction, state),
                    h.count,
                    h.sum_ns,
                    &h.buckets,
                ))
            })
            .collect();
        drop(store);
        for series in [&mut kernel, &mut sampled] {
            series.sort_by(|a, b| {
                (&a.segment, a.direction, a.conn_state).cmp(&(
                    &b.segment,
                    b.direction,
                    b.conn_state,
                ))
            });
        }
        HistogramsDocument {
            schema: histograms::SCHEMA,
            node: self.node.clone(),
            mode: if self.aggregate.is_some() {
                "aggregate"
            } else {
                "full"
            },
            bucket_lower_bounds_ns: histograms::bucket_lower_bounds_ns(),
            kernel,
            sampled,
        }
    }

    /// The pod label set of a journey: the pod it left or reached (by its
    /// network namespace, else its address) and the Service its first
    /// packet was sent to (before DNAT).
    fn labels_of(&self, j: &JourneySummary<'_>) -> PodLabelSet {
        if self.pod_labels == PodLabels::None {
            return PodLabelSet::default();
        }
        let flow = j.first_flow;
        let pod_ip: IpAddr = match j.direction {
            Direction::Ingress => flow.dst_addr(),
            Direction::Egress | Direction::Local => flow.src_addr(),
        };
        let pod = self.identity.pod(j.pod_netns, pod_ip);
        let mut set = PodLabelSet {
            pod_namespace: pod
                .as_ref()
                .map(|p| p.namespace.clone())
                .unwrap_or_default(),
            ..PodLabelSet::default()
        };
        if self.pod_labels == PodLabels::Pod {
            set.pod = pod.map(|p| p.name).unwrap_or_default();
            set.service = self
                .identity
                .service(flow.dst_addr())
                .map(|s| format!("{}/{}", s.namespace, s.name))
                .unwrap_or_default();
        }
        set
    }

    /// The metrics as OpenMetrics text (what `/metrics` serves).
    ///
    /// # Errors
    /// Only when formatting fails (it writes to a `String`).
    pub fn encode_text(self: &Arc<Self>) -> Result<String, std::fmt::Error> {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Arc::clone(self)));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)?;
        Ok(out)
    }
}

impl JourneyObserver for AgentMetrics {
    fn journey(&self, j: &JourneySummary<'_>) {
        let labels = self.labels_of(j);
        let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        if store.segment_names.len() < j.segment_names.len() {
            let known = store.segment_names.len();
            store.segment_names.extend(
                j.segment_names[known..]
                    .iter()
                    .map(|s| (s.name.clone(), s.category)),
            );
        }
        let label = store.label_id(labels);
        for &(segment, ns) in j.segments {
            store
                .segments
                .entry((segment, j.direction, j.conn_state, label))
                .or_default()
                .observe(ns);
        }
        if self.aggregate.is_some() {
            // Sampled journeys only (1 in N): full mode does not pay this.
            for &(segment, ns) in j.segments {
                store
                    .fine
                    .entry((segment, j.direction, j.conn_state))
                    .or_default()
                    .observe(ns);
            }
        }
        for &(category, ns) in j.categories {
            store
                .categories
                .entry((category, j.direction, j.conn_state, label))
                .or_default()
                .observe(ns);
        }
        if let Some((reason, location)) = j.drop {
            *store
                .drops
                .entry((reason.to_owned(), location.to_owned()))
                .or_default() += 1;
        }
        *store.journeys.entry(j.direction).or_default() += 1;
    }

    fn unparsed_packet(&self) {
        self.unparsed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Labels of one series, in exposition order.
fn series_labels<'a>(
    node: &'a str,
    extra: &[(&'static str, &'a str)],
    pod: &'a PodLabelSet,
) -> Vec<(&'static str, &'a str)> {
    let mut labels = Vec::with_capacity(extra.len() + 4);
    labels.extend_from_slice(extra);
    for (name, value) in [
        ("pod_namespace", pod.pod_namespace.as_str()),
        ("pod", pod.pod.as_str()),
        ("service", pod.service.as_str()),
    ] {
        if !value.is_empty() {
            labels.push((name, value));
        }
    }
    labels.push(("node", node));
    labels
}

/// Labels of a segment series.
fn segment_labels<'a>(
    node: &'a str,
    name: &'a str,
    category: Category,
    direction: Direction,
    conn_state: ConnState,
    pod: &'a PodLabelSet,
) -> Vec<(&'static str, &'a str)> {
    series_labels(
        node,
        &[
            ("segment", name),
            ("category", category.name()),
            ("direction", direction.name()),
            ("conn_state", conn_state.name()),
        ],
        pod,
    )
}

fn encode_counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(Vec<(&str, &str)>, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for AgentMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        let node = self.node.as_str();
        let none = PodLabelSet::default();
        let aggregate = self
            .aggregate
            .as_ref()
            .map(|a| a.lock().unwrap_or_else(PoisonError::into_inner));
        if let Some(agg) = &aggregate {
            let mut metric = encoder.encode_descriptor(
                "hoptrace_segment_duration_seconds",
                "Time between two consecutive hops of a packet on this node (one observation per segment crossing)",
                None,
                MetricType::Histogram,
            )?;
            for ((name, category, direction, conn_state), hist) in &agg.segments {
                let labels = segment_labels(node, name, *category, *direction, *conn_state, &none);
                hist.encode(metric.encode_family(&labels)?)?;
            }
            let mut metric = encoder.encode_descriptor(
                "hoptrace_category_duration_seconds",
                "Time of one journey (one packet on this node) spent in a category, summed over its segments",
                None,
                MetricType::Histogram,
            )?;
            for ((category, direction, conn_state), hist) in &agg.categories {
                let labels = series_labels(
                    node,
                    &[
                        ("category", category.name()),
                        ("direction", direction.name()),
                        ("conn_state", conn_state.name()),
                    ],
                    &none,
                );
                hist.encode(metric.encode_family(&labels)?)?;
            }
        }
        let segment_metric = if aggregate.is_some() {
            "hoptrace_sampled_segment_duration_seconds"
        } else {
            "hoptrace_segment_duration_seconds"
        };
        let mut metric = encoder.encode_descriptor(
            segment_metric,
            "Time between two consecutive hops of a packet on this node (one observation per segment crossing)",
            None,
            MetricType::Histogram,
        )?;
        let mut segments: Vec<_> = store.segments.iter().collect();
        segments.sort_by_key(|(key, _)| **key);
        for (&(segment, direction, conn_state, label), hist) in segments {
            let Some((name, category)) = store.segment_names.get(segment as usize) else {
                continue;
            };
            let labels = segment_labels(
                node,
                name,
                *category,
                direction,
                conn_state,
                &store.label_sets[label as usize],
            );
            hist.encode(metric.encode_family(&labels)?)?;
        }

        let category_metric = if aggregate.is_some() {
            "hoptrace_sampled_category_duration_seconds"
        } else {
            "hoptrace_category_duration_seconds"
        };
        let mut metric = encoder.encode_descriptor(
            category_metric,
            "Time of one journey (one packet on this node) spent in a category, summed over its segments",
            None,
            MetricType::Histogram,
        )?;
        let mut categories: Vec<_> = store.categories.iter().collect();
        categories.sort_by_key(|(key, _)| **key);
        for (&(category, direction, conn_state, label), hist) in categories {
            let labels = series_labels(
                node,
                &[
                    ("category", category.name()),
                    ("direction", direction.name()),
                    ("conn_state", conn_state.name()),
                ],
                &store.label_sets[label as usize],
            );
            hist.encode(metric.encode_family(&labels)?)?;
        }

        let mut drops: Vec<_> = store.drops.iter().collect();
        drops.sort();
        let drops: Vec<_> = drops
            .into_iter()
            .map(|((reason, location), count)| {
                (
                    series_labels(
                        node,
                        &[("reason", reason.as_str()), ("location", location.as_str())],
                        &none,
                    ),
                    *count,
                )
            })
            .collect();
        encode_counter(
            &mut encoder,
            "hoptrace_drops",
            "Packets the kernel dropped, by drop reason (include/net/dropreason-core.h) and the hop before the drop",
            &drops,
        )?;
        let mut journeys: Vec<_> = match &aggregate {
            Some(agg) => agg.journeys.iter().map(|(d, n)| (d, n)).collect(),
            None => store.journeys.iter().collect(),
        };
        journeys.sort();
        let journeys: Vec<_> = journeys
            .into_iter()
            .map(|(direction, count)| {
                (
                    series_labels(node, &[("direction", direction.name())], &none),
                    *count,
                )
            })
            .collect();
        encode_counter(
            &mut encoder,
            "hoptrace_journeys",
            "Journeys (packets followed across this node) with at least one segment",
            &journeys,
        )?;
        drop(store);
        let node_only = series_labels(node, &[], &none);
        let gauges = &self.session;
        if let Some(agg) = &aggregate {
            encode_counter(
                &mut encoder,
                "hoptrace_aggregate_unnamed_segments",
                "Aggregate mode: segments the kernel counted between hops the agent cannot name (a namespace or device it does not know)",
                &[(node_only.clone(), agg.unnamed_segments)],
            )?;
            encode_counter(
                &mut encoder,
                "hoptrace_aggregate_recycled_segments",
                "Aggregate mode: segments left out because their two hops cannot belong to one packet (the kernel joined a recycled buffer's next packet to the previous one's journey)",
                &[(node_only.clone(), agg.recycled_segments)],
            )?;
            encode_counter(
                &mut encoder,
                "hoptrace_aggregate_map_full",
                "Aggregate mode: segments not counted because the kernel's histogram map was full",
                &[(
                    node_only.clone(),
                    gauges.aggregate_map_full.load(Ordering::Relaxed),
                )],
            )?;
            encode_counter(
                &mut encoder,
                "hoptrace_aggregate_link_local_repeats",
                "Aggregate mode: link-local multicast packets (MLD, IGMP, neighbour discovery) whose buffer took a hop over 5 ms after the newest one: a repeat in a recycled buffer, counted as a new journey",
                &[(
                    node_only.clone(),
                    gauges.aggregate_link_local_repeats.load(Ordering::Relaxed),
                )],
            )?;
            let mut metric = encoder.encode_descriptor(
                "hoptrace_aggregate_keys",
                "Aggregate mode: entries of the kernel's histogram map (at most 4096)",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(i64::try_from(agg.keys).unwrap_or(i64::MAX))
                .encode(metric.encode_family(&node_only)?)?;
        }
        drop(aggregate);
        encode_counter(
            &mut encoder,
            "hoptrace_events_lost",
            "Hop events the kernel could not write (ring buffer full)",
            &[(
                node_only.clone(),
                gauges.events_lost.load(Ordering::Relaxed),
            )],
        )?;
        encode_counter(
            &mut encoder,
            "hoptrace_unparsed_packets",
            "Hop events whose headers did not parse",
            &[(node_only, self.unparsed.load(Ordering::Relaxed))],
        )?;
        let mut metric = encoder.encode_descriptor(
            "hoptrace_hooks_attached",
            "Kernel hooks attached, by kind",
            None,
            MetricType::Gauge,
        )?;
        for (kind, value) in [
            ("tc", &gauges.hooks_tc),
            ("netfilter", &gauges.hooks_netfilter),
            ("tracepoint", &gauges.hooks_tracepoint),
        ] {
            let labels = series_labels(node, &[("kind", kind)], &none);
            ConstGauge::new(i64::try_from(value.load(Ordering::Relaxed)).unwrap_or(i64::MAX))
                .encode(metric.encode_family(&labels)?)?;
        }
        let lost = i64::try_from(gauges.hooks_lost.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        let mut metric = encoder.encode_descriptor(
            "hoptrace_hooks_lost",
            "tc hooks another process removed since the agent attached them (their hops are missing; /readyz fails)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(lost).encode(metric.encode_family(&series_labels(node, &[], &none))?)?;
        encode_process_metrics(&mut encoder)
    }
}

/// `process_resident_memory_bytes` and `process_cpu_seconds_total`, the
/// usual process metrics, from /proc/self/stat.
fn encode_process_metrics(encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
    let Ok(me) = procfs::process::Process::myself() else {
        return Ok(());
    };
    let Ok(stat) = me.stat() else {
        return Ok(());
    };
    let ticks = procfs::ticks_per_second() as f64;
    let page = procfs::page_size();
    let rss = stat.rss.saturating_mul(page);
    ConstGauge::new(i64::try_from(rss).unwrap_or(i64::MAX)).encode(encoder.encode_descriptor(
        "process_resident_memory_bytes",
        "Resident memory size in bytes",
        None,
        MetricType::Gauge,
    )?)?;
    ConstCounter::new((stat.utime + stat.stime) as f64 / ticks).encode(
        encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            MetricType::Counter,
        )?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::identity::{PodRef, ServiceRef};
    use hoptrace_common::L3Headers;
    use hoptrace_core::attribution::taxonomy::SegmentName;

    /// Every address is a pod named after its last octet, in namespace
    /// `ns-<last octet>`; 10.96.0.1 is the Service `default/kubernetes`.
    #[derive(Debug)]
    struct ByOctet;

    impl Identity for ByOctet {
        fn pod(&self, _netns: Option<u32>, ip: IpAddr) -> Option<PodRef> {
            let IpAddr::V4(v4) = ip else { return None };
            let last = v4.octets()[3];
            Some(PodRef {
                namespace: format!("ns-{last}"),
                name: format!("pod-{last}"),
            })
        }

        fn service(&self, ip: IpAddr) -> Option<ServiceRef> {
            (ip == IpAddr::from([10, 96, 0, 1])).then(|| ServiceRef {
                namespace: "default".into(),
                name: "kubernetes".into(),
            })
        }
    }

    fn names() -> Vec<SegmentName> {
        vec![
            SegmentName {
                name: "netfilter.prerouting.dnat".into(),
                category: Category::KubeProxy,
            },
            SegmentName {
                name: "tunnel.vxlan.encap".into(),
                category: Category::Encapsulation,
            },
        ]
    }

    fn flow(src_last: u8) -> L3Headers {
        let mut flow = L3Headers::zeroed();
        flow.version = 4;
        flow.saddr[..4].copy_from_slice(&[10, 244, 0, src_last]);
        flow.daddr[..4].copy_from_slice(&[10, 96, 0, 1]);
        flow
    }

    fn observe(metrics: &AgentMetrics, src_last: u8, dnat_ns: u64, drop: Option<(&str, &str)>) {
        let names = names();
        let flow = flow(src_last);
        metrics.journey(&JourneySummary {
            direction: Direction::Egress,
            conn_state: ConnState::New,
            end_to_end_ns: dnat_ns + 3_000,
            start_ns: 0,
            segments: &[(0, dnat_ns), (1, 3_000)],
            segment_names: &names,
            categories: &[
                (Category::KubeProxy, dnat_ns),
                (Category::Encapsulation, 3_000),
            ],
            first_flow: &flow,
            encap: hoptrace_common::Encap::None,
            pod_netns: Some(42),
            drop,
        });
    }

    fn sample(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn journeys_become_histograms_with_pod_and_service_labels() {
        let metrics = Arc::new(AgentMetrics::new(
            "n1".into(),
            PodLabels::Pod,
            Arc::new(ByOctet),
        ));
        observe(&metrics, 7, 48_600, None);
        observe(&metrics, 7, 1_500, Some(("NETFILTER_DROP", "nf.forward.1")));
        let text = metrics.encode_text().expect("encode");
        let series = "segment=\"netfilter.prerouting.dnat\",category=\"kube-proxy\",direction=\"egress\",conn_state=\"new\",pod_namespace=\"ns-7\",pod=\"pod-7\",service=\"default/kubernetes\",node=\"n1\"}";
        let bucket = |le: &str| {
            sample(
                &text,
                &format!("hoptrace_segment_duration_seconds_bucket{{le=\"{le}\",{series}"),
            )
        };
        // 1.5 µs falls in le=2.5 µs, 48.6 µs in le=50 µs: cumulative counts.
        assert_eq!(bucket("0.000001"), Some(0.0), "{text}");
        assert_eq!(bucket("0.0000025"), Some(1.0), "{text}");
        assert_eq!(bucket("0.000025"), Some(1.0), "{text}");
        assert_eq!(bucket("0.00005"), Some(2.0), "{text}");
        assert_eq!(bucket("+Inf"), Some(2.0), "{text}");
        let sum = sample(
            &text,
            "hoptrace_segment_duration_seconds_sum{segment=\"netfilter.prerouting.dnat\"",
        )
        .expect("sum");
        assert!((sum - 50.1e-6).abs() < 1e-12, "{sum}");
        assert_eq!(
            sample(
                &text,
                "hoptrace_drops_total{reason=\"NETFILTER_DROP\",location=\"nf.forward.1\",node=\"n1\"}"
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "hoptrace_journeys_total{direction=\"egress\",node=\"n1\"}"
            ),
            Some(2.0)
        );
        assert!(text.contains("# TYPE hoptrace_category_duration_seconds histogram"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn histograms_carry_both_sides_at_the_kernels_resolution() {
        use hoptrace_common::agg::{AGG_BUCKETS, agg_bucket};
        let metrics = Arc::new(AgentMetrics::new_aggregate(
            "n1".into(),
            PodLabels::None,
            Arc::new(ByOctet),
        ));
        // The correlator's (sampled) journeys: DNAT 1,500 ns twice.
        observe(&metrics, 7, 1_500, None);
        observe(&metrics, 8, 1_500, None);
        // The kernel's histogram of the same segment: 1,500 ns three times.
        let mut buckets = vec![0; AGG_BUCKETS];
        buckets[agg_bucket(1_500)] = 3;
        metrics.set_aggregate(&AggregateSnapshot {
            series: vec![AggregateSeries {
                segment: names()[0].clone(),
                direction: Direction::Egress,
                conn_state: ConnState::New,
                count: 3,
                sum_ns: 4_500,
                buckets,
            }],
            ..AggregateSnapshot::default()
        });
        let doc = metrics.histograms();
        assert_eq!((doc.schema, doc.mode), (histograms::SCHEMA, "aggregate"));
        assert_eq!(doc.bucket_lower_bounds_ns.len(), AGG_BUCKETS);
        let dnat = |series: &[HistogramSeries]| {
            series
                .iter()
                .find(|s| s.segment == "netfilter.prerouting.dnat")
                .cloned()
                .expect("dnat series")
        };
        let (kernel, sampled) = (dnat(&doc.kernel), dnat(&doc.sampled));
        assert_eq!((kernel.count, sampled.count), (3, 2));
        assert_eq!(kernel.buckets, vec![(agg_bucket(1_500), 3)]);
        assert_eq!(sampled.buckets, vec![(agg_bucket(1_500), 2)]);
        // Same bucket, same quantiles: within the bucket that holds 1,500 ns.
        let (lo, hi) = (
            doc.bucket_lower_bounds_ns[agg_bucket(1_500)] as f64,
            doc.bucket_lower_bounds_ns[agg_bucket(1_500) + 1] as f64,
        );
        for p in [kernel.p50_ns, kernel.p99_ns, sampled.p50_ns, sampled.p99_ns] {
            let p = p.expect("quantile");
            assert!(p >= lo && p <= hi, "{p} in [{lo}, {hi}]");
        }
        assert_eq!(kernel.p99_ns, sampled.p99_ns);
        assert_eq!(kernel.category, "kube-proxy");
        assert_eq!((kernel.direction, kernel.conn_state), ("egress", "new"));
        // The kernel's count of link-local multicast repeats it split.
        metrics
            .session
            .aggregate_link_local_repeats
            .store(3, Ordering::Relaxed);
        let text = metrics.encode_text().expect("encode");
        assert!(
            text.contains("hoptrace_aggregate_link_local_repeats_total{node=\"n1\"} 3\n"),
            "{text}"
        );
        // Full mode keeps no fine histograms: the document is empty.
        let full = AgentMetrics::new("n1".into(), PodLabels::None, Arc::new(ByOctet));
        observe(&full, 7, 1_500, None);
        let doc = full.histograms();
        assert_eq!(doc.mode, "full");
        assert!(doc.kernel.is_empty() && doc.sampled.is_empty());
    }

    #[test]
    fn namespace_labels_only_and_the_label_sets_are_capped() {
        let metrics = Arc::new(AgentMetrics::new(
            "n1".into(),
            PodLabels::Namespace,
            Arc::new(ByOctet),
        ));
        for last in 0..=255u8 {
            observe(&metrics, last, 1_000, None);
        }
        let text = metrics.encode_text().expect("encode");
        assert!(!text.contains("pod=\""), "no pod label in namespace mode");
        assert!(!text.contains("service=\""));
        let namespaces = text
            .lines()
            .filter(|l| l.starts_with("hoptrace_segment_duration_seconds_count{segment=\"tunnel"))
            .count();
        assert_eq!(namespaces, 256);

        let capped = AgentMetrics::new("n1".into(), PodLabels::Pod, Arc::new(ByOctet));
        let mut store = capped.store.lock().expect("store");
        for i in 0..MAX_LABEL_SETS {
            store.label_id(PodLabelSet {
                pod_namespace: format!("x{i}"),
                ..PodLabelSet::default()
            });
        }
        assert_eq!(store.label_sets.len(), MAX_LABEL_SETS);
        assert_eq!(
            store.label_id(PodLabelSet {
                pod_namespace: "one-too-many".into(),
                ..PodLabelSet::default()
            }),
            1,
            "past the cap a new set counts as `other`"
        );
    }
}
