//! Programs the switch, nodes and pods of a [`Lab`] the way each CNI
//! programs a real node (devices, addresses, routes, neighbour/FDB entries,
//! sysctls), and writes kube-proxy's rules.

use std::net::Ipv4Addr;

use super::{
    Datapath, KubeProxyMode, Lab, LabSpec, NodeInfo, PodInfo, TopologyError, pod_ip, underlay_ip,
};
use crate::kubeproxy;
use crate::netns::{self, NetnsError};

/// Bridge in the switch namespace that connects the node uplinks.
const SWITCH_BRIDGE: &str = "br0";
/// Underlay gateway address, on the switch bridge.
const UNDERLAY_ROUTER: &str = "198.18.0.254";
/// Uplink of every node.
const UPLINK: &str = "eth0";
/// Interface name inside every pod.
const POD_IFNAME: &str = "eth0";
/// MTU of VXLAN overlays (1500 - 50 bytes of encapsulation).
const VXLAN_MTU: &str = "1450";
/// Calico's fake gateway for pods.
const CALICO_GATEWAY: &str = "169.254.1.1";
/// MAC Calico gives every host-side cali* veth.
const CALICO_HOST_MAC: &str = "ee:ee:ee:ee:ee:ee";
/// Route protocol number of BIRD (`proto bird`), as Calico's BGP routes carry.
const PROTO_BIRD: &str = "12";

/// Fails with [`NetnsError::MissingTool`] before anything is created if a
/// needed binary is absent.
pub(super) fn check_tools(spec: &LabSpec) -> Result<(), TopologyError> {
    let mut tools = vec!["ip", "sysctl"];
    if matches!(
        spec.datapath,
        Datapath::FlannelVxlan | Datapath::CalicoVxlan
    ) {
        tools.push("bridge");
    }
    match spec.effective_kube_proxy() {
        KubeProxyMode::Iptables => tools.push("iptables-restore"),
        KubeProxyMode::IptablesLegacy => tools.push("iptables-legacy-restore"),
        KubeProxyMode::Nftables => tools.push("nft"),
        KubeProxyMode::None => {}
    }
    for tool in tools {
        netns::find_tool(tool)?;
    }
    Ok(())
}

/// Runs `ip -n <ns> <args>`.
fn ip(ns: &str, args: &[&str]) -> Result<(), NetnsError> {
    let mut argv = vec!["ip", "-n", ns];
    argv.extend_from_slice(args);
    netns::run_tool(&argv).map(drop)
}

/// Runs `bridge -n <ns> <args>`.
fn bridge(ns: &str, args: &[&str]) -> Result<(), NetnsError> {
    let mut argv = vec!["bridge", "-n", ns];
    argv.extend_from_slice(args);
    netns::run_tool(&argv).map(drop)
}

/// Sets sysctls inside `ns` in one `sysctl -w` call.
fn sysctls(ns: &str, settings: &[String]) -> Result<(), NetnsError> {
    let mut argv = vec!["sysctl".to_string(), "-q".to_string(), "-w".to_string()];
    argv.extend(settings.iter().cloned());
    netns::run_in(ns, &argv).map(drop)
}

/// 64-bit FNV-1a, for stable interface-name suffixes.
fn fnv1a_64(input: &str) -> u64 {
    input.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Host-side veth name as the CNI would pick it (`veth` + 8 hex for the CNI
/// bridge plugin, `cali` + 11 hex for Calico, `lxc` + 12 hex for Cilium),
/// derived from the pod's namespace name instead of a container id.
pub(super) fn host_veth_name(datapath: Datapath, pod_netns: &str) -> String {
    let prefix = datapath.host_veth_prefix();
    let hex = format!("{:016x}", fnv1a_64(pod_netns));
    let len = match prefix {
        "veth" => 8,
        "cali" => 11,
        _ => 12,
    };
    format!("{prefix}{}", &hex[..len])
}

/// Deterministic, locally administered MAC of node `node`'s tunnel device.
fn tunnel_mac(datapath: Datapath, node: usize) -> String {
    let tag = match datapath {
        Datapath::FlannelVxlan => 0xf1,
        _ => 0xca,
    };
    format!("0e:68:74:{tag:02x}:00:{node:02x}")
}

/// Address of node `node`'s tunnel device (the first address of its pod
/// CIDR, as flannel and Calico's IPAM give it).
fn tunnel_ip(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, node as u8, 0)
}

/// Gateway address on the node for pods (cni0 or cilium_host).
fn node_gateway_ip(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, node as u8, 1)
}

