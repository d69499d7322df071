//! `hoptrace check`: what the running kernel lets hoptrace do, found by trying.
//!
//! Every item is probed by loading and attaching a minimal program or creating
//! a throwaway device, never by comparing kernel versions. Attachments and
//! devices are made in a network namespace that belongs to one short-lived
//! thread (`unshare(CLONE_NEWNET)`), so they vanish with the thread whatever
//! happens. Tracing attachments (tracepoints, fentry, kprobes) are dropped
//! before the probe returns.

use std::{ffi::CString, fmt::Write as _, net::Ipv4Addr, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        KProbe, LinkOrder, RawTracePoint, SchedClassifier, TcAttachType, TracePoint,
        tc::{NlOptions, TcAttachOptions, qdisc_add_clsact},
    },
};
use serde_json::json;

use crate::kernel::{
    btf::Btf,
    objects::probe_object,
    sys,
    tracing::{self, RelocatedObject, TracingTarget, without_kernel_btf},
};

/// The result of one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capability {
    /// Stable identifier (`tcx`, `netfilter_link`, ...).
    pub name: &'static str,
    /// The probe succeeded: the kernel offers this here and now (with the
    /// privileges hoptrace runs with).
    pub available: bool,
    /// The kernel's error when unavailable.
    pub reason: Option<String>,
    /// What was tried, or what was found.
    pub detail: String,
}

/// Everything `hoptrace check` found.
#[derive(Clone, Debug, Default)]
pub struct Capabilities {
    /// One entry per probed item, in [`ITEMS`] order.
    pub items: Vec<Capability>,
    /// Side effects the probes had to make (e.g. mounting tracefs).
    pub notes: Vec<String>,
}

/// Every item name, in report order.
pub const ITEMS: [&str; 16] = [
    "btf",
    "ring_buffer",
    "tcx",
    "clsact_tc",
    "netfilter_link",
    "tracepoint",
    "tp_btf",
    "raw_tracepoint",
    "fentry",
    "kprobe",
    "bpf_cast_to_kern_ctx",
    "tunnel_vxlan",
    "tunnel_ipip",
    "tunnel_geneve",
    "bpf_stats",
    "sock_tracepoints",
];

/// A privilege hoptrace needs, checked in the effective capability set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Privilege {
    /// Load BPF programs and maps (`CAP_BPF`, or `CAP_SYS_ADMIN` as the kernel also accepts).
    Bpf,
    /// Tracepoints and kernel pointers (`CAP_PERFMON`, or `CAP_SYS_ADMIN`).
    Perfmon,
    /// tc/tcx attachments, netfilter links, devices (`CAP_NET_ADMIN`).
    NetAdmin,
    /// `setns`/`unshare` into network namespaces (`CAP_SYS_ADMIN`).
    SysAdmin,
}

impl Privilege {
    /// The capability's name as `capabilities(7)` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bpf => "CAP_BPF",
            Self::Perfmon => "CAP_PERFMON",
            Self::NetAdmin => "CAP_NET_ADMIN",
            Self::SysAdmin => "CAP_SYS_ADMIN",
        }
    }

    /// What hoptrace does with it.
    pub fn purpose(self) -> &'static str {
        match self {
            Self::Bpf => "load BPF programs and maps",
            Self::Perfmon => "attach tracepoints and read kernel pointers",
            Self::NetAdmin => "attach tc and netfilter hooks",
            Self::SysAdmin => "enter network namespaces",
        }
    }

    /// Whether `effective` grants it: the kernel accepts CAP_SYS_ADMIN in
    /// place of CAP_BPF and CAP_PERFMON (`bpf_capable`, `perfmon_capable`),
    /// which is also all there is before Linux 5.8.
    fn granted_by(self, effective: &caps::CapsHashSet) -> bool {
        use caps::Capability as C;
        let has = |c: C| effective.contains(&c);
        match self {
            Self::Bpf => has(C::CAP_BPF) || has(C::CAP_SYS_ADMIN),
            Self::Perfmon => has(C::CAP_PERFMON) || has(C::CAP_SYS_ADMIN),
            Self::NetAdmin => has(C::CAP_NET_ADMIN),
            Self::SysAdmin => has(C::CAP_SYS_ADMIN),
        }
    }
}

