//! The node: its network devices, their roles on the packet's route (pod
//! veth, bridge, tunnel, uplink), and the pods' namespaces.

pub mod config;
pub mod devices;
pub mod netconf;

use std::collections::HashMap;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};

use devices::{DeviceKind, NodeDevices};

/// Entering a network namespace failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace file could not be opened or `setns(2)` refused it.
    #[error("cannot enter network namespace {path}")]
    Enter {
        /// The namespace file (e.g. `/run/netns/NAME`).
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
    /// The thread that entered the namespace panicked.
    #[error("the thread inside network namespace {path} panicked")]
    Panicked {
        /// The namespace file.
        path: PathBuf,
    },
    /// The path does not name a namespace file.
    #[error("{}: {reason}", path.display())]
    NotANamespace {
        /// The path given.
        path: PathBuf,
        /// Why not, and what is expected.
        reason: &'static str,
    },
}

/// `NSFS_MAGIC` (linux/magic.h): the file system of namespace files
/// (`/proc/PID/ns/*` and their bind mounts under /run/netns).
const NSFS_MAGIC: u64 = 0x6e73_6673;

/// Checks that `path` names a namespace file (`/run/netns/NAME`,
/// `/proc/PID/ns/net`) without entering it, so that a typo is refused
/// before anything is attached.
///
/// # Errors
///
/// [`NetnsError::NotANamespace`] when the path does not exist or is not on
/// the namespace file system; [`NetnsError::Enter`] when it cannot be
/// examined (e.g. permission denied).
pub fn check_netns_path(path: &Path) -> Result<(), NetnsError> {
    match nix::sys::statfs::statfs(path) {
        Ok(fs) if fs.filesystem_type().0 as u64 == NSFS_MAGIC => Ok(()),
        Ok(_) => Err(NetnsError::NotANamespace {
            path: path.to_owned(),
            reason: "not a network namespace file (e.g. /run/netns/NAME or /proc/PID/ns/net)",
        }),
        Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR) => {
            Err(NetnsError::NotANamespace {
                path: path.to_owned(),
                reason: "no such network namespace (see `ip netns list`)",
            })
        }
        Err(e) => Err(NetnsError::Enter {
            path: path.to_owned(),
            source: std::io::Error::from_raw_os_error(e as i32),
        }),
    }
}

/// The names in `names` that are not interfaces of the network namespace
/// at `netns` (this one when `None`), in order.
///
/// # Errors
///
/// As [`in_netns`].
pub fn missing_interfaces(
    netns: Option<&Path>,
    names: &[String],
) -> Result<Vec<String>, NetnsError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    in_netns(netns, || {
        names
            .iter()
            .filter(|name| nix::net::if_::if_nametoindex(name.as_str()).is_err())
            .cloned()
            .collect()
    })
}

/// What a network device is for, as found by device discovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceRole {
    /// Node-side end of a pod's veth pair.
    PodVethHost,
    /// A pod's own interface (inside the pod's network namespace).
    PodInterface,
    /// A Linux bridge (cni0, docker0, ...).
    Bridge,
    /// A VXLAN tunnel device (VTEP: `flannel.1`, `vxlan.calico`).
    Vxlan,
    /// A GENEVE tunnel device (`genev_sys_6081`, `cilium_geneve`).
    Geneve,
    /// An IP-in-IP tunnel device (`tunl0`).
    IpIp,
    /// The node's interface towards the network.
    Uplink,
    /// `lo`.
    Loopback,
    /// Anything else: a veth without a peer in another namespace, a bond's
    /// or VLAN's lower device, `cilium_host`.
    Other,
}

impl DeviceRole {
    /// Name of the role inside hop names (`veth.ingress`, `uplink.xmit`).
    pub const fn hop_name(self) -> &'static str {
        match self {
            Self::PodVethHost => "veth",
            Self::PodInterface => "pod",
            Self::Bridge => "bridge",
            Self::Vxlan => "vxlan",
            Self::Geneve => "geneve",
            Self::IpIp => "ipip",
            Self::Uplink => "uplink",
            Self::Loopback => "lo",
            Self::Other => "dev",
        }
    }

    /// Tunnel devices and the uplink: where packets arrive from the network.
    pub const fn faces_network(self) -> bool {
        matches!(self, Self::Uplink | Self::Vxlan | Self::Geneve | Self::IpIp)
    }
}

