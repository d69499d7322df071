//! Discovery of the node's devices and pod namespaces.
//!
//! The node is the network namespace hoptrace runs in; its pods are the
//! namespaces at the far ends of its veths. Devices are classified by kind
//! (veth, bridge, vxlan, geneve, ipip, ...) whatever their name, and the
//! uplink is the device of the default route. Uses `ip -json` (iproute2).

use std::{collections::HashMap, os::unix::fs::MetadataExt as _, path::Path, process::Command};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("`ip` (iproute2) is not installed; install the iproute2 package")]
    MissingIp,
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("cannot parse the output of `{command}`: {source}")]
    Parse {
        command: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot read the network namespace of this process: {0}")]
    OwnNetns(std::io::Error),
}

/// What a device is, by its link kind (not its name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKind {
    Veth,
    Bridge,
    Vxlan,
    Geneve,
    Ipip,
    Loopback,
    /// Physical NIC or anything else with an Ethernet header.
    Ethernet,
    /// Anything without a link-layer header (tun, ...).
    L3Only,
}

/// One device of a network namespace.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Device {
    pub ifindex: u32,
    pub name: String,
    pub kind: DeviceKind,
    /// For veths: the peer's namespace id as seen from this namespace.
    pub peer_netnsid: Option<i32>,
    /// Enslaved to a bridge (a bridge port).
    pub master: Option<String>,
    /// The device of the default route.
    pub uplink: bool,
    pub has_l2: bool,
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
    pub inode: u32,
    /// Host-side veth(s) leading to it.
    pub host_veths: Vec<String>,
}

/// The node's view of itself.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NodeDevices {
    pub netns_inode: u32,
    /// kube-proxy's chains are programmed here (iptables `KUBE-SERVICES` in
    /// the nat table, or the nftables `kube-proxy` table).
    pub kube_proxy_present: bool,
    pub devices: Vec<Device>,
    pub pods: Vec<PodNetns>,
}

#[derive(Deserialize)]
struct IpLink {
    ifindex: u32,
    ifname: String,
    #[serde(default)]
    link_type: String,
    #[serde(default)]
    link_netnsid: Option<i32>,
    #[serde(default)]
    master: Option<String>,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    qdisc: Option<String>,
    #[serde(default)]
    linkinfo: Option<IpLinkInfo>,
}

#[derive(Deserialize)]
struct IpLinkInfo {
    #[serde(default)]
    info_kind: Option<String>,
}

#[derive(Deserialize)]
struct IpRoute {
    #[serde(default)]
    dev: Option<String>,
}

#[derive(Deserialize)]
struct IpNetns {
    name: String,
    #[serde(default)]
    id: Option<i32>,
}

