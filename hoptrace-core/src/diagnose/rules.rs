//! The finding rules, one function per family, in the order findings of
//! equal severity are listed. Every threshold is a constant of
//! [`thresholds`]; `docs/diagnose.md` gives each rule in words.

use crate::attribution::taxonomy::Category;
use crate::node::config::LinkConfig;
use crate::report::{ALL, Report};

use super::{Finding, Input, Severity};

/// The thresholds of the rules.
pub mod thresholds {
    /// kube-proxy time per new connection at or above which it is a
    /// warning, µs. A handful of services costs a few µs.
    pub const KUBE_PROXY_WARNING_US: f64 = 25.0;
    /// … and critical, µs: a quarter of a millisecond on every new
    /// connection, more than a whole round trip inside a cluster.
    pub const KUBE_PROXY_CRITICAL_US: f64 = 250.0;
    /// Services at or above which iptables mode is worth a warning even
    /// when no new connection was measured.
    pub const IPTABLES_SERVICES_WARNING: u64 = 5_000;
    /// conntrack table usage (count / max) for a warning, a fraction.
    pub const CONNTRACK_USAGE_WARNING: f64 = 0.75;
    /// … and critical, a fraction.
    pub const CONNTRACK_USAGE_CRITICAL: f64 = 0.90;
    /// p99 of the `qdisc` segment at or above which queueing is a
    /// warning, µs.
    pub const QDISC_P99_WARNING_US: f64 = 1_000.0;
    /// … and critical, µs.
    pub const QDISC_P99_CRITICAL_US: f64 = 50_000.0;
    /// New connections a kube-proxy finding needs before it says more
    /// than `info`: one connection's time is not a measurement.
    pub const KUBE_PROXY_MIN_CONNECTIONS: u64 = 5;
    /// Drops of one of the grouped reasons below which no finding is made
    /// (a single late packet of a closed connection is not a problem).
    pub const DROPS_MIN: u64 = 3;
    /// Time per request the ingress proxy's requests and responses wait in
    /// its sockets to be read, at or above which it is saturated, µs
    /// (a healthy lab proxy: about 100 µs; one CPU at 2,000 requests/s:
    /// 511-847 µs over three runs).
    pub const PROXY_QUEUE_WARNING_US: f64 = 300.0;
    /// … and the share of the request's measured time (the joined
    /// requests' mean less the load generator's own record) that wait must
    /// reach.
    pub const PROXY_QUEUE_WARNING_SHARE: f64 = 0.25;
}

use thresholds::*;

fn fmt_us(us: f64) -> String {
    if us >= 100.0 {
        format!("{us:.0}")
    } else {
        format!("{us:.1}")
    }
}

fn pct(fraction: f64) -> String {
    format!("{:.1}%", fraction * 100.0)
}

/// Drop reason names compare without case: the kernel's enum names are
/// upper case, some kernels' BTF-derived tables give them in lower case.
fn same(reason: &str, name: &str) -> bool {
    reason.eq_ignore_ascii_case(name)
}

/// A neighbour-failure drop reason (`NEIGH_FAILED`, `NEIGH_QUEUEFULL`, ...).
fn neighbour(reason: &str) -> bool {
    reason
        .get(..6)
        .is_some_and(|p| p.eq_ignore_ascii_case("NEIGH_"))
}

/// Every rule's findings, unsorted.
pub(super) fn all(input: &Input<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    out.extend(tunnel_checksum(input));
    out.extend(mtu(input));
    out.extend(drops(input));
    out.extend(kube_proxy(input));
    out.extend(conntrack(input));
    out.extend(queueing(input));
    out.extend(visibility(input.report));
    out.extend(latency(input.report));
    out
}

/// Findings of the request timeline (a lab run's `requests`): an ingress
/// proxy whose requests wait to be read (`ingress-proxy.saturated`).
pub fn requests(requests: &crate::report::LabRequests) -> Vec<Finding> {
    let mut out = Vec::new();
    let Some(proxy) = requests.categories.get(Category::IngressProxy.name()) else {
        return out;
    };
    // The joined requests' time as the hooks measured it, from the
    // client's connect or write to its read: the load generator's record
    // of its own timer (which, behind a saturated proxy, holds its queue
    // of requests not yet sent) is not the proxy's business.
    let measured = (requests.attributed_mean_us - requests.client_own_mean_us).max(1.0);
    let share = proxy.socket_queue_mean_us / measured;
    if proxy.socket_queue_mean_us >= PROXY_QUEUE_WARNING_US && share >= PROXY_QUEUE_WARNING_SHARE {
        let mut f = Finding::new(
            "ingress-proxy.saturated",
            Severity::Warning,
            format!(
                "The ingress proxy is saturated: requests wait {} µs to be read ({} of the request from the client's write to its read)",
                fmt_us(proxy.socket_queue_mean_us),
                pct(share)
            ),
        )
        .number("ingress_proxy_mean_us", proxy.mean_us, "us")
        .number("socket_queue_mean_us", proxy.socket_queue_mean_us, "us")
        .number("share", share, "fraction");
        f.evidence.push(format!(
            "ingress proxy {} µs per request (p99 {} µs), of which waiting in its sockets to be read {} µs",
            fmt_us(proxy.mean_us),
            fmt_us(proxy.p99_us),
            fmt_us(proxy.socket_queue_mean_us)
        ));
        f.evidence.push(format!(
            "{} requests joined; {} µs per request measured from the client's connect or write to its read",
            requests.joined,
            fmt_us(measured)
        ));
        f.cause = "The proxy's processes cannot read requests as fast as they arrive: too few CPUs or workers for the rate, or CPU limits throttling it.".into();
        f.advice = "Give the proxy more CPUs or workers (or lift its CPU limit), or spread the load over more replicas.".into();
        out.push(f);
    }
    out
}

