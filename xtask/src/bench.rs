//! `cargo xtask bench`: runs `hoptrace-bench` (release build, as root) from
//! the workspace root; `--write` makes it (re)write BENCHMARKS.md there.
//! The method is described in docs/bench.md.
use std::path::Path;

use anyhow::Result;

/// Runs the benchmark with `rounds` rounds of each kind, `seconds` per run.
pub fn run(bin: &Path, hoptrace: &Path, rounds: u32, seconds: u32, write: bool) -> Result<()> {
    crate::run(
        std::process::Command::new(bin)
            .args([
                "--rounds",
                &rounds.to_string(),
                "--seconds",
                &seconds.to_string(),
            ])
            .arg("--agent-bin")
            .arg(hoptrace)
            .args(if write {
                vec!["--write", "BENCHMARKS.md"]
            } else {
                vec![]
            })
            .current_dir(crate::workspace_root()),
    )
}
