//! The node's configuration and its kernel counters, as `hoptrace diagnose`
//! reads them: kube-proxy's rule set, conntrack usage and statistics, the
//! MTUs and tunnel parameters of every device, qdiscs, `rp_filter`, tunnel
//! checksum offloads, and the IP/UDP/ICMP counters of `/proc/net/snmp`.
//!
//! Everything is read from the calling thread's network namespace: files
//! under `/proc/thread-self/net/` (not `/proc/net`, which follows the
//! process's first thread), `/proc/sys/net/` (per opener's namespace),
//! netlink sockets made on this thread and the `iptables-save`/`nft`
//! tools, which inherit the thread's namespace. Run [`read_config`] and
//! [`read_counters`] inside [`super::in_netns`] for another node.
//!
//! The parsers are pure functions tested on recorded text; what cannot be
//! read becomes a note, never an error: a diagnosis with one reader
//! missing is still a diagnosis.

use std::process::Command;

use serde::{Deserialize, Serialize};

use super::netconf;

/// kube-proxy's rules as counted in the node's ruleset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeProxyRules {
    /// `iptables`, `nftables` or `none` (no `KUBE-SERVICES` chain and no
    /// `kube-proxy` nftables table).
    pub mode: String,
    /// Service ports with endpoints: `KUBE-SVC-*` chains (iptables) or
    /// `service-*` chains of table `ip kube-proxy` (nftables).
    pub services: u64,
    /// Rules in the nat `KUBE-SERVICES` chain, walked one by one by a
    /// connection's first packet in iptables mode (0 in nftables mode,
    /// where one verdict-map lookup replaces them).
    pub service_rules: u64,
    /// Every rule in a `KUBE-*` chain (iptables) or in table `ip
    /// kube-proxy` (nftables).
    pub rules: u64,
    /// The filter `KUBE-FORWARD` chain drops packets conntrack calls
    /// `INVALID` (`-m conntrack --ctstate INVALID -j DROP`).
    pub forward_drops_invalid: bool,
}

/// One device's MTU and tunnel parameters (from `RTM_GETLINK`) and its
/// checksum offloads (ethtool netlink).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkConfig {
    /// Interface name.
    pub name: String,
    /// Link kind (`veth`, `bridge`, `vxlan`, `ipip`, `geneve`, ... or
    /// `device` for a physical one).
    pub kind: String,
    /// MTU, bytes.
    pub mtu: u32,
    /// Output device of the default route.
    pub uplink: bool,
    /// The node end of a veth whose peer is in another namespace (a pod).
    pub pod_veth: bool,
    /// For tunnels: the device the outer packets leave by (`vxlan ...
    /// dev X`, else the uplink), if known.
    pub underlay: Option<String>,
    /// For VXLAN/GENEVE: UDP destination port.
    pub udp_port: Option<u16>,
    /// For VXLAN: outer DF bit, `unset`, `set` or `inherit`.
    pub df: Option<String>,
    /// For VXLAN: outer UDP checksums computed on transmit (`udpcsum`).
    pub udp_csum: Option<bool>,
    /// Checksum and tunnel offload features that are on, by ethtool name
    /// (`tx-checksum-ip-generic`, `tx-udp_tnl-csum-segmentation`, ...);
    /// `None` when ethtool could not be asked.
    pub offloads_on: Option<Vec<String>>,
}

impl LinkConfig {
    /// Encapsulation overhead of this device's outer headers over IPv4,
    /// bytes: VXLAN 50 (outer Ethernet 14 + IP 20 + UDP 8 + VXLAN 8),
    /// GENEVE 50 without options, IPIP 20; `None` for other devices.
    pub fn overhead(&self) -> Option<u32> {
        match self.kind.as_str() {
            "vxlan" | "geneve" => Some(50),
            "ipip" => Some(20),
            _ => None,
        }
    }
}

/// One root qdisc and its counters (`tc -s qdisc`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QdiscStats {
    /// Device name.
    pub device: String,
    /// Qdisc kind (`tbf`, `htb`, `fq_codel`, `noqueue`, ...).
    pub kind: String,
    /// Packets sent (a counter).
    pub packets: u64,
    /// Packets dropped (a counter).
    pub drops: u64,
    /// Times the qdisc held packets back to keep its rate (a counter).
    pub overlimits: u64,
    /// Packets queued when read (a gauge).
    pub qlen: u64,
    /// Bytes queued when read (a gauge).
    pub backlog: u64,
}