/// Mean, p99 (max over rows) and count of a category on new connections.
fn new_connection_cost(report: &Report, category: Category) -> Option<(f64, f64, u64, f64)> {
    let rows: Vec<_> = report
        .categories
        .iter()
        .filter(|r| r.category == category && r.conn_state == "new" && r.direction != ALL)
        .collect();
    let count: u64 = rows.iter().map(|r| r.stats.count).sum();
    if count == 0 {
        return None;
    }
    let total: f64 = rows.iter().map(|r| r.stats.total_us).sum();
    let p99 = rows.iter().map(|r| r.stats.p99_us).fold(0.0, f64::max);
    let share = rows
        .iter()
        .map(|r| r.share * r.stats.count as f64)
        .sum::<f64>()
        / count as f64;
    Some((total / count as f64, p99, count, share))
}

fn kube_proxy(input: &Input<'_>) -> Option<Finding> {
    let rules = input.config.map(|c| &c.kube_proxy);
    let measured = new_connection_cost(input.report, Category::KubeProxy);
    let iptables_many =
        rules.is_some_and(|r| r.mode == "iptables" && r.services >= IPTABLES_SERVICES_WARNING);
    let rules = rules.filter(|r| matches!(r.mode.as_str(), "iptables" | "nftables"));
    let ruleset = rules.map(|r| {
        if r.mode == "iptables" {
            format!(
                "ruleset: iptables mode, {} services (KUBE-SVC chains), {} rules in nat KUBE-SERVICES, {} kube-proxy rules in all",
                r.services, r.service_rules, r.rules
            )
        } else {
            format!(
                "ruleset: nftables mode, {} services (service chains), {} rules in table ip kube-proxy",
                r.services, r.rules
            )
        }
    });
    let advice_iptables = "Switch kube-proxy to nftables mode (one verdict-map lookup per new \
        connection whatever the number of services) or replace it with an eBPF service \
        implementation (Cilium, Calico eBPF); IPVS mode also uses a hash lookup. Remove unused \
        Services. `hoptrace lab --kube-proxy nftables --services N` measures the difference on \
        this machine.";
    let Some((mean, p99, count, share)) = measured else {
        let r = rules.filter(|_| iptables_many)?;
        let mut f = Finding::new(
            "kube-proxy.rule-cost",
            Severity::Warning,
            format!(
                "{} services in iptables mode: every new connection walks {} rules",
                r.services, r.service_rules
            ),
        )
        .number("services", r.services as f64, "count")
        .number("service_rules", r.service_rules as f64, "count");
        f.evidence.extend(ruleset);
        f.evidence
            .push("no new connection crossed kube-proxy's chains during the trace".into());
        f.cause =
            "iptables mode matches a connection's first packet against KUBE-SERVICES rule by rule."
                .into();
        f.advice = advice_iptables.into();
        return Some(f);
    };
    let severity = if count < KUBE_PROXY_MIN_CONNECTIONS && !iptables_many {
        Severity::Info
    } else if count >= KUBE_PROXY_MIN_CONNECTIONS && mean >= KUBE_PROXY_CRITICAL_US {
        Severity::Critical
    } else if (count >= KUBE_PROXY_MIN_CONNECTIONS && mean >= KUBE_PROXY_WARNING_US)
        || iptables_many
    {
        Severity::Warning
    } else {
        Severity::Info
    };
    let mode = rules.map_or("", |r| r.mode.as_str());
    let mut title = format!(
        "kube-proxy adds {} µs to every new connection",
        fmt_us(mean)
    );
    if let Some(r) = rules {
        title.push_str(&format!(" ({} services, {} mode)", r.services, r.mode));
    }
    let mut f = Finding::new("kube-proxy.rule-cost", severity, title)
        .number("mean_us", mean, "us")
        .number("p99_us", p99, "us")
        .number("new_connections", count as f64, "count")
        .number("share", share, "fraction");
    f.evidence.push(format!(
        "{count} new connections: kube-proxy's chains took {} µs on average (p99 {} µs), {} of those packets' time on this node",
        fmt_us(mean),
        fmt_us(p99),
        pct(share)
    ));
    if let Some(r) = rules {
        f = f
            .number("services", r.services as f64, "count")
            .number("service_rules", r.service_rules as f64, "count")
            .number("rules", r.rules as f64, "count");
    }
    f.evidence.extend(ruleset);
    if mode == "iptables" {
        let per_rule = rules
            .filter(|r| r.service_rules > 0)
            .map(|r| mean * 1000.0 / r.service_rules as f64);
        f.cause = match per_rule {
            Some(ns) => format!(
                "iptables mode matches a connection's first packet against KUBE-SERVICES rule by rule: about {ns:.0} ns per rule here, so the cost grows with every Service."
            ),
            None => "iptables mode matches a connection's first packet against KUBE-SERVICES rule by rule.".into(),
        };
        f.advice = if severity == Severity::Info {
            "Nothing to change at this size; the cost grows linearly with the number of Services in iptables mode.".into()
        } else {
            advice_iptables.into()
        };
    } else {
        f.cause =
            "The nat and filter chains of kube-proxy run on the first packet of every connection."
                .into();
        f.advice = if severity == Severity::Info {
            "Nothing to change.".into()
        } else {
            "Check for long custom chains next to kube-proxy's (the whole nat band is counted), or use an eBPF service implementation.".into()
        };
    }
    Some(f)
}

