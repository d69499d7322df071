//! Discovery of the node's devices and pod namespaces.
//!
//! The node is the network namespace hoptrace runs in; its pods are the
//! namespaces at the far ends of its veths. Devices are classified by kind
//! (veth, bridge, vxlan, geneve, ipip, ...) whatever their name. An uplink
//! is a device that faces the network: the device of the default route, the
//! underlay of a VXLAN device (its `dev`, or the device holding its `local`
//! address), or the device of a route through a gateway (a route to another
//! node's pod CIDR, as flannel host-gw and Calico BGP install), so that a
//! node without a default route still has one.
//!
//! Links, routes and namespace ids are read over rtnetlink (`RTM_GETLINK`,
//! `RTM_GETROUTE`, `RTM_GETNSID`) from a socket made on the calling thread, so
//! a thread that entered a namespace with `setns(2)` sees that namespace. The
//! turning of those messages into [`Device`]s and [`PodNetns`] is done by pure
//! functions, tested on built and recorded messages.

use std::{collections::HashMap, os::unix::fs::MetadataExt as _, path::Path, process::Command};

use futures_util::TryStreamExt as _;
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::{
        InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType,
        LinkMessage,
    },
    route::{RouteAttribute, RouteHeader, RouteMessage},
};

use crate::kernel::cleanup::with_rtnetlink;

/// Where `ip netns` (and containerd, and the lab) mount named namespaces.
const NETNS_RUN_DIR: &str = "/run/netns";

/// Device discovery failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The netlink socket, or the runtime that drives it, could not be made.
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// A netlink dump failed.
    #[error("netlink {request} failed: {source}")]
    Netlink {
        /// The request (`RTM_GETLINK dump`, ...).
        request: &'static str,
        /// What the kernel (or the netlink library) said.
        #[source]
        source: rtnetlink::Error,
    },
    /// `/run/netns` exists but cannot be listed.
    #[error("cannot list {NETNS_RUN_DIR}: {0}")]
    NetnsDir(#[source] std::io::Error),
    /// `/proc/thread-self/ns/net` cannot be read.
    #[error("cannot read the network namespace of this process: {0}")]
    OwnNetns(#[source] std::io::Error),
}

/// What a device is, by its link kind (not its name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKind {
    /// One end of a veth pair.
    Veth,
    /// A Linux bridge.
    Bridge,
    /// A VXLAN tunnel device.
    Vxlan,
    /// A GENEVE tunnel device.
    Geneve,
    /// An IP-in-IP tunnel (`ipip`, `sit`, `ip6tnl`).
    Ipip,
    /// The loopback device.
    Loopback,
    /// Physical NIC or anything else with an Ethernet header.
    Ethernet,
    /// Anything without a link-layer header (tun, ...).
    L3Only,
}

/// One device of a network namespace.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Device {
    /// Interface index, unique inside its namespace.
    pub ifindex: u32,
    /// Interface name (`IFLA_IFNAME`).
    pub name: String,
    /// What the device is, by its link kind.
    pub kind: DeviceKind,
    /// For veths: the peer's namespace id as seen from this namespace.
    pub peer_netnsid: Option<i32>,
    /// Enslaved to a bridge (a bridge port): the bridge's name.
    pub master: Option<String>,
    /// The device of the default route.
    pub uplink: bool,
    /// Frames on this device start with an Ethernet header.
    pub has_l2: bool,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// The device has no qdisc (`noqueue`): nothing queues between entering
    /// the device and the driver.
    pub noqueue: bool,
}

/// A pod: the namespace at the far end of one of the node's veths.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PodNetns {
    /// Name under /run/netns (containerd's `cni-...`, or the lab's).
    pub name: String,
    /// Inode of the namespace.
    pub inode: u32,
    /// Host-side veth(s) leading to it.
    pub host_veths: Vec<String>,
}

