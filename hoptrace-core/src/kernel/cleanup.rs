//! `hoptrace cleanup`: removes tc filters that a killed hoptrace left behind.
//!
//! tcx links and netfilter links are file descriptors and die with the
//! process; clsact (`cls_bpf`) filters are not and survive a crash. This
//! removes only BPF filters whose program name starts with [`OWN_PREFIX`] on
//! the ingress/egress hooks of every device of one network namespace, and
//! only those whose owner is gone: a filter whose program a live process
//! holds open belongs to a running hoptrace and is left alone
//! ([`owner::programs_held_open`]). It never touches any other filter; a
//! clsact qdisc is removed only when a hoptrace added it (marked under
//! [`owner::RUN_DIR`]) and it holds no filter any more.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use crate::kernel::owner;
use futures_util::{StreamExt as _, TryStreamExt as _};
use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::LinkAttribute,
    tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
};

/// Program-name prefix of every hoptrace kernel program.
pub const OWN_PREFIX: &str = "hoptrace_";

/// Errors of [`cleanup_tc_filters`].
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    /// The namespace file cannot be opened.
    #[error("cannot open network namespace {path}: {source}")]
    OpenNetns {
        /// The namespace file.
        path: PathBuf,
        /// Why it cannot be opened.
        #[source]
        source: std::io::Error,
    },
    /// `setns(2)` refused the namespace.
    #[error("cannot enter network namespace {path}: {source}")]
    EnterNetns {
        /// The namespace file.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: nix::Error,
    },
    /// The netlink socket (or the runtime that drives it) could not be set up.
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// A netlink request failed; `request` says which.
    #[error("netlink: {request}: {source}")]
    Netlink {
        /// The request, e.g. ``delete filter `hoptrace_tc_ingress` on veth1``.
        request: String,
        /// What the kernel (or the netlink library) said.
        #[source]
        source: rtnetlink::Error,
    },
    /// The cleanup thread could not be started.
    #[error("cannot start the cleanup thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The cleanup thread panicked.
    #[error("the cleanup thread panicked")]
    Panicked,
}

/// Ingress or egress hook of a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The clsact ingress hook (parent `ffff:fff2`).
    Ingress,
    /// The clsact egress hook (parent `ffff:fff3`).
    Egress,
}

impl Direction {
    fn parent(self) -> TcHandle {
        TcHandle {
            major: 0xffff,
            minor: match self {
                Self::Ingress => TcHandle::MIN_INGRESS,
                Self::Egress => TcHandle::MIN_EGRESS,
            },
        }
    }

    /// `ingress` or `egress`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

/// One removed filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemovedFilter {
    /// The device's name.
    pub ifname: String,
    /// The device's index.
    pub ifindex: u32,
    /// The hook the filter was on.
    pub direction: Direction,
    /// The filter's priority (`pref`).
    pub priority: u16,
    /// The filter's handle.
    pub handle: u32,
    /// Program name as tc reports it (`TCA_BPF_NAME`).
    pub program: String,
    /// Kernel id of the program (`TCA_BPF_ID`), when the kernel reports it.
    pub prog_id: Option<u32>,
}

/// A hoptrace filter left alone because its owner is running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveFilter {
    /// The device's name.
    pub ifname: String,
    /// The hook the filter is on.
    pub direction: Direction,
    /// Program name as tc reports it.
    pub program: String,
    /// A process that holds the program open: the running hoptrace.
    pub pid: u32,
}

/// What [`cleanup_tc_filters`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// The filters removed, in the order found.
    pub removed: Vec<RemovedFilter>,
    /// hoptrace filters of a running hoptrace, left alone.
    pub live: Vec<LiveFilter>,
    /// Devices whose empty clsact qdisc (added by a hoptrace) was removed.
    pub removed_qdiscs: Vec<String>,
    /// Filters seen and left alone (not ours).
    pub kept: usize,
}