fn conntrack(input: &Input<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Some(c) = input.counters.map(|c| &c.conntrack) {
        if c.max > 0 {
            let usage = c.count as f64 / c.max as f64;
            let severity = if usage >= CONNTRACK_USAGE_CRITICAL {
                Some(Severity::Critical)
            } else if usage >= CONNTRACK_USAGE_WARNING {
                Some(Severity::Warning)
            } else {
                None
            };
            if let Some(severity) = severity {
                let mut f = Finding::new(
                    "conntrack.table-full",
                    severity,
                    format!(
                        "The conntrack table is {} full ({} of {} entries)",
                        pct(usage),
                        c.count,
                        c.max
                    ),
                )
                .number("count", c.count as f64, "count")
                .number("max", c.max as f64, "count")
                .number("usage", usage, "fraction");
                f.evidence.push(format!(
                    "nf_conntrack_count {} / nf_conntrack_max {}",
                    c.count, c.max
                ));
                f.cause = "Many connections (or many short-lived ones whose entries linger in TIME_WAIT/UDP timeouts).".into();
                f.advice = "Raise net.netfilter.nf_conntrack_max (and nf_conntrack_buckets), shorten the timeouts of idle entries, or exempt high-volume traffic with NOTRACK in the raw table.".into();
                out.push(f);
            }
        }
        let lost = c.insert_failed + c.drop + c.early_drop;
        if lost > 0 {
            let severity = if c.drop > 0 {
                Severity::Critical
            } else {
                Severity::Warning
            };
            let mut f = Finding::new(
                "conntrack.insert-failed",
                severity,
                format!(
                    "conntrack lost {lost} entries during the trace ({} insert failures, {} drops, {} early drops)",
                    c.insert_failed, c.drop, c.early_drop
                ),
            )
            .number("insert_failed", c.insert_failed as f64, "count")
            .number("drop", c.drop as f64, "count")
            .number("early_drop", c.early_drop as f64, "count");
            f.evidence.push(format!(
                "/proc/net/stat/nf_conntrack during the trace: insert_failed +{}, drop +{}, early_drop +{}",
                c.insert_failed, c.drop, c.early_drop
            ));
            f.cause = "Insert failures are races between packets of one new flow (typically parallel UDP DNS queries through a DNAT); drops mean a full table.".into();
            f.advice = "For DNS races: use TCP for DNS or a node-local DNS cache; for drops: raise nf_conntrack_max.".into();
            out.push(f);
        }
    }
    let per_packet = input
        .report
        .category_total(Category::Conntrack)
        .filter(|r| r.stats.count > 0);
    if let Some(row) = per_packet {
        let mut f = Finding::new(
            "conntrack.cost",
            Severity::Info,
            format!(
                "conntrack takes {} µs per packet ({} of those packets' time)",
                fmt_us(row.stats.mean_us),
                pct(row.share)
            ),
        )
        .number("mean_us", row.stats.mean_us, "us")
        .number("p99_us", row.stats.p99_us, "us")
        .number("packets", row.stats.count as f64, "count");
        f.evidence.push(format!(
            "{} packets: mean {} µs, p99 {} µs",
            row.stats.count,
            fmt_us(row.stats.mean_us),
            fmt_us(row.stats.p99_us)
        ));
        if let Some(c) = input.counters.map(|c| &c.conntrack).filter(|c| c.max > 0) {
            f.evidence.push(format!(
                "table: {} of {} entries; {} INVALID packets during the trace",
                c.count, c.max, c.invalid
            ));
        }
        f.cause =
            "Connection tracking looks up (and for new flows creates) an entry per packet.".into();
        f.advice = "Nothing to change unless this dominates; NOTRACK in the raw table exempts traffic that needs no NAT or state.".into();
        out.push(f);
    }
    out
}

