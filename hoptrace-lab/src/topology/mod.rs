//! Kubernetes-like datapaths built from network namespaces on one machine,
//! for the root tests and `hoptrace lab`.
//!
//! A [`Lab`] is a switch namespace `<prefix>sw` (bridge `br0`), node
//! namespaces `<prefix>n<i>` (uplink `eth0`, underlay `198.18.0.<i+1>/24`)
//! and pod namespaces `<prefix>n<i>p<j>` (pod CIDR `10.244.<i>.0/24`, pod
//! IPs .2, .3, ...). Each node is programmed the way the chosen CNI
//! ([`Datapath`]) programs a real node, and kube-proxy's service rules are
//! written per [`KubeProxyMode`]. `docs/lab-datapaths.md` lists exactly what
//! is and is not emulated.
//!
//! The lab owns every namespace it creates and deletes them on drop, also when
//! [`Lab::build`] fails halfway.

mod datapath;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;

use thiserror::Error;

use crate::kubeproxy::{self, Endpoint, Protocol, Service, ServicePort, ServiceSet};
use crate::netns::{self, NetnsError, NetnsGuard};

/// A CNI datapath the lab can emulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Datapath {
    /// Flannel with the VXLAN backend (`flannel.1`, cni0 bridge).
    FlannelVxlan,
    /// Flannel host-gw: cni0 bridge, routes via the other nodes' underlay IPs.
    FlannelHostGw,
    /// Calico with BGP (native routing, `cali*` veths, proxy ARP).
    CalicoBgp,
    /// Calico VXLAN overlay (`vxlan.calico`).
    CalicoVxlan,
    /// Calico IP-in-IP overlay (`tunl0`); needs kernel IPIP support.
    CalicoIpip,
    /// Cilium's device layout (`lxc*`, `cilium_host`) with native routing,
    /// routed by the kernel instead of BPF; no kube-proxy.
    CiliumLike,
    /// The backend is a hostNetwork pod: it listens in the node namespace.
    HostNetwork,
}

impl Datapath {
    /// Every datapath, in documentation order.
    pub const ALL: [Datapath; 7] = [
        Datapath::FlannelVxlan,
        Datapath::FlannelHostGw,
        Datapath::CalicoBgp,
        Datapath::CalicoVxlan,
        Datapath::CalicoIpip,
        Datapath::CiliumLike,
        Datapath::HostNetwork,
    ];

    /// Kebab-case name (`flannel-vxlan`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Datapath::FlannelVxlan => "flannel-vxlan",
            Datapath::FlannelHostGw => "flannel-host-gw",
            Datapath::CalicoBgp => "calico-bgp",
            Datapath::CalicoVxlan => "calico-vxlan",
            Datapath::CalicoIpip => "calico-ipip",
            Datapath::CiliumLike => "cilium-like",
            Datapath::HostNetwork => "host-network",
        }
    }

    /// Prefix of the host-side veth names the CNI uses.
    pub fn host_veth_prefix(self) -> &'static str {
        match self {
            Datapath::FlannelVxlan | Datapath::FlannelHostGw | Datapath::HostNetwork => "veth",
            Datapath::CalicoBgp | Datapath::CalicoVxlan | Datapath::CalicoIpip => "cali",
            Datapath::CiliumLike => "lxc",
        }
    }

    /// Overlay tunnel device on each node, if the datapath has one.
    pub fn tunnel_device(self) -> Option<&'static str> {
        match self {
            Datapath::FlannelVxlan => Some("flannel.1"),
            Datapath::CalicoVxlan => Some("vxlan.calico"),
            Datapath::CalicoIpip => Some("tunl0"),
            _ => None,
        }
    }

    /// Pod bridge on each node, if the datapath has one.
    pub fn bridge_device(self) -> Option<&'static str> {
        match self {
            Datapath::FlannelVxlan | Datapath::FlannelHostGw | Datapath::HostNetwork => {
                Some("cni0")
            }
            _ => None,
        }
    }

    /// Whether kube-proxy runs with this datapath (Cilium replaces it).
    pub fn uses_kube_proxy(self) -> bool {
        self != Datapath::CiliumLike
    }
}