/// What every tracing command needs: CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN.
pub const TRACING: [Privilege; 3] = [Privilege::Bpf, Privilege::Perfmon, Privilege::NetAdmin];

/// The effective capability set lacks privileges hoptrace needs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrivilegeError {
    /// These are missing (in the order asked).
    #[error("missing {}: run as root or grant {}", describe(.0), names(.0))]
    Missing(Vec<Privilege>),
    /// The capability sets could not be read.
    #[error("cannot read this process's capabilities: {0}")]
    Unreadable(String),
}

fn describe(missing: &[Privilege]) -> String {
    missing
        .iter()
        .map(|p| format!("{} (to {})", p.name(), p.purpose()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn names(missing: &[Privilege]) -> String {
    let names: Vec<_> = missing.iter().map(|p| p.name()).collect();
    if names.len() == 1 {
        "it".into()
    } else {
        names.join(", ")
    }
}

/// The privileges of `needed` that `effective` lacks, in order.
pub fn missing_privileges(needed: &[Privilege], effective: &caps::CapsHashSet) -> Vec<Privilege> {
    needed
        .iter()
        .copied()
        .filter(|p| !p.granted_by(effective))
        .collect()
}

/// Fails unless this process's effective capabilities hold every
/// privilege of `needed` (by capability, not by uid: a uid-0 process
/// without CAP_BPF fails, a non-root one with the capabilities passes).
///
/// # Errors
///
/// [`PrivilegeError::Missing`] naming each missing capability;
/// [`PrivilegeError::Unreadable`] when `capget` fails.
pub fn require(needed: &[Privilege]) -> Result<(), PrivilegeError> {
    let effective = caps::read(None, caps::CapSet::Effective)
        .map_err(|e| PrivilegeError::Unreadable(e.to_string()))?;
    let missing = missing_privileges(needed, &effective);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PrivilegeError::Missing(missing))
    }
}

/// [`TRACING`], plus CAP_SYS_ADMIN when `enters_namespaces`.
///
/// # Errors
///
/// As [`require`].
pub fn require_tracing(enters_namespaces: bool) -> Result<(), PrivilegeError> {
    let mut needed = TRACING.to_vec();
    if enters_namespaces {
        needed.push(Privilege::SysAdmin);
    }
    require(&needed)
}

impl Capabilities {
    /// The item called `name`.
    pub fn get(&self, name: &str) -> Option<&Capability> {
        self.items.iter().find(|c| c.name == name)
    }

    /// Whether `name` was probed and is available.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some_and(|c| c.available)
    }

    /// Which hops hoptrace can time with what is available, one line each.
    pub fn fidelity(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let line = |ok: bool, yes: &str, no: &str| {
            if ok {
                format!("ok: {yes}")
            } else {
                format!("degraded: {no}")
            }
        };
        if !self.has("btf") {
            lines.push(
                "unusable: no kernel BTF, so sk_buff offsets are unknown: hoptrace cannot run"
                    .into(),
            );
        }
        if !self.has("ring_buffer") {
            lines.push("unusable: no BPF ring buffer: hoptrace cannot deliver events".into());
        }
        let tc = self.has("tcx") || self.has("clsact_tc");
        lines.push(line(
            tc,
            &format!(
                "tc hooks on veth/bridge/tunnel/uplink devices via {}",
                if self.has("tcx") {
                    "tcx links (detach on exit)"
                } else {
                    "clsact filters (`hoptrace cleanup` after a crash)"
                }
            ),
            "no tc attach: device-level hops (veth, bridge, vxlan, uplink) are not timed",
        ));
        lines.push(line(
            self.has("netfilter_link"),
            "netfilter bands (conntrack, DNAT, filter, SNAT) bracketed by netfilter links",
            "no netfilter links: conntrack/NAT/filter time is folded into the surrounding segment",
        ));
        let tp = self.has("tp_btf") || self.has("tracepoint");
        lines.push(line(
            tp,
            &format!(
                "pod-side hops (netif_receive_skb, net_dev_queue, net_dev_start_xmit, socket delivery, drops) via {}",
                if self.has("tp_btf") { "tp_btf" } else { "tracepoints" }
            ),
            "no tracepoints: pod-side hops and drop reasons are not seen",
        ));
        if self.has("fentry") || self.has("kprobe") {
            lines.push("ok: function-level hooks (fentry/kprobe) are available".into());
        } else {
            lines.push(
                "degraded: fentry/kprobe unavailable: function-level hooks (e.g. inside vxlan_xmit) are not timed; \
                 segments fall back to tracepoint+tc boundaries"
                    .into(),
            );
        }
        lines.push(line(
            self.has("bpf_cast_to_kern_ctx"),
            "tc events carry the kernel sk_buff address (bpf_cast_to_kern_ctx)",
            "bpf_cast_to_kern_ctx unavailable: tc hops are matched to other hooks by headers only",
        ));
        let tunnels: Vec<&str> = ["tunnel_vxlan", "tunnel_ipip", "tunnel_geneve"]
            .into_iter()
            .filter(|t| !self.has(t))
            .map(|t| t.trim_start_matches("tunnel_"))
            .collect();
        if !tunnels.is_empty() {
            lines.push(format!(
                "info: this kernel cannot create {} devices: overlays of that kind cannot exist on this node",
                tunnels.join("/")
            ));
        }
        lines.push(line(
            self.has("sock_tracepoints"),
            "request timeline (socket reads and writes: ingress proxy, application and client time per request)",
            "request timeline hooks missing (sock:* tracepoints need Linux 6.3): the lab reports no requests section",
        ));
        lines.push(line(
            self.has("bpf_stats"),
            "per-program run time (kernel.bpf_stats_enabled) can measure hoptrace's own overhead",
            "kernel.bpf_stats_enabled not writable: hoptrace's own overhead is not measured",
        ));
        lines
    }

    /// A table for terminals: item, yes/no, detail or reason; then notes and fidelity.
    pub fn render_table(&self) -> String {
        let mut table =
            crate::report::styled_table(&["capability", "available", "detail / reason"]);
        for c in &self.items {
            let text = match &c.reason {
                Some(reason) => format!("{} — {reason}", c.detail),
                None => c.detail.clone(),
            };
            table.add_row([
                c.name.to_owned(),
                if c.available { "yes" } else { "no" }.to_owned(),
                text,
            ]);
        }
        let mut out = table.to_string();
        out.push('\n');
        for note in &self.notes {
            out.push_str(&crate::diagnose::wrap("note: ", "      ", note));
        }
        out.push_str("\nfidelity:\n");
        for line in self.fidelity() {
            out.push_str(&crate::diagnose::wrap("  ", "    ", &line));
        }
        out
    }

    /// Every item with `available` and `reason`, plus notes and fidelity.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "items": self.items.iter().map(|c| json!({
                "name": c.name,
                "available": c.available,
                "reason": c.reason,
                "detail": c.detail,
            })).collect::<Vec<_>>(),
            "notes": self.notes,
            "fidelity": self.fidelity(),
        })
    }
}