fn link<'a>(links: &'a [LinkConfig], name: &str) -> Option<&'a LinkConfig> {
    links.iter().find(|l| l.name == name)
}

fn mtu(input: &Input<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    let Some(config) = input.config else {
        return out;
    };
    let snmp = input.counters.map(|c| c.snmp.clone()).unwrap_or_default();
    let encap_drops: u64 = input
        .drops
        .iter()
        .filter(|g| g.examples.iter().any(|e| e.encap != "none") && !same(&g.reason, "UDP_CSUM"))
        .map(|g| g.count)
        .sum();
    for tunnel in config.links.iter().filter(|l| l.overhead().is_some()) {
        let overhead = tunnel.overhead().unwrap_or(0);
        let Some(under) = tunnel
            .underlay
            .as_deref()
            .and_then(|u| link(&config.links, u))
        else {
            continue;
        };
        let needed = tunnel.mtu + overhead;
        let df = tunnel.df.as_deref().unwrap_or("unset");
        // VXLAN/GENEVE count the inner Ethernet header in the 50 bytes;
        // the tunnel MTU is the inner IP packet's limit.
        if needed > under.mtu {
            let largest = under.mtu.saturating_sub(overhead);
            let severity = if df == "unset" {
                Severity::Warning
            } else {
                Severity::Critical
            };
            let fate = if df == "unset" {
                "fragmented after encapsulation"
            } else {
                "dropped after encapsulation"
            };
            let mut f = Finding::new(
                "mtu.tunnel-exceeds-underlay",
                severity,
                format!(
                    "{} MTU {} + {} bytes of {} > {} MTU {}: packets over {largest} bytes are {fate}",
                    tunnel.name, tunnel.mtu, overhead, tunnel.kind, under.name, under.mtu
                ),
            )
            .number("tunnel_mtu", f64::from(tunnel.mtu), "bytes")
            .number("underlay_mtu", f64::from(under.mtu), "bytes")
            .number("overhead", f64::from(overhead), "bytes")
            .number("frag_fails", snmp.frag_fails as f64, "count")
            .number("icmp_dest_unreach_sent", snmp.icmp_out_dest_unreach as f64, "count")
            .number("encapsulated_drops", encap_drops as f64, "count");
            f.evidence.push(format!(
                "{}: mtu {}, {} df {}; underlay {}: mtu {}",
                tunnel.name, tunnel.mtu, tunnel.kind, df, under.name, under.mtu
            ));
            f.evidence.push(format!(
                "during the trace: {} packets could not be fragmented (FragFails), {} ICMP destination-unreachable sent, {} encapsulated packets dropped",
                snmp.frag_fails, snmp.icmp_out_dest_unreach, encap_drops
            ));
            f.cause = format!(
                "The overlay MTU leaves no room for the {} header on this underlay.",
                tunnel.kind
            );
            f.advice = format!(
                "Set the tunnel and pod MTUs to {largest} (underlay {} - {overhead}), e.g. flannel's or Calico's MTU setting, or raise the underlay MTU to {needed}.",
                under.mtu
            );
            out.push(f);
        }
        for pod in config
            .links
            .iter()
            .filter(|l| l.pod_veth && l.mtu > tunnel.mtu)
            .take(1)
        {
            let mut f = Finding::new(
                "mtu.pod-exceeds-tunnel",
                Severity::Warning,
                format!(
                    "Pod interface {} MTU {} > tunnel {} MTU {}: full-size pod packets cannot cross the tunnel",
                    pod.name, pod.mtu, tunnel.name, tunnel.mtu
                ),
            )
            .number("pod_mtu", f64::from(pod.mtu), "bytes")
            .number("tunnel_mtu", f64::from(tunnel.mtu), "bytes");
            f.evidence.push(format!(
                "{}: mtu {}; {}: mtu {}",
                pod.name, pod.mtu, tunnel.name, tunnel.mtu
            ));
            f.cause = "The CNI configured pods with a larger MTU than its tunnel.".into();
            f.advice = format!("Set the pods' MTU to {} or less.", tunnel.mtu);
            out.push(f);
        }
    }
    if snmp.reasm_reqds > 0 || snmp.frag_creates > 0 {
        let mut f = Finding::new(
            "mtu.fragmentation",
            Severity::Warning,
            format!(
                "IP fragments on this node: {} fragments created, {} received for reassembly",
                snmp.frag_creates, snmp.reasm_reqds
            ),
        )
        .number("frag_creates", snmp.frag_creates as f64, "count")
        .number("reasm_reqds", snmp.reasm_reqds as f64, "count")
        .number("reasm_fails", snmp.reasm_fails as f64, "count");
        f.evidence.push(format!(
            "/proc/net/snmp during the trace: FragCreates +{}, ReasmReqds +{}, ReasmFails +{}",
            snmp.frag_creates, snmp.reasm_reqds, snmp.reasm_fails
        ));
        f.cause = "Packets larger than a path's MTU without DF (often tunnel packets whose outer header does not fit).".into();
        f.advice =
            "Lower the pod/tunnel MTU so that inner packet + encapsulation fits the underlay."
                .into();
        out.push(f);
    }
    out
}

