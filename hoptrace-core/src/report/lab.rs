//! The lab document, `hoptrace.lab.v1`: the runs of `hoptrace lab`, each
//! with its settings and load results (the `lab` section) and one node
//! report per lab node.
//!
//! These types use plain strings and numbers only: the `hoptrace-lab`
//! crate fills them from its own types (datapath, kube-proxy mode, ingress
//! kind, load spec and result), this crate does not know them.

use serde::{Deserialize, Serialize};

use super::{DocumentError, Report, Stats, read_document};

/// Schema id of the lab document: the value of its `schema` field.
pub const LAB_SCHEMA: &str = "hoptrace.lab.v1";

/// The lab document, `hoptrace.lab.v1`: one entry per run (datapath).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabDocument {
    /// Always [`LAB_SCHEMA`].
    pub schema: String,
    /// The runs, in the order they ran.
    pub runs: Vec<LabRunDocument>,
}

/// One run of the lab (`runs[]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabRunDocument {
    /// Name of the run (the datapath, e.g. `flannel-vxlan`).
    pub label: String,
    /// Settings and client-side results of the run.
    pub lab: LabSection,
    /// One node report per lab node, each with this run's `lab` section.
    pub nodes: Vec<Report>,
    /// The request timeline of the run (HTTP loads with the socket
    /// tracepoints available); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<LabRequests>,
    /// The same requests as one lab node alone joins them (`hoptrace lab
    /// --node-view`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_view: Option<LabNodeView>,
}

/// One lab node's own view of a run's requests (`runs[].node_view`): its
/// processes' socket events and its own journeys joined as `hoptrace
/// trace` or `diagnose` on that node would join them (a client or backend
/// on another node stood in for), beside the lab's view of every node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabNodeView {
    /// The node (`node0`, `node1`, ...).
    pub node: String,
    /// Its request timeline; the client's figures are the joined
    /// requests' own (no load generator on a node).
    pub requests: LabRequests,
}

/// The request timeline of a lab run (`runs[].requests`): every request
/// the client sent while traced, joined from its write to its read of the
/// response across every node, the proxy and the application.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabRequests {
    /// Requests the client sent while traced (request messages seen).
    pub count: u64,
    /// Requests joined end to end.
    pub joined: u64,
    /// `joined / count` (0..=1; 0 when `count` is 0).
    pub join_rate: f64,
    /// Mean client latency the load generator measured, µs.
    pub client_mean_us: f64,
    /// Median client latency, µs.
    pub client_p50_us: f64,
    /// 99th percentile client latency, µs.
    pub client_p99_us: f64,
    /// Mean time per joined request that the timeline names (client's
    /// write to its read of the whole response), µs.
    pub attributed_mean_us: f64,
    /// `attributed_mean_us / client_mean_us` (0 when no client latency).
    pub coverage: f64,
    /// Of `attributed_mean_us`, what the load generator reported of itself
    /// (`client.wait` + `client.process`: its timer's lateness and its own
    /// work), µs; the rest hoptrace measured in the kernel.
    pub client_own_mean_us: f64,
    /// Time per joined request by category name (every category a request
    /// crossed, summed over every node).
    pub categories: std::collections::BTreeMap<String, RequestCategory>,
    /// Mean hold per request the lab's builtin proxy measured itself
    /// (`--proxy-delay`), µs; absent without a builtin proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_hold_mean_us: Option<f64>,
    /// Joined requests with a TCP retransmission in one of their legs
    /// (a `tcp.retransmit` segment, docs/segments.md); 0 in documents
    /// written before it existed.
    #[serde(default)]
    pub retransmitted: u64,
    /// Mean `tcp.retransmit` time over the `retransmitted` requests (not
    /// over every request), µs; 0 without any.
    #[serde(default)]
    pub retransmit_mean_us: f64,
    /// The slowest joined requests (at most 5), slowest first.
    pub slowest: Vec<RequestWaterfall>,
    /// Caveats: hooks missing, events lost, what was not joined.
    pub notes: Vec<String>,
}

