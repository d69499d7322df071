//! `--proxy-cpu-limit`: a CPU limit on the lab's ingress proxy, the way
//! Kubernetes limits a pod with `resources.limits.cpu`: a CFS bandwidth
//! quota of `millicores` × 100 µs per 100 ms period (the kubelet's default
//! period; the mechanism is the kernel's CFS bandwidth control,
//! Documentation/scheduler/sched-bwc.rst). A proxy that needs more CPU
//! than its quota is throttled for the rest of each period, and its
//! requests wait in its sockets: the saturated ingress of the Istio report
//! this project started from.
//!
//! cgroup v1 (a `cpu` hierarchy at `/sys/fs/cgroup/cpu`) takes processes
//! and single threads; cgroup v2 takes whole processes only, so there the
//! builtin proxy (a thread of the lab) cannot be limited apart from the
//! lab, and nginx or HAProxy must be used.

use std::{
    io,
    path::{Path, PathBuf},
};

/// The CFS period Kubernetes uses (`cpu.cfs_period_us`), µs.
pub const PERIOD_US: u64 = 100_000;

/// The smallest quota the kernel accepts (1 ms; kernel/sched/core.c,
/// `min_cfs_quota_period`), so the smallest limit is 10m.
pub const MIN_MILLICORES: u32 = 10;

const V1_ROOT: &str = "/sys/fs/cgroup/cpu";
const V2_ROOT: &str = "/sys/fs/cgroup";

/// Errors of a CPU limit.
#[derive(Debug, thiserror::Error)]
pub enum CpuLimitError {
    /// The limit is below [`MIN_MILLICORES`] or above the machine's CPUs.
    #[error("a CPU limit of {0}m is out of range ({MIN_MILLICORES}m to {max}m on this machine)", max = max_millicores())]
    Range(u32),
    /// Neither a cgroup v1 `cpu` hierarchy nor cgroup v2 with the `cpu`
    /// controller is mounted.
    #[error("no cgroup cpu controller is mounted (cgroup v1 {V1_ROOT} or cgroup v2 {V2_ROOT})")]
    NoController,
    /// cgroup v2 cannot hold a thread apart from its process.
    #[error(
        "cgroup v2 limits whole processes: the builtin proxy is a thread of the lab; use --ingress nginx or haproxy"
    )]
    ThreadsNeedV1,
    /// A cgroup file could not be written.
    #[error("{path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Which cgroup hierarchy holds the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v1, `cpu` controller: `cpu.cfs_quota_us`, `tasks`.
    V1,
    /// cgroup v2: `cpu.max`, `cgroup.procs`.
    V2,
}

/// The machine's CPUs in millicores.
fn max_millicores() -> u32 {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as u32 * 1000
}

/// Parses a Kubernetes CPU quantity: `50m` (millicores), `0.5` or `2`
/// (CPUs). Returns millicores.
///
/// # Errors
/// A one-line reason for anything else (e.g. `-1`, `abc`, `0.0001`).
pub fn parse_millicores(text: &str) -> Result<u32, String> {
    let bad = || format!("{text:?} is not a CPU quantity like 50m, 0.5 or 2");
    let millicores = if let Some(m) = text.strip_suffix('m') {
        m.parse::<u32>().map_err(|_| bad())?
    } else {
        let cpus: f64 = text.parse().map_err(|_| bad())?;
        if !cpus.is_finite() || cpus < 0.0 {
            return Err(bad());
        }
        (cpus * 1000.0).round().min(f64::from(u32::MAX)) as u32
    };
    if millicores < MIN_MILLICORES || millicores > max_millicores() {
        return Err(CpuLimitError::Range(millicores).to_string());
    }
    Ok(millicores)
}

/// A cgroup with a CFS quota; removed on drop (anything still in it is
/// moved back to the root first).
#[derive(Debug)]
pub struct CpuLimit {
    dir: PathBuf,
    hierarchy: Hierarchy,
    millicores: u32,
}

fn write(path: &Path, text: &str) -> Result<(), CpuLimitError> {
    std::fs::write(path, text).map_err(|source| CpuLimitError::Write {
        path: path.to_owned(),
        source,
    })
}