impl fmt::Display for Datapath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown datapath or kube-proxy mode name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown {what} {given:?}; expected one of: {expected}")]
pub struct ParseNameError {
    what: &'static str,
    given: String,
    expected: String,
}

impl FromStr for Datapath {
    type Err = ParseNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Datapath::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| ParseNameError {
                what: "datapath",
                given: s.to_string(),
                expected: Datapath::ALL.map(Datapath::as_str).join(", "),
            })
    }
}

/// How kube-proxy implements services in the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KubeProxyMode {
    /// `iptables` mode: KUBE-SERVICES/KUBE-SVC-*/KUBE-SEP-* via iptables-restore
    /// (the nf_tables backend, Debian's default `iptables`).
    Iptables,
    /// `iptables` mode on the legacy (x_tables) backend, as on nodes whose
    /// `iptables` alternative is `iptables-legacy`: the same rules via
    /// `iptables-legacy-restore`. It loads 20,000 services in about 4 s here,
    /// where the nf_tables backend takes over 10 minutes per node.
    IptablesLegacy,
    /// `nftables` mode: table `ip kube-proxy` via `nft -f`.
    Nftables,
    /// No service rules (clients connect to backends directly).
    None,
}

impl KubeProxyMode {
    /// Every mode.
    pub const ALL: [KubeProxyMode; 4] = [
        KubeProxyMode::Iptables,
        KubeProxyMode::IptablesLegacy,
        KubeProxyMode::Nftables,
        KubeProxyMode::None,
    ];

    /// Name as on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            KubeProxyMode::Iptables => "iptables",
            KubeProxyMode::IptablesLegacy => "iptables-legacy",
            KubeProxyMode::Nftables => "nftables",
            KubeProxyMode::None => "none",
        }
    }
}

impl fmt::Display for KubeProxyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KubeProxyMode {
    type Err = ParseNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KubeProxyMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| ParseNameError {
                what: "kube-proxy mode",
                given: s.to_string(),
                expected: KubeProxyMode::ALL.map(KubeProxyMode::as_str).join(", "),
            })
    }
}

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabSpec {
    /// Prefix of every namespace name (e.g. `ht-lab-`); must be unique on the machine.
    pub prefix: String,
    /// Number of nodes: 2 or 3.
    pub nodes: u8,
    /// Pods per node: 1 to [`MAX_PODS_PER_NODE`] (default 2).
    pub pods_per_node: u8,
    /// CNI datapath.
    pub datapath: Datapath,
    /// kube-proxy mode (ignored for [`Datapath::CiliumLike`]).
    pub kube_proxy: KubeProxyMode,
    /// Extra services that match no lab traffic, to size the rule sets.
    pub services: u32,
}

/// Most pods per node (pod IPs .2 to .51; filler endpoints use .100 and up).
pub const MAX_PODS_PER_NODE: u8 = 50;

impl Default for LabSpec {
    fn default() -> Self {
        Self {
            prefix: "ht-lab-".to_string(),
            nodes: 2,
            pods_per_node: 2,
            datapath: Datapath::FlannelVxlan,
            kube_proxy: KubeProxyMode::Iptables,
            services: 0,
        }
    }
}

/// Longest namespace prefix: the names built from it (`<prefix>n2p49`)
/// stay short in `ip netns list`. Interface names never contain it.
pub const MAX_PREFIX_LEN: usize = 40;

/// Checks a namespace prefix (`hoptrace lab --prefix`): 1 to
/// [`MAX_PREFIX_LEN`] ASCII letters, digits, `-`, `_` and `.`, starting with
/// a letter or digit, so that every name built from it is a valid file name
/// under /run/netns.
///
/// # Errors
///
/// What is wrong with it, in one line.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > MAX_PREFIX_LEN {
        return Err(format!(
            "prefix {prefix:?} must be 1 to {MAX_PREFIX_LEN} characters"
        ));
    }
    if !prefix.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "prefix {prefix:?} may only contain ASCII letters, digits, '-', '_' and '.', and must start with a letter or digit"
        ));
    }
    Ok(())
}

