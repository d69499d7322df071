//! Test documents: a ledger of two journeys and a drop, and node reports and
//! lab documents with every field (and every optional part) filled.

use crate::attribution::ledger::Ledger;
use crate::correlate::tests::{SKB, ctx, node_a_journey, node_b_journey};
use crate::correlate::{Correlator, CorrelatorOptions};

use super::{ClientLatency, LabDocument, LabLoad, LabRunDocument, LabSection, Report, ReportMeta};

/// Node A's and node B's journeys of the correlator tests, plus one drop.
pub(crate) fn ledger() -> Ledger {
    let mut c = Correlator::new(ctx(), CorrelatorOptions::default());
    let (a, _) = node_a_journey(0, SKB, 100);
    let (b, _) = node_b_journey(1_000_000, SKB + 0x1000);
    for e in a.iter().chain(b.iter()) {
        c.push(e);
    }
    let mut drop = b[0];
    drop.skb_addr = 0x9000;
    drop.packet.inner.ip_id = 4242;
    drop.hook = hoptrace_common::HookKind::Drop as u8;
    drop.drop_reason = 6;
    c.push(&drop);
    c.finish()
}

/// [`ledger`] plus an ICMP "fragmentation needed" (3/4, MTU 1450) from the
/// network, dropped: an exemplar and a drop record with `flow.icmp`.
pub(crate) fn ledger_with_icmp() -> Ledger {
    let mut c = Correlator::new(ctx(), CorrelatorOptions::default());
    let (a, _) = node_a_journey(0, SKB, 100);
    let (b, _) = node_b_journey(1_000_000, SKB + 0x1000);
    for e in a.iter().chain(b.iter()) {
        c.push(e);
    }
    let mut icmp = b[0];
    icmp.skb_addr = 0xa000;
    icmp.ts_ns = 2_000_000;
    icmp.skb_len = 576;
    icmp.packet = hoptrace_common::PacketMeta::zeroed();
    icmp.packet.outer = b[0].packet.outer;
    icmp.packet.outer.l4_proto = hoptrace_common::packet::IPPROTO_ICMP;
    icmp.packet.outer.tcp_flags = 3;
    icmp.packet.outer.icmp_code = 4;
    icmp.packet.outer.dport = 1450;
    icmp.packet.outer.ip_id = 777;
    c.push(&icmp);
    let mut icmp_drop = icmp;
    icmp_drop.ts_ns += 3_000;
    icmp_drop.hook = hoptrace_common::HookKind::Drop as u8;
    icmp_drop.drop_reason = 6;
    c.push(&icmp_drop);
    c.finish()
}

pub(crate) fn meta() -> ReportMeta {
    ReportMeta {
        node: "node-a".into(),
        kernel: "6.18.0".into(),
        started_at: "2026-11-21T06:00:00Z".into(),
        duration_s: 10.0,
        capabilities: serde_json::json!({"tc": true, "netfilter": true}),
        lost_events: 3,
        notes: vec!["netfilter links unavailable: netfilter time stays inside routing".into()],
    }
}

/// A node report without a `lab` section, as `hoptrace trace` writes it.
pub(crate) fn report() -> Report {
    Report::from_ledger(ledger(), meta())
}

/// [`report`] with every optional part, `flow.icmp` included.
pub(crate) fn full_report() -> Report {
    Report::from_ledger(ledger_with_icmp(), meta())
}

/// A `lab` section with every field set.
pub(crate) fn lab_section() -> LabSection {
    LabSection {
        datapath: "flannel-vxlan".into(),
        nodes: 2,
        kube_proxy: "iptables".into(),
        services: 100,
        ingress: "builtin".into(),
        target: "10.244.1.3:8081".into(),
        load: LabLoad {
            mode: "http-keep-alive".into(),
            connections: 8,
            rate: 500.0,
            duration: 10.0,
            request_timeout: 2.0,
            http_path: "/".into(),
            udp_payload_len: 64,
        },
        requests_ok: 1000,
        errors: 0,
        timeouts: 0,
        error_kinds: super::lab::ClientErrorKinds::default(),
        achieved_rate: 100.0,
        client_latency: ClientLatency {
            p50_us: 210,
            p90_us: 380,
            p99_us: 900,
            p999_us: 1500,
            max_us: 2100,
            mean_us: 251.5,
            histogram: vec![
                (150, 10.0, 100),
                (210, 50.0, 400),
                (900, 99.0, 490),
                (2100, 100.0, 10),
            ],
        },
    }
}