/// The node's view of itself.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NodeDevices {
    /// Inode of the node's network namespace.
    pub netns_inode: u32,
    /// kube-proxy's chains are programmed here (iptables `KUBE-SERVICES` in
    /// the nat table, or the nftables `kube-proxy` table).
    pub kube_proxy_present: bool,
    /// Every device of the node's namespace, in the kernel's order.
    pub devices: Vec<Device>,
    /// The namespaces behind the node's veths (the uplink excepted).
    pub pods: Vec<PodNetns>,
}

/// Classifies a link by its `IFLA_INFO_KIND` and, without one, by its
/// link-layer (ARPHRD) type.
pub fn classify(kind: Option<&InfoKind>, link_layer: LinkLayerType) -> DeviceKind {
    match (kind, link_layer) {
        (Some(InfoKind::Veth), _) => DeviceKind::Veth,
        (Some(InfoKind::Bridge), _) => DeviceKind::Bridge,
        (Some(InfoKind::Vxlan), _) => DeviceKind::Vxlan,
        (Some(InfoKind::Geneve), _) => DeviceKind::Geneve,
        (Some(InfoKind::IpIp | InfoKind::SitTun | InfoKind::Ip6Tnl), _) => DeviceKind::Ipip,
        (_, LinkLayerType::Loopback) => DeviceKind::Loopback,
        (
            _,
            LinkLayerType::Tunnel
            | LinkLayerType::Tunnel6
            | LinkLayerType::Sit
            | LinkLayerType::None,
        ) => DeviceKind::L3Only,
        _ => DeviceKind::Ethernet,
    }
}

/// Inode of the calling thread's network namespace.
///
/// # Errors
///
/// [`DeviceError::OwnNetns`] when `/proc/thread-self/ns/net` cannot be read.
pub fn own_netns_inode() -> Result<u32, DeviceError> {
    std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino() as u32)
        .map_err(DeviceError::OwnNetns)
}

/// What one discovery reads from the kernel.
struct Dumps {
    links: Vec<LinkMessage>,
    routes: Vec<RouteMessage>,
    addresses: Vec<AddressMessage>,
    /// Names under /run/netns with the id this namespace gave them, if any.
    netns: Vec<(String, Option<i32>)>,
}

async fn dump(handle: rtnetlink::Handle, names: Vec<String>) -> Result<Dumps, DeviceError> {
    let links = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|source| DeviceError::Netlink {
            request: "RTM_GETLINK dump",
            source,
        })?;
    // Every IPv4 route (all tables: the filter is ours, see
    // `default_route_devices`), as `ip route` asks.
    let ipv4 = rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new().build();
    let routes = handle
        .route()
        .get(ipv4)
        .execute()
        .try_collect()
        .await
        .map_err(|source| DeviceError::Netlink {
            request: "RTM_GETROUTE dump",
            source,
        })?;
    let addresses = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|source| DeviceError::Netlink {
            request: "RTM_GETADDR dump",
            source,
        })?;
    let mut netns = Vec::with_capacity(names.len());
    for name in names {
        // A namespace without an id here (or one that vanished meanwhile)
        // is listed without one, as `ip netns list` does.
        let id = handle
            .link()
            .get_netns_id(name.clone())
            .execute()
            .await
            .ok()
            .flatten();
        netns.push((name, id));
    }
    Ok(Dumps {
        links,
        routes,
        addresses,
        netns,
    })
}