impl LabSpec {
    /// Checks the spec before anything is created.
    ///
    /// # Errors
    ///
    /// [`TopologyError::InvalidSpec`] naming the first field out of range
    /// (prefix, nodes, pods per node, extra services).
    pub fn validate(&self) -> Result<(), TopologyError> {
        let invalid = |reason: String| Err(TopologyError::InvalidSpec(reason));
        check_prefix(&self.prefix).or_else(invalid)?;
        if !(2..=3).contains(&self.nodes) {
            return invalid(format!("nodes must be 2 or 3, not {}", self.nodes));
        }
        if !(1..=MAX_PODS_PER_NODE).contains(&self.pods_per_node) {
            return invalid(format!(
                "pods per node must be 1 to {MAX_PODS_PER_NODE}, not {}",
                self.pods_per_node
            ));
        }
        if self.services > kubeproxy::MAX_FILLER_SERVICES {
            return invalid(format!(
                "at most {} extra services, not {}",
                kubeproxy::MAX_FILLER_SERVICES,
                self.services
            ));
        }
        Ok(())
    }

    /// kube-proxy mode actually programmed (none for cilium-like).
    pub fn effective_kube_proxy(&self) -> KubeProxyMode {
        if self.datapath.uses_kube_proxy() {
            self.kube_proxy
        } else {
            KubeProxyMode::None
        }
    }

    /// Name of the switch namespace.
    pub fn switch_netns(&self) -> String {
        format!("{}sw", self.prefix)
    }

    /// Name of node `node`'s namespace.
    pub fn node_netns(&self, node: usize) -> String {
        format!("{}n{node}", self.prefix)
    }

    /// Name of pod `pod` of node `node`.
    pub fn pod_netns(&self, node: usize, pod: usize) -> String {
        format!("{}n{node}p{pod}", self.prefix)
    }
}

/// Errors from building or tearing down a lab.
#[derive(Debug, Error)]
pub enum TopologyError {
    /// A namespace operation or a command failed (includes name clashes and
    /// missing tools).
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The datapath cannot be built on this machine.
    #[error("datapath {datapath} is not supported here: {reason}")]
    Unsupported {
        /// The datapath.
        datapath: Datapath,
        /// Why (e.g. the kernel lacks IPIP).
        reason: String,
    },
    /// The spec is out of range.
    #[error("invalid lab spec: {0}")]
    InvalidSpec(String),
}

/// A node of the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Kubernetes-style node name (`node0`).
    pub name: String,
    /// Namespace name.
    pub netns: String,
    /// Underlay (node) IP on `uplink_device`.
    pub underlay_ip: Ipv4Addr,
    /// Pod CIDR (network address, prefix length).
    pub pod_cidr: (Ipv4Addr, u8),
    /// Overlay tunnel device (`flannel.1`, `vxlan.calico`, `tunl0`), if any.
    pub tunnel_device: Option<String>,
    /// Pod bridge (`cni0`), if any.
    pub bridge_device: Option<String>,
    /// Uplink device into the switch (`eth0`).
    pub uplink_device: String,
    /// Peer of the uplink in the switch namespace (`n<i>`, a port of `br0`).
    pub switch_port: String,
}

/// A pod of the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Pod name (`node0-pod1`).
    pub name: String,
    /// Namespace name.
    pub netns: String,
    /// Index into [`Lab::nodes`].
    pub node_index: usize,
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// Host-side veth in the node namespace (`veth…`, `cali…`, `lxc…`).
    pub host_veth: String,
    /// Interface inside the pod (`eth0`).
    pub pod_ifname: String,
}

/// One port of the lab's service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServicePortInfo {
    /// Protocol.
    pub protocol: Protocol,
    /// Port on the ClusterIP.
    pub port: u16,
    /// Port the backends listen on.
    pub target_port: u16,
}