/// conntrack's per-namespace statistics, summed over CPUs
/// (`/proc/net/stat/nf_conntrack`, what `conntrack -S` prints).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackStats {
    /// Entries in the table (a gauge, `nf_conntrack_count`).
    pub count: u64,
    /// Size limit of the table (`nf_conntrack_max`); 0 when unknown.
    pub max: u64,
    /// Packets conntrack could not classify (state `INVALID`).
    pub invalid: u64,
    /// Entries inserted.
    pub insert: u64,
    /// Entries that lost an insertion race (the packet is dropped).
    pub insert_failed: u64,
    /// Packets dropped because the table was full.
    pub drop: u64,
    /// Entries evicted early to make room.
    pub early_drop: u64,
}

/// IP, UDP and ICMP counters of the namespace (`/proc/net/snmp`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnmpCounters {
    /// Packets that needed fragmenting but had DF set, or could not be
    /// fragmented (`Ip: FragFails`).
    pub frag_fails: u64,
    /// Fragments created (`Ip: FragCreates`).
    pub frag_creates: u64,
    /// Fragments received that needed reassembly (`Ip: ReasmReqds`).
    pub reasm_reqds: u64,
    /// Reassemblies that failed (`Ip: ReasmFails`).
    pub reasm_fails: u64,
    /// UDP datagrams with a bad checksum (`Udp: InCsumErrors`).
    pub udp_in_csum_errors: u64,
    /// ICMP "destination unreachable" sent, including "fragmentation
    /// needed" (`IcmpMsg: OutType3`).
    pub icmp_out_dest_unreach: u64,
}

/// What the diagnosis reads once: the node's configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    /// kube-proxy's rule set.
    pub kube_proxy: KubeProxyRules,
    /// Every device of the node namespace.
    pub links: Vec<LinkConfig>,
    /// `net.ipv4.conf.<name>.rp_filter` for `all`, `default` and every
    /// device: 0 off, 1 strict, 2 loose.
    pub rp_filter: Vec<RpFilter>,
    /// What could not be read, one line each.
    pub notes: Vec<String>,
}

/// One `rp_filter` sysctl.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpFilter {
    /// `all`, `default` or a device name.
    pub name: String,
    /// 0 off, 1 strict, 2 loose.
    pub value: u8,
}

/// What the diagnosis reads before and after tracing: counters, whose
/// difference says what happened meanwhile.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCounters {
    /// conntrack usage and statistics.
    pub conntrack: ConntrackStats,
    /// IP/UDP/ICMP counters.
    pub snmp: SnmpCounters,
    /// Root qdiscs of every device.
    pub qdiscs: Vec<QdiscStats>,
    /// What could not be read, one line each.
    pub notes: Vec<String>,
}

impl NodeCounters {
    /// The counters' growth from `before` to `self`; gauges (conntrack
    /// `count`/`max`, qdisc `qlen`/`backlog`) keep `self`'s value. A qdisc
    /// that is new since `before` counts from zero.
    pub fn since(&self, before: &NodeCounters) -> NodeCounters {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        let (c, b) = (&self.conntrack, &before.conntrack);
        let (s, bs) = (&self.snmp, &before.snmp);
        NodeCounters {
            conntrack: ConntrackStats {
                count: c.count,
                max: c.max,
                invalid: d(c.invalid, b.invalid),
                insert: d(c.insert, b.insert),
                insert_failed: d(c.insert_failed, b.insert_failed),
                drop: d(c.drop, b.drop),
                early_drop: d(c.early_drop, b.early_drop),
            },
            snmp: SnmpCounters {
                frag_fails: d(s.frag_fails, bs.frag_fails),
                frag_creates: d(s.frag_creates, bs.frag_creates),
                reasm_reqds: d(s.reasm_reqds, bs.reasm_reqds),
                reasm_fails: d(s.reasm_fails, bs.reasm_fails),
                udp_in_csum_errors: d(s.udp_in_csum_errors, bs.udp_in_csum_errors),
                icmp_out_dest_unreach: d(s.icmp_out_dest_unreach, bs.icmp_out_dest_unreach),
            },
            qdiscs: self
                .qdiscs
                .iter()
                .map(|q| {
                    let old = before
                        .qdiscs
                        .iter()
                        .find(|o| o.device == q.device && o.kind == q.kind);
                    let o = old.cloned().unwrap_or_default();
                    QdiscStats {
                        device: q.device.clone(),
                        kind: q.kind.clone(),
                        packets: d(q.packets, o.packets),
                        drops: d(q.drops, o.drops),
                        overlimits: d(q.overlimits, o.overlimits),
                        qlen: q.qlen,
                        backlog: q.backlog,
                    }
                })
                .collect(),
            notes: self.notes.clone(),
        }
    }
}

