//! Loading and attaching one node's hooks, inside the node's network
//! namespace: tc on the discovered (or named) devices, tracepoints,
//! netfilter links. What could not be attached becomes a note for the
//! report, not an error, except where nothing could be traced.

use hoptrace_common::{KernelLayout, TraceConfig, device_key};

use super::{Attachments, SessionError, SessionOptions, drain::OtherNodes};
use crate::kernel::{
    btf::Btf,
    capabilities::error_chain,
    loader::{LoadOptions, LoaderError, TcMode, Tracer},
    netfilter::{self, NetfilterLinks, NetfilterPrograms},
    objects,
};
use crate::node::devices::{self, NodeDevices};

/// What [`attach_node`] attached, owned by the session.
pub(super) struct Attached {
    /// tc programs and tracepoints, and the ring buffer they write to.
    pub tracer: Tracer,
    /// Netfilter programs and their links, when the kernel took them.
    pub netfilter: Option<(NetfilterPrograms, NetfilterLinks)>,
    /// The node's devices as discovered inside its namespace.
    pub node: NodeDevices,
    /// What was attached and what was not, for the report.
    pub attachments: Attachments,
    /// This node's devices timed by tc without a qdisc ([`device_key`]).
    pub tc_covered: Vec<u64>,
}

/// Discovers the node's devices and attaches every hook `opts` asks for.
/// Runs on a thread that has entered the node's namespace (tc attaches by
/// interface name, netfilter links by the caller's namespace). `others`
/// are the nodes whose tracepoint events this session routes (the lab).
///
/// # Errors
/// Device discovery, loading the main object, an unknown `--iface`, or a
/// tc attach that fails with no fallback left. Missing tracepoints and
/// netfilter links are notes in [`Attachments::notes`], not errors.
pub(super) fn attach_node(
    opts: &SessionOptions,
    kernel_btf: &Btf,
    layout: KernelLayout,
    others: OtherNodes,
) -> Result<Attached, SessionError> {
    let node = devices::discover()?;
    let mut config = opts.config;
    config.node_netns_ino = node.netns_inode;
    config.filter_netns = 1;
    let mut tracer = Tracer::load(&LoadOptions {
        layout,
        config,
        ring_bytes: opts.ring_bytes,
    })?;
    let mut traced_netns = node.traced_netns();
    traced_netns.extend(others.netns);
    tracer.set_traced_netns(&traced_netns)?;
    let mut attachments = Attachments::default();
    let targets = tc_targets(opts, &node)?;
    attach_tc(&mut tracer, opts, &targets, &mut attachments)?;
    // Device tracepoints on noqueue devices that tc already times fire
    // back to back with tc: skip them in the kernel.
    let tc_covered: Vec<u64> = targets
        .iter()
        .filter_map(|(iface, _)| node.by_name(iface))
        .filter(|d| d.noqueue)
        .map(|d| device_key(node.netns_inode, d.ifindex))
        .collect();
    let mut covered = tc_covered.clone();
    covered.extend(others.tc_covered);
    tracer.set_tc_covered(&covered)?;
    // Queueing needs a qdisc: when every device of the node is noqueue
    // (veths, bridges and tunnels are), the qdisc tracepoint fires back to
    // back with the driver's.
    let qdisc = others.qdisc || node.devices.iter().any(|d| !d.noqueue);
    if opts.tracepoints {
        let attached = tracer.attach_tracepoints(kernel_btf, qdisc, false);
        match attached {
            Ok(()) if !qdisc => attachments.notes.push(
                "net:net_dev_queue not attached: every device of the node is noqueue, so no packet waits in a qdisc".into(),
            ),
            Ok(()) => {}
            Err(err) => attachments.notes.push(format!(
                "tracepoints unavailable ({}): pod-side, qdisc, driver and socket hops are not timed",
                error_chain(&err)
            )),
        }
    }
    let netfilter = if opts.netfilter {
        attach_netfilter(&tracer, &layout, config, &mut attachments)?
    } else {
        None
    };
    attachments.tc = tracer.tc_attachments().to_vec();
    attachments.tracepoints = tracer
        .tracepoints()
        .iter()
        .map(ToString::to_string)
        .collect();
    Ok(Attached {
        tracer,
        netfilter,
        node,
        attachments,
        tc_covered,
    })
}