/// A backend of the lab's service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendInfo {
    /// Namespace the server must listen in (a pod, or a node for host-network).
    pub netns: String,
    /// Address the server must listen on.
    pub ip: Ipv4Addr,
    /// Node hosting it.
    pub node_index: usize,
    /// Index into [`Lab::pods`], or `None` when the backend is the node itself.
    pub pod_index: Option<usize>,
}

/// The lab's service (`default/echo`, ClusterIP 10.96.0.10, TCP 80 → 8080
/// and UDP 53 → 5353) and where its backends are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// ClusterIP.
    pub cluster_ip: Ipv4Addr,
    /// Ports.
    pub ports: Vec<ServicePortInfo>,
    /// Backends (one per node except node 0, where the client runs).
    pub backends: Vec<BackendInfo>,
    /// kube-proxy mode actually programmed.
    pub kube_proxy: KubeProxyMode,
}

impl ServiceInfo {
    /// The port entry for `protocol`.
    pub fn port(&self, protocol: Protocol) -> Option<ServicePortInfo> {
        self.ports.iter().copied().find(|p| p.protocol == protocol)
    }

    /// Where a client should connect for `protocol`: the ClusterIP when
    /// kube-proxy rules exist, else (cilium-like, `none`) the first backend
    /// directly, as Cilium's socket load balancer would.
    pub fn connect_addr(&self, protocol: Protocol) -> Option<SocketAddrV4> {
        let port = self.port(protocol)?;
        if self.kube_proxy == KubeProxyMode::None {
            let backend = self.backends.first()?;
            Some(SocketAddrV4::new(backend.ip, port.target_port))
        } else {
            Some(SocketAddrV4::new(self.cluster_ip, port.port))
        }
    }
}

/// ClusterIP of the lab's service.
pub const SERVICE_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// Cluster (pod) CIDR covering every node's pod CIDR.
pub const CLUSTER_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 244, 0, 0), 16);

/// Underlay IP of node `node`.
pub fn underlay_ip(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, node as u8 + 1)
}

/// IP of pod `pod` on node `node`.
pub fn pod_ip(node: usize, pod: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, node as u8, pod as u8 + 2)
}

/// A built lab; owns its namespaces and deletes them (pods, nodes, switch)
/// on drop or [`Lab::teardown`].
#[derive(Debug)]
pub struct Lab {
    spec: LabSpec,
    /// In creation order; torn down in reverse.
    namespaces: Vec<NetnsGuard>,
    nodes: Vec<NodeInfo>,
    pods: Vec<PodInfo>,
    service: ServiceInfo,
}

impl Lab {
    /// Builds the lab described by `spec`.
    ///
    /// On any error everything created so far is removed again; namespaces
    /// that existed before (a name clash) are never touched.
    ///
    /// # Errors
    ///
    /// - [`TopologyError::InvalidSpec`] from [`LabSpec::validate`].
    /// - [`TopologyError::Netns`]: a missing tool (checked before anything is
    ///   created), a namespace that already exists, or a failed `ip`,
    ///   `bridge`, `sysctl`, `iptables-restore` or `nft` command.
    /// - [`TopologyError::Unsupported`]: calico-ipip on a kernel without IPIP.
    pub fn build(spec: &LabSpec) -> Result<Lab, TopologyError> {
        spec.validate()?;
        datapath::check_tools(spec)?;
        let mut lab = Lab {
            spec: spec.clone(),
            namespaces: Vec::new(),
            nodes: Vec::new(),
            pods: Vec::new(),
            service: ServiceInfo {
                namespace: "default".to_string(),
                name: "echo".to_string(),
                cluster_ip: SERVICE_CLUSTER_IP,
                ports: vec![
                    ServicePortInfo {
                        protocol: Protocol::Tcp,
                        port: 80,
                        target_port: 8080,
                    },
                    ServicePortInfo {
                        protocol: Protocol::Udp,
                        port: 53,
                        target_port: 5353,
                    },
                ],
                backends: Vec::new(),
                kube_proxy: spec.effective_kube_proxy(),
            },
        };
        // On error `lab` is dropped here, which deletes what was made.
        datapath::build(&mut lab)?;
        lab.service.backends = lab.backends();
        datapath::install_service_rules(&lab)?;
        Ok(lab)
    }