/// Names of the namespaces mounted under /run/netns (none when it does not
/// exist).
fn named_netns() -> Result<Vec<String>, DeviceError> {
    let entries = match std::fs::read_dir(NETNS_RUN_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(DeviceError::NetnsDir(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(DeviceError::NetnsDir)?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Discovers devices and pods of the calling thread's network namespace.
///
/// # Errors
///
/// The netlink socket cannot be made or a dump fails, /run/netns cannot be
/// listed, or the thread's own namespace cannot be read.
pub fn discover() -> Result<NodeDevices, DeviceError> {
    let names = named_netns()?;
    let dumps = with_rtnetlink(|handle| dump(handle, names)).map_err(DeviceError::Socket)??;
    let uplinks = uplink_devices(&dumps.links, &dumps.routes, &dumps.addresses);
    let devices = devices_from_links(&dumps.links, &uplinks);
    let by_id: HashMap<i32, &str> = dumps
        .netns
        .iter()
        .filter_map(|(name, id)| Some(((*id)?, name.as_str())))
        .collect();
    let pods = pods_behind(&devices, &by_id, |name| {
        std::fs::metadata(Path::new(NETNS_RUN_DIR).join(name))
            .ok()
            .map(|m| m.ino() as u32)
    });
    Ok(NodeDevices {
        netns_inode: own_netns_inode()?,
        kube_proxy_present: kube_proxy_present(),
        devices,
        pods,
    })
}

/// Devices that face the network: those of the default routes, and, among
/// Ethernet-like devices (not bridges, tunnels, loopback or pod veths),
/// those that carry a tunnel's underlay ([`underlay_devices`]) or a route
/// through a gateway ([`gateway_route_devices`]).
fn uplink_devices(
    links: &[LinkMessage],
    routes: &[RouteMessage],
    addresses: &[AddressMessage],
) -> Vec<u32> {
    let mut uplinks = default_route_devices(routes);
    let facing = |index: u32| {
        links.iter().any(|l| {
            l.header.index == index
                && match classify(link_kind(l), l.header.link_layer_type) {
                    DeviceKind::Ethernet => true,
                    // A namespace lab's uplink is a veth; a pod's is not
                    // under a gateway route or a tunnel.
                    DeviceKind::Veth => true,
                    _ => false,
                }
        })
    };
    for index in underlay_devices(links, addresses)
        .into_iter()
        .chain(gateway_route_devices(routes))
    {
        if facing(index) && !uplinks.contains(&index) {
            uplinks.push(index);
        }
    }
    uplinks
}

/// Devices under the node's VXLAN devices: the `dev` a VXLAN device was
/// created on (`IFLA_VXLAN_LINK`), or the device that holds its `local`
/// address.
fn underlay_devices(links: &[LinkMessage], addresses: &[AddressMessage]) -> Vec<u32> {
    let owner = |ip: std::net::IpAddr| {
        addresses.iter().find_map(|a| {
            a.attributes
                .iter()
                .any(|attr| {
                    matches!(attr, AddressAttribute::Local(x) | AddressAttribute::Address(x) if *x == ip)
                })
                .then_some(a.header.index)
        })
    };
    let mut out = Vec::new();
    for link in links {
        let vxlan = link
            .attributes
            .iter()
            .filter_map(|a| match a {
                LinkAttribute::LinkInfo(infos) => Some(infos),
                _ => None,
            })
            .flatten()
            .find_map(|info| match info {
                LinkInfo::Data(InfoData::Vxlan(data)) => Some(data),
                _ => None,
            });
        let Some(data) = vxlan else { continue };
        for attr in data {
            let index = match attr {
                InfoVxlan::Link(index) if *index != 0 => Some(*index),
                InfoVxlan::Local(ip) => owner((*ip).into()),
                InfoVxlan::Local6(ip) => owner((*ip).into()),
                _ => None,
            };
            out.extend(index);
        }
    }
    out
}

/// Output devices of main-table routes that go through a gateway (`via`):
/// routes to other networks, such as another node's pod CIDR.
fn gateway_route_devices(routes: &[RouteMessage]) -> Vec<u32> {
    routes
        .iter()
        .filter(|r| {
            r.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Gateway(_)))
        })
        .filter(|r| route_table(r) == u32::from(RouteHeader::RT_TABLE_MAIN))
        .filter_map(|r| {
            r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(ifindex) => Some(*ifindex),
                _ => None,
            })
        })
        .collect()
}

fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

/// Output devices (ifindexes) of the IPv4 default routes of the main table,
/// what `ip route show default` lists with a `dev`. A multipath default
/// route names no single device and gives none.
fn default_route_devices(routes: &[RouteMessage]) -> Vec<u32> {
    routes
        .iter()
        .filter(|r| r.header.destination_prefix_length == 0)
        .filter(|r| {
            let table = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(r.header.table));
            table == u32::from(RouteHeader::RT_TABLE_MAIN)
        })
        .filter_map(|r| {
            r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(ifindex) => Some(*ifindex),
                _ => None,
            })
        })
        .collect()
}

/// One [`Device`] per link message; `uplinks` are the default route's
/// devices. A bridge port's master is named from the same dump.
fn devices_from_links(links: &[LinkMessage], uplinks: &[u32]) -> Vec<Device> {
    let names: HashMap<u32, &str> = links
        .iter()
        .filter_map(|l| Some((l.header.index, link_name(l)?)))
        .collect();
    links
        .iter()
        .map(|l| {
            let kind = classify(link_kind(l), l.header.link_layer_type);
            // Named as `ip link` names it: `if<index>` when not in the dump.
            let master = l
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::Controller(index) => Some(index),
                    _ => None,
                })
                .map(|index| {
                    names
                        .get(index)
                        .map_or_else(|| format!("if{index}"), |name| (*name).to_owned())
                });
            let peer_netnsid = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::LinkNetNsId(id) => Some(*id),
                _ => None,
            });
            let qdisc = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::Qdisc(q) => Some(q.as_str()),
                _ => None,
            });
            Device {
                ifindex: l.header.index,
                name: link_name(l).unwrap_or_default().to_owned(),
                kind,
                peer_netnsid: if kind == DeviceKind::Veth {
                    peer_netnsid
                } else {
                    None
                },
                master,
                uplink: uplinks.contains(&l.header.index),
                has_l2: !matches!(kind, DeviceKind::Ipip | DeviceKind::L3Only),
                up: l.header.flags.contains(LinkFlags::Up),
                noqueue: qdisc == Some("noqueue"),
            }
        })
        .collect()
}

fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

fn link_kind(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes
        .iter()
        .filter_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => Some(infos),
            _ => None,
        })
        .flatten()
        .find_map(|info| match info {
            LinkInfo::Kind(kind) => Some(kind),
            _ => None,
        })
}

/// The pods behind `devices`: for each veth with a peer namespace id (not
/// the uplink, which may be a veth too in a namespace lab: what is behind it
/// is the network), the named namespace with that id (`by_id`), identified
/// by its inode (`inode_of` a /run/netns name; `None` skips it). Veths into
/// the same namespace make one pod.
fn pods_behind(
    devices: &[Device],
    by_id: &HashMap<i32, &str>,
    inode_of: impl Fn(&str) -> Option<u32>,
) -> Vec<PodNetns> {
    let mut pods: Vec<PodNetns> = Vec::new();
    for dev in devices.iter().filter(|d| !d.uplink) {
        let Some(id) = dev.peer_netnsid else { continue };
        let Some(name) = by_id.get(&id) else { continue };
        let Some(inode) = inode_of(name) else {
            continue;
        };
        match pods.iter_mut().find(|p| p.inode == inode) {
            Some(pod) => pod.host_veths.push(dev.name.clone()),
            None => pods.push(PodNetns {
                name: (*name).to_owned(),
                inode,
                host_veths: vec![dev.name.clone()],
            }),
        }
    }
    pods
}