/// An error and its sources on one line, joined by `: `. A source whose
/// text is already part of the line is skipped, and only the first line is
/// kept (without aya's trailing `Verifier output:`), so a verifier log does
/// not flood a capability reason.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.contains(&s) {
            let _ = write!(text, ": {s}");
        }
        source = e.source();
    }
    // Verifier logs are long: keep the first line of each part.
    let first = text.lines().next().unwrap_or_default().trim_end();
    first
        .strip_suffix("Verifier output:")
        .unwrap_or(first)
        .trim_end()
        .to_owned()
}

/// What one probe found: a detail line, or the kernel's error.
type ProbeResult = Result<String, String>;

fn item(name: &'static str, result: ProbeResult, tried: &str) -> Capability {
    match result {
        Ok(detail) => Capability {
            name,
            available: true,
            reason: None,
            detail,
        },
        Err(reason) => Capability {
            name,
            available: false,
            reason: Some(reason),
            detail: tried.to_owned(),
        },
    }
}

/// Running a probe in a throwaway network namespace failed.
#[derive(Debug, thiserror::Error)]
pub enum ThrowawayNetnsError {
    /// `unshare(CLONE_NEWNET)` failed (`EPERM` without `CAP_SYS_ADMIN`).
    #[error("unshare(CLONE_NEWNET)")]
    Unshare(#[source] nix::Error),
    /// The probe thread could not be started.
    #[error("spawn probe thread")]
    Spawn(#[source] std::io::Error),
    /// The probe panicked.
    #[error("probe thread panicked")]
    Panicked,
}

/// Runs `f` in a thread that has its own new network namespace; everything
/// made there (devices, tc filters, netfilter links) disappears with it.
///
/// # Errors
///
/// [`ThrowawayNetnsError`] when the thread cannot be started, cannot leave
/// the caller's namespace, or `f` panics.
pub fn in_throwaway_netns<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, ThrowawayNetnsError> {
    std::thread::Builder::new()
        .name("ht-probe-netns".into())
        .spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(ThrowawayNetnsError::Unshare)?;
            Ok(f())
        })
        .map_err(ThrowawayNetnsError::Spawn)?
        .join()
        .map_err(|_| ThrowawayNetnsError::Panicked)?
}

