//! kube-proxy rule generation for the lab: the iptables (`iptables-restore`)
//! and nftables (`nft -f`) rule sets kube-proxy writes for ClusterIP
//! services, generated from a [`ServiceSet`] as plain text.
//!
//! The layout (chain names, jumps, marks, comments, probabilities) follows
//! kube-proxy's; the chain-name hash is our own (FNV-1a, base32) rather than
//! kube-proxy's SHA-256, so names have the same shape but not the same value.
//! Only ClusterIP services are generated: no NodePort/LoadBalancer/ExternalIP
//! rules, no session affinity, no topology-aware endpoints.

use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;

/// Mark kube-proxy uses for "masquerade this packet" (`--masquerade-bit 14`).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// Transport protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// Lower-case name as used by iptables `-p` and nft `meta l4proto`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One ready endpoint of a service port: pod (or node) IP and target port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// Endpoint IP.
    pub ip: Ipv4Addr,
    /// Target port on the endpoint.
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.ip, self.port)
    }
}

/// One port of a service with its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Port name (`http`, `dns`); may be empty for single-port services.
    pub name: String,
    /// Protocol.
    pub protocol: Protocol,
    /// Port on the ClusterIP.
    pub port: u16,
    /// Ready endpoints; empty means kube-proxy rejects connections.
    pub endpoints: Vec<Endpoint>,
}

/// A ClusterIP service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// ClusterIP.
    pub cluster_ip: Ipv4Addr,
    /// Ports.
    pub ports: Vec<ServicePort>,
}

/// Every service kube-proxy programs on a node, plus the cluster CIDR it
/// uses to decide which sources need masquerading (`--cluster-cidr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSet {
    /// Pod network, e.g. 10.244.0.0/16.
    pub cluster_cidr: (Ipv4Addr, u8),
    /// Services in the order they are programmed.
    pub services: Vec<Service>,
}

impl ServiceSet {
    /// Number of service ports (one KUBE-SVC chain each when they have endpoints).
    pub fn port_count(&self) -> usize {
        self.services.iter().map(|s| s.ports.len()).sum()
    }

    /// Number of endpoints over all service ports (one KUBE-SEP chain each).
    pub fn endpoint_count(&self) -> usize {
        self.services
            .iter()
            .flat_map(|s| &s.ports)
            .map(|p| p.endpoints.len())
            .sum()
    }
}

/// `ns/name:port` (or `ns/name` for an unnamed port), kube-proxy's
/// "service port name" used in comments and hashes.
fn service_port_name(service: &Service, port: &ServicePort) -> String {
    if port.name.is_empty() {
        format!("{}/{}", service.namespace, service.name)
    } else {
        format!("{}/{}:{}", service.namespace, service.name, port.name)
    }
}

/// 128-bit FNV-1a of `input`.
fn fnv1a_128(input: &str) -> u128 {
    const OFFSET_BASIS: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    input.bytes().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u128::from(byte)).wrapping_mul(PRIME)
    })
}

/// Stable `len`-character base32 (RFC 4648 alphabet) hash of `input`, the
/// shape of kube-proxy's chain-name suffixes. `len` is at most 25.
fn chain_hash(input: &str, len: usize) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let hash = fnv1a_128(input);
    (0..len.min(25))
        .map(|i| char::from(ALPHABET[((hash >> (123 - 5 * i)) & 0x1f) as usize]))
        .collect()
}

/// `KUBE-SVC-<16 chars>` for a service port.
pub fn svc_chain(service: &Service, port: &ServicePort) -> String {
    let key = format!("{}{}", service_port_name(service, port), port.protocol);
    format!("KUBE-SVC-{}", chain_hash(&key, 16))
}

/// `KUBE-SEP-<16 chars>` for one endpoint of a service port.
pub fn sep_chain(service: &Service, port: &ServicePort, endpoint: &Endpoint) -> String {
    let key = format!(
        "{}{}{}",
        service_port_name(service, port),
        port.protocol,
        endpoint
    );
    format!("KUBE-SEP-{}", chain_hash(&key, 16))
}

