//! Who owns what hoptrace attached.
//!
//! - Every running session writes a run record, `/run/hoptrace/run-PID-NETNS.json`
//!   (its pid, the process start time, the traced namespace and its clsact
//!   filters with their priority and handle), and removes it when it stops.
//!   A second hoptrace on the same node reads them to say plainly that
//!   another one is running; records of dead processes are stale and
//!   removed by whoever finds them.
//! - A clsact qdisc that a hoptrace added is marked by
//!   `/run/hoptrace/clsact-NETNS-IFINDEX`, so that whichever hoptrace run
//!   leaves it empty removes it (overlapping runs: the first adds it, the
//!   last one leaves), and nobody removes a qdisc hoptrace did not add.
//! - Whether a filter's owner is alive is the kernel's own record: a
//!   running hoptrace holds its programs open, and `/proc/PID/fdinfo` of
//!   that descriptor names the program id. `hoptrace cleanup` removes only
//!   filters whose program no live process holds.
//!
//! Everything here is best effort: a node whose `/run` is read-only still
//! traces, it only loses the second-run message and the shared qdisc mark.

use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
};

/// Directory of the run records and clsact marks.
pub const RUN_DIR: &str = "/run/hoptrace";

/// The run directory: [`RUN_DIR`], or `$HOPTRACE_RUN_DIR` when set.
pub fn run_dir() -> PathBuf {
    std::env::var_os("HOPTRACE_RUN_DIR").map_or_else(|| PathBuf::from(RUN_DIR), PathBuf::from)
}

/// One clsact filter of a run, for the record.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FilterRecord {
    /// The device.
    pub iface: String,
    /// Its index in the traced namespace.
    pub ifindex: u32,
    /// `ingress` or `egress`.
    pub direction: String,
    /// tc priority (`pref`).
    pub priority: u16,
    /// Filter handle.
    pub handle: u32,
}

/// What a running session records about itself.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunRecord {
    /// The process.
    pub pid: u32,
    /// Its start time in clock ticks since boot (`/proc/PID/stat` field 22):
    /// a reused pid has another.
    pub start_ticks: u64,
    /// Inode of the traced network namespace.
    pub netns_ino: u32,
    /// Program ids the session loaded.
    pub programs: Vec<u32>,
    /// Its clsact filters (empty with tcx).
    pub filters: Vec<FilterRecord>,
}

/// Removes the run record when dropped.
#[derive(Debug)]
pub struct RunGuard {
    path: PathBuf,
}

impl RunGuard {
    /// Writes the record of this process's session on `netns_ino`.
    ///
    /// # Errors
    ///
    /// The run directory cannot be created or the record written.
    pub fn register(
        netns_ino: u32,
        programs: Vec<u32>,
        filters: Vec<FilterRecord>,
    ) -> io::Result<Self> {
        let pid = std::process::id();
        let record = RunRecord {
            pid,
            start_ticks: start_ticks(pid).unwrap_or(0),
            netns_ino,
            programs,
            filters,
        };
        let dir = run_dir();
        std::fs::create_dir_all(&dir)?;
        let guard = Self {
            path: dir.join(format!("run-{pid}-{netns_ino}.json")),
        };
        guard.write(&record)?;
        Ok(guard)
    }

    /// Rewrites the record with what the session attached.
    ///
    /// # Errors
    ///
    /// The record cannot be written.
    pub fn update(&self, programs: Vec<u32>, filters: Vec<FilterRecord>) -> io::Result<()> {
        let mut record: RunRecord =
            serde_json::from_slice(&std::fs::read(&self.path)?).map_err(io::Error::other)?;
        record.programs = programs;
        record.filters = filters;
        self.write(&record)
    }