fn probe_btf() -> Result<String, String> {
    let btf = Btf::vmlinux().map_err(|e| error_chain(&e))?;
    let layout = btf.kernel_layout().map_err(|e| error_chain(&e))?;
    Ok(format!(
        "{} types; sk_buff.len at {}, net_device.ifindex at {}",
        btf.type_count(),
        layout.skb_len,
        layout.dev_ifindex
    ))
}

fn probe_ring_buffer() -> Result<String, String> {
    const BPF_MAP_TYPE_RINGBUF: u32 = 27;
    sys::map_create(BPF_MAP_TYPE_RINGBUF, 0, 0, 64 * 1024, 0, "ht_probe_rb")
        .map(|_| "created a 64 KiB BPF ring buffer".to_owned())
        .map_err(|e| e.to_string())
}

fn probe_bpf_stats() -> Result<String, String> {
    let path = "/proc/sys/kernel/bpf_stats_enabled";
    let current = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    // Writing the current value back proves it is writable and changes nothing.
    std::fs::write(path, current.trim()).map_err(|e| format!("write {path}: {e}"))?;
    Ok(format!(
        "kernel.bpf_stats_enabled = {} (writable)",
        current.trim()
    ))
}

fn probe_kfunc() -> Result<String, String> {
    let btf = Btf::vmlinux().map_err(|e| error_chain(&e))?;
    let id = btf
        .func_id("bpf_cast_to_kern_ctx")
        .map_err(|e| error_chain(&e))?;
    const BPF_PSEUDO_KFUNC_CALL: u8 = 2;
    let insns = [
        // r1 already holds the __sk_buff context.
        sys::insn(0x85, 0, BPF_PSEUDO_KFUNC_CALL, 0, id as i32), // call bpf_cast_to_kern_ctx
        sys::insn(0xb7, 0, 0, 0, -1),                            // r0 = TC_ACT_UNSPEC
        sys::insn(0x95, 0, 0, 0, 0),                             // exit
    ];
    let license = CString::new("GPL").expect("no NUL");
    sys::prog_load(&sys::ProgLoad {
        attach_btf_id: 0,
        prog_type: sys::BPF_PROG_TYPE_SCHED_CLS,
        expected_attach_type: 0,
        insns: &insns,
        license: &license,
        name: "ht_probe_kfunc",
    })
    .map(|_| format!("a tc program calling the kfunc (BTF id {id}) loads"))
    .map_err(|e| {
        let first = e
            .verifier_log
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        format!(
            "{}{}{first}",
            e.error,
            if first.is_empty() { "" } else { ": " }
        )
    })
}

/// Loads a netfilter program that only returns NF_ACCEPT and links it at
/// LOCAL_IN in the calling thread's namespace.
fn probe_netfilter_link() -> Result<String, String> {
    let insns = [sys::insn(0xb7, 0, 0, 0, 1), sys::insn(0x95, 0, 0, 0, 0)]; // r0 = NF_ACCEPT; exit
    let license = CString::new("GPL").expect("no NUL");
    let prog = sys::prog_load(&sys::ProgLoad {
        attach_btf_id: 0,
        prog_type: sys::BPF_PROG_TYPE_NETFILTER,
        expected_attach_type: sys::BPF_NETFILTER,
        insns: &insns,
        license: &license,
        name: "ht_probe_nf",
    })
    .map_err(|e| format!("load: {}", e.error))?;
    let _link = sys::netfilter_link_create(&prog, 2, 1, 0).map_err(|e| format!("link: {e}"))?;
    Ok("netfilter program linked at IPv4 LOCAL_IN".into())
}