impl fmt::Display for CleanupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.removed.is_empty() && self.live.is_empty() {
            writeln!(f, "no hoptrace tc filters found")?;
        }
        for l in &self.live {
            writeln!(
                f,
                "left {} filter `{}` on {}: it belongs to a running hoptrace (pid {})",
                l.direction.name(),
                l.program,
                l.ifname,
                l.pid
            )?;
        }
        for r in &self.removed {
            write!(
                f,
                "removed {} filter `{}` on {} (ifindex {}) prio {} handle {:#x}",
                r.direction.name(),
                r.program,
                r.ifname,
                r.ifindex,
                r.priority,
                r.handle
            )?;
            match r.prog_id {
                Some(id) => writeln!(f, " (program id {id})")?,
                None => writeln!(f)?,
            }
        }
        for q in &self.removed_qdiscs {
            writeln!(
                f,
                "removed the empty clsact qdisc hoptrace had added on {q}"
            )?;
        }
        writeln!(f, "left {} other tc filter(s) untouched", self.kept)
    }
}

/// Name and kernel id of the BPF program of a filter message, if it is a
/// named `bpf` filter.
pub(crate) fn bpf_program(msg: &TcMessage) -> Option<(String, Option<u32>)> {
    let is_bpf = msg
        .attributes
        .iter()
        .any(|a| matches!(a, TcAttribute::Kind(k) if k == "bpf"));
    if !is_bpf {
        return None;
    }
    let options = msg.attributes.iter().find_map(|a| match a {
        TcAttribute::Options(o) => Some(o),
        _ => None,
    })?;
    let mut name = None;
    let mut id = None;
    for option in options {
        match option {
            TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => name = Some(n.clone()),
            TcOption::Bpf(TcFilterBpfOption::ProgId(i)) => id = Some(*i),
            _ => {}
        }
    }
    Some((name?, id))
}

/// Whether a filter's program name marks it as hoptrace's.
pub fn is_own_program(name: &str) -> bool {
    name.starts_with(OWN_PREFIX)
}