fn tunnel_checksum(input: &Input<'_>) -> Option<Finding> {
    let tunnels: Vec<&LinkConfig> = input
        .config
        .map(|c| {
            c.links
                .iter()
                .filter(|l| matches!(l.kind.as_str(), "vxlan" | "geneve"))
                .collect()
        })
        .unwrap_or_default();
    let groups: Vec<_> = input
        .drops
        .iter()
        .filter(|g| same(&g.reason, "UDP_CSUM"))
        .collect();
    let traced: u64 = groups
        .iter()
        .filter(|g| g.examples.iter().any(|e| e.encap != "none"))
        .map(|g| g.count)
        .sum();
    let all_csum = input
        .report
        .drops
        .iter()
        .find(|d| same(&d.reason, "UDP_CSUM"))
        .map_or(0, |d| d.count);
    let counter = input.counters.map_or(0, |c| c.snmp.udp_in_csum_errors);
    if traced == 0 && (tunnels.is_empty() || counter == 0) {
        return None;
    }
    let mut f = Finding::new(
        "tunnel.udp-checksum",
        Severity::Critical,
        format!(
            "{} tunnel packets dropped for a bad outer UDP checksum",
            traced.max(counter)
        ),
    )
    .number("tunnel_drops", traced as f64, "count")
    .number("udp_csum_drops", all_csum as f64, "count")
    .number("udp_in_csum_errors", counter as f64, "count");
    f.evidence.push(format!(
        "drop reason UDP_CSUM: {all_csum} packets, {traced} of them encapsulated; Udp InCsumErrors +{counter}"
    ));
    for t in &tunnels {
        let offloads = t.offloads_on.as_ref().map_or_else(
            || "offloads unknown".to_owned(),
            |on| {
                if on.is_empty() {
                    "no checksum offload on".to_owned()
                } else {
                    format!("on: {}", on.join(", "))
                }
            },
        );
        f.evidence.push(format!(
            "{} ({} port {}): {offloads}",
            t.name,
            t.kind,
            t.udp_port.map_or_else(|| "?".into(), |p| p.to_string())
        ));
    }
    f.examples = groups
        .iter()
        .flat_map(|g| g.examples.iter().cloned())
        .take(super::EXAMPLES_PER_GROUP)
        .collect();
    let generic_on = tunnels.iter().any(|t| {
        t.offloads_on
            .as_ref()
            .is_some_and(|on| on.iter().any(|o| o == "tx-checksum-ip-generic"))
    });
    f.cause = "The sending node's outer UDP checksum is wrong: the known cause is TX checksum offload of VXLAN packets (a NIC or kernel that fills in the inner checksum but not the outer one), or corruption on the way.".into();
    f.advice = if generic_on {
        format!(
            "On the sending nodes turn off TX checksum offload of the tunnel device: `ethtool -K {} tx-checksum-ip-generic off` (flannel and Calico have a setting for this), and check the NIC driver/firmware.",
            tunnels.first().map_or("flannel.1", |t| t.name.as_str())
        )
    } else {
        "On the sending nodes turn off TX checksum offload of the tunnel device (`ethtool -K <vxlan device> tx-checksum-ip-generic off`), and check the underlay NIC and path.".into()
    };
    Some(f)
}

/// Example flows of `groups`, at most a few.
fn examples(groups: &[&super::DropGroup]) -> Vec<crate::attribution::ledger::FlowInfo> {
    groups
        .iter()
        .flat_map(|g| g.examples.iter().cloned())
        .take(super::EXAMPLES_PER_GROUP)
        .collect()
}

fn locations(groups: &[&super::DropGroup]) -> String {
    groups
        .iter()
        .map(|g| format!("{} at {}", g.count, g.location))
        .collect::<Vec<_>>()
        .join(", ")
}

