//! Issue "Memory": the resident set of `hoptrace trace` on an idle node and
//! while 500,000 distinct flows (random source addresses and ports) cross
//! a node for 20 s: a peak (VmHWM) under 64 MiB, a small and flat
//! anonymous part, and for the release build an idle peak under 32 MiB.
//!
//! The flood is UDP from a raw socket in a pod namespace, through the node
//! (routed), to a second pod; nothing leaves the namespaces this test makes.

use std::time::Duration;

use hoptrace_lab::flood::udp_flows;
use nix::{sys::signal::Signal, unistd::Pid};
use tests::{HoptraceRun, TwoPodNode, sh_in};

const MIB: u64 = 1024 * 1024;
const FLOWS: u32 = 500_000;
const FLOOD: Duration = Duration::from_secs(20);

/// A `kB` field of `/proc/PID/status` (`VmHWM`, `VmRSS`, `RssAnon`), bytes.
fn status_bytes(pid: Pid, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        * 1024
}

/// What a run's memory was at one moment.
#[derive(Debug)]
struct Memory {
    /// Peak resident set so far (`VmHWM`).
    peak: u64,
    /// Resident set now (`VmRSS`).
    now: u64,
    /// Anonymous part of it (heap and stacks; not the binary's pages or
    /// the ring buffer's mapping).
    anon: u64,
}

impl Memory {
    fn of(pid: Pid) -> Self {
        Self {
            peak: status_bytes(pid, "VmHWM"),
            now: status_bytes(pid, "VmRSS"),
            anon: status_bytes(pid, "RssAnon"),
        }
    }
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / MIB as f64;
        write!(
            f,
            "peak {:.1} MiB, now {:.1} MiB (anonymous {:.1} MiB)",
            mib(self.peak),
            mib(self.now),
            mib(self.anon)
        )
    }
}

/// SIGINT, and a clean exit within 30 s.
fn stop(run: &mut HoptraceRun) {
    run.signal(Signal::SIGINT);
    let status = run.wait_exit(Duration::from_secs(30));
    assert!(status.code().is_some(), "killed by a signal: {status}");
}

/// Traces an idle two-pod node for 5 s, then the same node while pod `a`
/// sends [`FLOWS`] distinct flows to pod `b` over [`FLOOD`]; returns the
/// memory of each run just before it stops.
fn idle_then_flood(bin: &std::path::Path) -> (Memory, Memory) {
    let node = TwoPodNode::build("mem", 96, "hm");
    // Pod b answers nothing (no ICMP port unreachable storm back).
    sh_in(
        &node.pod_b,
        &["iptables", "-A", "INPUT", "-p", "udp", "-j", "DROP"],
    );
    let args = ["trace", "--duration", "120s"];
    let mut idle = HoptraceRun::start_bin(bin, &args, node.path());
    std::thread::sleep(Duration::from_secs(5));
    let idle_memory = Memory::of(idle.pid());
    stop(&mut idle);
    let mut busy = HoptraceRun::start_bin(bin, &args, node.path());
    let sent = udp_flows(node.pod_a.name(), node.pod_b_addr(), FLOWS, FLOOD).expect("flood");
    std::thread::sleep(Duration::from_millis(500));
    let busy_memory = Memory::of(busy.pid());
    stop(&mut busy);
    eprintln!("idle: {idle_memory}\n{sent} flows in {FLOOD:?}: {busy_memory}");
    assert!(sent >= FLOWS * 99 / 100, "sent {sent} of {FLOWS}");
    (idle_memory, busy_memory)
}

/// What start-up leaves behind is small, flows do not grow it, and the
/// peak stays under 64 MiB with half a million distinct flows. The anonymous
/// part is what the tracer's own state costs (the binary's pages depend on
/// the build; a debug build maps ~20 MiB of them).
#[test]
fn memory_is_small_after_start_up_and_flat_under_a_flood_of_distinct_flows() {
    if !tests::can_run_with_kernel_programs(
        "memory_is_small_after_start_up_and_flat_under_a_flood_of_distinct_flows",
    ) {
        return;
    }
    let (idle, busy) = idle_then_flood(&tests::hoptrace_bin());
    assert!(
        busy.peak <= 64 * MIB,
        "peak RSS under {FLOWS} flows: {busy}"
    );
    assert!(idle.anon <= 8 * MIB, "idle, after start-up: {idle}");
    assert!(
        busy.anon <= idle.anon + 16 * MIB,
        "not flat: idle {idle}, under {FLOWS} flows {busy}"
    );
}

/// The targets for the binary users run (release): a peak of
/// 32 MiB idle and 64 MiB under half a million flows. What made the peak
/// was aya 0.14 parsing the whole kernel BTF into ~20 MiB of types (in
/// `EbpfLoader::new` and for every tp_btf load); hoptrace now loads with
/// the kernel's BTF hidden from aya and attaches tp_btf programs itself
/// from one read of the 5.5 MB blob (`hoptrace-core/src/kernel/tracing.rs`):
/// measured 26.8 MiB idle, 26.9 MiB under the flood (41.5 MiB before).
#[test]
fn release_build_peaks_under_32_mib_idle_and_64_mib_under_a_flood() {
    if !tests::can_run_with_kernel_programs(
        "release_build_peaks_under_32_mib_idle_and_64_mib_under_a_flood",
    ) {
        return;
    }
    let (idle, busy) = idle_then_flood(&tests::hoptrace_release_bin());
    assert!(idle.peak <= 32 * MIB, "idle: {idle}");
    assert!(busy.peak <= 64 * MIB, "under {FLOWS} flows: {busy}");
}
