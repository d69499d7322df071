//! Loads the main kernel object with aya and owns every attachment it makes.
//!
//! Dropping a [`Tracer`] detaches everything: tcx links and netfilter links
//! are file descriptors closed on drop; clsact filters are detached by aya's
//! link drop, and any of this tracer's filters still listed afterwards is
//! deleted over netlink; a clsact qdisc that hoptrace itself added is removed
//! too once it holds no filter. Filters that survive a crash are removed by
//! `hoptrace cleanup`.

use std::os::fd::AsFd as _;

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        tc::{NlOptions, TcAttachOptions},
    },
};
use hoptrace_common::{
    COUNTER_SLOTS, Counter, HopEvent, HopHeader, KernelLayout, TraceConfig,
    agg::{AggHist, AggKey},
};
use netlink_packet_route::tc::TcMessage;

use crate::kernel::{
    btf::Btf,
    cleanup, objects, owner,
    tracing::{self, RelocatedObject, TracingError, TracingLink, TracingTarget},
};

/// How tc programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TcMode {
    /// tcx link, first in the chain (kernel >= 6.6; probed by trying).
    Tcx,
    /// clsact qdisc + bpf filter over netlink (older kernels).
    Clsact,
}

/// Errors of loading and attaching.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// This build carries no kernel objects.
    #[error(transparent)]
    NoObjects(#[from] objects::NoKernelObjects),
    /// aya (or the kernel) rejected the main object.
    #[error("loading the kernel object failed: {0}")]
    Load(#[from] aya::EbpfError),
    /// The object has no program of that name.
    #[error("program {name} is missing from the kernel object")]
    MissingProgram {
        /// The program's name.
        name: String,
    },
    /// The object has no map of that name.
    #[error("map {name} is missing from the kernel object")]
    MissingMap {
        /// The map's name.
        name: String,
    },
    /// Loading or attaching a program failed.
    #[error("program {name}: {source}")]
    Program {
        /// The program's name.
        name: String,
        /// What aya or the kernel said.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// Opening or updating a map failed.
    #[error("map {name}: {source}")]
    Map {
        /// The map's name.
        name: String,
        /// What aya or the kernel said.
        #[source]
        source: aya::maps::MapError,
    },
    /// No device of that name in the calling thread's namespace.
    #[error("unknown interface {iface:?} in this network namespace")]
    UnknownInterface {
        /// The device name asked for.
        iface: String,
    },
    /// The clsact qdisc could not be added.
    #[error("adding a clsact qdisc on {iface}: {source}")]
    Clsact {
        /// The device.
        iface: String,
        /// What the kernel said.
        #[source]
        source: aya::programs::tc::TcError,
    },
    /// A tp_btf program could not be relocated, loaded or attached.
    #[error(transparent)]
    Tracing(#[from] TracingError),
    /// A tc program could not be attached.
    #[error("attaching tc {direction} on {iface}: {source}")]
    TcAttach {
        /// The device.
        iface: String,
        /// `ingress` or `egress`.
        direction: &'static str,
        /// What aya or the kernel said.
        #[source]
        source: aya::programs::ProgramError,
    },
}

/// Names of the programs in the main object.
pub mod program {
    /// tc ingress, devices with an Ethernet header.
    pub const TC_INGRESS: &str = "hoptrace_tc_ingress";
    /// tc egress, devices with an Ethernet header.
    pub const TC_EGRESS: &str = "hoptrace_tc_egress";
    /// tc ingress, devices without a link-layer header (ipip, tun).
    pub const TC_INGRESS_L3: &str = "hoptrace_tc_ingress_l3";
    /// tc egress, devices without a link-layer header (ipip, tun).
    pub const TC_EGRESS_L3: &str = "hoptrace_tc_egress_l3";
    /// (program, tracepoint) pairs of the BTF tracepoints.
    pub const TRACEPOINTS: [(&str, &str); 5] = [
        ("hoptrace_netif_receive_skb", "netif_receive_skb"),
        ("hoptrace_net_dev_queue", "net_dev_queue"),
        ("hoptrace_net_dev_start_xmit", "net_dev_start_xmit"),
        (
            "hoptrace_skb_copy_datagram_iovec",
            "skb_copy_datagram_iovec",
        ),
        ("hoptrace_kfree_skb", "kfree_skb"),
    ];
    /// (program, tracepoint) of skb:consume_skb, off by default.
    pub const CONSUME: (&str, &str) = ("hoptrace_consume_skb", "consume_skb");
    /// The tracepoint that marks a packet entering a device's qdisc.
    pub const QDISC_TRACEPOINT: &str = "net_dev_queue";
}

/// The event ring buffer.
pub const EVENTS_MAP: &str = "HOPTRACE_EVENTS";
/// Per-CPU counters, indexed by [`Counter`].
pub const COUNTERS_MAP: &str = "HOPTRACE_COUNTERS";
/// Inodes of the traced network namespaces (tracepoint filter).
pub const NETNS_MAP: &str = "HOPTRACE_NETNS";
/// Devices timed by tc without a qdisc, whose device tracepoints are skipped.
pub const TC_COVERED_MAP: &str = "HOPTRACE_TC_COVERED";
/// Aggregate mode's per-CPU histograms by segment key.
pub const AGG_HIST_MAP: &str = "HOPTRACE_AGG_HIST";

/// Load-time options.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Kernel struct offsets, from BTF.
    pub layout: KernelLayout,
    /// What the kernel programs trace and filter.
    pub config: TraceConfig,
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub ring_bytes: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            layout: KernelLayout::default(),
            config: TraceConfig::default(),
            ring_bytes: 16 * 1024 * 1024,
        }
    }
}