/// Runs `f` with a route-netlink handle whose socket belongs to the calling
/// thread's network namespace, on a current-thread tokio runtime, and returns
/// what `f` returns. When the caller already runs inside a tokio runtime
/// (where a nested `block_on` would panic) it runs on a short-lived helper
/// thread instead, which starts in the caller's network namespace too.
/// Shared by device discovery, [`Tracer`](crate::kernel::loader::Tracer)'s
/// drop and [`cleanup_tc_filters`].
///
/// # Errors
///
/// The runtime or the netlink socket could not be created.
pub(crate) fn with_rtnetlink<T, Fut>(
    f: impl FnOnce(rtnetlink::Handle) -> Fut + Send,
) -> std::io::Result<T>
where
    T: Send,
    Fut: std::future::Future<Output = T>,
{
    let run = move || -> std::io::Result<T> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        runtime.block_on(async move {
            let (connection, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(connection);
            Ok(f(handle).await)
        })
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return run();
    }
    std::thread::scope(|scope| {
        scope
            .spawn(run)
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The filters on one hook of a device, as `tc filter show dev DEV
/// ingress|egress` lists them: the per-priority chain heads (handle 0) too.
///
/// # Errors
///
/// The kernel refused the dump (e.g. the device has no clsact qdisc or is
/// gone).
pub(crate) async fn list_filters(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    direction: Direction,
) -> Result<Vec<TcMessage>, rtnetlink::Error> {
    let request = handle.traffic_filter(ifindex as i32).get();
    let request = match direction {
        Direction::Ingress => request.ingress(),
        Direction::Egress => request.egress(),
    };
    request.execute().try_collect().await
}

/// Deletes one filter that [`list_filters`] returned, by its device, hook,
/// priority, protocol and handle (`tc filter del dev DEV ingress|egress pref
/// PRIO handle HANDLE`).
///
/// # Errors
///
/// The kernel refused (e.g. `ENOENT`: the filter is already gone).
pub(crate) async fn delete_filter(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    direction: Direction,
    filter: &TcMessage,
) -> Result<(), rtnetlink::Error> {
    let mut del = TcMessage::with_index(ifindex as i32);
    del.header.parent = direction.parent();
    del.header.handle = filter.header.handle;
    // Priority (high 16 bits) and protocol (low 16 bits).
    del.header.info = filter.header.info;
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::DelTrafficFilter(del));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    acknowledged(handle, req).await
}

/// Deletes the clsact qdisc of a device (`tc qdisc del dev DEV clsact`), and
/// with it every filter it still holds.
///
/// # Errors
///
/// The kernel refused (e.g. `ENOENT`/`EINVAL`: the device has no clsact).
pub(crate) async fn delete_clsact(
    handle: &rtnetlink::Handle,
    ifindex: u32,
) -> Result<(), rtnetlink::Error> {
    let mut del = TcMessage::with_index(ifindex as i32);
    del.header.parent = TcHandle::CLSACT;
    del.header.handle = TcHandle {
        major: TcHandle::CLSACT.major,
        minor: 0,
    };
    del.attributes.push(TcAttribute::Kind("clsact".into()));
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::DelQueueDiscipline(del));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    acknowledged(handle, req).await
}

/// Sends a request that the kernel answers with an acknowledgement, and
/// turns a negative one into an error.
async fn acknowledged(
    handle: &rtnetlink::Handle,
    req: NetlinkMessage<RouteNetlinkMessage>,
) -> Result<(), rtnetlink::Error> {
    let mut responses = handle.clone().request(req)?;
    while let Some(msg) = responses.next().await {
        if let NetlinkPayload::Error(e) = msg.payload
            && e.code.is_some()
        {
            return Err(rtnetlink::Error::NetlinkError(e));
        }
    }
    Ok(())
}

async fn cleanup_here(handle: rtnetlink::Handle) -> Result<CleanupReport, CleanupError> {
    let links: Vec<_> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|source| CleanupError::Netlink {
            request: "list links".into(),
            source,
        })?;
    let mut report = CleanupReport::default();
    let netns = crate::node::devices::own_netns_inode().ok();
    // Programs a live process holds open: their filters have an owner.
    let held = owner::programs_held_open();
    // Forget the records of runs that are gone.
    if let Some(netns) = netns {
        let _ = owner::other_live_runs(netns);
    }
    for link in links {
        let ifindex = link.header.index;
        let ifname = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for direction in [Direction::Ingress, Direction::Egress] {
            // A device without clsact answers with an error or nothing: no filters.
            let Ok(filters) = list_filters(&handle, ifindex, direction).await else {
                continue;
            };
            for filter in filters {
                // The dump also lists the per-priority chain heads (handle 0).
                if u32::from(filter.header.handle) == 0 {
                    continue;
                }
                let own = bpf_program(&filter).filter(|(name, _)| is_own_program(name));
                let Some((program, prog_id)) = own else {
                    report.kept += 1;
                    continue;
                };
                if let Some(&pid) = prog_id.and_then(|id| held.get(&id)) {
                    report.live.push(LiveFilter {
                        ifname: ifname.clone(),
                        direction,
                        program,
                        pid,
                    });
                    continue;
                }
                delete_filter(&handle, ifindex, direction, &filter)
                    .await
                    .map_err(|source| CleanupError::Netlink {
                        request: format!("delete filter `{program}` on {ifname}"),
                        source,
                    })?;
                report.removed.push(RemovedFilter {
                    ifname: ifname.clone(),
                    ifindex,
                    direction,
                    priority: (filter.header.info >> 16) as u16,
                    handle: filter.header.handle.into(),
                    program,
                    prog_id,
                });
            }
        }
        // A qdisc a hoptrace added goes once it holds no filter.
        if let Some(netns) = netns
            && owner::clsact_added(netns, ifindex)
        {
            let mut empty = true;
            for direction in [Direction::Ingress, Direction::Egress] {
                match list_filters(&handle, ifindex, direction).await {
                    Ok(filters) => {
                        empty &= filters.iter().all(|f| u32::from(f.header.handle) == 0);
                    }
                    Err(_) => empty = false,
                }
            }
            if empty && delete_clsact(&handle, ifindex).await.is_ok() {
                owner::unmark_clsact(netns, ifindex);
                report.removed_qdiscs.push(ifname.clone());
            }
        }
    }
    Ok(report)
}