/// Builds switch, nodes and pods.
pub(super) fn build(lab: &mut Lab) -> Result<(), TopologyError> {
    let spec = lab.spec.clone();
    let switch = spec.switch_netns();
    lab.add_netns(&switch)?;
    ip(&switch, &["link", "add", SWITCH_BRIDGE, "type", "bridge"])?;
    // The switch also plays the underlay router every node has a default
    // route through (it does not forward: off-lab traffic ends here).
    let router = format!("{UNDERLAY_ROUTER}/24");
    ip(&switch, &["addr", "add", &router, "dev", SWITCH_BRIDGE])?;
    ip(&switch, &["link", "set", SWITCH_BRIDGE, "up"])?;

    for node in 0..usize::from(spec.nodes) {
        let info = add_node(lab, &switch, node)?;
        lab.nodes.push(info);
        if node == 0 && spec.datapath == Datapath::CalicoIpip {
            probe_ipip(&lab.nodes[0].netns)?;
        }
    }
    for node in 0..usize::from(spec.nodes) {
        program_node(lab, node)?;
        for pod in 0..usize::from(spec.pods_per_node) {
            let info = add_pod(lab, node, pod)?;
            lab.pods.push(info);
        }
        node_sysctls(lab, node)?;
    }
    Ok(())
}

/// Node namespace with its uplink into the switch, underlay address and
/// forwarding enabled.
fn add_node(lab: &mut Lab, switch: &str, node: usize) -> Result<NodeInfo, TopologyError> {
    let spec = &lab.spec;
    let ns = spec.node_netns(node);
    let datapath = spec.datapath;
    lab.add_netns(&ns)?;
    let port = format!("n{node}");
    ip(
        switch,
        &[
            "link", "add", &port, "type", "veth", "peer", "name", UPLINK, "netns", &ns,
        ],
    )?;
    ip(
        switch,
        &["link", "set", &port, "master", SWITCH_BRIDGE, "up"],
    )?;
    let underlay = underlay_ip(node);
    ip(
        &ns,
        &["addr", "add", &format!("{underlay}/24"), "dev", UPLINK],
    )?;
    ip(&ns, &["link", "set", UPLINK, "up"])?;
    // Real nodes have a default route; Calico's proxy ARP relies on it.
    ip(
        &ns,
        &[
            "route",
            "add",
            "default",
            "via",
            UNDERLAY_ROUTER,
            "dev",
            UPLINK,
        ],
    )?;
    Ok(NodeInfo {
        name: format!("node{node}"),
        netns: ns,
        underlay_ip: underlay,
        pod_cidr: (Ipv4Addr::new(10, 244, node as u8, 0), 24),
        tunnel_device: datapath.tunnel_device().map(str::to_string),
        bridge_device: datapath.bridge_device().map(str::to_string),
        uplink_device: UPLINK.to_string(),
        switch_port: port,
    })
}