/// One category's time per request (`runs[].requests.categories.*`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestCategory {
    /// Mean over joined requests (0 for those that did not cross it), µs.
    pub mean_us: f64,
    /// Median, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Mean of the category's `socket.queue` segments per request, µs.
    pub socket_queue_mean_us: f64,
}

/// One request as a waterfall (`runs[].requests.slowest[]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestWaterfall {
    /// The client's write of the request, bpf ktime ns.
    pub start_ns: u64,
    /// Client write to its read of the whole response, µs.
    pub total_us: f64,
    /// Whether the request went through the proxy.
    pub proxied: bool,
    /// Contiguous segments in time order.
    pub segments: Vec<WaterfallSegment>,
}

/// One segment of a waterfall (`runs[].requests.slowest[].segments[]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WaterfallSegment {
    /// Segment name (docs/segments.md, "Requests").
    pub segment: String,
    /// Category name.
    pub category: String,
    /// Start, bpf ktime ns.
    pub start_ns: u64,
    /// Duration, µs.
    pub duration_us: f64,
}

/// What a lab run was and what its client saw: the `lab` section of a lab
/// run and of each of its node reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabSection {
    /// Datapath built (`flannel-vxlan`, `calico-bgp`, `cilium-like`, ...).
    pub datapath: String,
    /// Number of lab nodes (2 or 3).
    pub nodes: u32,
    /// kube-proxy mode in effect: `iptables`, `nftables` or `none`.
    pub kube_proxy: String,
    /// Extra (non-matching) services programmed in front of the lab's own.
    pub services: u32,
    /// Proxy in front of the backend: `none`, `builtin`, `nginx`, `haproxy`.
    pub ingress: String,
    /// Address the load went to, `ip:port`.
    pub target: String,
    /// The load offered.
    pub load: LabLoad,
    /// Requests answered correctly in time.
    pub requests_ok: u64,
    /// Requests that failed (connect error, reset, bad status, bad reply).
    pub errors: u64,
    /// Requests that missed their deadline.
    pub timeouts: u64,
    /// Failed requests (`errors`) by kind.
    #[serde(default)]
    pub error_kinds: ClientErrorKinds,
    /// Successful requests per second of the schedule's duration.
    pub achieved_rate: f64,
    /// Latency the load generator saw, successful requests only.
    pub client_latency: ClientLatency,
}

/// Failed client requests by kind (`lab.error_kinds`); they add up to
/// `errors` (timeouts are counted apart, in `timeouts`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientErrorKinds {
    /// The peer reset or aborted the connection (RST, broken pipe).
    pub reset: u64,
    /// The connection was refused (RST to the SYN, or ICMP unreachable).
    pub refused: u64,
    /// The reply ended early: the connection closed before a whole
    /// response, or a short datagram.
    pub short_read: u64,
    /// The server or the ingress proxy answered with a status other than
    /// 2xx (a proxy says 502 when its upstream refused or reset).
    #[serde(default)]
    pub bad_status: u64,
    /// Anything else: a malformed reply, another socket error.
    pub other: u64,
}

/// The load a lab run offered (`lab.load`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabLoad {
    /// `http-keep-alive`, `http-new-connection` or `udp`.
    pub mode: String,
    /// Persistent connections (keep-alive) or concurrent workers (other modes).
    pub connections: u64,
    /// Offered requests per second over all connections.
    pub rate: f64,
    /// Length of the send schedule, seconds.
    pub duration: f64,
    /// Hard limit per request from its intended send time, seconds.
    pub request_timeout: f64,
    /// Path of the HTTP request.
    pub http_path: String,
    /// Size of each UDP request datagram, bytes.
    pub udp_payload_len: u64,
}