/// One tc attachment, for the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TcAttachment {
    /// The device's name.
    pub iface: String,
    /// The device's index in the namespace it was attached in.
    pub ifindex: u32,
    /// `ingress` or `egress`.
    pub direction: &'static str,
    /// tcx link or clsact filter.
    pub mode: TcMode,
    /// tc priority (`pref`) of a clsact filter: the lowest one free on the
    /// hook when it was attached (0 for tcx).
    pub priority: u16,
    /// Handle of a clsact filter (0 for tcx, or when it could not be read).
    pub handle: u32,
}

/// The loaded main object and everything attached from it.
pub struct Tracer {
    /// Dropped explicitly first in `Drop`, so that filters are gone before
    /// qdiscs are inspected.
    ebpf: std::mem::ManuallyDrop<Ebpf>,
    tc: Vec<TcAttachment>,
    tracepoints: Vec<&'static str>,
    /// The tp_btf programs, loaded and attached by hoptrace itself
    /// ([`crate::kernel::tracing`]); dropping them detaches them.
    tracing: Vec<TracingLink>,
    /// Ifindexes of the devices whose clsact qdisc this tracer added
    /// (removed again on drop).
    added_clsact: Vec<u32>,
    /// Inode of the network namespace the clsact filters were attached in:
    /// their ifindexes mean nothing elsewhere, so drop deletes nothing over
    /// netlink from another namespace.
    clsact_netns: Option<u32>,
}

impl Tracer {
    /// Loads the main object with the given globals. Nothing is attached yet.
    ///
    /// # Errors
    ///
    /// No kernel objects in this build, or aya or the kernel rejects the
    /// object (verifier, BTF, map creation).
    pub fn load(opts: &LoadOptions) -> Result<Self, LoaderError> {
        let object = objects::main_object()?;
        // No CO-RE relocations in our objects: aya's copy of the kernel's
        // BTF would only cost memory (see `kernel::tracing`).
        let ebpf = tracing::without_kernel_btf(|| {
            EbpfLoader::new()
                .override_global("HOPTRACE_LAYOUT", &opts.layout, true)
                .override_global("HOPTRACE_CONFIG", &opts.config, true)
                .map_max_entries(EVENTS_MAP, opts.ring_bytes)
                .load(object)
        })?;
        Ok(Self {
            ebpf: std::mem::ManuallyDrop::new(ebpf),
            tc: Vec::new(),
            tracepoints: Vec::new(),
            tracing: Vec::new(),
            added_clsact: Vec::new(),
            clsact_netns: None,
        })
    }

