//! `cargo xtask bench`: filled in with the lab (see BENCHMARKS.md).
use std::path::Path;

use anyhow::Result;

pub fn run(bin: &Path, rounds: u32, seconds: u32, write: bool) -> Result<()> {
    crate::run(
        std::process::Command::new(bin)
            .args(["bench", "--rounds", &rounds.to_string(), "--seconds", &seconds.to_string()])
            .args(if write { vec!["--write", "BENCHMARKS.md"] } else { vec![] })
            .current_dir(crate::workspace_root()),
    )
}