/// The devices to time with tc: `--iface` names, or the ones discovery
/// found by kind; each with whether it carries an Ethernet header.
fn tc_targets(
    opts: &SessionOptions,
    node: &NodeDevices,
) -> Result<Vec<(String, bool)>, SessionError> {
    if opts.ifaces.is_empty() {
        return Ok(node
            .default_tc_targets()
            .iter()
            .map(|d| (d.name.clone(), d.has_l2))
            .collect());
    }
    opts.ifaces
        .iter()
        .map(|name| {
            node.by_name(name)
                .map(|d| (d.name.clone(), d.has_l2))
                .ok_or_else(|| SessionError::UnknownInterface(name.clone()))
        })
        .collect()
}

/// Attaches tc on every target; falls back from tcx to clsact (with a
/// note) unless the mode was forced.
fn attach_tc(
    tracer: &mut Tracer,
    opts: &SessionOptions,
    targets: &[(String, bool)],
    attachments: &mut Attachments,
) -> Result<(), SessionError> {
    let mode = opts.tc_mode.unwrap_or(TcMode::Tcx);
    for (iface, has_l2) in targets {
        match tracer.attach_tc(iface, *has_l2, mode) {
            Ok(()) => {}
            Err(err) if mode == TcMode::Tcx && opts.tc_mode.is_none() => {
                // No tcx here: fall back to clsact, and say so.
                attachments.notes.push(format!(
                    "tcx unavailable on {iface} ({}); used clsact",
                    error_chain(&err)
                ));
                tracer.attach_tc(iface, *has_l2, TcMode::Clsact)?;
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// Loads the netfilter object (sharing the main object's maps) and links
/// every bracket of the default plan. A kernel without netfilter links is
/// a note, not an error.
fn attach_netfilter(
    tracer: &Tracer,
    layout: &KernelLayout,
    config: TraceConfig,
    attachments: &mut Attachments,
) -> Result<Option<(NetfilterPrograms, NetfilterLinks)>, SessionError> {
    let plan = netfilter::default_plan();
    let nf_config = TraceConfig {
        nf_parse_slots: netfilter::parse_slots(&plan),
        ..config
    };
    let object = objects::netfilter_object().map_err(LoaderError::from)?;
    match netfilter::load_netfilter_programs(object, tracer.ebpf(), layout, &nf_config).and_then(
        |progs| {
            let links = progs.attach(&plan)?;
            Ok((progs, links))
        },
    ) {
        Ok((progs, links)) => {
            attachments.netfilter_links = links.len();
            let family = |pf: u8| {
                if pf == netfilter::NFPROTO_IPV6 {
                    "ipv6"
                } else {
                    "ipv4"
                }
            };
            let moved: Vec<String> = links
                .moved()
                .map(|(p, taken)| {
                    format!(
                        "{} {} {}->{taken}",
                        family(p.pf),
                        p.hook.name(),
                        p.priority().unwrap_or_default()
                    )
                })
                .collect();
            if !moved.is_empty() {
                /// Moves listed by name in the note, at most.
                const LISTED: usize = 4;
                let more = moved.len().saturating_sub(LISTED);
                let mut listed = moved[..moved.len().min(LISTED)].join(", ");
                if more > 0 {
                    listed.push_str(&format!(" and {more} more"));
                }
                attachments.notes.push(format!(
                    "netfilter: {} bracket(s) took a nearby priority of the same band because another BPF netfilter program held theirs: {listed}",
                    moved.len(),
                ));
            }
            for failed in links.failed() {
                attachments.notes.push(format!(
                    "netfilter: no link for {}: the bands on either side of it are reported as one",
                    error_chain(failed)
                ));
            }
            Ok(Some((progs, links)))
        }
        Err(err @ netfilter::NetfilterError::Attach { .. })
            if std::error::Error::source(&err)
                .and_then(|e| e.downcast_ref::<std::io::Error>())
                .and_then(std::io::Error::raw_os_error)
                == Some(libc::EBUSY) =>
        {
            attachments.notes.push(format!(
                "netfilter links: every priority near ours is held by other BPF netfilter programs ({}): netfilter time stays inside `routing`/`ip.receive`",
                error_chain(&err)
            ));
            Ok(None)
        }
        Err(err) => {
            attachments.notes.push(format!(
                "netfilter links unavailable ({}): netfilter time (conntrack, kube-proxy chains) stays inside `routing`/`ip.receive`",
                error_chain(&err)
            ));
            Ok(None)
        }
    }
}