fn drops(input: &Input<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    let report_count = |reason: &str| {
        input
            .report
            .drops
            .iter()
            .filter(|d| same(&d.reason, reason))
            .map(|d| d.count)
            .sum::<u64>()
    };
    let take = |pred: &dyn Fn(&super::DropGroup) -> bool| -> Vec<&super::DropGroup> {
        input.drops.iter().filter(|g| pred(g)).collect()
    };
    let counted = |groups: &[&super::DropGroup], reasons: &[&str]| -> u64 {
        let traced: u64 = groups.iter().map(|g| g.count).sum();
        traced.max(reasons.iter().map(|r| report_count(r)).sum())
    };

    // rp_filter.
    let rp = take(&|g| same(&g.reason, "IP_RPFILTER"));
    let n = counted(&rp, &["IP_RPFILTER"]);
    if n >= DROPS_MIN {
        let strict: Vec<String> = input
            .config
            .map(|c| {
                c.rp_filter
                    .iter()
                    .filter(|r| r.value == 1)
                    .map(|r| r.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut f = Finding::new(
            "drops.rp-filter",
            Severity::Critical,
            format!("Reverse-path filtering dropped {n} packets"),
        )
        .number("drops", n as f64, "count");
        f.evidence
            .push(format!("drop reason IP_RPFILTER: {}", locations(&rp)));
        if !strict.is_empty() {
            f.evidence
                .push(format!("strict rp_filter (1) on: {}", strict.join(", ")));
        }
        f.examples = examples(&rp);
        f.cause = "Strict rp_filter with an asymmetric route: the route back to the packet's source leaves by another device than the one it arrived on.".into();
        f.advice = "Set net.ipv4.conf.<device>.rp_filter=2 (loose) on the devices that receive pod or tunnel traffic (and `all`, since the kernel uses the larger of both), or make the routes symmetric.".into();
        out.push(f);
    }

    // No route.
    let noroute_reasons = ["IP_NOROUTE", "IP_INADDRERRORS", "IP_OUTNOROUTES"];
    let nr = take(&|g| noroute_reasons.iter().any(|r| same(&g.reason, r)));
    let n = counted(&nr, &noroute_reasons);
    if n >= DROPS_MIN {
        let mut f = Finding::new(
            "drops.no-route",
            Severity::Warning,
            format!("{n} packets dropped for lack of a route"),
        )
        .number("drops", n as f64, "count");
        f.evidence.push(format!(
            "drop reasons IP_NOROUTE/IP_INADDRERRORS/IP_OUTNOROUTES: {}",
            locations(&nr)
        ));
        f.examples = examples(&nr);
        f.cause = "Traffic to an address no route covers (a pod CIDR of a node that left, a stale Service IP).".into();
        f.advice = "Check the routes to the example destinations (`ip route get <dst>`) and the CNI's routes to other nodes.".into();
        out.push(f);
    }

    // Netfilter drops: conntrack INVALID in kube-proxy's filter chains, or other rules.
    let nf = take(&|g| same(&g.reason, "NETFILTER_DROP"));
    let n = counted(&nf, &["NETFILTER_DROP"]);
    if n >= DROPS_MIN {
        let invalid_rule = input
            .config
            .is_some_and(|c| c.kube_proxy.forward_drops_invalid);
        let invalid = input.counters.map_or(0, |c| c.conntrack.invalid);
        let in_filter = nf.iter().any(|g| g.location.ends_with(".-1"));
        let mut f = if invalid_rule && invalid > 0 && in_filter {
            let mut f = Finding::new(
                "drops.conntrack-invalid",
                Severity::Warning,
                format!(
                    "kube-proxy's filter chain dropped {n} packets that conntrack called INVALID"
                ),
            );
            f.evidence.push(format!(
                "KUBE-FORWARD drops ctstate INVALID; conntrack counted {invalid} INVALID packets during the trace"
            ));
            f.cause = "Packets conntrack cannot place in a connection: out-of-window TCP (often after asymmetric routing or a conntrack table flush), invalid TCP flags, bad checksums.".into();
            f.advice = "Find the senders in the examples; for asymmetric paths make both directions cross this node, or raise nf_conntrack_tcp_be_liberal=1 if out-of-window packets of legitimate flows are dropped.".into();
            f = f.number("conntrack_invalid", invalid as f64, "count");
            f
        } else {
            let mut f = Finding::new(
                "drops.netfilter",
                Severity::Warning,
                format!("Netfilter rules dropped {n} packets"),
            );
            f.cause = "A DROP rule (a NetworkPolicy, a firewall) matched these flows.".into();
            f.advice = "Check that the examples are meant to be blocked (`iptables-save -c` / `nft list ruleset` shows the rule counters).".into();
            f
        };
        f = f.number("drops", n as f64, "count");
        f.evidence
            .insert(0, format!("drop reason NETFILTER_DROP: {}", locations(&nf)));
        f.examples = examples(&nf);
        out.push(f);
    }

    // Neighbour failures.
    let neigh = take(&|g| neighbour(&g.reason));
    let n = neigh.iter().map(|g| g.count).sum::<u64>().max(
        input
            .report
            .drops
            .iter()
            .filter(|d| neighbour(&d.reason))
            .map(|d| d.count)
            .sum(),
    );
    if n >= DROPS_MIN {
        let mut f = Finding::new(
            "drops.neighbour",
            Severity::Warning,
            format!("{n} packets dropped because a neighbour (ARP) entry failed"),
        )
        .number("drops", n as f64, "count");
        f.evidence
            .push(format!("drop reasons NEIGH_*: {}", locations(&neigh)));
        f.examples = examples(&neigh);
        f.cause = "The next hop does not answer ARP/ND (a node or pod that is gone), or the neighbour table is full.".into();
        f.advice = "Check the next hop's reachability; raise net.ipv4.neigh.default.gc_thresh3 if the table is full.".into();
        out.push(f);
    }

    // Everything else, as information.
    let grouped = |r: &str| {
        ["IP_RPFILTER", "NETFILTER_DROP", "UDP_CSUM", "QDISC_DROP"]
            .iter()
            .chain(&noroute_reasons)
            .any(|g| same(r, g))
            || neighbour(r)
    };
    // IPv6 link-scope housekeeping (MLD reports to ff02::16, router
    // solicitations to ff02::2, from a link-local source) that nobody on
    // the link listens to: every interface that comes up (each new pod's
    // veth) sends a few, and the kernel frees them as drops. Noise on a
    // real node as in the lab: counted from the drop records, left out.
    let housekeeping = |reason: &str| -> u64 {
        input
            .report
            .drop_records
            .iter()
            .filter(|g| g.reason == reason)
            .flat_map(|g| &g.records)
            .filter(|r| link_scope_housekeeping(&r.flow))
            .count() as u64
    };
    let others: Vec<(&str, u64)> = input
        .report
        .drops
        .iter()
        .filter(|d| !grouped(&d.reason))
        .map(|d| {
            (
                d.reason.as_str(),
                d.count.saturating_sub(housekeeping(&d.reason)),
            )
        })
        .filter(|d| d.1 > 0)
        .collect();
    let ignored: u64 = input
        .report
        .drops
        .iter()
        .filter(|d| !grouped(&d.reason))
        .map(|d| d.count.min(housekeeping(&d.reason)))
        .sum();
    let n: u64 = others.iter().map(|d| d.1).sum();
    if n > 0 {
        let mut f = Finding::new(
            "drops.other",
            Severity::Info,
            if others.len() == 1 {
                format!("{n} other packet drops, all {}", others[0].0)
            } else {
                format!(
                    "{n} other packet drops, most {} ({})",
                    others[0].0, others[0].1
                )
            },
        )
        .number("drops", n as f64, "count");
        f.evidence.push(
            others
                .iter()
                .take(5)
                .map(|d| format!("{} {}", d.0, d.1))
                .collect::<Vec<_>>()
                .join(", "),
        );
        if ignored > 0 {
            f.evidence.push(format!(
                "not counted: {ignored} IPv6 link-scope packets (MLD reports, router solicitations) of interfaces coming up"
            ));
        }
        f.examples = examples(
            &input
                .drops
                .iter()
                .filter(|g| !grouped(&g.reason))
                .collect::<Vec<_>>(),
        );
        f.cause = "Drops the kernel makes in normal operation (closed sockets, packets for other hosts, TCP housekeeping) or by reasons without a dedicated rule.".into();
        f.advice = "Usually nothing; look closer if one reason grows with traffic.".into();
        out.push(f);
    }
    out
}

/// An IPv6 packet from a link-local address to a link-scope multicast
/// group (`ff02::/16`: MLD reports, router and neighbour solicitations):
/// link housekeeping, not traffic.
fn link_scope_housekeeping(flow: &crate::attribution::ledger::FlowInfo) -> bool {
    // `addr`, or `[addr]:port` for protocols with ports.
    let addr = |s: &str| {
        s.strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .map_or(s, |(a, _)| a)
            .parse::<std::net::Ipv6Addr>()
    };
    let (Ok(src), Ok(dst)) = (addr(&flow.src), addr(&flow.dst)) else {
        return false;
    };
    src.segments()[0] & 0xffc0 == 0xfe80 && dst.segments()[0] == 0xff02
}

fn queueing(input: &Input<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    let rows: Vec<_> = input
        .report
        .segments
        .iter()
        .filter(|s| s.segment == "qdisc" && s.stats.count > 0)
        .collect();
    let qdiscs = input.counters.map_or(&[][..], |c| c.qdiscs.as_slice());
    let busy: Vec<String> = qdiscs
        .iter()
        .filter(|q| q.overlimits > 0 || q.drops > 0 || q.backlog > 0)
        .map(|q| {
            format!(
                "{} {}: {} packets, {} drops, {} overlimits, backlog {} bytes",
                q.device, q.kind, q.packets, q.drops, q.overlimits, q.backlog
            )
        })
        .collect();
    if !rows.is_empty() {
        let count: u64 = rows.iter().map(|r| r.stats.count).sum();
        let total: f64 = rows.iter().map(|r| r.stats.total_us).sum();
        let p99 = rows.iter().map(|r| r.stats.p99_us).fold(0.0, f64::max);
        let mean = total / count as f64;
        if p99 >= QDISC_P99_WARNING_US {
            let severity = if p99 >= QDISC_P99_CRITICAL_US {
                Severity::Critical
            } else {
                Severity::Warning
            };
            let mut f = Finding::new(
                "queueing.qdisc-delay",
                severity,
                format!(
                    "Packets wait in a qdisc: p99 {} µs (mean {} µs)",
                    fmt_us(p99),
                    fmt_us(mean)
                ),
            )
            .number("p99_us", p99, "us")
            .number("mean_us", mean, "us")
            .number("packets", count as f64, "count");
            f.evidence.push(format!(
                "segment qdisc: {count} packets, mean {} µs, p99 {} µs",
                fmt_us(mean),
                fmt_us(p99)
            ));
            f.evidence.extend(busy.iter().cloned());
            f.cause = "A shaping qdisc (tbf, htb) holds packets to keep its rate, or the device is saturated.".into();
            f.advice = "Check the rate of the shaping qdisc (`tc -s qdisc show`) against the traffic; remove or raise it if it is not meant to limit this traffic.".into();
            out.push(f);
        }
    }
    let dropping: Vec<_> = qdiscs.iter().filter(|q| q.drops > 0).collect();
    let qdisc_drop_reason = input
        .report
        .drops
        .iter()
        .find(|d| same(&d.reason, "QDISC_DROP"))
        .map_or(0, |d| d.count);
    let n = dropping
        .iter()
        .map(|q| q.drops)
        .sum::<u64>()
        .max(qdisc_drop_reason);
    if n > 0 {
        let mut f = Finding::new(
            "queueing.qdisc-drops",
            Severity::Warning,
            format!("{n} packets dropped by a qdisc"),
        )
        .number("drops", n as f64, "count");
        f.evidence.extend(busy);
        f.evidence
            .push(format!("drop reason QDISC_DROP: {qdisc_drop_reason}"));
        f.examples = examples(
            &input
                .drops
                .iter()
                .filter(|g| same(&g.reason, "QDISC_DROP"))
                .collect::<Vec<_>>(),
        );
        f.cause =
            "The queue was full: more traffic than the qdisc's rate or the device can send.".into();
        f.advice = "Raise the shaper's rate or limit, or find the sender that exceeds it.".into();
        out.push(f);
    }
    out
}

fn visibility(report: &Report) -> Vec<Finding> {
    let mut out = Vec::new();
    if report.lost_events > 0 {
        let mut f = Finding::new(
            "visibility.lost-events",
            Severity::Warning,
            format!(
                "{} events were lost in the kernel: the figures above undercount",
                report.lost_events
            ),
        )
        .number("lost_events", report.lost_events as f64, "count");
        f.evidence.push(format!(
            "ring buffer full {} times; {} journeys recorded",
            report.lost_events, report.journeys
        ));
        f.cause = "hoptrace's reader fell behind the traffic.".into();
        f.advice = "Trace with --ip/--port filters, or a shorter busy period.".into();
        out.push(f);
    }
    let mut missing: Vec<String> = report
        .capabilities
        .get("fidelity")
        .and_then(|v| v.as_array())
        .map(|lines| {
            lines
                .iter()
                .filter_map(|l| l.as_str())
                .filter(|l| !l.starts_with("ok:"))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    missing.extend(
        report
            .notes
            .iter()
            .filter(|n| n.contains("unavailable") || n.contains("not attached"))
            .cloned(),
    );
    if !missing.is_empty() {
        let mut f = Finding::new(
            "visibility.missing-hooks",
            Severity::Info,
            format!(
                "hoptrace could not see everything on this kernel ({} caveats)",
                missing.len()
            ),
        )
        .number("caveats", missing.len() as f64, "count");
        f.evidence = missing;
        f.cause = "Hooks this kernel does not offer (see `hoptrace check`).".into();
        f.advice = "The time of the missing hooks stays inside the neighbouring segments; nothing is lost, it is less finely split.".into();
        out.push(f);
    }
    out
}

fn latency(report: &Report) -> Option<Finding> {
    let best = report
        .categories
        .iter()
        .filter(|r| r.direction == ALL && r.conn_state == ALL && r.stats.total_us > 0.0)
        .max_by(|a, b| a.stats.total_us.total_cmp(&b.stats.total_us))?;
    let e2e = report.end_to_end_total().map_or(0.0, |r| r.stats.total_us);
    let share = if e2e > 0.0 {
        best.stats.total_us / e2e
    } else {
        0.0
    };
    let mut f = Finding::new(
        "latency.largest-category",
        Severity::Info,
        format!(
            "Most of the time on this node is {} ({} of end-to-end time, p99 {} µs per packet)",
            best.category.name(),
            pct(share),
            fmt_us(best.stats.p99_us)
        ),
    )
    .number("share", share, "fraction")
    .number("total_us", best.stats.total_us, "us")
    .number("p99_us", best.stats.p99_us, "us");
    f.evidence.push(format!(
        "{}: {} µs of {} µs end to end over {} journeys",
        best.category.name(),
        fmt_us(best.stats.total_us),
        fmt_us(e2e),
        report.journeys
    ));
    f.cause = "The per-category table below splits it further.".into();
    f.advice = "Nothing to change by itself; see the segments of this category.".into();
    Some(f)
}