/// One network device of the node or of one of its pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Inode of the device's network namespace.
    pub netns_ino: u32,
    /// Interface index, unique only inside `netns_ino`.
    pub ifindex: u32,
    /// Interface name; `<pod netns>:<ifname>` for a pod's devices.
    pub name: String,
    /// What the device is for on the packet's route.
    pub role: DeviceRole,
    /// The device has a qdisc (not `noqueue`): a packet may wait between
    /// entering its transmit path and the driver.
    pub queues: bool,
}

/// What the correlator knows about the node: filled by device discovery and
/// replaced at runtime with [`crate::correlate::Correlator::update_context`].
#[derive(Clone, Debug, Default)]
pub struct NodeContext {
    /// Inode of the node's (root) network namespace.
    pub node_netns_ino: u32,
    /// Devices of the node namespace and of every pod namespace. A namespace
    /// other than the node's is a pod namespace when at least one of its
    /// devices is listed here.
    pub devices: Vec<DeviceInfo>,
    /// Names of `enum skb_drop_reason` values of the running kernel.
    pub drop_reasons: HashMap<u32, String>,
    /// The node has no kube-proxy chains (no iptables `KUBE-SERVICES`, no
    /// nftables `kube-proxy` table): the nat and filter bands are then
    /// ordinary netfilter time (`netfilter-other`), not kube-proxy's.
    pub kube_proxy_absent: bool,
}

/// Runs `f` on a thread inside the network namespace at `path` (or on this
/// thread when `path` is `None`), so this thread's namespace never changes.
///
/// # Errors
///
/// [`NetnsError::Enter`] when the namespace file cannot be opened or
/// `setns(2)` refuses it, [`NetnsError::Panicked`] when `f` panics.
pub fn in_netns<T: Send>(
    path: Option<&Path>,
    f: impl FnOnce() -> T + Send,
) -> Result<T, NetnsError> {
    let Some(path) = path else { return Ok(f()) };
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(path).map_err(|source| NetnsError::Enter {
                path: path.to_owned(),
                source,
            })?;
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                NetnsError::Enter {
                    path: path.to_owned(),
                    source: std::io::Error::from_raw_os_error(e as i32),
                }
            })?;
            Ok(f())
        })
        .join()
        .map_err(|_| NetnsError::Panicked {
            path: path.to_owned(),
        })?
    })
}

pub(crate) fn role_of(dev: &devices::Device) -> DeviceRole {
    match dev.kind {
        _ if dev.uplink => DeviceRole::Uplink,
        DeviceKind::Veth if dev.peer_netnsid.is_some() => DeviceRole::PodVethHost,
        DeviceKind::Veth => DeviceRole::Other,
        DeviceKind::Bridge => DeviceRole::Bridge,
        DeviceKind::Vxlan => DeviceRole::Vxlan,
        DeviceKind::Geneve => DeviceRole::Geneve,
        DeviceKind::Ipip => DeviceRole::IpIp,
        DeviceKind::Loopback => DeviceRole::Loopback,
        _ if dev.uplink => DeviceRole::Uplink,
        _ => DeviceRole::Other,
    }
}

/// Builds the correlator's view of the node: its devices, and the pods'
/// interfaces (discovered inside each pod namespace).
pub fn node_context(
    node: &NodeDevices,
    drop_reasons: &std::collections::HashMap<u32, String>,
) -> NodeContext {
    let mut infos: Vec<DeviceInfo> = node
        .devices
        .iter()
        .map(|d| DeviceInfo {
            netns_ino: node.netns_inode,
            ifindex: d.ifindex,
            name: d.name.clone(),
            role: role_of(d),
            queues: !d.noqueue,
        })
        .collect();
    for pod in &node.pods {
        let path = Path::new("/run/netns").join(&pod.name);
        if let Ok(Ok(pod_devices)) = in_netns(Some(&path), devices::discover) {
            infos.extend(pod_devices.devices.iter().map(|d| DeviceInfo {
                netns_ino: pod.inode,
                ifindex: d.ifindex,
                name: format!("{}:{}", pod.name, d.name),
                role: if d.kind == DeviceKind::Loopback {
                    DeviceRole::Loopback
                } else {
                    DeviceRole::PodInterface
                },
                queues: !d.noqueue,
            }));
        }
    }
    NodeContext {
        node_netns_ino: node.netns_inode,
        devices: infos,
        drop_reasons: drop_reasons.clone(),
        kube_proxy_absent: !node.kube_proxy_present,
    }
}

/// Kernel release, as `uname -r` prints it.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// This machine's host name, or `node` when it has none.
pub fn hostname() -> String {
    nix::unistd::gethostname().map_or_else(|_| "node".into(), |h| h.to_string_lossy().into_owned())
}