/// A lab document of one run with two nodes.
pub(crate) fn lab_document() -> LabDocument {
    use super::lab::{LabRequests, RequestCategory, RequestWaterfall, WaterfallSegment};
    let mut node_b = full_report();
    node_b.node = "node-b".into();
    let mut run = LabRunDocument::new(
        "flannel-vxlan".into(),
        lab_section(),
        vec![full_report(), node_b],
    );
    let category = RequestCategory {
        mean_us: 310.0,
        p50_us: 290.0,
        p99_us: 700.0,
        socket_queue_mean_us: 250.0,
    };
    run.requests = Some(LabRequests {
        count: 1000,
        joined: 998,
        join_rate: 0.998,
        client_mean_us: 1770.0,
        client_p50_us: 1600.0,
        client_p99_us: 4000.0,
        attributed_mean_us: 1700.0,
        coverage: 0.96,
        client_own_mean_us: 900.0,
        categories: [("ingress-proxy".to_owned(), category)]
            .into_iter()
            .collect(),
        proxy_hold_mean_us: Some(2100.0),
        retransmitted: 0,
        retransmit_mean_us: 0.0,
        slowest: vec![RequestWaterfall {
            start_ns: 1_000_000,
            total_us: 5000.0,
            proxied: true,
            segments: vec![WaterfallSegment {
                segment: "proxy.request".into(),
                category: "ingress-proxy".into(),
                start_ns: 1_000_000,
                duration_us: 5000.0,
            }],
        }],
        notes: vec!["request timeline: example".into()],
    });
    run.node_view = run.requests.clone().map(|requests| super::LabNodeView {
        node: "node1".into(),
        requests,
    });
    LabDocument::new(vec![run])
}

/// A diagnosis document with every optional field and array filled.
pub(crate) fn diagnosis() -> super::DiagnosisDocument {
    use crate::diagnose::{DropGroup, Finding, Severity};
    use crate::node::config::{
        ConntrackStats, KubeProxyRules, LinkConfig, NodeConfig, NodeCounters, QdiscStats, RpFilter,
        SnmpCounters,
    };
    let flow = crate::attribution::ledger::FlowInfo {
        proto: "udp".into(),
        src: "10.244.0.2:40000".into(),
        dst: "10.96.0.10:53".into(),
        encap: "vxlan".into(),
        icmp: None,
    };
    let mut finding = Finding::new("drops.rp-filter", Severity::Critical, "t".into())
        .number("drops", 20.0, "count");
    finding.evidence.push("e".into());
    finding.cause = "c".into();
    finding.advice = "a".into();
    finding.examples.push(flow.clone());
    let mut report = full_report();
    report.lab = None;
    super::DiagnosisDocument {
        schema: super::DIAGNOSIS_SCHEMA.into(),
        node: "node-a".into(),
        started_at: "2025-01-01T00:00:00Z".into(),
        findings: vec![finding],
        node_config: NodeConfig {
            kube_proxy: KubeProxyRules {
                mode: "iptables".into(),
                services: 1,
                service_rules: 1,
                rules: 5,
                forward_drops_invalid: true,
            },
            links: vec![LinkConfig {
                name: "flannel.1".into(),
                kind: "vxlan".into(),
                mtu: 1450,
                uplink: false,
                pod_veth: false,
                underlay: Some("eth0".into()),
                udp_port: Some(8472),
                df: Some("unset".into()),
                udp_csum: Some(false),
                offloads_on: Some(vec!["tx-checksum-ip-generic".into()]),
            }],
            rp_filter: vec![RpFilter {
                name: "all".into(),
                value: 1,
            }],
            notes: vec!["n".into()],
        },
        counters: NodeCounters {
            conntrack: ConntrackStats::default(),
            snmp: SnmpCounters::default(),
            qdiscs: vec![QdiscStats::default()],
            notes: vec!["n".into()],
        },
        drop_groups: vec![DropGroup {
            reason: "IP_RPFILTER".into(),
            location: "nf.prerouting.101".into(),
            count: 20,
            examples: vec![flow],
        }],
        report,
    }
}