fn tc_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, String> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut("hoptrace_probe_tc")
        .ok_or("probe object lacks hoptrace_probe_tc")?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| error_chain(&e))?;
    Ok(prog)
}

/// tcx and clsact on `lo` of a throwaway namespace (two attachments of the same
/// loaded program: tcx link, then a netlink filter).
fn probe_tc() -> Result<(ProbeResult, ProbeResult), String> {
    let object = probe_object().map_err(|e| e.to_string())?;
    in_throwaway_netns(move || {
        let mut ebpf = match without_kernel_btf(|| EbpfLoader::new().load(object)) {
            Ok(e) => e,
            Err(e) => return (Err(error_chain(&e)), Err(error_chain(&e))),
        };
        let prog = match tc_program(&mut ebpf)
            .and_then(|p| p.load().map_err(|e| error_chain(&e)).map(|()| p))
        {
            Ok(p) => p,
            Err(e) => return (Err(e.clone()), Err(e)),
        };
        let tcx = prog
            .attach_with_options(
                "lo",
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map(|_| "tcx link on lo ingress (throwaway namespace)".to_owned())
            .map_err(|e| error_chain(&e));
        let clsact = qdisc_add_clsact("lo")
            .map_err(|e| format!("add clsact qdisc: {}", error_chain(&e)))
            .and_then(|()| {
                prog.attach_with_options(
                    "lo",
                    TcAttachType::Egress,
                    TcAttachOptions::Netlink(NlOptions::default()),
                )
                .map_err(|e| error_chain(&e))
            })
            .map(|_| "clsact filter on lo egress (throwaway namespace)".to_owned());
        (tcx, clsact)
    })
    .map_err(|e| error_chain(&e))
}

/// Creates a tunnel device over netlink in the calling thread's namespace.
fn create_link(message: netlink_packet_route::link::LinkMessage) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(async move {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| format!("netlink socket: {e}"))?;
        tokio::spawn(connection);
        handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(|e| e.to_string())
    })
}

/// Whether this kernel can create IPIP tunnel devices, by trying in a
/// throwaway namespace (a thread's own, gone when it ends: nothing is left
/// and no named namespace is made). `hoptrace lab` asks before it builds
/// `calico-ipip`.
///
/// # Errors
///
/// What the kernel said, in one line.
pub fn probe_ipip_device() -> Result<(), String> {
    in_throwaway_netns(|| create_link(rtnetlink::LinkIpIp::new("ht-ipip0").build()))
        .map_err(|e| error_chain(&e))?
}

fn probe_tunnels() -> Result<[ProbeResult; 3], String> {
    in_throwaway_netns(|| {
        let vxlan = create_link(
            rtnetlink::LinkVxlan::new("ht-vxlan0", 42)
                .port(4789)
                .build(),
        )
        .map(|()| "created a vxlan device (throwaway namespace)".to_owned());
        let ipip = create_link(rtnetlink::LinkIpIp::new("ht-ipip0").build())
            .map(|()| "created an ipip device (throwaway namespace)".to_owned());
        let geneve = create_link(
            rtnetlink::LinkGeneve::new("ht-geneve0", 42)
                .remote(Ipv4Addr::new(192, 0, 2, 1))
                .build(),
        )
        .map(|()| "created a geneve device (throwaway namespace)".to_owned());
        [vxlan, ipip, geneve]
    })
    .map_err(|e| error_chain(&e))
}

/// Mounts tracefs at /sys/kernel/tracing when no tracefs is reachable.
/// Returns a note when it mounted.
fn ensure_tracefs() -> Result<Option<String>, String> {
    let reachable = [
        "/sys/kernel/tracing/events",
        "/sys/kernel/debug/tracing/events",
    ]
    .iter()
    .any(|p| Path::new(p).is_dir());
    if reachable {
        return Ok(None);
    }
    nix::mount::mount(
        Some("nodev"),
        "/sys/kernel/tracing",
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| format!("mount tracefs at /sys/kernel/tracing: {e}"))?;
    Ok(Some(
        "mounted tracefs at /sys/kernel/tracing (it was not mounted)".into(),
    ))
}