    /// The spec this lab was built from.
    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }

    /// Nodes, by index.
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// Pods, node by node.
    pub fn pods(&self) -> &[PodInfo] {
        &self.pods
    }

    /// Pods of node `node`.
    pub fn pods_on(&self, node: usize) -> impl Iterator<Item = &PodInfo> {
        self.pods.iter().filter(move |p| p.node_index == node)
    }

    /// The pod meant to act as client (first pod of node 0).
    pub fn client_pod(&self) -> &PodInfo {
        &self.pods[0]
    }

    /// The service and its backends.
    pub fn service(&self) -> ServiceInfo {
        self.service.clone()
    }

    /// Names of every namespace the lab owns, in creation order.
    pub fn netns_names(&self) -> Vec<String> {
        self.namespaces
            .iter()
            .map(|ns| ns.name().to_string())
            .collect()
    }

    /// The service rules (kube-proxy's view) programmed on every node.
    pub fn service_set(&self) -> ServiceSet {
        let mut services = vec![Service {
            namespace: self.service.namespace.clone(),
            name: self.service.name.clone(),
            cluster_ip: self.service.cluster_ip,
            ports: self
                .service
                .ports
                .iter()
                .map(|p| ServicePort {
                    name: match p.protocol {
                        Protocol::Tcp => "http".to_string(),
                        Protocol::Udp => "dns".to_string(),
                    },
                    protocol: p.protocol,
                    port: p.port,
                    endpoints: self
                        .service
                        .backends
                        .iter()
                        .map(|b| Endpoint {
                            ip: b.ip,
                            port: p.target_port,
                        })
                        .collect(),
                })
                .collect(),
        }];
        // The filler services come first in KUBE-SERVICES: the lab's service
        // is one among many, so its packets walk the rules before it, as in
        // a busy cluster where kube-proxy's order is arbitrary.
        let mut fillers = kubeproxy::filler_services(self.spec.services, self.spec.nodes);
        fillers.append(&mut services);
        let services = fillers;
        ServiceSet {
            cluster_cidr: CLUSTER_CIDR,
            services,
        }
    }

    /// Deletes every namespace (pods, then nodes, then the switch) and
    /// reports the first failure; the rest are still attempted.
    ///
    /// # Errors
    ///
    /// [`TopologyError::Netns`] with the first `ip netns` failure.
    pub fn teardown(mut self) -> Result<(), TopologyError> {
        self.delete_all()
    }

    fn delete_all(&mut self) -> Result<(), TopologyError> {
        let mut first_error = None;
        while let Some(ns) = self.namespaces.pop() {
            if let Err(e) = ns.delete() {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), |e| Err(e.into()))
    }

    /// Backends: the first pod of every node but node 0, or for host-network
    /// the node namespaces themselves.
    fn backends(&self) -> Vec<BackendInfo> {
        (1..self.nodes.len())
            .filter_map(|node| {
                if self.spec.datapath == Datapath::HostNetwork {
                    let info = &self.nodes[node];
                    return Some(BackendInfo {
                        netns: info.netns.clone(),
                        ip: info.underlay_ip,
                        node_index: node,
                        pod_index: None,
                    });
                }
                let (index, pod) = self
                    .pods
                    .iter()
                    .enumerate()
                    .find(|(_, p)| p.node_index == node)?;
                Some(BackendInfo {
                    netns: pod.netns.clone(),
                    ip: pod.ip,
                    node_index: node,
                    pod_index: Some(index),
                })
            })
            .collect()
    }

    /// Creates a namespace owned by the lab.
    fn add_netns(&mut self, name: &str) -> Result<(), TopologyError> {
        let guard = NetnsGuard::create(name)?;
        self.namespaces.push(guard);
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; leftovers are visible to
        // `netns::cleanup_prefix`.
        let _ = self.delete_all();
    }
}