/// Removes hoptrace's clsact filters from every device of the calling thread's
/// network namespace, or of the namespace at `netns` (e.g. `/proc/PID/ns/net`
/// or `/run/netns/NAME`). Runs on a short-lived thread of its own, so the
/// caller's namespace never changes.
///
/// # Errors
///
/// The namespace cannot be opened or entered, the thread or the netlink
/// socket cannot be made, listing the links fails, or the kernel refuses to
/// delete a filter (the filters removed before that stay removed).
pub fn cleanup_tc_filters(netns: Option<&Path>) -> Result<CleanupReport, CleanupError> {
    let netns = netns.map(Path::to_path_buf);
    std::thread::Builder::new()
        .name("ht-cleanup".into())
        .spawn(move || {
            if let Some(path) = &netns {
                let file = std::fs::File::open(path).map_err(|source| CleanupError::OpenNetns {
                    path: path.clone(),
                    source,
                })?;
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                    |source| CleanupError::EnterNetns {
                        path: path.clone(),
                        source,
                    },
                )?;
            }
            with_rtnetlink(cleanup_here).map_err(CleanupError::Socket)?
        })
        .map_err(CleanupError::Thread)?
        .join()
        .map_err(|_| CleanupError::Panicked)?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(kind: &str, options: Vec<TcOption>) -> TcMessage {
        let mut msg = TcMessage::with_index(3);
        msg.header.handle = 1.into();
        msg.attributes.push(TcAttribute::Kind(kind.into()));
        msg.attributes.push(TcAttribute::Options(options));
        msg
    }

    #[test]
    fn only_named_bpf_filters_are_recognised() {
        let ours = filter(
            "bpf",
            vec![
                TcOption::Bpf(TcFilterBpfOption::ProgId(42)),
                TcOption::Bpf(TcFilterBpfOption::ProgName("hoptrace_tc_ingress".into())),
            ],
        );
        assert_eq!(
            bpf_program(&ours),
            Some(("hoptrace_tc_ingress".into(), Some(42)))
        );
        let cilium = filter(
            "bpf",
            vec![TcOption::Bpf(TcFilterBpfOption::ProgName(
                "cil_from_container".into(),
            ))],
        );
        assert_eq!(
            bpf_program(&cilium).map(|p| is_own_program(&p.0)),
            Some(false)
        );
        let matchall = filter("matchall", vec![]);
        assert_eq!(bpf_program(&matchall), None);
        assert!(is_own_program("hoptrace_tc_egress_l3"));
        assert!(!is_own_program("xhoptrace_tc"));
        assert!(!is_own_program("bpf_prog.o:[classifier]"));
    }

    #[test]
    fn report_lists_removed_filters() {
        let report = CleanupReport {
            removed: vec![RemovedFilter {
                ifname: "veth1".into(),
                ifindex: 7,
                direction: Direction::Egress,
                priority: 49152,
                handle: 1,
                program: "hoptrace_tc_egress".into(),
                prog_id: Some(9),
            }],
            live: vec![LiveFilter {
                ifname: "veth2".into(),
                direction: Direction::Ingress,
                program: "hoptrace_tc_ingress".into(),
                pid: 4242,
            }],
            removed_qdiscs: vec!["veth1".into()],
            kept: 2,
        };
        let text = report.to_string();
        assert!(text.contains(
            "removed egress filter `hoptrace_tc_egress` on veth1 (ifindex 7) prio 49152"
        ));
        assert!(text.contains("left 2 other"));
        assert!(text.contains(
            "left ingress filter `hoptrace_tc_ingress` on veth2: it belongs to a running hoptrace (pid 4242)"
        ));
        assert!(text.contains("removed the empty clsact qdisc hoptrace had added on veth1"));
        assert!(
            CleanupReport::default()
                .to_string()
                .contains("no hoptrace tc filters found")
        );
    }

    #[test]
    fn missing_namespace_is_a_typed_error() {
        let err = cleanup_tc_filters(Some(Path::new("/nonexistent/ns"))).unwrap_err();
        assert!(matches!(err, CleanupError::OpenNetns { .. }), "{err}");
    }
}