/// tracepoint, tp_btf, raw_tracepoint, fentry, kprobe: load and attach each
/// probe program, then drop it.
fn probe_tracing(notes: &mut Vec<String>) -> Vec<Capability> {
    let names = ["tracepoint", "tp_btf", "raw_tracepoint", "fentry", "kprobe"];
    let fail_all = |reason: String| {
        names
            .iter()
            .map(|n| item(n, Err(reason.clone()), "load the probe object"))
            .collect::<Vec<_>>()
    };
    let object = match probe_object() {
        Ok(o) => o,
        Err(e) => return fail_all(e.to_string()),
    };
    // Loaded without aya's copy of the kernel's BTF; tp_btf and fentry
    // are loaded from our own reading of it (see `kernel::tracing`).
    let mut ebpf = match without_kernel_btf(|| EbpfLoader::new().load(object)) {
        Ok(e) => e,
        Err(e) => return fail_all(error_chain(&e)),
    };
    let btf = match Btf::vmlinux() {
        Ok(b) => b,
        Err(e) => return fail_all(format!("kernel BTF: {e}")),
    };
    let tracefs = ensure_tracefs();
    if let Ok(Some(note)) = &tracefs {
        notes.push(note.clone());
    }

    fn prog<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
    where
        &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    {
        ebpf.program_mut(name)
            .ok_or_else(|| format!("probe object lacks {name}"))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| error_chain(&e))
    }
    let err = |e: aya::programs::ProgramError| error_chain(&e);

    let tracepoint = tracefs.clone().and_then(|_| {
        let p: &mut TracePoint = prog(&mut ebpf, "hoptrace_probe_tracepoint")?;
        p.load().map_err(err)?;
        p.attach("net", "netif_receive_skb").map_err(err)?;
        Ok("attached to net:netif_receive_skb".to_owned())
    });
    let relocated = RelocatedObject::against(object, &ebpf).map_err(|e| error_chain(&e));
    let traced = |name: &str, target: TracingTarget<'_>| {
        let obj = relocated.as_ref().map_err(Clone::clone)?;
        tracing::attach(obj, name, target, &btf).map_err(|e| error_chain(&e))
    };
    let tp_btf = traced(
        "hoptrace_probe_tp_btf",
        TracingTarget::Tracepoint("netif_receive_skb"),
    )
    .map(|_link| "attached to btf_trace_netif_receive_skb".to_owned());
    let raw_tp = (|| {
        let p: &mut RawTracePoint = prog(&mut ebpf, "hoptrace_probe_raw_tp")?;
        p.load().map_err(err)?;
        p.attach("netif_receive_skb").map_err(err)?;
        Ok("attached to raw tracepoint netif_receive_skb".to_owned())
    })();
    let fentry = traced(
        "hoptrace_probe_fentry",
        TracingTarget::FunctionEntry("__dev_queue_xmit"),
    )
    .map(|_link| "attached fentry to __dev_queue_xmit".to_owned());
    let kprobe = (|| {
        let p: &mut KProbe = prog(&mut ebpf, "hoptrace_probe_kprobe")?;
        p.load().map_err(err)?;
        p.attach("__dev_queue_xmit", 0).map_err(err)?;
        Ok("attached kprobe to __dev_queue_xmit".to_owned())
    })();
    // Dropping `ebpf` detaches everything attached above.
    drop(ebpf);
    vec![
        item(
            "tracepoint",
            tracepoint,
            "attach a tracepoint program to net:netif_receive_skb",
        ),
        item("tp_btf", tp_btf, "load and attach tp_btf netif_receive_skb"),
        item(
            "raw_tracepoint",
            raw_tp,
            "attach a raw tracepoint to netif_receive_skb",
        ),
        item("fentry", fentry, "load fentry on __dev_queue_xmit"),
        item(
            "kprobe",
            kprobe,
            "load and attach a kprobe on __dev_queue_xmit",
        ),
    ]
}