    /// The aya object (for the netfilter loader, which shares its maps).
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// Every tc attachment made so far, in order.
    pub fn tc_attachments(&self) -> &[TcAttachment] {
        &self.tc
    }

    /// The tracepoints attached so far.
    pub fn tracepoints(&self) -> &[&'static str] {
        &self.tracepoints
    }

    fn classifier(&mut self, name: &str) -> Result<&mut SchedClassifier, LoaderError> {
        let prog = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| LoaderError::MissingProgram { name: name.into() })?;
        let prog: &mut SchedClassifier =
            prog.try_into().map_err(|source| LoaderError::Program {
                name: name.into(),
                source,
            })?;
        if prog.fd().is_err() {
            prog.load().map_err(|source| LoaderError::Program {
                name: name.into(),
                source,
            })?;
        }
        Ok(prog)
    }

    /// Attaches tc ingress and egress on `iface` (in the calling thread's
    /// network namespace): tcx first in the chain, or a clsact filter when
    /// `mode` is [`TcMode::Clsact`]. `has_l2` is false for devices without an
    /// Ethernet header (ipip, tun).
    ///
    /// # Errors
    ///
    /// Unknown device, the clsact qdisc cannot be added, or a program cannot
    /// be loaded or attached.
    pub fn attach_tc(
        &mut self,
        iface: &str,
        has_l2: bool,
        mode: TcMode,
    ) -> Result<(), LoaderError> {
        let ifindex =
            nix::net::if_::if_nametoindex(iface).map_err(|_| LoaderError::UnknownInterface {
                iface: iface.to_owned(),
            })?;
        if mode == TcMode::Clsact {
            self.clsact_netns = crate::node::devices::own_netns_inode().ok();
            match aya::programs::tc::qdisc_add_clsact(iface) {
                Ok(()) => {
                    self.added_clsact.push(ifindex);
                    if let Some(netns) = self.clsact_netns {
                        owner::mark_clsact_added(netns, ifindex, iface);
                    }
                }
                Err(aya::programs::tc::TcError::NetlinkError(err))
                    if err.raw_os_error() == Some(libc::EEXIST) => {}
                Err(source) => {
                    return Err(LoaderError::Clsact {
                        iface: iface.into(),
                        source,
                    });
                }
            }
        }
        for (attach, direction) in [
            (TcAttachType::Ingress, "ingress"),
            (TcAttachType::Egress, "egress"),
        ] {
            let name = match (attach, has_l2) {
                (TcAttachType::Ingress, true) => program::TC_INGRESS,
                (TcAttachType::Ingress, false) => program::TC_INGRESS_L3,
                (_, true) => program::TC_EGRESS,
                (_, false) => program::TC_EGRESS_L3,
            };
            let hook = if attach == TcAttachType::Ingress {
                cleanup::Direction::Ingress
            } else {
                cleanup::Direction::Egress
            };
            // The lowest free priority: before other filters where it can,
            // never on a priority another filter (of another protocol) holds.
            let priority = match mode {
                TcMode::Tcx => 0,
                TcMode::Clsact => free_priority(&used_priorities(ifindex, hook)),
            };
            let options = match mode {
                TcMode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::first()),
                TcMode::Clsact => TcAttachOptions::Netlink(NlOptions {
                    priority,
                    ..Default::default()
                }),
            };
            let prog = self.classifier(name)?;
            let prog_id = prog
                .fd()
                .ok()
                .and_then(|fd| crate::kernel::sys::object_id(fd.as_fd()).ok());
            prog.attach_with_options(iface, attach, options)
                .map_err(|source| LoaderError::TcAttach {
                    iface: iface.into(),
                    direction,
                    source,
                })?;
            let handle = match (mode, prog_id) {
                (TcMode::Clsact, Some(id)) => own_filters(ifindex, hook, &[id])
                    .first()
                    .map_or(0, |f| u32::from(f.header.handle)),
                _ => 0,
            };
            self.tc.push(TcAttachment {
                iface: iface.to_owned(),
                ifindex,
                direction,
                mode,
                priority,
                handle,
            });
        }
        Ok(())
    }

    /// Attaches the BTF tracepoints. `qdisc` keeps net:net_dev_queue, which
    /// times queueing in front of a qdisc: without one (every device
    /// `noqueue`) it fires back to back with net_dev_start_xmit and only adds
    /// cost. `consume` adds skb:consume_skb, which doubles the event rate and
    /// is off by default.
    ///
    /// # Errors
    ///
    /// A program is missing, or cannot be loaded or attached.
    pub fn attach_tracepoints(
        &mut self,
        btf: &Btf,
        qdisc: bool,
        consume: bool,
    ) -> Result<(), LoaderError> {
        let mut list: Vec<(&'static str, &'static str)> = program::TRACEPOINTS
            .into_iter()
            .filter(|(_, tp)| qdisc || *tp != program::QDISC_TRACEPOINT)
            .collect();
        if consume {
            list.push(program::CONSUME);
        }
        let object = RelocatedObject::against(objects::main_object()?, &self.ebpf)?;
        for (name, tracepoint) in list {
            let link = tracing::attach(&object, name, TracingTarget::Tracepoint(tracepoint), btf)?;
            self.tracing.push(link);
            self.tracepoints.push(tracepoint);
        }
        Ok(())
    }

    /// Restricts tracepoint events to these network namespaces (the node and
    /// its pods); takes effect when `TraceConfig::filter_netns` was set.
    ///
    /// # Errors
    ///
    /// The map is missing or an update fails.
    pub fn set_traced_netns(&mut self, inodes: &[u32]) -> Result<(), LoaderError> {
        let map = self
            .ebpf
            .map_mut(NETNS_MAP)
            .ok_or_else(|| LoaderError::MissingMap {
                name: NETNS_MAP.into(),
            })?;
        let mut map: aya::maps::HashMap<_, u32, u8> =
            aya::maps::HashMap::try_from(map).map_err(|source| LoaderError::Map {
                name: NETNS_MAP.into(),
                source,
            })?;
        for ino in inodes {
            map.insert(ino, 1, 0).map_err(|source| LoaderError::Map {
                name: NETNS_MAP.into(),
                source,
            })?;
        }
        Ok(())
    }

    /// Node devices whose device tracepoints are redundant with tc (timed by
    /// tc, no qdisc): the kernel skips those events.
    ///
    /// # Errors
    ///
    /// The map is missing or an update fails.
    pub fn set_tc_covered(&mut self, devices: &[u64]) -> Result<(), LoaderError> {
        let map = self
            .ebpf
            .map_mut(TC_COVERED_MAP)
            .ok_or_else(|| LoaderError::MissingMap {
                name: TC_COVERED_MAP.into(),
            })?;
        let mut map: aya::maps::HashMap<_, u64, u8> =
            aya::maps::HashMap::try_from(map).map_err(|source| LoaderError::Map {
                name: TC_COVERED_MAP.into(),
                source,
            })?;
        for key in devices {
            map.insert(key, 1, 0).map_err(|source| LoaderError::Map {
                name: TC_COVERED_MAP.into(),
                source,
            })?;
        }
        Ok(())
    }

    /// Takes the event ring buffer out of the object, for a reader.
    ///
    /// # Errors
    ///
    /// The ring buffer was taken already, or is not a ring buffer.
    pub fn take_events(&mut self) -> Result<EventReader, LoaderError> {
        let map = self
            .ebpf
            .take_map(EVENTS_MAP)
            .ok_or_else(|| LoaderError::MissingMap {
                name: EVENTS_MAP.into(),
            })?;
        let ring = RingBuf::try_from(map).map_err(|source| LoaderError::Map {
            name: EVENTS_MAP.into(),
            source,
        })?;
        Ok(EventReader { ring })
    }

    /// Kernel ids of this tracer's loaded programs.
    pub fn program_ids(&self) -> Vec<u32> {
        tracing::program_ids(&self.ebpf, &self.tracing)
    }

    /// Kernel ids and object names of this tracer's loaded programs (tc in
    /// the aya object, and the tracing programs loaded beside it).
    pub fn program_names(&self) -> Vec<(u32, String)> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| {
                let id = crate::kernel::sys::object_id(p.fd().ok()?.as_fd()).ok()?;
                Some((id, name.to_owned()))
            })
            .chain(
                self.tracing
                    .iter()
                    .filter_map(|t| Some((t.program_id().ok()?, t.name().to_owned()))),
            )
            .collect()
    }

    /// The clsact filters of this tracer that are gone (another process,
    /// e.g. `tc filter del` or a `hoptrace cleanup` that did not know the
    /// owner, deleted them), as `iface/direction`. Call it in the namespace
    /// the filters were attached in.
    pub fn missing_filters(&self) -> Vec<String> {
        let programs = self.program_ids();
        self.tc
            .iter()
            .filter(|a| a.mode == TcMode::Clsact)
            .filter(|a| {
                let hook = if a.direction == "ingress" {
                    cleanup::Direction::Ingress
                } else {
                    cleanup::Direction::Egress
                };
                own_filters(a.ifindex, hook, &programs).is_empty()
            })
            .map(|a| format!("{}/{}", a.iface, a.direction))
            .collect()
    }

    /// Aggregate mode: every histogram key with its values summed over
    /// CPUs (cumulative since load).
    ///
    /// # Errors
    ///
    /// The histogram map is missing or cannot be read.
    pub fn aggregate_totals(
        &self,
    ) -> Result<Vec<(AggKey, crate::correlate::aggregate::AggHist64)>, LoaderError> {
        let map = self
            .ebpf
            .map(AGG_HIST_MAP)
            .ok_or_else(|| LoaderError::MissingMap {
                name: AGG_HIST_MAP.into(),
            })?;
        let hist: PerCpuHashMap<&MapData, AggKey, AggHist> =
            PerCpuHashMap::try_from(map).map_err(|source| LoaderError::Map {
                name: AGG_HIST_MAP.into(),
                source,
            })?;
        let mut out = Vec::new();
        for item in &hist {
            // A key deleted between two reads of the iteration is skipped.
            let Ok((key, values)) = item else {
                continue;
            };
            out.push((
                key,
                crate::correlate::aggregate::AggHist64::sum(values.iter()),
            ));
        }
        Ok(out)
    }

    /// Sums the per-CPU counters.
    ///
    /// # Errors
    ///
    /// The counters map is missing or cannot be read.
    pub fn counters(&self) -> Result<Counters, LoaderError> {
        let map = self
            .ebpf
            .map(COUNTERS_MAP)
            .ok_or_else(|| LoaderError::MissingMap {
                name: COUNTERS_MAP.into(),
            })?;
        let array: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|source| LoaderError::Map {
                name: COUNTERS_MAP.into(),
                source,
            })?;
        let mut totals = [0u64; COUNTER_SLOTS as usize];
        for (slot, total) in totals.iter_mut().enumerate() {
            let values = array
                .get(&(slot as u32), 0)
                .map_err(|source| LoaderError::Map {
                    name: COUNTERS_MAP.into(),
                    source,
                })?;
            *total = values.iter().sum();
        }
        Ok(Counters { totals })
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        // Kernel ids of this tracer's programs, read while they are loaded.
        let own_programs: Vec<u32> = self
            .ebpf
            .programs()
            .filter_map(|(_, prog)| prog.fd().ok())
            .filter_map(|fd| crate::kernel::sys::object_id(fd.as_fd()).ok())
            .collect();
        // SAFETY: `ebpf` is not used after this point. Dropping it detaches
        // every program: tcx links close, clsact filters are deleted.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.ebpf) };
        let mut clsact_devices: Vec<u32> = self
            .tc
            .iter()
            .filter(|a| a.mode == TcMode::Clsact)
            .map(|a| a.ifindex)
            .collect();
        clsact_devices.sort_unstable();
        clsact_devices.dedup();
        if clsact_devices.is_empty()
            || self.clsact_netns != crate::node::devices::own_netns_inode().ok()
        {
            return;
        }
        let added = std::mem::take(&mut self.added_clsact);
        let netns = self.clsact_netns;
        // Best effort: nothing to report to from a destructor, and whatever
        // is left behind is what `hoptrace cleanup` removes.
        let _ = cleanup::with_rtnetlink(|handle| async move {
            for ifindex in clsact_devices {
                // This tracer or an earlier, overlapping hoptrace added the
                // qdisc: whoever leaves it empty removes it.
                let ours = added.contains(&ifindex)
                    || netns.is_some_and(|n| owner::clsact_added(n, ifindex));
                if detach_clsact(&handle, ifindex, &own_programs, ours).await
                    && let Some(netns) = netns
                {
                    owner::unmark_clsact(netns, ifindex);
                }
            }
        });
    }
}