/// Reads the node's configuration in the calling thread's namespace.
/// Never fails: what cannot be read is a note in [`NodeConfig::notes`].
pub fn read_config() -> NodeConfig {
    let mut notes = Vec::new();
    let kube_proxy = read_kube_proxy(&mut notes);
    let links = match netconf::links() {
        Ok(links) => links,
        Err(e) => {
            notes.push(format!("device MTUs and tunnels: {e}"));
            Vec::new()
        }
    };
    let mut names: Vec<String> = vec!["all".into(), "default".into()];
    names.extend(links.iter().map(|l| l.name.clone()));
    let rp_filter = names
        .into_iter()
        .filter_map(|name| {
            let text = std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{name}/rp_filter"))
                .ok()?;
            Some(RpFilter {
                name,
                value: text.trim().parse().ok()?,
            })
        })
        .collect();
    NodeConfig {
        kube_proxy,
        links,
        rp_filter,
        notes,
    }
}

/// Reads the counters in the calling thread's namespace. Never fails:
/// what cannot be read stays 0 and is a note in [`NodeCounters::notes`].
pub fn read_counters() -> NodeCounters {
    let mut notes = Vec::new();
    let mut conntrack = match std::fs::read_to_string("/proc/thread-self/net/stat/nf_conntrack") {
        Ok(text) => parse_conntrack_stat(&text),
        Err(e) => {
            notes.push(format!(
                "conntrack statistics: /proc/net/stat/nf_conntrack: {e}"
            ));
            ConntrackStats::default()
        }
    };
    let sysctl = |name: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    conntrack.count = sysctl("nf_conntrack_count").unwrap_or(0);
    conntrack.max = sysctl("nf_conntrack_max").unwrap_or(0);
    let snmp = match std::fs::read_to_string("/proc/thread-self/net/snmp") {
        Ok(text) => parse_snmp(&text),
        Err(e) => {
            notes.push(format!("IP counters: /proc/net/snmp: {e}"));
            SnmpCounters::default()
        }
    };
    let qdiscs = match netconf::qdiscs() {
        Ok(q) => q,
        Err(e) => {
            notes.push(format!("qdisc counters: {e}"));
            Vec::new()
        }
    };
    NodeCounters {
        conntrack,
        snmp,
        qdiscs,
        notes,
    }
}

fn run(argv: &[&str]) -> Result<String, String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .map_err(|e| format!("{}: {e}", argv[0]))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn read_kube_proxy(notes: &mut Vec<String>) -> KubeProxyRules {
    // `iptables-save` prints the tables of the backend the `iptables`
    // alternative points to (nf_tables on Debian); kube-proxy writes to the
    // backend that already holds rules (the iptables-wrappers convention),
    // which may be the other one: read the legacy (x_tables) one too.
    let mut first_error = None;
    for save in ["iptables-save", "iptables-legacy-save"] {
        match run(&[save]) {
            Ok(text) => {
                let rules = parse_iptables_save(&text);
                if rules.mode == "iptables" {
                    return rules;
                }
            }
            // A node without the legacy tools is normal: say only why
            // `iptables-save` failed.
            Err(e) if save == "iptables-save" => first_error = Some(e),
            Err(_) => {}
        }
    }
    match run(&["nft", "list", "table", "ip", "kube-proxy"]) {
        Ok(text) => parse_nft_kube_proxy(&text),
        // No such table: no kube-proxy in nftables mode either.
        Err(_) => {
            if let Some(e) = first_error {
                notes.push(format!("iptables rules: {e}"));
            }
            KubeProxyRules {
                mode: "none".into(),
                ..KubeProxyRules::default()
            }
        }
    }
}