/// Runs every probe. Needs root; without it every item reports the kernel's
/// permission error.
pub fn probe_all() -> Capabilities {
    let mut caps = Capabilities::default();
    caps.items.push(item(
        "btf",
        probe_btf(),
        "read /sys/kernel/btf/vmlinux and resolve sk_buff offsets",
    ));
    caps.items.push(item(
        "ring_buffer",
        probe_ring_buffer(),
        "create a BPF ring buffer map",
    ));
    let (tcx, clsact) = match probe_tc() {
        Ok(pair) => pair,
        Err(e) => (Err(e.clone()), Err(e)),
    };
    caps.items.push(item(
        "tcx",
        tcx,
        "attach a tc program as a tcx link on lo (throwaway namespace)",
    ));
    caps.items.push(item(
        "clsact_tc",
        clsact,
        "attach a tc program as a clsact filter on lo (throwaway namespace)",
    ));
    let nf = in_throwaway_netns(probe_netfilter_link)
        .map_err(|e| error_chain(&e))
        .and_then(|r| r);
    caps.items.push(item(
        "netfilter_link",
        nf,
        "link a netfilter program at IPv4 LOCAL_IN (throwaway namespace)",
    ));
    let mut notes = Vec::new();
    caps.items.extend(probe_tracing(&mut notes));
    caps.notes = notes;
    caps.items.push(item(
        "bpf_cast_to_kern_ctx",
        probe_kfunc(),
        "load a tc program calling the bpf_cast_to_kern_ctx kfunc",
    ));
    let tunnels = probe_tunnels().unwrap_or_else(|e| [Err(e.clone()), Err(e.clone()), Err(e)]);
    let [vxlan, ipip, geneve] = tunnels;
    caps.items.push(item(
        "tunnel_vxlan",
        vxlan,
        "create a vxlan device (throwaway namespace)",
    ));
    caps.items.push(item(
        "tunnel_ipip",
        ipip,
        "create an ipip device (throwaway namespace)",
    ));
    caps.items.push(item(
        "tunnel_geneve",
        geneve,
        "create a geneve device (throwaway namespace)",
    ));
    caps.items.push(item(
        "bpf_stats",
        probe_bpf_stats(),
        "write kernel.bpf_stats_enabled",
    ));
    caps.items.push(item(
        "sock_tracepoints",
        probe_sock_tracepoints(),
        "load and attach the request timeline's hooks (tp_btf sock_recv_length, sock_send_length, inet_sock_set_state, tcp_retransmit_skb; syscalls:sys_enter_write/writev/sendto/sendmsg; without the sock ones, the syscalls: read and write fallback)",
    ));
    caps
}

/// Starts the request timeline's socket tracer for no namespace (its
/// programs attach, and filter every event out), then stops it.
fn probe_sock_tracepoints() -> Result<String, String> {
    // Inode 1 is no network namespace: every event is filtered out.
    let tracer = crate::kernel::sock::SockTracer::start(&[1], crate::kernel::sock::SockHooks::Auto)
        .map_err(|e| error_chain(&e))?;
    let capture = tracer.stop();
    // The syscalls fallback working is a note to show, not a failure.
    let (fallback, problems): (Vec<String>, Vec<String>) =
        capture.notes.into_iter().partition(|n| {
            capture.syscalls_fallback && n.contains("reads and writes from the syscalls:")
        });
    if problems.is_empty() {
        let mut line = format!("attached {}", capture.attached.join(", "));
        for note in fallback {
            line.push_str("; ");
            line.push_str(&note);
        }
        Ok(line)
    } else {
        Err(problems.join("; "))
    }
}