impl CpuLimit {
    /// Makes the cgroup `hoptrace-lab-<pid>` with a quota of `millicores`.
    ///
    /// # Errors
    /// [`CpuLimitError`]: out of range, no controller, or a write failed
    /// (the cgroup is removed again then).
    pub fn new(millicores: u32) -> Result<Self, CpuLimitError> {
        if millicores < MIN_MILLICORES || millicores > max_millicores() {
            return Err(CpuLimitError::Range(millicores));
        }
        let name = format!("hoptrace-lab-{}", std::process::id());
        let v2_has_cpu = std::fs::read_to_string(Path::new(V2_ROOT).join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"));
        let (hierarchy, root) = if Path::new(V1_ROOT).join("cpu.cfs_quota_us").exists() {
            (Hierarchy::V1, V1_ROOT)
        } else if v2_has_cpu {
            (Hierarchy::V2, V2_ROOT)
        } else {
            return Err(CpuLimitError::NoController);
        };
        if hierarchy == Hierarchy::V2 {
            write(&Path::new(root).join("cgroup.subtree_control"), "+cpu")?;
        }
        let dir = Path::new(root).join(name);
        std::fs::create_dir(&dir).map_err(|source| CpuLimitError::Write {
            path: dir.clone(),
            source,
        })?;
        let limit = Self {
            dir,
            hierarchy,
            millicores,
        };
        let quota = u64::from(millicores) * PERIOD_US / 1000;
        match hierarchy {
            Hierarchy::V1 => {
                write(&limit.dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                write(&limit.dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
            Hierarchy::V2 => write(&limit.dir.join("cpu.max"), &format!("{quota} {PERIOD_US}"))?,
        }
        Ok(limit)
    }

    /// The file a process writes `0` to, to move itself (and what it
    /// forks later) into the limit.
    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// The file a thread writes `0` to, to move only itself (cgroup v1).
    ///
    /// # Errors
    /// [`CpuLimitError::ThreadsNeedV1`] on cgroup v2.
    pub fn thread_file(&self) -> Result<PathBuf, CpuLimitError> {
        match self.hierarchy {
            Hierarchy::V1 => Ok(self.dir.join("tasks")),
            Hierarchy::V2 => Err(CpuLimitError::ThreadsNeedV1),
        }
    }

    /// Periods so far, and those in which the group was throttled
    /// (`cpu.stat`: `nr_periods`, `nr_throttled`).
    pub fn throttled(&self) -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string(self.dir.join("cpu.stat")).ok()?;
        let field = |name: &str| {
            stat.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
        };
        Some((field("nr_periods ")?, field("nr_throttled ")?))
    }

    /// One line for the run's notes, e.g. `50m: a CFS quota of 5 ms per
    /// 100 ms (cgroup v1)`.
    pub fn describe(&self) -> String {
        format!(
            "{}m: a CFS quota of {} ms per {} ms (cgroup {})",
            self.millicores,
            f64::from(self.millicores) * (PERIOD_US as f64 / 1e6),
            PERIOD_US / 1000,
            match self.hierarchy {
                Hierarchy::V1 => "v1",
                Hierarchy::V2 => "v2",
            }
        )
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        let root = self.dir.parent().map(Path::to_owned).unwrap_or_default();
        let (members, target) = match self.hierarchy {
            Hierarchy::V1 => ("tasks", root.join("tasks")),
            Hierarchy::V2 => ("cgroup.procs", root.join("cgroup.procs")),
        };
        if let Ok(ids) = std::fs::read_to_string(self.dir.join(members)) {
            for id in ids.lines() {
                let _ = std::fs::write(&target, id);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Removes the CPU limits of labs that are gone (`hoptrace-lab-<pid>`
/// whose process no longer runs, e.g. after a SIGKILL), in either
/// hierarchy; returns their paths. A group that still holds a task is
/// left alone (the kernel refuses to remove it anyway).
pub fn remove_stale() -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for root in [V1_ROOT, V2_ROOT] {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("hoptrace-lab-"))
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if Path::new("/proc").join(pid.to_string()).exists() {
                continue;
            }
            if std::fs::remove_dir(entry.path()).is_ok() {
                removed.push(entry.path());
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_cpu_quantities() {
        assert_eq!(parse_millicores("50m"), Ok(50));
        assert_eq!(parse_millicores("0.5"), Ok(500));
        assert_eq!(parse_millicores("1"), Ok(1000));
        let err = parse_millicores("5m").unwrap_err();
        assert!(err.contains("out of range"), "{err}");
        assert!(
            parse_millicores("abc")
                .unwrap_err()
                .contains("not a CPU quantity")
        );
        assert!(parse_millicores("-1").is_err());
        assert!(parse_millicores("0").unwrap_err().contains("out of range"));
        assert!(
            parse_millicores("100000")
                .unwrap_err()
                .contains("out of range")
        );
    }
}
