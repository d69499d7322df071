//! Netlink readers of the node's configuration: device MTUs and tunnel
//! parameters (`RTM_GETLINK`), root qdiscs and their counters
//! (`RTM_GETQDISC`), and checksum offloads (ethtool's generic netlink
//! family, `ETHTOOL_MSG_FEATURES_GET`, through the `ethtool` crate of the
//! same rust-netlink project as `rtnetlink`, so no `ethtool` binary is
//! needed on the node). Sockets are made on the calling thread: they see
//! its network namespace.

use futures_util::{StreamExt as _, TryStreamExt as _};
use netlink_packet_route::{
    link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage, VxlanDf},
    tc::{TcAttribute, TcHandle, TcMessage},
};

use super::config::{LinkConfig, QdiscStats};
use super::devices::{self, DeviceKind};
use crate::kernel::cleanup::with_rtnetlink;

/// A netlink reader failed.
#[derive(Debug, thiserror::Error)]
pub enum NetconfError {
    /// The netlink socket or its runtime could not be made.
    #[error("cannot open a netlink socket")]
    Socket(#[source] std::io::Error),
    /// A dump failed.
    #[error("netlink {request} failed")]
    Netlink {
        /// The request.
        request: &'static str,
        /// What rtnetlink said.
        #[source]
        source: rtnetlink::Error,
    },
    /// Device discovery failed.
    #[error(transparent)]
    Devices(#[from] devices::DeviceError),
}

/// Offload features whose state the diagnosis reports (all others are
/// left out of the document).
pub const OFFLOADS: [&str; 6] = [
    "tx-checksum-ip-generic",
    "tx-checksum-ipv4",
    "tx-udp_tnl-segmentation",
    "tx-udp_tnl-csum-segmentation",
    "rx-checksum",
    "rx-udp_tunnel-port-offload",
];

/// Every device of the calling thread's namespace with its MTU, tunnel
/// parameters and checksum offloads.
///
/// # Errors
/// [`NetconfError`] when the netlink socket cannot be made or the link dump
/// fails. A failed ethtool query only leaves `offloads_on` at `None`.
pub fn links() -> Result<Vec<LinkConfig>, NetconfError> {
    let node = devices::discover()?;
    let messages: Vec<LinkMessage> =
        with_rtnetlink(|handle| async move { handle.link().get().execute().try_collect().await })
            .map_err(NetconfError::Socket)?
            .map_err(|source| NetconfError::Netlink {
                request: "RTM_GETLINK dump",
                source,
            })?;
    let uplink = node
        .devices
        .iter()
        .find(|d| d.uplink)
        .map(|d| d.name.clone());
    let offloads = offloads().unwrap_or_default();
    let mut out = Vec::new();
    for msg in &messages {
        let mut link = link_config(msg, &messages, uplink.as_deref());
        if let Some(dev) = node.devices.iter().find(|d| d.name == link.name) {
            link.pod_veth =
                dev.kind == DeviceKind::Veth && dev.peer_netnsid.is_some() && !dev.uplink;
        }
        link.offloads_on = offloads
            .iter()
            .find(|(name, _)| *name == link.name)
            .map(|(_, on)| on.clone());
        out.push(link);
    }
    Ok(out)
}

/// One [`LinkConfig`] from a link message; `all` names the lower device
/// of a tunnel, `uplink` is the default route's device.
pub fn link_config(msg: &LinkMessage, all: &[LinkMessage], uplink: Option<&str>) -> LinkConfig {
    let name_of = |m: &LinkMessage| {
        m.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
    };
    let name = name_of(msg).unwrap_or_default();
    let mtu = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(0);
    let infos: Vec<&LinkInfo> = msg
        .attributes
        .iter()
        .filter_map(|a| match a {
            LinkAttribute::LinkInfo(i) => Some(i),
            _ => None,
        })
        .flatten()
        .collect();
    let kind = infos
        .iter()
        .find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        })
        .map_or_else(|| "device".to_owned(), ToString::to_string);
    let mut link = LinkConfig {
        uplink: uplink == Some(name.as_str()),
        name,
        kind,
        mtu,
        ..LinkConfig::default()
    };
    let vxlan = infos.iter().find_map(|i| match i {
        LinkInfo::Data(InfoData::Vxlan(v)) => Some(v),
        _ => None,
    });
    if let Some(vxlan) = vxlan {
        link.df = Some("unset".into());
        for attr in vxlan {
            match attr {
                InfoVxlan::Port(p) => link.udp_port = Some(*p),
                InfoVxlan::UDPCsum(on) => link.udp_csum = Some(*on),
                InfoVxlan::Df(df) => {
                    link.df = Some(
                        match df {
                            VxlanDf::Set => "set",
                            VxlanDf::Inherit => "inherit",
                            _ => "unset",
                        }
                        .into(),
                    );
                }
                InfoVxlan::Link(index) => {
                    link.underlay = all
                        .iter()
                        .find(|m| m.header.index == *index)
                        .and_then(name_of);
                }
                _ => {}
            }
        }
    }
    if link.overhead().is_some() && link.underlay.is_none() {
        link.underlay = uplink.map(str::to_owned);
    }
    if matches!(
        infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        Some(InfoKind::Geneve)
    ) && link.udp_port.is_none()
    {
        link.udp_port = Some(6081);
    }
    link
}