/// Creates a throwaway IPIP device in `ns` to learn whether the kernel has
/// IPIP; [`TopologyError::Unsupported`] if not.
fn probe_ipip(ns: &str) -> Result<(), TopologyError> {
    let probe = "htipipprobe";
    match ip(
        ns,
        &[
            "link",
            "add",
            probe,
            "type",
            "ipip",
            "local",
            "198.18.0.1",
            "remote",
            "198.18.0.2",
        ],
    ) {
        Ok(()) => {
            ip(ns, &["link", "del", probe])?;
            Ok(())
        }
        Err(NetnsError::CommandFailed {
            command, stderr, ..
        }) => Err(TopologyError::Unsupported {
            datapath: Datapath::CalicoIpip,
            reason: format!(
                "this kernel cannot create IPIP tunnels (CONFIG_NET_IPIP missing?): `{command}` said: {stderr}"
            ),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Node-wide devices and the routes to the other nodes' pod CIDRs.
fn program_node(lab: &Lab, node: usize) -> Result<(), TopologyError> {
    let spec = &lab.spec;
    let datapath = spec.datapath;
    let ns = &lab.nodes[node].netns;
    let underlay = underlay_ip(node).to_string();
    let others: Vec<usize> = (0..usize::from(spec.nodes))
        .filter(|&k| k != node)
        .collect();

    if let Some(bridge_dev) = datapath.bridge_device() {
        ip(ns, &["link", "add", bridge_dev, "type", "bridge"])?;
        let gateway = format!("{}/24", node_gateway_ip(node));
        ip(ns, &["addr", "add", &gateway, "dev", bridge_dev])?;
        ip(ns, &["link", "set", bridge_dev, "up"])?;
    }

    match datapath {
        Datapath::FlannelVxlan | Datapath::CalicoVxlan => {
            let (dev, vni, port) = if datapath == Datapath::FlannelVxlan {
                ("flannel.1", "1", "8472")
            } else {
                ("vxlan.calico", "4096", "4789")
            };
            let mac = tunnel_mac(datapath, node);
            ip(
                ns,
                &[
                    "link",
                    "add",
                    dev,
                    "address",
                    &mac,
                    "type",
                    "vxlan",
                    "id",
                    vni,
                    "dstport",
                    port,
                    "nolearning",
                    "local",
                    &underlay,
                    "dev",
                    UPLINK,
                ],
            )?;
            ip(ns, &["link", "set", dev, "mtu", VXLAN_MTU, "up"])?;
            let own = format!("{}/32", tunnel_ip(node));
            ip(ns, &["addr", "add", &own, "dev", dev])?;
            for &other in &others {
                let cidr = format!("10.244.{other}.0/24");
                let gateway = tunnel_ip(other).to_string();
                let other_mac = tunnel_mac(datapath, other);
                let other_underlay = underlay_ip(other).to_string();
                let mut route = vec!["route", "add", &cidr, "via", &gateway, "dev", dev, "onlink"];
                if datapath == Datapath::CalicoVxlan {
                    route.extend(["proto", PROTO_BIRD]);
                }
                ip(ns, &route)?;
                ip(
                    ns,
                    &[
                        "neigh",
                        "replace",
                        &gateway,
                        "lladdr",
                        &other_mac,
                        "dev",
                        dev,
                        "nud",
                        "permanent",
                    ],
                )?;
                bridge(
                    ns,
                    &[
                        "fdb",
                        "append",
                        &other_mac,
                        "dev",
                        dev,
                        "dst",
                        &other_underlay,
                    ],
                )?;
            }
        }
        Datapath::CalicoIpip => {
            // Loading the ipip module creates the fallback device tunl0 in
            // every namespace; Calico configures that one.
            if ip(ns, &["link", "show", "tunl0"]).is_err() {
                ip(ns, &["link", "add", "tunl0", "type", "ipip"])?;
            }
            ip(ns, &["link", "set", "tunl0", "mtu", "1480", "up"])?;
            let own = format!("{}/32", tunnel_ip(node));
            ip(ns, &["addr", "add", &own, "dev", "tunl0"])?;
            for &other in &others {
                let cidr = format!("10.244.{other}.0/24");
                let via = underlay_ip(other).to_string();
                ip(
                    ns,
                    &[
                        "route", "add", &cidr, "via", &via, "dev", "tunl0", "onlink", "proto",
                        PROTO_BIRD,
                    ],
                )?;
            }
        }
        Datapath::FlannelHostGw
        | Datapath::CalicoBgp
        | Datapath::CiliumLike
        | Datapath::HostNetwork => {
            for &other in &others {
                let cidr = format!("10.244.{other}.0/24");
                let via = underlay_ip(other).to_string();
                let mut route = vec!["route", "add", &cidr, "via", &via, "dev", UPLINK];
                if datapath == Datapath::CalicoBgp {
                    route.extend(["proto", PROTO_BIRD]);
                }
                ip(ns, &route)?;
            }
        }
    }

    match datapath {
        Datapath::CalicoBgp | Datapath::CalicoVxlan | Datapath::CalicoIpip => {
            // Calico's blackhole for its own block: unknown local pod IPs are
            // dropped instead of leaving via the default route.
            let cidr = format!("10.244.{node}.0/24");
            ip(
                ns,
                &["route", "add", "blackhole", &cidr, "proto", PROTO_BIRD],
            )?;
        }
        Datapath::CiliumLike => {
            ip(
                ns,
                &[
                    "link",
                    "add",
                    "cilium_host",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "cilium_net",
                ],
            )?;
            let router = node_gateway_ip(node).to_string();
            ip(
                ns,
                &["addr", "add", &format!("{router}/32"), "dev", "cilium_host"],
            )?;
            ip(ns, &["link", "set", "cilium_net", "up"])?;
            ip(ns, &["link", "set", "cilium_host", "up"])?;
            let cidr = format!("10.244.{node}.0/24");
            ip(
                ns,
                &[
                    "route",
                    "add",
                    &cidr,
                    "via",
                    &router,
                    "dev",
                    "cilium_host",
                    "src",
                    &router,
                ],
            )?;
        }
        _ => {}
    }
    Ok(())
}

/// Pod namespace with its veth pair, address and routes.
fn add_pod(lab: &mut Lab, node: usize, pod: usize) -> Result<PodInfo, TopologyError> {
    let datapath = lab.spec.datapath;
    let node_ns = lab.nodes[node].netns.clone();
    let pod_ns = lab.spec.pod_netns(node, pod);
    lab.add_netns(&pod_ns)?;
    let host = host_veth_name(datapath, &pod_ns);
    let ip_addr = pod_ip(node, pod);
    let vxlan = matches!(datapath, Datapath::FlannelVxlan | Datapath::CalicoVxlan);

    let mut add = vec![
        "link", "add", &host, "type", "veth", "peer", "name", POD_IFNAME, "netns", &pod_ns,
    ];
    if vxlan {
        // The CNI gives pods the overlay MTU.
        add.extend(["mtu", VXLAN_MTU]);
        add.splice(3..3, ["mtu", VXLAN_MTU]);
    }
    ip(&node_ns, &add)?;

    match datapath {
        Datapath::FlannelVxlan | Datapath::FlannelHostGw | Datapath::HostNetwork => {
            ip(&node_ns, &["link", "set", &host, "master", "cni0", "up"])?;
            ip(
                &node_ns,
                &[
                    "link",
                    "set",
                    &host,
                    "type",
                    "bridge_slave",
                    "hairpin",
                    "on",
                ],
            )?;
            ip(
                &pod_ns,
                &["addr", "add", &format!("{ip_addr}/24"), "dev", POD_IFNAME],
            )?;
            ip(&pod_ns, &["link", "set", POD_IFNAME, "up"])?;
            let gateway = node_gateway_ip(node).to_string();
            ip(&pod_ns, &["route", "add", "default", "via", &gateway])?;
        }
        Datapath::CalicoBgp
        | Datapath::CalicoVxlan
        | Datapath::CalicoIpip
        | Datapath::CiliumLike => {
            // Routed pods: a /32 route per pod on the node, a default route
            // in the pod (Calico: via a link-local gateway that the host
            // veth answers with a fixed MAC; Cilium: via the node).
            let (link_up, gateway): (&[&str], String) = if datapath == Datapath::CiliumLike {
                (
                    &["link", "set", &host, "up"],
                    node_gateway_ip(node).to_string(),
                )
            } else {
                (
                    &["link", "set", &host, "address", CALICO_HOST_MAC, "up"],
                    CALICO_GATEWAY.to_owned(),
                )
            };
            ip(&node_ns, link_up)?;
            ip(
                &node_ns,
                &[
                    "route",
                    "add",
                    &format!("{ip_addr}/32"),
                    "dev",
                    &host,
                    "scope",
                    "link",
                ],
            )?;
            pod_routed_setup(&pod_ns, ip_addr, &gateway)?;
        }
    }
    Ok(PodInfo {
        name: format!("node{node}-pod{pod}"),
        netns: pod_ns,
        node_index: node,
        ip: ip_addr,
        host_veth: host,
        pod_ifname: POD_IFNAME.to_string(),
    })
}

/// Pod side of a routed (bridge-less) CNI: a /32 address, an on-link route
/// to the gateway and the default route through it.
fn pod_routed_setup(pod_ns: &str, ip_addr: Ipv4Addr, gateway: &str) -> Result<(), NetnsError> {
    ip(
        pod_ns,
        &["addr", "add", &format!("{ip_addr}/32"), "dev", POD_IFNAME],
    )?;
    ip(pod_ns, &["link", "set", POD_IFNAME, "up"])?;
    ip(
        pod_ns,
        &["route", "add", gateway, "dev", POD_IFNAME, "scope", "link"],
    )?;
    ip(
        pod_ns,
        &["route", "add", "default", "via", gateway, "dev", POD_IFNAME],
    )
}

/// ip_forward, and for Calico proxy ARP on every cali* veth, in one call.
fn node_sysctls(lab: &Lab, node: usize) -> Result<(), TopologyError> {
    let mut settings = vec!["net.ipv4.ip_forward=1".to_string()];
    if matches!(
        lab.spec.datapath,
        Datapath::CalicoBgp | Datapath::CalicoVxlan | Datapath::CalicoIpip
    ) {
        for pod in lab.pods_on(node) {
            settings.push(format!("net.ipv4.conf.{}.proxy_arp=1", pod.host_veth));
            settings.push(format!("net.ipv4.neigh.{}.proxy_delay=0", pod.host_veth));
        }
    }
    sysctls(&lab.nodes[node].netns, &settings)?;
    Ok(())
}

/// Writes kube-proxy's rules into every node, one transaction per node.
pub(super) fn install_service_rules(lab: &Lab) -> Result<(), TopologyError> {
    let (argv, input): (&[&str], String) = match lab.service.kube_proxy {
        KubeProxyMode::None => return Ok(()),
        KubeProxyMode::Iptables => (
            &["iptables-restore", "-w", "5", "--noflush"],
            kubeproxy::iptables_restore_input(&lab.service_set()),
        ),
        KubeProxyMode::IptablesLegacy => (
            &["iptables-legacy-restore", "-w", "5", "--noflush"],
            kubeproxy::iptables_restore_input(&lab.service_set()),
        ),
        KubeProxyMode::Nftables => (
            &["nft", "-f", "-"],
            kubeproxy::nft_input(&lab.service_set()),
        ),
    };
    // One transaction per node; nodes in parallel (iptables-nft needs
    // seconds per node for thousands of services).
    let results: Vec<Result<(), NetnsError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = lab
            .nodes
            .iter()
            .map(|node| {
                let input = input.as_bytes();
                scope.spawn(move || netns::run_in_with_stdin(&node.netns, argv, input).map(drop))
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    for result in results {
        result?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_and_follow_the_cni() {
        let flannel = host_veth_name(Datapath::FlannelVxlan, "ht-lab-n0p0");
        let calico = host_veth_name(Datapath::CalicoBgp, "ht-lab-n0p0");
        let cilium = host_veth_name(Datapath::CiliumLike, "ht-lab-n0p0");
        assert!(
            flannel.starts_with("veth") && flannel.len() == 12,
            "{flannel}"
        );
        assert!(calico.starts_with("cali") && calico.len() == 15, "{calico}");
        assert!(cilium.starts_with("lxc") && cilium.len() == 15, "{cilium}");
        assert_ne!(
            host_veth_name(Datapath::CalicoBgp, "ht-lab-n0p1"),
            calico,
            "pods on one node need distinct names"
        );
        assert_eq!(host_veth_name(Datapath::CalicoBgp, "ht-lab-n0p0"), calico);
    }

    #[test]
    fn tunnel_macs_are_unicast_local_and_distinct() {
        let a = tunnel_mac(Datapath::FlannelVxlan, 0);
        let b = tunnel_mac(Datapath::FlannelVxlan, 1);
        assert_ne!(a, b);
        let first = u8::from_str_radix(&a[..2], 16).unwrap();
        assert_eq!(first & 0b11, 0b10, "locally administered unicast");
    }
}