/// Does this namespace carry kube-proxy's rules? Asks iptables (the
/// backend the `iptables` alternative points to, then the legacy x_tables
/// one: kube-proxy writes to whichever already holds rules) for the nat
/// KUBE-SERVICES chain (one rule is enough) and nft for its table. Missing
/// tools count as "no". These stay subprocesses: the rules are read through
/// the iptables and nft tools, not through rtnetlink.
pub fn kube_proxy_present() -> bool {
    let has_services_chain = |tool: &str| {
        Command::new(tool)
            .args(["-w", "5", "-t", "nat", "-S", "KUBE-SERVICES", "1"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    has_services_chain("iptables")
        || has_services_chain("iptables-legacy")
        || Command::new("nft")
            .args(["list", "tables"])
            .output()
            .is_ok_and(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.trim().ends_with(" kube-proxy"))
            })
}

impl NodeDevices {
    /// Devices hoptrace attaches tc programs to by default: pod veths (host
    /// side), bridges, tunnel devices and the uplink.
    pub fn default_tc_targets(&self) -> Vec<&Device> {
        self.devices
            .iter()
            .filter(|d| d.up || d.kind == DeviceKind::Veth)
            .filter(|d| {
                matches!(
                    d.kind,
                    DeviceKind::Veth
                        | DeviceKind::Bridge
                        | DeviceKind::Vxlan
                        | DeviceKind::Geneve
                        | DeviceKind::Ipip
                ) || d.uplink
            })
            .collect()
    }

    /// The device called `name`, if this namespace has one.
    pub fn by_name(&self, name: &str) -> Option<&Device> {
        self.devices.iter().find(|d| d.name == name)
    }

    /// The node's namespace and its pods: the namespaces whose events count.
    pub fn traced_netns(&self) -> Vec<u32> {
        let mut v = vec![self.netns_inode];
        v.extend(self.pods.iter().map(|p| p.inode));
        v
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{Emitable as _, Parseable as _};
    use netlink_packet_route::route::RouteAddress;

    use super::*;

    #[test]
    fn classifies_by_kind_not_name() {
        use LinkLayerType::{Ether, Loopback, None as NoL2, Sit, Tunnel, Tunnel6};
        assert_eq!(classify(Some(&InfoKind::Vxlan), Ether), DeviceKind::Vxlan);
        assert_eq!(classify(Some(&InfoKind::Veth), Ether), DeviceKind::Veth);
        assert_eq!(classify(Some(&InfoKind::Bridge), Ether), DeviceKind::Bridge);
        assert_eq!(classify(Some(&InfoKind::Geneve), Ether), DeviceKind::Geneve);
        assert_eq!(classify(Some(&InfoKind::IpIp), Tunnel), DeviceKind::Ipip);
        assert_eq!(classify(Some(&InfoKind::SitTun), Sit), DeviceKind::Ipip);
        assert_eq!(classify(Some(&InfoKind::Ip6Tnl), Tunnel6), DeviceKind::Ipip);
        assert_eq!(classify(None, Loopback), DeviceKind::Loopback);
        assert_eq!(classify(None, NoL2), DeviceKind::L3Only);
        assert_eq!(classify(Some(&InfoKind::Tun), NoL2), DeviceKind::L3Only);
        assert_eq!(classify(None, Tunnel), DeviceKind::L3Only);
        assert_eq!(classify(None, Ether), DeviceKind::Ethernet);
        assert_eq!(
            classify(Some(&InfoKind::Dummy), Ether),
            DeviceKind::Ethernet
        );
    }

    /// A link message as the kernel's `RTM_NEWLINK` dump carries it.
    fn link(
        index: u32,
        name: &str,
        kind: Option<InfoKind>,
        layer: LinkLayerType,
        up: bool,
        extra: Vec<LinkAttribute>,
    ) -> LinkMessage {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.link_layer_type = layer;
        if up {
            msg.header.flags = LinkFlags::Up | LinkFlags::Broadcast;
        }
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        if let Some(kind) = kind {
            msg.attributes
                .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(kind)]));
        }
        msg.attributes.extend(extra);
        // Through the wire format and back, as discovery receives it.
        let mut bytes = vec![0; msg.buffer_len()];
        msg.emit(&mut bytes);
        LinkMessage::parse(bytes.as_slice()).expect("parse emitted link")
    }

    fn route(dst_len: u8, table: u8, oif: Option<u32>) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header.address_family = netlink_packet_route::AddressFamily::Inet;
        msg.header.destination_prefix_length = dst_len;
        msg.header.table = table;
        if dst_len > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(
                    std::net::Ipv4Addr::new(10, 244, 0, 0),
                )));
        }
        if let Some(oif) = oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        let mut bytes = vec![0; msg.buffer_len()];
        msg.emit(&mut bytes);
        RouteMessage::parse(bytes.as_slice()).expect("parse emitted route")
    }

    /// A node: lo, eth0 (default route), cni0 with two pod veths (one pod
    /// has two), flannel.1, an ipip tunnel, and a veth uplink of a lab node.
    fn node_links() -> Vec<LinkMessage> {
        use LinkLayerType::{Ether, Loopback, Tunnel};
        vec![
            link(
                1,
                "lo",
                None,
                Loopback,
                true,
                vec![LinkAttribute::Qdisc("noqueue".into())],
            ),
            link(
                2,
                "eth0",
                None,
                Ether,
                true,
                vec![LinkAttribute::Qdisc("mq".into())],
            ),
            link(
                3,
                "cni0",
                Some(InfoKind::Bridge),
                Ether,
                true,
                vec![LinkAttribute::Qdisc("noqueue".into())],
            ),
            link(
                5,
                "vethx1",
                Some(InfoKind::Veth),
                Ether,
                true,
                vec![
                    LinkAttribute::Controller(3),
                    LinkAttribute::LinkNetNsId(0),
                    LinkAttribute::Qdisc("noqueue".into()),
                ],
            ),
            link(
                6,
                "vethx2",
                Some(InfoKind::Veth),
                Ether,
                false,
                vec![LinkAttribute::Controller(3), LinkAttribute::LinkNetNsId(1)],
            ),
            link(
                7,
                "vethx3",
                Some(InfoKind::Veth),
                Ether,
                true,
                vec![LinkAttribute::Controller(3), LinkAttribute::LinkNetNsId(1)],
            ),
            link(8, "flannel.1", Some(InfoKind::Vxlan), Ether, true, vec![]),
            link(9, "tunl0", Some(InfoKind::IpIp), Tunnel, true, vec![]),
            // A vxlan with a netnsid (its underlay in another namespace):
            // only veths have peers.
            link(
                10,
                "vx-ns",
                Some(InfoKind::Vxlan),
                Ether,
                true,
                vec![LinkAttribute::LinkNetNsId(2)],
            ),
            // A bridge port whose master is not in the dump.
            link(
                11,
                "port",
                Some(InfoKind::Dummy),
                Ether,
                true,
                vec![LinkAttribute::Controller(99)],
            ),
        ]
    }

    #[test]
    fn uplinks_without_a_default_route() {
        // No default route: eth1 carries flannel.1's underlay (its `local`
        // address), eth2 a route to another node's pod CIDR via a gateway,
        // eth3 is the `dev` of a second VXLAN device. A gateway route
        // through the bridge or a tunnel does not make those uplinks.
        use LinkLayerType::{Ether, Loopback};
        use std::net::Ipv4Addr;
        let vxlan = |index: u32, name: &str, data: Vec<InfoVxlan>| {
            let mut l = link(index, name, None, Ether, true, vec![]);
            l.attributes.push(LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Vxlan),
                LinkInfo::Data(InfoData::Vxlan(data)),
            ]));
            let mut bytes = vec![0; l.buffer_len()];
            l.emit(&mut bytes);
            LinkMessage::parse(bytes.as_slice()).expect("parse emitted vxlan")
        };
        let links = vec![
            link(1, "lo", None, Loopback, true, vec![]),
            link(2, "eth1", None, Ether, true, vec![]),
            link(3, "eth2", None, Ether, true, vec![]),
            link(4, "eth3", None, Ether, true, vec![]),
            link(5, "cni0", Some(InfoKind::Bridge), Ether, true, vec![]),
            link(9, "eth9", None, Ether, true, vec![]),
            vxlan(
                6,
                "flannel.1",
                vec![InfoVxlan::Local(Ipv4Addr::new(192, 168, 7, 1))],
            ),
            vxlan(7, "vx2", vec![InfoVxlan::Link(4)]),
        ];
        let mut addr = AddressMessage::default();
        addr.header.index = 2;
        addr.attributes.push(AddressAttribute::Local(
            Ipv4Addr::new(192, 168, 7, 1).into(),
        ));
        let via = |oif: u32| {
            let mut r = route(24, RouteHeader::RT_TABLE_MAIN, Some(oif));
            r.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(
                    192, 168, 8, 2,
                ))));
            r
        };
        let routes = [
            via(3),
            via(5),
            via(6),
            route(24, RouteHeader::RT_TABLE_MAIN, Some(9)),
        ];
        let mut uplinks = uplink_devices(&links, &routes, &[addr]);
        uplinks.sort_unstable();
        assert_eq!(uplinks, [2, 3, 4], "eth1, eth2, eth3");
        let devices = devices_from_links(&links, &uplinks);
        let role =
            |name: &str| crate::node::role_of(devices.iter().find(|d| d.name == name).expect(name));
        assert_eq!(role("eth1"), crate::node::DeviceRole::Uplink);
        assert_eq!(role("flannel.1"), crate::node::DeviceRole::Vxlan);
        assert_eq!(role("eth9"), crate::node::DeviceRole::Other);
    }

    #[test]
    fn devices_from_link_messages() {
        let routes = [
            route(0, RouteHeader::RT_TABLE_MAIN, Some(2)),
            route(16, RouteHeader::RT_TABLE_MAIN, Some(8)),
            // Default routes of another table and without a device.
            route(0, 100, Some(3)),
            route(0, RouteHeader::RT_TABLE_MAIN, None),
        ];
        let uplinks = default_route_devices(&routes);
        assert_eq!(uplinks, [2]);
        let devices = devices_from_links(&node_links(), &uplinks);
        let get = |name: &str| devices.iter().find(|d| d.name == name).expect(name);

        let lo = get("lo");
        assert_eq!(
            (lo.ifindex, lo.kind, lo.has_l2),
            (1, DeviceKind::Loopback, true)
        );
        assert!(lo.noqueue && lo.up && !lo.uplink);
        let eth0 = get("eth0");
        assert_eq!(eth0.kind, DeviceKind::Ethernet);
        assert!(eth0.uplink && !eth0.noqueue);
        assert_eq!(get("cni0").kind, DeviceKind::Bridge);
        let veth = get("vethx1");
        assert_eq!(veth.kind, DeviceKind::Veth);
        assert_eq!(veth.peer_netnsid, Some(0));
        assert_eq!(veth.master.as_deref(), Some("cni0"));
        assert!(veth.up && veth.noqueue && veth.has_l2 && !veth.uplink);
        let down = get("vethx2");
        assert!(!down.up && !down.noqueue);
        assert_eq!(down.peer_netnsid, Some(1));
        assert_eq!(get("flannel.1").kind, DeviceKind::Vxlan);
        let tunl = get("tunl0");
        assert_eq!((tunl.kind, tunl.has_l2), (DeviceKind::Ipip, false));
        assert_eq!(get("vx-ns").peer_netnsid, None, "only veths have peers");
        assert_eq!(get("port").master.as_deref(), Some("if99"));
        assert_eq!(get("cni0").master, None);

        let node = NodeDevices {
            netns_inode: 1,
            kube_proxy_present: false,
            devices: devices.clone(),
            pods: Vec::new(),
        };
        let targets: Vec<&str> = node
            .default_tc_targets()
            .iter()
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(
            targets,
            [
                "eth0",
                "cni0",
                "vethx1",
                "vethx2",
                "vethx3",
                "flannel.1",
                "tunl0",
                "vx-ns"
            ]
        );
    }

    #[test]
    fn pods_are_the_named_namespaces_behind_veths() {
        let mut devices = devices_from_links(&node_links(), &[2]);
        // A lab node: its uplink is a veth into the "switch" namespace.
        devices.push(Device {
            ifindex: 12,
            name: "up0".into(),
            kind: DeviceKind::Veth,
            peer_netnsid: Some(3),
            master: None,
            uplink: true,
            has_l2: true,
            up: true,
            noqueue: true,
        });
        let by_id = HashMap::from([(0, "cni-a"), (1, "cni-b"), (2, "underlay"), (3, "switch")]);
        let inodes = HashMap::from([
            ("cni-a", 4026532001u32),
            ("cni-b", 4026532002),
            ("underlay", 4026532003),
            ("switch", 4026532004),
        ]);
        let pods = pods_behind(&devices, &by_id, |name| inodes.get(name).copied());
        let summary: Vec<(&str, u32, Vec<&str>)> = pods
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.inode,
                    p.host_veths.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("cni-a", 4026532001, vec!["vethx1"]),
                ("cni-b", 4026532002, vec!["vethx2", "vethx3"]),
            ]
        );
        // A namespace whose file is gone is no pod.
        let pods = pods_behind(&devices, &by_id, |name| {
            (name != "cni-a").then(|| inodes[name])
        });
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].name, "cni-b");
    }

    /// The payload of an `RTM_NEWLINK` dump message as a 6.18 kernel sent
    /// it, recorded in a throwaway namespace: veth `vethpod0`, ifindex 2,
    /// port of bridge `br0` (ifindex 3), peer in namespace id 0, qdisc
    /// noqueue, up.
    const RECORDED_VETH: &str = include_str!("testdata/rtm_newlink_veth.hex");

    #[test]
    fn recorded_kernel_veth_message() {
        let hex = RECORDED_VETH.split_whitespace().collect::<String>();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect();
        let veth = LinkMessage::parse(bytes.as_slice()).expect("kernel message");
        let mut bridge = LinkMessage::default();
        bridge.header.index = 3;
        bridge.attributes.push(LinkAttribute::IfName("br0".into()));
        let devices = devices_from_links(&[bridge, veth], &[]);
        let dev = &devices[1];
        assert_eq!((dev.ifindex, dev.name.as_str()), (2, "vethpod0"));
        assert_eq!(dev.kind, DeviceKind::Veth);
        assert_eq!(dev.peer_netnsid, Some(0));
        assert_eq!(dev.master.as_deref(), Some("br0"));
        assert!(dev.up && dev.noqueue && dev.has_l2 && !dev.uplink);
    }

    #[test]
    fn discovers_this_namespace() {
        // Dumps need no privilege: this runs as any user.
        let node = discover().expect("discover");
        assert_eq!(node.netns_inode, own_netns_inode().unwrap());
        let lo = node.by_name("lo").expect("every namespace has lo");
        assert_eq!((lo.ifindex, lo.kind), (1, DeviceKind::Loopback));
        let mut ifindexes: Vec<u32> = node.devices.iter().map(|d| d.ifindex).collect();
        ifindexes.dedup();
        assert_eq!(ifindexes.len(), node.devices.len(), "one entry per link");
        assert!(node.devices.iter().all(|d| !d.name.is_empty()));
    }

    #[test]
    fn discovers_from_inside_a_tokio_runtime() {
        // A nested block_on would panic: discovery moves to a helper thread,
        // which starts in this thread's namespace.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let node = runtime.block_on(async { discover() }).expect("discover");
        assert_eq!(node.netns_inode, own_netns_inode().unwrap());
        assert!(node.by_name("lo").is_some());
    }
}