impl Capabilities {
    /// Whether hoptrace can trace at all here: BTF, a ring buffer, some tc
    /// attach mode and some tracepoint kind.
    pub fn usable(&self) -> bool {
        self.has("btf")
            && self.has("ring_buffer")
            && (self.has("tcx") || self.has("clsact_tc"))
            && (self.has("tp_btf") || self.has("tracepoint"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(available: &[&str]) -> Capabilities {
        Capabilities {
            items: ITEMS
                .iter()
                .map(|&name| {
                    let ok = available.contains(&name);
                    Capability {
                        name,
                        available: ok,
                        reason: (!ok).then(|| "Operation not permitted (os error 1)".to_owned()),
                        detail: format!("tried {name}"),
                    }
                })
                .collect(),
            notes: vec!["mounted tracefs".into()],
        }
    }

    #[test]
    fn privileges_are_checked_by_capability_and_named() {
        use ::caps::{Capability as C, CapsHashSet};
        let set = |list: &[C]| list.iter().copied().collect::<CapsHashSet>();
        let all = [
            Privilege::Bpf,
            Privilege::Perfmon,
            Privilege::NetAdmin,
            Privilege::SysAdmin,
        ];
        assert!(
            missing_privileges(
                &all,
                &set(&[
                    C::CAP_BPF,
                    C::CAP_PERFMON,
                    C::CAP_NET_ADMIN,
                    C::CAP_SYS_ADMIN
                ])
            )
            .is_empty()
        );
        // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, as in the kernel.
        assert!(missing_privileges(&all, &set(&[C::CAP_SYS_ADMIN, C::CAP_NET_ADMIN])).is_empty());
        let missing = missing_privileges(&TRACING, &set(&[C::CAP_PERFMON, C::CAP_NET_ADMIN]));
        assert_eq!(missing, vec![Privilege::Bpf]);
        let text = PrivilegeError::Missing(missing).to_string();
        assert!(
            text.contains("CAP_BPF") && !text.contains("CAP_PERFMON"),
            "{text}"
        );
        assert_eq!(
            missing_privileges(&all, &set(&[C::CAP_BPF, C::CAP_PERFMON])),
            vec![Privilege::NetAdmin, Privilege::SysAdmin]
        );
    }

    #[test]
    fn fidelity_follows_the_probes() {
        let full = caps(&ITEMS);
        assert!(
            full.fidelity().iter().all(|l| l.starts_with("ok:")),
            "{:#?}",
            full.fidelity()
        );

        let this_vm = caps(&[
            "btf",
            "ring_buffer",
            "tcx",
            "clsact_tc",
            "netfilter_link",
            "tracepoint",
            "tp_btf",
            "raw_tracepoint",
            "bpf_cast_to_kern_ctx",
            "tunnel_vxlan",
            "bpf_stats",
        ]);
        let lines = this_vm.fidelity();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("degraded: fentry/kprobe unavailable")),
            "{lines:#?}"
        );
        assert!(
            lines.iter().any(|l| l.contains("ipip/geneve")),
            "{lines:#?}"
        );
        assert!(lines.iter().any(|l| l.starts_with("ok: netfilter bands")));

        let no_nf_no_tcx = caps(&["btf", "ring_buffer", "clsact_tc", "tracepoint"]);
        let lines = no_nf_no_tcx.fidelity();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("degraded: no netfilter links"))
        );
        assert!(lines.iter().any(|l| l.contains("clsact filters")));
        assert!(lines.iter().any(|l| l.contains("via tracepoints")));

        let nothing = caps(&[]);
        assert!(
            nothing
                .fidelity()
                .iter()
                .any(|l| l.starts_with("unusable: no kernel BTF"))
        );
    }

    #[test]
    fn json_lists_every_item_with_reason() {
        let c = caps(&["btf", "tcx"]);
        let v = c.to_json();
        let items = v["items"].as_array().expect("items");
        assert_eq!(items.len(), ITEMS.len());
        let fentry = items
            .iter()
            .find(|i| i["name"] == "fentry")
            .expect("fentry");
        assert_eq!(fentry["available"], false);
        assert_eq!(fentry["reason"], "Operation not permitted (os error 1)");
        let tcx = items.iter().find(|i| i["name"] == "tcx").expect("tcx");
        assert_eq!(tcx["available"], true);
        assert!(tcx["reason"].is_null());
        assert_eq!(v["notes"][0], "mounted tracefs");
        assert!(v["fidelity"].as_array().is_some_and(|f| !f.is_empty()));
    }

    #[test]
    fn table_shows_every_item_and_reason() {
        let table = caps(&["btf"]).render_table();
        for name in ITEMS {
            assert!(table.contains(name), "{name} missing from\n{table}");
        }
        assert!(table.contains("Operation not permitted"));
        assert!(table.contains("fidelity:"));
        for line in table.lines() {
            assert!(
                line.chars().count() <= 100,
                "{} columns: {line}",
                line.chars().count()
            );
        }
    }

    #[test]
    fn error_chain_joins_sources_on_one_line() {
        #[derive(Debug, thiserror::Error)]
        #[error("load failed")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(
            error_chain(&e),
            "load failed: Operation not permitted (os error 1)"
        );
    }
}