/// Counts kube-proxy's services and rules in `iptables-save` output.
pub fn parse_iptables_save(text: &str) -> KubeProxyRules {
    let mut table = "";
    let mut rules = KubeProxyRules {
        mode: "none".into(),
        ..KubeProxyRules::default()
    };
    let mut has_services_chain = false;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = if name == "nat" {
                "nat"
            } else if name == "filter" {
                "filter"
            } else {
                ""
            };
            continue;
        }
        if let Some(chain) = line.strip_prefix(':') {
            let name = chain.split_whitespace().next().unwrap_or_default();
            if table == "nat" && name.starts_with("KUBE-SVC-") {
                rules.services += 1;
            }
            if table == "nat" && name == "KUBE-SERVICES" {
                has_services_chain = true;
            }
            continue;
        }
        let Some(rule) = line.strip_prefix("-A ") else {
            continue;
        };
        let chain = rule.split_whitespace().next().unwrap_or_default();
        if chain.starts_with("KUBE-") {
            rules.rules += 1;
        }
        if table == "nat" && chain == "KUBE-SERVICES" {
            rules.service_rules += 1;
        }
        if table == "filter"
            && chain == "KUBE-FORWARD"
            && rule.contains("--ctstate INVALID")
            && rule.ends_with("-j DROP")
        {
            rules.forward_drops_invalid = true;
        }
    }
    if has_services_chain {
        rules.mode = "iptables".into();
    }
    rules
}

/// Counts kube-proxy's services and rules in `nft list table ip
/// kube-proxy` output.
pub fn parse_nft_kube_proxy(text: &str) -> KubeProxyRules {
    let mut rules = KubeProxyRules {
        mode: "nftables".into(),
        ..KubeProxyRules::default()
    };
    let mut in_chain = false;
    let mut chain = String::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("chain ") {
            in_chain = true;
            chain = rest.trim_end_matches('{').trim().to_owned();
            if chain.starts_with("service-") {
                rules.services += 1;
            }
            continue;
        }
        if line.starts_with("map ") || line.starts_with("set ") {
            in_chain = false;
            continue;
        }
        if line == "}" || line.is_empty() {
            continue;
        }
        if in_chain && !line.starts_with("type ") && !line.starts_with("comment ") {
            rules.rules += 1;
            if chain == "forward" && line.contains("ct state invalid") && line.contains("drop") {
                rules.forward_drops_invalid = true;
            }
        }
    }
    rules
}

/// Sums the per-CPU rows of `/proc/net/stat/nf_conntrack` (hexadecimal
/// columns named by the header line).
pub fn parse_conntrack_stat(text: &str) -> ConntrackStats {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let mut stats = ConntrackStats::default();
    for line in lines {
        for (name, value) in header.iter().zip(line.split_whitespace()) {
            let v = u64::from_str_radix(value, 16).unwrap_or(0);
            match *name {
                "invalid" => stats.invalid += v,
                "insert" => stats.insert += v,
                "insert_failed" => stats.insert_failed += v,
                "drop" => stats.drop += v,
                "early_drop" => stats.early_drop += v,
                _ => {}
            }
        }
    }
    stats
}