/// Checksum offload features that are on, per device, over ethtool
/// netlink (`ETHTOOL_MSG_FEATURES_GET` dump).
fn offloads() -> std::io::Result<Vec<(String, Vec<String>)>> {
    let run = || -> std::io::Result<Vec<(String, Vec<String>)>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        runtime.block_on(async {
            let (connection, mut handle, _) = ethtool::new_connection()?;
            tokio::spawn(connection);
            let mut stream = handle
                .feature()
                .get(None)
                .execute()
                .await
                .map_err(std::io::Error::other)?;
            let mut out = Vec::new();
            while let Some(msg) = stream.next().await {
                let msg = msg.map_err(std::io::Error::other)?;
                let mut name = String::new();
                let mut on = Vec::new();
                for nla in &msg.payload.nlas {
                    let ethtool::EthtoolAttr::Feature(attr) = nla else {
                        continue;
                    };
                    match attr {
                        ethtool::EthtoolFeatureAttr::Header(headers) => {
                            for h in headers {
                                if let ethtool::EthtoolHeader::DevName(n) = h {
                                    name.clone_from(n);
                                }
                            }
                        }
                        ethtool::EthtoolFeatureAttr::Active(bits) => {
                            on = bits
                                .iter()
                                .filter(|b| b.value && OFFLOADS.contains(&b.name.as_str()))
                                .map(|b| b.name.clone())
                                .collect();
                        }
                        _ => {}
                    }
                }
                out.push((name, on));
            }
            Ok(out)
        })
    };
    // Called from a thread without a runtime (the diagnosis reads the
    // node before and after tracing): no nested runtime.
    std::thread::scope(|s| {
        s.spawn(run)
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Root qdiscs of every device with their counters.
///
/// # Errors
/// [`NetconfError`] when the netlink socket cannot be made or the dump
/// fails.
pub fn qdiscs() -> Result<Vec<QdiscStats>, NetconfError> {
    let (messages, links): (Vec<TcMessage>, Vec<LinkMessage>) =
        with_rtnetlink(|handle| async move {
            let q = handle.qdisc().get().execute().try_collect().await?;
            let l = handle.link().get().execute().try_collect().await?;
            Ok::<_, rtnetlink::Error>((q, l))
        })
        .map_err(NetconfError::Socket)?
        .map_err(|source| NetconfError::Netlink {
            request: "RTM_GETQDISC dump",
            source,
        })?;
    Ok(messages
        .iter()
        .filter(|m| m.header.parent == TcHandle::ROOT)
        .map(|m| {
            let device = links
                .iter()
                .find(|l| i64::from(l.header.index) == i64::from(m.header.index))
                .and_then(|l| {
                    l.attributes.iter().find_map(|a| match a {
                        LinkAttribute::IfName(n) => Some(n.clone()),
                        _ => None,
                    })
                })
                .unwrap_or_else(|| format!("if{}", m.header.index));
            qdisc_stats(device, m)
        })
        .collect())
}

/// One root qdisc's kind and counters from its message.
pub fn qdisc_stats(device: String, m: &TcMessage) -> QdiscStats {
    let mut q = QdiscStats {
        device,
        ..QdiscStats::default()
    };
    for attr in &m.attributes {
        match attr {
            TcAttribute::Kind(k) => q.kind.clone_from(k),
            TcAttribute::Stats(s) => {
                q.packets = u64::from(s.packets);
                q.drops = u64::from(s.drops);
                q.overlimits = u64::from(s.overlimits);
                q.qlen = u64::from(s.qlen);
                q.backlog = u64::from(s.backlog);
            }
            _ => {}
        }
    }
    q
}