/// After aya's detach: deletes any filter on `ifindex` that still runs one of
/// `own_programs` (aya ignores a failed detach), then, when `remove_qdisc`
/// (this tracer added the clsact qdisc) and neither hook holds a filter any
/// more (another tool may have added one), the clsact qdisc itself.
/// Returns whether the qdisc was removed.
async fn detach_clsact(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    own_programs: &[u32],
    remove_qdisc: bool,
) -> bool {
    let mut empty = true;
    for direction in [cleanup::Direction::Ingress, cleanup::Direction::Egress] {
        let Ok(filters) = cleanup::list_filters(handle, ifindex, direction).await else {
            // Unknown state: leave the qdisc alone.
            empty = false;
            continue;
        };
        let (own, others): (Vec<_>, Vec<_>) = filters
            .into_iter()
            .partition(|f| is_own_filter(f, own_programs));
        for filter in &own {
            if cleanup::delete_filter(handle, ifindex, direction, filter)
                .await
                .is_err()
            {
                empty = false;
            }
        }
        empty &= empty_without(&own, &others);
    }
    remove_qdisc && empty && cleanup::delete_clsact(handle, ifindex).await.is_ok()
}

/// Priorities of the filters on one clsact hook (empty without clsact).
fn used_priorities(ifindex: u32, hook: cleanup::Direction) -> Vec<u16> {
    cleanup::with_rtnetlink(|handle| async move {
        cleanup::list_filters(&handle, ifindex, hook)
            .await
            .unwrap_or_default()
    })
    .unwrap_or_default()
    .iter()
    .map(|f| (f.header.info >> 16) as u16)
    .collect()
}