/// Deletes leftover namespaces of a crashed lab with this prefix and
/// returns their names.
///
/// # Errors
///
/// [`TopologyError::Netns`] as [`netns::cleanup_prefix`]: a prefix shorter
/// than 3 characters or not a namespace name, or the first deletion error.
pub fn cleanup(prefix: &str) -> Result<Vec<String>, TopologyError> {
    Ok(netns::cleanup_prefix(prefix)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datapath_names_round_trip() {
        for datapath in Datapath::ALL {
            assert_eq!(datapath.to_string().parse::<Datapath>().unwrap(), datapath);
        }
        assert_eq!(
            "calico-bgp".parse::<Datapath>().unwrap(),
            Datapath::CalicoBgp
        );
        let err = "flannel".parse::<Datapath>().unwrap_err().to_string();
        assert!(
            err.contains("flannel-vxlan") && err.contains("\"flannel\""),
            "{err}"
        );
        for mode in KubeProxyMode::ALL {
            assert_eq!(mode.to_string().parse::<KubeProxyMode>().unwrap(), mode);
        }
        assert!("ipvs".parse::<KubeProxyMode>().is_err());
    }

    #[test]
    fn spec_validation_rejects_out_of_range() {
        assert!(LabSpec::default().validate().is_ok());
        let bad = [
            LabSpec {
                nodes: 1,
                ..LabSpec::default()
            },
            LabSpec {
                nodes: 4,
                ..LabSpec::default()
            },
            LabSpec {
                pods_per_node: 0,
                ..LabSpec::default()
            },
            LabSpec {
                pods_per_node: MAX_PODS_PER_NODE + 1,
                ..LabSpec::default()
            },
            LabSpec {
                prefix: String::new(),
                ..LabSpec::default()
            },
            LabSpec {
                prefix: "bad/prefix".into(),
                ..LabSpec::default()
            },
            LabSpec {
                prefix: "-x".into(),
                ..LabSpec::default()
            },
            LabSpec {
                services: kubeproxy::MAX_FILLER_SERVICES + 1,
                ..LabSpec::default()
            },
        ];
        for spec in bad {
            assert!(
                matches!(spec.validate(), Err(TopologyError::InvalidSpec(_))),
                "{spec:?} accepted"
            );
        }
    }

    #[test]
    fn addressing_plan() {
        let spec = LabSpec {
            prefix: "ht-x-".into(),
            ..LabSpec::default()
        };
        assert_eq!(spec.node_netns(1), "ht-x-n1");
        assert_eq!(spec.pod_netns(1, 0), "ht-x-n1p0");
        assert_eq!(spec.switch_netns(), "ht-x-sw");
        assert_eq!(underlay_ip(0), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(pod_ip(2, 1), Ipv4Addr::new(10, 244, 2, 3));
    }

    #[test]
    fn cilium_like_connects_to_backend_directly() {
        let spec = LabSpec {
            datapath: Datapath::CiliumLike,
            ..LabSpec::default()
        };
        assert_eq!(spec.effective_kube_proxy(), KubeProxyMode::None);
        let service = ServiceInfo {
            namespace: "default".into(),
            name: "echo".into(),
            cluster_ip: SERVICE_CLUSTER_IP,
            ports: vec![ServicePortInfo {
                protocol: Protocol::Tcp,
                port: 80,
                target_port: 8080,
            }],
            backends: vec![BackendInfo {
                netns: "p".into(),
                ip: pod_ip(1, 0),
                node_index: 1,
                pod_index: Some(2),
            }],
            kube_proxy: KubeProxyMode::None,
        };
        assert_eq!(
            service.connect_addr(Protocol::Tcp),
            Some(SocketAddrV4::new(pod_ip(1, 0), 8080))
        );
        assert_eq!(service.connect_addr(Protocol::Udp), None);
        let via_proxy = ServiceInfo {
            kube_proxy: KubeProxyMode::Iptables,
            ..service
        };
        assert_eq!(
            via_proxy.connect_addr(Protocol::Tcp),
            Some(SocketAddrV4::new(SERVICE_CLUSTER_IP, 80))
        );
    }
}