fn ip_json<T: serde::de::DeserializeOwned>(args: &[&str]) -> Result<T, DeviceError> {
    let command = format!("ip {}", args.join(" "));
    let out = Command::new("ip").args(args).output().map_err(|err| {
        if err.kind() == std::io::ErrorKind::NotFound {
            DeviceError::MissingIp
        } else {
            DeviceError::Command {
                command: command.clone(),
                stderr: err.to_string(),
            }
        }
    })?;
    if !out.status.success() {
        return Err(DeviceError::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let text = if text.trim().is_empty() {
        "[]"
    } else {
        text.trim()
    };
    serde_json::from_str(text).map_err(|source| DeviceError::Parse { command, source })
}

/// Classifies a link from `ip -d -j link` fields.
pub fn classify(kind: Option<&str>, link_type: &str) -> DeviceKind {
    match (kind, link_type) {
        (Some("veth"), _) => DeviceKind::Veth,
        (Some("bridge"), _) => DeviceKind::Bridge,
        (Some("vxlan"), _) => DeviceKind::Vxlan,
        (Some("geneve"), _) => DeviceKind::Geneve,
        (Some("ipip" | "sit" | "ip6tnl"), _) => DeviceKind::Ipip,
        (_, "loopback") => DeviceKind::Loopback,
        (_, "ipip" | "tunnel" | "sit" | "tunnel6" | "none") => DeviceKind::L3Only,
        _ => DeviceKind::Ethernet,
    }
}

/// Inode of the calling thread's network namespace.
pub fn own_netns_inode() -> Result<u32, DeviceError> {
    std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino() as u32)
        .map_err(DeviceError::OwnNetns)
}

/// Discovers devices and pods of the calling thread's network namespace.
pub fn discover() -> Result<NodeDevices, DeviceError> {
    let links: Vec<IpLink> = ip_json(&["-d", "-j", "link", "show"])?;
    let routes: Vec<IpRoute> = ip_json(&["-j", "route", "show", "default"])?;
    let uplinks: Vec<String> = routes.into_iter().filter_map(|r| r.dev).collect();
    let devices: Vec<Device> = links
        .into_iter()
        .map(|l| {
            let kind = classify(
                l.linkinfo.as_ref().and_then(|i| i.info_kind.as_deref()),
                &l.link_type,
            );
            Device {
                ifindex: l.ifindex,
                uplink: uplinks.contains(&l.ifname),
                has_l2: !matches!(kind, DeviceKind::Ipip | DeviceKind::L3Only),
                up: l.flags.iter().any(|f| f == "UP"),
                noqueue: l.qdisc.as_deref() == Some("noqueue"),
                peer_netnsid: if kind == DeviceKind::Veth {
                    l.link_netnsid
                } else {
                    None
                },
                master: l.master,
                name: l.ifname,
                kind,
            }
        })
        .collect();
    let netns: Vec<IpNetns> = ip_json(&["-j", "netns", "list"])?;
    let by_id: HashMap<i32, &IpNetns> = netns
        .iter()
        .filter_map(|n| n.id.map(|id| (id, n)))
        .collect();
    let mut pods: Vec<PodNetns> = Vec::new();
    for dev in &devices {
        // The uplink may be a veth too (a node in a namespace lab): what is
        // behind it is the network, not a pod.
        if dev.uplink {
            continue;
        }
        let Some(id) = dev.peer_netnsid else { continue };
        let Some(ns) = by_id.get(&id) else { continue };
        let Ok(meta) = std::fs::metadata(Path::new("/run/netns").join(&ns.name)) else {
            continue;
        };
        let inode = meta.ino() as u32;
        match pods.iter_mut().find(|p| p.inode == inode) {
            Some(pod) => pod.host_veths.push(dev.name.clone()),
            None => pods.push(PodNetns {
                name: ns.name.clone(),
                inode,
                host_veths: vec![dev.name.clone()],
            }),
        }
    }
    Ok(NodeDevices {
        netns_inode: own_netns_inode()?,
        kube_proxy_present: kube_proxy_present(),
        devices,
        pods,
    })
}

/// Does this namespace carry kube-proxy's rules? Asks iptables for the nat
/// KUBE-SERVICES chain (one rule is enough) and nft for its table. Missing
/// tools count as "no".
pub fn kube_proxy_present() -> bool {
    let iptables = Command::new("iptables")
        .args(["-w", "5", "-t", "nat", "-S", "KUBE-SERVICES", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    iptables
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
    use super::*;

    #[test]
    fn classifies_by_kind_not_name() {
        assert_eq!(classify(Some("vxlan"), "ether"), DeviceKind::Vxlan);
        assert_eq!(classify(Some("veth"), "ether"), DeviceKind::Veth);
        assert_eq!(classify(Some("bridge"), "ether"), DeviceKind::Bridge);
        assert_eq!(classify(Some("ipip"), "ipip"), DeviceKind::Ipip);
        assert_eq!(classify(None, "loopback"), DeviceKind::Loopback);
        assert_eq!(classify(None, "none"), DeviceKind::L3Only);
        assert_eq!(classify(None, "ether"), DeviceKind::Ethernet);
    }

    #[test]
    fn parses_ip_link_json() {
        let text = r#"[{"ifindex":5,"ifname":"vethx1","link_type":"ether","link_netnsid":0,
            "flags":["BROADCAST","UP"],"master":"cni0","linkinfo":{"info_kind":"veth"}}]"#;
        let links: Vec<IpLink> = serde_json::from_str(text).unwrap();
        assert_eq!(links[0].link_netnsid, Some(0));
        assert_eq!(links[0].master.as_deref(), Some("cni0"));
        assert_eq!(
            links[0].linkinfo.as_ref().unwrap().info_kind.as_deref(),
            Some("veth")
        );
    }
}