/// The lowest tc priority (from 1) that no filter in `used` holds.
fn free_priority(used: &[u16]) -> u16 {
    (1..=u16::MAX)
        .find(|p| !used.contains(p))
        .unwrap_or(u16::MAX)
}

/// The filters on one clsact hook that run one of `programs`.
fn own_filters(ifindex: u32, hook: cleanup::Direction, programs: &[u32]) -> Vec<TcMessage> {
    let programs = programs.to_vec();
    cleanup::with_rtnetlink(|handle| async move {
        cleanup::list_filters(&handle, ifindex, hook)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|f| is_own_filter(f, &programs))
            .collect()
    })
    .unwrap_or_default()
}

/// Whether a hook holds no filter once `own` are deleted: `others` (the rest
/// of its listing) may only hold the chain heads (handle 0) of priorities
/// whose filters were all `own`, which go with them.
fn empty_without(own: &[TcMessage], others: &[TcMessage]) -> bool {
    let priority = |f: &TcMessage| f.header.info >> 16;
    others
        .iter()
        .all(|f| u32::from(f.header.handle) == 0 && own.iter().any(|o| priority(o) == priority(f)))
}

/// A filter (not a chain head) that runs one of `own_programs`.
fn is_own_filter(filter: &TcMessage, own_programs: &[u32]) -> bool {
    u32::from(filter.header.handle) != 0
        && cleanup::bpf_program(filter)
            .and_then(|(_, id)| id)
            .is_some_and(|id| own_programs.contains(&id))
}