    fn write(&self, record: &RunRecord) -> io::Result<()> {
        let text = serde_json::to_vec(record).map_err(io::Error::other)?;
        // Write and rename: a reader never sees half a record.
        // A failed write (a full disk) leaves no half-written file behind.
        let tmp = self.path.with_extension("tmp");
        let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Start time of a process in clock ticks since boot, `None` when it does
/// not exist.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3; the start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn alive(record: &RunRecord) -> bool {
    start_ticks(record.pid).is_some_and(|t| record.start_ticks == 0 || t == record.start_ticks)
}

/// Runs of other live processes on namespace `netns_ino`. Records of dead
/// processes are removed on the way.
pub fn other_live_runs(netns_ino: u32) -> Vec<RunRecord> {
    live_runs_in(&run_dir(), netns_ino)
}

fn live_runs_in(dir: &Path, netns_ino: u32) -> Vec<RunRecord> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let own = std::process::id();
    let mut runs = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with("run-") && name.ends_with(".json")) {
            continue;
        }
        let Some(record) = std::fs::read(entry.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<RunRecord>(&b).ok())
        else {
            continue;
        };
        if !alive(&record) {
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        if record.pid != own && record.netns_ino == netns_ino {
            runs.push(record);
        }
    }
    runs.sort_by_key(|r| r.pid);
    runs
}

/// Program ids that live processes hold open, with one holder's pid each
/// (from `/proc/*/fdinfo`).
pub fn programs_held_open() -> HashMap<u32, u32> {
    let mut held = HashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return held;
    };
    for proc_entry in procs.flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(text) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            if let Some(id) = text
                .lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse::<u32>().ok())
            {
                held.entry(id).or_insert(pid);
            }
        }
    }
    held
}

fn clsact_mark(netns_ino: u32, ifindex: u32) -> PathBuf {
    run_dir().join(format!("clsact-{netns_ino}-{ifindex}"))
}

/// Marks the clsact qdisc of (`netns_ino`, `ifindex`) as added by hoptrace.
pub fn mark_clsact_added(netns_ino: u32, ifindex: u32, iface: &str) {
    let _ = std::fs::create_dir_all(run_dir());
    let _ = std::fs::write(clsact_mark(netns_ino, ifindex), iface);
}

/// Whether a hoptrace run added the clsact qdisc of (`netns_ino`, `ifindex`).
pub fn clsact_added(netns_ino: u32, ifindex: u32) -> bool {
    clsact_mark(netns_ino, ifindex).exists()
}

/// Forgets the mark of a clsact qdisc that was removed.
pub fn unmark_clsact(netns_ino: u32, ifindex: u32) {
    let _ = std::fs::remove_file(clsact_mark(netns_ino, ifindex));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_a_start_time() {
        assert!(start_ticks(std::process::id()).is_some());
        assert_eq!(start_ticks(u32::MAX), None);
    }

    #[test]
    fn stale_records_are_removed_and_live_ones_listed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, record: &RunRecord| {
            std::fs::write(dir.path().join(name), serde_json::to_vec(record).unwrap()).unwrap();
        };
        // The parent of this test process is alive: a "live other run".
        let parent = std::os::unix::process::parent_id();
        let live = RunRecord {
            pid: parent,
            start_ticks: start_ticks(parent).unwrap(),
            netns_ino: 7,
            programs: vec![1],
            filters: Vec::new(),
        };
        write("run-a.json", &live);
        let reused_pid = RunRecord {
            start_ticks: live.start_ticks + 1,
            ..live.clone()
        };
        write("run-b.json", &reused_pid);
        let dead = RunRecord {
            pid: u32::MAX - 1,
            ..live.clone()
        };
        write("run-c.json", &dead);
        let other_netns = RunRecord {
            netns_ino: 8,
            ..live.clone()
        };
        write("run-d.json", &other_netns);
        assert_eq!(live_runs_in(dir.path(), 7), vec![live]);
        assert!(dir.path().join("run-a.json").exists());
        assert!(!dir.path().join("run-b.json").exists(), "reused pid: stale");
        assert!(!dir.path().join("run-c.json").exists(), "dead: stale");
        assert!(dir.path().join("run-d.json").exists());
    }
}