/// Reads the counters hoptrace uses from `/proc/net/snmp` (pairs of
/// lines: names, then values, each starting with `Proto:`).
pub fn parse_snmp(text: &str) -> SnmpCounters {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = SnmpCounters::default();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let mut names = names.split_whitespace();
        let mut values = values.split_whitespace();
        let (Some(proto), Some(_)) = (names.next(), values.next()) else {
            continue;
        };
        for (name, value) in names.zip(values) {
            let v: u64 = value.parse().unwrap_or(0);
            match (proto, name) {
                ("Ip:", "FragFails") => out.frag_fails = v,
                ("Ip:", "FragCreates") => out.frag_creates = v,
                ("Ip:", "ReasmReqds") => out.reasm_reqds = v,
                ("Ip:", "ReasmFails") => out.reasm_fails = v,
                ("Udp:", "InCsumErrors") => out.udp_in_csum_errors = v,
                ("IcmpMsg:", "OutType3") => out.icmp_out_dest_unreach = v,
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_save_counts_services_and_the_invalid_rule() {
        let text = "\
*filter
:INPUT ACCEPT [0:0]
:KUBE-FORWARD - [0:0]
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-AAAA - [0:0]
:KUBE-SVC-BBBB - [0:0]
:KUBE-SEP-CCCC - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -j KUBE-SVC-AAAA
-A KUBE-SERVICES -d 10.96.0.11/32 -p tcp -j KUBE-SVC-BBBB
-A KUBE-SVC-AAAA -j KUBE-SEP-CCCC
COMMIT
";
        let r = parse_iptables_save(text);
        assert_eq!(r.mode, "iptables");
        assert_eq!(r.services, 2);
        assert_eq!(r.service_rules, 2);
        assert_eq!(r.rules, 4);
        assert!(r.forward_drops_invalid);
        let none = parse_iptables_save("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n");
        assert_eq!(none.mode, "none");
        assert!(!none.forward_drops_invalid);
    }

    #[test]
    fn nft_table_counts_service_chains() {
        let text = "\
table ip kube-proxy {
	map service-ips {
		type ipv4_addr . inet_proto . inet_service : verdict
		elements = { 10.96.0.10 . tcp . 80 : goto service-ABCD-default/echo/tcp/http }
	}
	chain forward {
		type filter hook forward priority -110; policy accept;
		ct state invalid drop
	}
	chain service-ABCD-default/echo/tcp/http {
		ip daddr 10.96.0.10 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade
		numgen random mod 1 vmap { 0 : goto endpoint-X }
	}
}
";
        let r = parse_nft_kube_proxy(text);
        assert_eq!(r.mode, "nftables");
        assert_eq!(r.services, 1);
        assert_eq!(r.rules, 3);
        assert!(r.forward_drops_invalid);
    }

    #[test]
    fn conntrack_stat_sums_cpus() {
        let text = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n\
0000000a  00000000 00000000 00000000 00000010 00000000 00000000 00000000 00000002 00000001 00000000 00000000 00000000  00000000 00000000 00000000 00000000\n\
0000000a  00000000 00000000 00000000 00000001 00000000 00000000 00000000 00000003 00000000 00000004 00000005 00000000  00000000 00000000 00000000 00000000\n";
        let s = parse_conntrack_stat(text);
        assert_eq!(
            (s.invalid, s.insert, s.insert_failed, s.drop, s.early_drop),
            (17, 5, 1, 4, 5)
        );
    }

    #[test]
    fn snmp_reads_fragment_checksum_and_icmp_counters() {
        let text = "Ip: Forwarding DefaultTTL InReceives ReasmReqds ReasmOKs ReasmFails FragOKs FragFails FragCreates\n\
Ip: 1 64 100 7 3 1 0 12 0\n\
IcmpMsg: InType3 OutType3\n\
IcmpMsg: 4 9\n\
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors\n\
Udp: 10 0 5 10 0 0 5\n";
        let s = parse_snmp(text);
        assert_eq!(s.reasm_reqds, 7);
        assert_eq!(s.reasm_fails, 1);
        assert_eq!(s.frag_fails, 12);
        assert_eq!(s.icmp_out_dest_unreach, 9);
        assert_eq!(s.udp_in_csum_errors, 5);
    }

    #[test]
    fn counters_since_subtract_counters_and_keep_gauges() {
        let before = NodeCounters {
            conntrack: ConntrackStats {
                count: 5,
                max: 100,
                invalid: 3,
                ..Default::default()
            },
            qdiscs: vec![QdiscStats {
                device: "eth0".into(),
                kind: "tbf".into(),
                drops: 2,
                ..Default::default()
            }],
            ..Default::default()
        };
        let after = NodeCounters {
            conntrack: ConntrackStats {
                count: 9,
                max: 100,
                invalid: 10,
                ..Default::default()
            },
            qdiscs: vec![QdiscStats {
                device: "eth0".into(),
                kind: "tbf".into(),
                drops: 7,
                backlog: 1500,
                ..Default::default()
            }],
            ..Default::default()
        };
        let d = after.since(&before);
        assert_eq!((d.conntrack.count, d.conntrack.invalid), (9, 7));
        assert_eq!((d.qdiscs[0].drops, d.qdiscs[0].backlog), (5, 1500));
    }
}
