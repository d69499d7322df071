//! The agent's memory under a bounded flood of distinct flows (issue 12:
//! "RSS <= 64 MiB and flat from 1k to 500k distinct flows"): the real
//! `hoptrace agent` binary, with its default settings, on node 0 of the
//! bench's lab; a pod of node 0 sends 1,000 then 500,000 distinct UDP
//! flows ([`hoptrace_lab::flood`]) to another pod of the node, and the
//! agent's resident set is read from `/proc/PID/status` after each.

use std::{
    net::Ipv4Addr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use hoptrace_lab::{flood, netns::ChildGuard};
use nix::{sys::signal::Signal, unistd::Pid};
use serde::Serialize;

use crate::bench::BenchError;

/// Flows of the small flood.
pub const FEW_FLOWS: u32 = 1_000;
/// Flows of the large flood.
pub const MANY_FLOWS: u32 = 500_000;
/// Length of the large flood (the small one takes 1 s).
pub const MANY_OVER: Duration = Duration::from_secs(20);
/// The agent's resident set must stay at or under this (issue 12).
pub const TARGET_PEAK_BYTES: u64 = 64 * MIB;
/// "Flat": the resident set after the large flood may exceed the one after
/// the small flood by at most this much.
pub const TARGET_GROWTH_BYTES: u64 = 4 * MIB;

const MIB: u64 = 1024 * 1024;

/// The agent's memory at three moments, bytes.
#[derive(Clone, Debug, Serialize)]
pub struct AgentMemory {
    /// `VmRSS` once every hook is attached, before any flood.
    pub idle_rss: u64,
    /// `VmRSS` after [`FEW_FLOWS`] flows.
    pub few_rss: u64,
    /// `VmRSS` after [`MANY_FLOWS`] flows.
    pub many_rss: u64,
    /// `VmHWM` at the end: the peak over the whole run.
    pub peak: u64,
    /// Packets of the large flood the raw socket accepted.
    pub many_sent: u32,
}

impl AgentMemory {
    /// Peak at most [`TARGET_PEAK_BYTES`].
    pub fn peak_pass(&self) -> bool {
        self.peak <= TARGET_PEAK_BYTES
    }

    /// Growth from the small to the large flood at most
    /// [`TARGET_GROWTH_BYTES`].
    pub fn flat_pass(&self) -> bool {
        self.many_rss.saturating_sub(self.few_rss) <= TARGET_GROWTH_BYTES
    }
}

/// `field` (`VmRSS`, `VmHWM`) of `/proc/PID/status`, bytes.
fn status_bytes(pid: u32, field: &str) -> Result<u64, BenchError> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|source| BenchError::Io {
        what: format!("read {path}"),
        source,
    })?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| BenchError::Agent(format!("no {field} in {path}")))
}

/// Runs the measurement: `agent` is the hoptrace binary, `node_netns` the
/// name of node 0's namespace, `pod_netns` a pod of that node and `dst` the
/// address of another pod of the same node. The agent is stopped with
/// SIGTERM (killed on any error) before this returns.
///
/// # Errors
/// [`BenchError::Agent`] when the agent does not start or exits early,
/// [`BenchError::Flood`] when the flood cannot be sent.
pub fn measure(
    agent: &Path,
    node_netns: &str,
    pod_netns: &str,
    dst: Ipv4Addr,
) -> Result<AgentMemory, BenchError> {
    let dir = tempfile::tempdir().map_err(|source| BenchError::Io {
        what: "temporary directory".into(),
        source,
    })?;
    let ready = dir.path().join("ready");
    let child = Command::new(agent)
        .args(["agent", "--no-kubernetes", "--metrics-addr", "127.0.0.1:0"])
        .arg("--netns")
        .arg(hoptrace_lab::netns::netns_path(node_netns))
        .arg("--ready-file")
        .arg(&ready)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BenchError::Agent(format!("start {}: {e}", agent.display())))?;
    let mut guard = ChildGuard::new(child);
    let pid = guard.id();
    let started = Instant::now();
    while !ready.exists() {
        if let Ok(Some(status)) = guard.child_mut().try_wait() {
            let mut stderr = String::new();
            if let Some(mut err) = guard.child_mut().stderr.take() {
                let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
            }
            return Err(BenchError::Agent(format!(
                "exited before it was ready ({status}): {}",
                stderr.trim()
            )));
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(BenchError::Agent("not ready within 60 s".into()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The agent reads its histograms once a second: let it settle.
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss = status_bytes(pid, "VmRSS")?;
    flood::udp_flows(pod_netns, dst, FEW_FLOWS, Duration::from_secs(1))?;
    std::thread::sleep(Duration::from_secs(2));
    let few_rss = status_bytes(pid, "VmRSS")?;
    let many_sent = flood::udp_flows(pod_netns, dst, MANY_FLOWS, MANY_OVER)?;
    std::thread::sleep(Duration::from_secs(2));
    let many_rss = status_bytes(pid, "VmRSS")?;
    let peak = status_bytes(pid, "VmHWM")?;
    // A clean stop (links detached by the agent itself); the guard kills
    // it if it does not exit in time.
    let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = guard.child_mut().try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(AgentMemory {
        idle_rss,
        few_rss,
        many_rss,
        peak,
        many_sent,
    })
}