/// nftables per-service-port chain: `service-<8>-<ns>/<name>/<proto>/<port>`.
pub fn nft_service_chain(service: &Service, port: &ServicePort) -> String {
    let base = nft_port_base(service, port);
    format!("service-{}-{}", chain_hash(&base, 8), base)
}

/// nftables endpoint chain:
/// `endpoint-<8>-<ns>/<name>/<proto>/<port>__<ip>/<target port>`.
pub fn nft_endpoint_chain(service: &Service, port: &ServicePort, endpoint: &Endpoint) -> String {
    let base = format!(
        "{}__{}/{}",
        nft_port_base(service, port),
        endpoint.ip,
        endpoint.port
    );
    format!("endpoint-{}-{}", chain_hash(&base, 8), base)
}

fn nft_port_base(service: &Service, port: &ServicePort) -> String {
    let port_label = if port.name.is_empty() {
        port.port.to_string()
    } else {
        port.name.clone()
    };
    format!(
        "{}/{}/{}/{}",
        service.namespace, service.name, port.protocol, port_label
    )
}

/// The `iptables-restore --noflush` input kube-proxy's iptables mode would
/// write for `set`: filter KUBE-FORWARD/KUBE-FIREWALL/KUBE-SERVICES, nat
/// KUBE-SERVICES → KUBE-SVC-* → KUBE-SEP-* (DNAT), KUBE-MARK-MASQ and
/// KUBE-POSTROUTING (masquerade marked packets), with the jumps from the
/// built-in chains.
///
/// Declaring the KUBE-* chains flushes them, so re-applying replaces the
/// service rules; the jumps from built-in chains are appended each time, so
/// apply it once per namespace.
pub fn iptables_restore_input(set: &ServiceSet) -> String {
    let (cidr_ip, cidr_len) = set.cluster_cidr;
    let mark = format!("{MASQUERADE_MARK:#x}");
    // Rough size: ~600 bytes per endpoint keeps reallocation rare.
    let mut out = String::with_capacity(1024 + 600 * (set.port_count() + set.endpoint_count()));

    // ---- filter ----
    out.push_str("*filter\n");
    for chain in ["KUBE-FORWARD", "KUBE-FIREWALL", "KUBE-SERVICES"] {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    out.push_str(concat!(
        "-A INPUT -j KUBE-FIREWALL\n",
        "-A OUTPUT -j KUBE-FIREWALL\n",
        "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment \"block incoming localnet connections\" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n",
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n",
    ));
    let _ = writeln!(
        out,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {mark}/{mark} -j ACCEPT"
    );
    out.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    for service in &set.services {
        for port in service.ports.iter().filter(|p| p.endpoints.is_empty()) {
            let proto = port.protocol;
            let _ = writeln!(
                out,
                "-A KUBE-SERVICES -d {}/32 -p {proto} -m comment --comment \"{} has no endpoints\" -m {proto} --dport {} -j REJECT --reject-with icmp-port-unreachable",
                service.cluster_ip,
                service_port_name(service, port),
                port.port
            );
        }
    }
    out.push_str("COMMIT\n");

    // ---- nat ----
    out.push_str("*nat\n");
    for chain in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    // Chain declarations must precede the rules that jump to them.
    for service in &set.services {
        for port in service.ports.iter().filter(|p| !p.endpoints.is_empty()) {
            let _ = writeln!(out, ":{} - [0:0]", svc_chain(service, port));
            for endpoint in &port.endpoints {
                let _ = writeln!(out, ":{} - [0:0]", sep_chain(service, port, endpoint));
            }
        }
    }
    out.push_str(concat!(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
    ));
    let _ = writeln!(out, "-A KUBE-MARK-MASQ -j MARK --or-mark {mark}");
    let _ = writeln!(
        out,
        "-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN"
    );
    let _ = writeln!(out, "-A KUBE-POSTROUTING -j MARK --xor-mark {mark}");
    out.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");

    for service in &set.services {
        for port in service.ports.iter().filter(|p| !p.endpoints.is_empty()) {
            let name = service_port_name(service, port);
            let svc = svc_chain(service, port);
            let proto = port.protocol;
            let ip = service.cluster_ip;
            let dport = port.port;
            let _ = writeln!(
                out,
                "-A KUBE-SERVICES -d {ip}/32 -p {proto} -m comment --comment \"{name} cluster IP\" -m {proto} --dport {dport} -j {svc}"
            );
            let _ = writeln!(
                out,
                "-A {svc} ! -s {cidr_ip}/{cidr_len} -d {ip}/32 -p {proto} -m comment --comment \"{name} cluster IP\" -m {proto} --dport {dport} -j KUBE-MARK-MASQ"
            );
            let count = port.endpoints.len();
            for (index, endpoint) in port.endpoints.iter().enumerate() {
                let sep = sep_chain(service, port, endpoint);
                let remaining = count - index;
                if remaining > 1 {
                    let _ = writeln!(
                        out,
                        "-A {svc} -m comment --comment \"{name} -> {endpoint}\" -m statistic --mode random --probability {:.11} -j {sep}",
                        1.0 / remaining as f64
                    );
                } else {
                    let _ = writeln!(
                        out,
                        "-A {svc} -m comment --comment \"{name} -> {endpoint}\" -j {sep}"
                    );
                }
                let _ = writeln!(
                    out,
                    "-A {sep} -s {}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ",
                    endpoint.ip
                );
                let _ = writeln!(
                    out,
                    "-A {sep} -p {proto} -m comment --comment \"{name}\" -m {proto} -j DNAT --to-destination {endpoint}"
                );
            }
        }
    }
    // kube-proxy keeps this one last in KUBE-SERVICES.
    out.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    out.push_str("COMMIT\n");
    out
}

/// The `nft -f` input kube-proxy's nftables mode would write for `set`: table
/// `ip kube-proxy` with the `service-ips` verdict map, the `cluster-ips` set,
/// one chain per service port (masquerade check + `numgen` load balancing),
/// one chain per endpoint (hairpin mark + DNAT) and the masquerading chain.
///
/// The table is added, deleted and re-created in the same transaction, so
/// applying twice replaces it.
pub fn nft_input(set: &ServiceSet) -> String {
    const T: &str = "ip kube-proxy";
    let (cidr_ip, cidr_len) = set.cluster_cidr;
    let mut out = String::with_capacity(2048 + 500 * (set.port_count() + set.endpoint_count()));
    let _ = writeln!(
        out,
        "add table {T} {{ comment \"rules for kube-proxy\" ; }}"
    );
    let _ = writeln!(out, "delete table {T}");
    let _ = writeln!(
        out,
        "add table {T} {{ comment \"rules for kube-proxy\" ; }}"
    );

    // Base chains (with hooks), then regular chains; all before any rule.
    for (chain, spec) in [
        (
            "filter-forward",
            "type filter hook forward priority filter ; policy accept ;",
        ),
        (
            "filter-output-post-dnat",
            "type filter hook output priority -90 ; policy accept ;",
        ),
        (
            "nat-prerouting",
            "type nat hook prerouting priority dstnat ; policy accept ;",
        ),
        (
            "nat-output",
            "type nat hook output priority -100 ; policy accept ;",
        ),
        (
            "nat-postrouting",
            "type nat hook postrouting priority srcnat ; policy accept ;",
        ),
    ] {
        let _ = writeln!(out, "add chain {T} {chain} {{ {spec} }}");
    }
    for chain in [
        "cluster-ips-check",
        "mark-for-masquerade",
        "masquerading",
        "services",
    ] {
        let _ = writeln!(out, "add chain {T} {chain}");
    }
    for service in &set.services {
        for port in service.ports.iter().filter(|p| !p.endpoints.is_empty()) {
            let _ = writeln!(out, "add chain {T} {}", nft_service_chain(service, port));
            for endpoint in &port.endpoints {
                let _ = writeln!(
                    out,
                    "add chain {T} {}",
                    nft_endpoint_chain(service, port, endpoint)
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "add set {T} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}"
    );
    let _ = writeln!(
        out,
        "add map {T} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}"
    );

    let mark = format!("{MASQUERADE_MARK:#x}");
    for rule in [
        "filter-forward ct state invalid drop".to_string(),
        "filter-forward ct state new jump cluster-ips-check".to_string(),
        "filter-output-post-dnat ct state new jump cluster-ips-check".to_string(),
        "cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"".to_string(),
        "nat-prerouting jump services".to_string(),
        "nat-output jump services".to_string(),
        "nat-postrouting jump masquerading".to_string(),
        format!("mark-for-masquerade mark set mark or {mark}"),
        format!("masquerading mark and {mark} == 0 return"),
        format!("masquerading mark set mark xor {mark}"),
        "masquerading masquerade fully-random".to_string(),
        "services ip daddr . meta l4proto . th dport vmap @service-ips".to_string(),
    ] {
        let _ = writeln!(out, "add rule {T} {rule}");
    }

    for service in &set.services {
        let ip = service.cluster_ip;
        let _ = writeln!(out, "add element {T} cluster-ips {{ {ip} }}");
        for port in service.ports.iter().filter(|p| !p.endpoints.is_empty()) {
            let proto = port.protocol;
            let chain = nft_service_chain(service, port);
            let _ = writeln!(
                out,
                "add rule {T} {chain} ip daddr {ip} {proto} dport {} ip saddr != {cidr_ip}/{cidr_len} jump mark-for-masquerade",
                port.port
            );
            let targets = port
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| format!("{i} : goto {}", nft_endpoint_chain(service, port, e)))
                .collect::<Vec<_>>()
                .join(" , ");
            let _ = writeln!(
                out,
                "add rule {T} {chain} numgen random mod {} vmap {{ {targets} }}",
                port.endpoints.len()
            );
            for endpoint in &port.endpoints {
                let ep_chain = nft_endpoint_chain(service, port, endpoint);
                let _ = writeln!(
                    out,
                    "add rule {T} {ep_chain} ip saddr {} jump mark-for-masquerade",
                    endpoint.ip
                );
                let _ = writeln!(
                    out,
                    "add rule {T} {ep_chain} meta l4proto {proto} dnat to {endpoint}"
                );
            }
            let _ = writeln!(
                out,
                "add element {T} service-ips {{ {ip} . {proto} . {} : goto {chain} }}",
                port.port
            );
        }
    }
    out
}

/// `count` services that match no test traffic, to give the rule sets a
/// realistic size: ClusterIPs `10.96.<1 + n / 250>.<1 + n % 250>`, one TCP
/// port 80, one or two endpoints on pod IPs `10.244.<node>.100-249` that no
/// lab pod uses (lab pods use .2-.51).
///
/// `count` is capped at [`MAX_FILLER_SERVICES`]; `node_count` must be > 0.
pub fn filler_services(count: u32, node_count: u8) -> Vec<Service> {
    let node_count = u32::from(node_count.max(1));
    (0..count.min(MAX_FILLER_SERVICES))
        .map(|n| {
            let cluster_ip = Ipv4Addr::new(10, 96, (1 + n / 250) as u8, (1 + n % 250) as u8);
            let endpoints = (0..1 + n % 2)
                .map(|k| Endpoint {
                    ip: Ipv4Addr::new(
                        10,
                        244,
                        ((n + k) % node_count) as u8,
                        (100 + (n + k) % 150) as u8,
                    ),
                    port: 8080,
                })
                .collect();
            Service {
                namespace: "filler".to_string(),
                name: format!("svc-{n}"),
                cluster_ip,
                ports: vec![ServicePort {
                    name: "http".to_string(),
                    protocol: Protocol::Tcp,
                    port: 80,
                    endpoints,
                }],
            }
        })
        .collect()
}

/// Upper bound for [`filler_services`] (the 10.96.1.0-10.96.254.255 range).
pub const MAX_FILLER_SERVICES: u32 = 250 * 254;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn echo_service(endpoints: usize) -> Service {
        Service {
            namespace: "default".into(),
            name: "echo".into(),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
            ports: vec![
                ServicePort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 80,
                    endpoints: (0..endpoints)
                        .map(|i| Endpoint {
                            ip: Ipv4Addr::new(10, 244, 1 + i as u8, 2),
                            port: 8080,
                        })
                        .collect(),
                },
                ServicePort {
                    name: "dns".into(),
                    protocol: Protocol::Udp,
                    port: 53,
                    endpoints: vec![Endpoint {
                        ip: Ipv4Addr::new(10, 244, 1, 2),
                        port: 5353,
                    }],
                },
            ],
        }
    }

    fn set_with(services: Vec<Service>) -> ServiceSet {
        ServiceSet {
            cluster_cidr: (Ipv4Addr::new(10, 244, 0, 0), 16),
            services,
        }
    }

    fn lines_starting<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn chain_names_are_stable_distinct_and_short() {
        let a = echo_service(3);
        let b = echo_service(3);
        assert_eq!(svc_chain(&a, &a.ports[0]), svc_chain(&b, &b.ports[0]));
        assert_ne!(svc_chain(&a, &a.ports[0]), svc_chain(&a, &a.ports[1]));
        let name = svc_chain(&a, &a.ports[0]);
        assert_eq!(name.len(), "KUBE-SVC-".len() + 16);
        assert!(
            name.len() <= 28,
            "iptables chain names are at most 28 chars"
        );
        assert!(
            name[9..]
                .chars()
                .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c))
        );
        let seps: HashSet<_> = a.ports[0]
            .endpoints
            .iter()
            .map(|e| sep_chain(&a, &a.ports[0], e))
            .collect();
        assert_eq!(seps.len(), 3);
    }

    #[test]
    fn iptables_structure_for_one_service() {
        let set = set_with(vec![echo_service(3)]);
        let text = iptables_restore_input(&set);
        // Two tables, each committed.
        assert_eq!(lines_starting(&text, "*filter").len(), 1);
        assert_eq!(lines_starting(&text, "*nat").len(), 1);
        assert_eq!(lines_starting(&text, "COMMIT").len(), 2);
        // 2 service ports → 2 SVC chains, 4 endpoints → 4 SEP chains.
        assert_eq!(lines_starting(&text, ":KUBE-SVC-").len(), 2);
        assert_eq!(lines_starting(&text, ":KUBE-SEP-").len(), 4);
        // Jumps from built-in chains.
        for jump in [
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
            "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
        ] {
            assert!(text.contains(jump), "missing {jump}");
        }
        // Probabilities 1/3, 1/2, then unconditional.
        let svc = svc_chain(&set.services[0], &set.services[0].ports[0]);
        let lb: Vec<_> = lines_starting(&text, &format!("-A {svc} "))
            .into_iter()
            .filter(|l| l.contains("-j KUBE-SEP-"))
            .collect();
        assert_eq!(lb.len(), 3);
        assert!(lb[0].contains("--probability 0.33333333333"), "{}", lb[0]);
        assert!(lb[1].contains("--probability 0.50000000000"), "{}", lb[1]);
        assert!(!lb[2].contains("--probability"));
        assert!(text.contains("-j DNAT --to-destination 10.244.3.2:8080"));
        assert!(text.contains("-A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m comment --comment \"default/echo:dns cluster IP\" -m udp --dport 53"));
        // Chains are declared before they are used.
        let nat = &text[text.find("*nat").unwrap()..];
        for (i, line) in nat.lines().enumerate() {
            if let Some(target) = line.split(" -j ").nth(1) {
                let target = target.split_whitespace().next().unwrap();
                if target.starts_with("KUBE-S") && target.len() > 13 {
                    let decl = nat
                        .lines()
                        .position(|l| l == format!(":{target} - [0:0]"))
                        .unwrap();
                    assert!(decl < i, "{target} used before declared");
                }
            }
        }
        // The nodeports jump stays the last KUBE-SERVICES rule.
        let last = lines_starting(nat, "-A KUBE-SERVICES ").pop().unwrap();
        assert!(last.contains("KUBE-NODEPORTS"));
    }

    #[test]
    fn service_without_endpoints_is_rejected_in_filter() {
        let set = set_with(vec![echo_service(0)]);
        let text = iptables_restore_input(&set);
        let filter = &text[..text.find("*nat").unwrap()];
        assert!(filter.contains("default/echo:http has no endpoints"));
        assert!(filter.contains("-j REJECT"));
        // The UDP port still has its endpoint → one SVC chain only.
        assert_eq!(lines_starting(&text, ":KUBE-SVC-").len(), 1);
    }

    #[test]
    fn output_is_deterministic() {
        let mut services = vec![echo_service(2)];
        services.extend(filler_services(50, 2));
        let set = set_with(services);
        assert_eq!(
            iptables_restore_input(&set),
            iptables_restore_input(&set.clone())
        );
        assert_eq!(nft_input(&set), nft_input(&set.clone()));
    }

    #[test]
    fn nft_structure_for_one_service() {
        let set = set_with(vec![echo_service(2)]);
        let text = nft_input(&set);
        assert!(text.starts_with("add table ip kube-proxy"));
        assert_eq!(lines_starting(&text, "delete table ip kube-proxy").len(), 1);
        let service_chains = lines_starting(&text, "add chain ip kube-proxy service-");
        let endpoint_chains = lines_starting(&text, "add chain ip kube-proxy endpoint-");
        assert_eq!(service_chains.len(), 2);
        assert_eq!(endpoint_chains.len(), 3);
        assert_eq!(
            lines_starting(&text, "add element ip kube-proxy service-ips").len(),
            2
        );
        assert!(text.contains("numgen random mod 2 vmap { 0 : goto endpoint-"));
        assert!(text.contains("10.96.0.10 . udp . 53 : goto service-"));
        assert!(text.contains("meta l4proto udp dnat to 10.244.1.2:5353"));
        // Every chain is added before the first rule or element.
        let first_rule = text.find("add rule").unwrap();
        assert!(text.rfind("add chain").unwrap() < first_rule);
        // Chain names carry the documented parts.
        let chain = nft_service_chain(&set.services[0], &set.services[0].ports[0]);
        assert!(chain.starts_with("service-") && chain.ends_with("-default/echo/tcp/http"));
    }

    #[test]
    fn filler_services_do_not_collide_with_lab_addresses() {
        let services = filler_services(5_000, 3);
        assert_eq!(services.len(), 5_000);
        let ips: HashSet<_> = services.iter().map(|s| s.cluster_ip).collect();
        assert_eq!(ips.len(), 5_000, "ClusterIPs must be unique");
        for service in &services {
            assert_ne!(
                service.cluster_ip.octets()[2],
                0,
                "10.96.0.x is the lab's own range"
            );
            assert_ne!(service.cluster_ip.octets()[3], 0);
            for endpoint in &service.ports[0].endpoints {
                let [a, b, node, host] = endpoint.ip.octets();
                assert_eq!((a, b), (10, 244));
                assert!(node < 3);
                assert!((100..250).contains(&host), "{host} may be a lab pod");
            }
        }
        assert_eq!(
            filler_services(u32::MAX, 2).len(),
            MAX_FILLER_SERVICES as usize
        );
    }

    #[test]
    fn five_thousand_services_generate_every_chain() {
        let mut services = vec![echo_service(1)];
        services.extend(filler_services(5_000, 2));
        let set = set_with(services);
        let ipt = iptables_restore_input(&set);
        let nft = nft_input(&set);
        assert_eq!(lines_starting(&ipt, ":KUBE-SVC-").len(), 5_002);
        assert_eq!(
            lines_starting(&ipt, ":KUBE-SEP-").len(),
            set.endpoint_count()
        );
        assert_eq!(
            lines_starting(&nft, "add element ip kube-proxy service-ips").len(),
            5_002
        );
    }
}