/// Client-side latency of a lab run (`lab.client_latency`): from the
/// intended send time to the complete reply, in µs, from an HDR histogram
/// with 3 significant digits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientLatency {
    /// Median, µs.
    pub p50_us: u64,
    /// 90th percentile, µs.
    pub p90_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
    /// Largest latency, µs.
    pub max_us: u64,
    /// Mean, µs.
    pub mean_us: f64,
    /// Recorded buckets in ascending order as `[value_us, percentile, count]`:
    /// `percentile` (0–100, not a fraction) is the share of samples at or
    /// below `value_us`, `count` the samples in this bucket.
    pub histogram: Vec<(u64, f64, u64)>,
}

impl ClientLatency {
    /// The summary as [`Stats`]: `count` is the sum of the bucket counts and
    /// `total_us` is `mean_us × count` (the histogram keeps no exact sum).
    pub fn stats(&self) -> Stats {
        let count: u64 = self.histogram.iter().map(|bucket| bucket.2).sum();
        Stats {
            count,
            p50_us: self.p50_us as f64,
            p90_us: self.p90_us as f64,
            p99_us: self.p99_us as f64,
            max_us: self.max_us as f64,
            mean_us: self.mean_us,
            total_us: self.mean_us * count as f64,
        }
    }
}

impl LabRunDocument {
    /// A run of `nodes`, each given a copy of `lab` as its `lab` section.
    pub fn new(label: String, lab: LabSection, nodes: Vec<Report>) -> Self {
        let nodes = nodes
            .into_iter()
            .map(|mut report| {
                report.lab = Some(lab.clone());
                report
            })
            .collect();
        Self {
            label,
            lab,
            nodes,
            requests: None,
            node_view: None,
        }
    }
}

impl LabDocument {
    /// The document of `runs`, with its schema id set.
    pub fn new(runs: Vec<LabRunDocument>) -> Self {
        Self {
            schema: LAB_SCHEMA.to_owned(),
            runs,
        }
    }

    /// Pretty-printed JSON.
    ///
    /// # Errors
    /// [`DocumentError::Serialize`] when serde_json refuses a value (e.g. a
    /// map with non-string keys inside a node's `capabilities`).
    pub fn to_json_pretty(&self) -> Result<String, DocumentError> {
        serde_json::to_string_pretty(self).map_err(|source| DocumentError::Serialize {
            schema: LAB_SCHEMA,
            source,
        })
    }

    /// Reads a lab document written by [`LabDocument::to_json_pretty`].
    ///
    /// # Errors
    /// As [`Report::from_json`], with [`LAB_SCHEMA`] the only schema accepted.
    pub fn from_json(json: &str) -> Result<LabDocument, DocumentError> {
        read_document(json, &[LAB_SCHEMA])?;
        serde_json::from_str(json).map_err(|source| DocumentError::Invalid {
            schema: LAB_SCHEMA,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample;

    #[test]
    fn round_trip_and_every_node_has_the_lab_section() {
        let document = sample::lab_document();
        let json = document.to_json_pretty().expect("serialize");
        let back = LabDocument::from_json(&json).expect("parse");
        assert_eq!(back, document);
        let value: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(value["schema"], LAB_SCHEMA);
        let run = &value["runs"][0];
        assert_eq!(run["nodes"][0]["lab"], run["lab"]);
        assert_eq!(run["nodes"][0]["schema"], crate::report::REPORT_SCHEMA);
        // The load spec keeps the lab's own field names and units.
        assert!(run["lab"]["load"]["duration"].is_f64());
        assert!(run["lab"]["client_latency"]["histogram"][0].is_array());
        assert!(run["lab"]["client_latency"]["p50_us"].is_u64());
    }

    #[test]
    fn client_latency_as_stats() {
        let latency = sample::lab_section().client_latency;
        let stats = latency.stats();
        assert_eq!(stats.count, 1000);
        assert!((stats.p50_us - 210.0).abs() < 1e-9);
        assert!((stats.total_us - 1000.0 * latency.mean_us).abs() < 1e-6);
    }

    #[test]
    fn reports_are_not_lab_documents() {
        let report = sample::report().to_json_pretty().unwrap();
        assert!(matches!(
            LabDocument::from_json(&report),
            Err(DocumentError::Schema { .. })
        ));
    }
}