/// Summed per-CPU counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    /// Sum over CPUs, indexed by [`Counter`].
    pub totals: [u64; COUNTER_SLOTS as usize],
}

impl Counters {
    /// The total of one counter.
    pub fn get(&self, counter: Counter) -> u64 {
        self.totals[counter as usize]
    }
}

/// Drains the event ring buffer. Producers never wake the reader, so the
/// reader is driven by a timer ([`EventReader::drain`] in a loop).
pub struct EventReader {
    ring: RingBuf<aya::maps::MapData>,
}

impl EventReader {
    /// Reads every event currently in the ring; returns how many were read.
    pub fn drain(&mut self, mut sink: impl FnMut(&HopEvent)) -> usize {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            if item.len() >= std::mem::size_of::<HopEvent>() {
                // SAFETY: HopEvent is a plain repr(C) Pod written by the
                // kernel programs; read_unaligned copes with any alignment.
                let ev = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<HopEvent>()) };
                sink(&ev);
                n += 1;
            } else if item.len() >= std::mem::size_of::<HopHeader>() {
                // A hop that only times a packet parsed earlier on its hook.
                // SAFETY: as above, for the header-only record.
                let h = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<HopHeader>()) };
                sink(&HopEvent::from_header(&h));
                n += 1;
            }
        }
        n
    }

    /// Raw fd, for epoll users.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::tc::{TcAttribute, TcFilterBpfOption, TcOption};

    use super::*;

    /// A clsact filter as a dump lists it: `handle` 0 is a chain head.
    fn filter(priority: u16, handle: u32, prog: Option<(&str, u32)>) -> TcMessage {
        let mut msg = TcMessage::with_index(4);
        msg.header.handle = handle.into();
        // Priority in the high 16 bits, protocol (ETH_P_ALL) in the low.
        msg.header.info = (u32::from(priority) << 16) | 0x0300;
        msg.attributes.push(TcAttribute::Kind("bpf".into()));
        if let Some((name, id)) = prog {
            msg.attributes.push(TcAttribute::Options(vec![
                TcOption::Bpf(TcFilterBpfOption::ProgId(id)),
                TcOption::Bpf(TcFilterBpfOption::ProgName(name.into())),
            ]));
        }
        msg
    }

    #[test]
    fn the_lowest_free_priority_is_taken() {
        assert_eq!(free_priority(&[]), 1);
        assert_eq!(free_priority(&[1, 1, 2, 49152]), 3);
        assert_eq!(free_priority(&[2, 3]), 1);
    }

    #[test]
    fn own_filters_are_recognised_by_program_id() {
        let own = [41, 42];
        assert!(is_own_filter(
            &filter(1, 1, Some(("hoptrace_tc_ingress", 42))),
            &own
        ));
        // Another hoptrace's filter: same name, other program.
        assert!(!is_own_filter(
            &filter(1, 2, Some(("hoptrace_tc_ingress", 7))),
            &own
        ));
        assert!(!is_own_filter(&filter(1, 0, None), &own), "chain head");
        assert!(!is_own_filter(
            &filter(2, 1, Some(("cil_from_netdev", 9))),
            &own
        ));
    }

    #[test]
    fn hook_is_empty_only_without_foreign_filters() {
        let ours = filter(1, 1, Some(("hoptrace_tc_ingress", 42)));
        let head1 = filter(1, 0, None);
        let cilium = filter(2, 1, Some(("cil_from_netdev", 9)));
        let head2 = filter(2, 0, None);
        assert!(empty_without(&[], &[]));
        assert!(empty_without(
            std::slice::from_ref(&ours),
            std::slice::from_ref(&head1)
        ));
        assert!(
            !empty_without(&[], std::slice::from_ref(&head1)),
            "a head without our filter"
        );
        assert!(!empty_without(
            std::slice::from_ref(&ours),
            &[head1, head2.clone(), cilium.clone()]
        ));
        assert!(!empty_without(&[], &[head2, cilium]));
        // Another filter at our priority keeps its chain.
        let neighbour = filter(1, 2, Some(("other", 5)));
        assert!(!empty_without(&[ours], &[filter(1, 0, None), neighbour]));
    }
}
