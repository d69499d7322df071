//! Developer tasks: `cargo xtask setup | build | test | demo | bench | accuracy | fuzz`.
//!
//! Every task that needs tools runs `setup` first, which installs only what
//! is missing (idempotent: a few seconds when everything is present).

mod bench;
mod setup;

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "hoptrace developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks: Debian packages, rust-src for the
    /// nightly toolchain, bpf-linker (LLVM 22), tracefs and bpffs mounts.
    Setup {
        /// Only report what is missing; change nothing.
        #[arg(long)]
        check: bool,
    },
    /// Build hoptrace with its kernel programs.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Run every test: host unit tests, then the root integration tests.
    Test {
        /// Extra arguments for the integration test binaries (e.g. a filter).
        #[arg(last = true)]
        filter: Vec<String>,
    },
    /// Run the main job: the built-in lab, with its attribution table.
    Demo,
    /// Measure hoptrace's cost against an untraced baseline in the same run.
    Bench {
        /// Alternating traced/untraced rounds (median reported).
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Write the results into BENCHMARKS.md.
        #[arg(long)]
        write: bool,
    },
    /// Measure how right the attribution is: inject known causes into the
    /// lab, each against a run without it, and write ACCURACY.md. Not part
    /// of `test` (it takes minutes and compares latencies).
    Accuracy {
        /// Arguments for `hoptrace-accuracy` (e.g. `--case qdisc --duration 5s`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Fuzz the packet parser with libFuzzer (cargo-fuzz, nightly) for a
    /// while; installs cargo-fuzz when missing. Not part of `test`.
    Fuzz {
        /// How long to fuzz, in seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup { check } => setup::run(setup::Profile::All, check),
        Task::Build { release } => build(release).map(|_| ()),
        Task::Test { filter } => test(&filter),
        Task::Demo => demo(),
        Task::Bench {
            rounds,
            seconds,
            write,
        } => {
            setup::run(setup::Profile::Lab, false)?;
            let bin = build_bin("hoptrace-bench", true)?;
            // The agent whose memory the bench measures: the release build.
            let hoptrace = build(true)?;
            bench::run(&bin, &hoptrace, rounds, seconds, write)
        }
        Task::Accuracy { args } => {
            setup::run(setup::Profile::Lab, false)?;
            let bin = build_bin_of("hoptrace-bench", "hoptrace-accuracy", true)?;
            run(Command::new(bin)
                .args(["--write", "ACCURACY.md"])
                .args(args)
                .current_dir(workspace_root()))
        }
        Task::Fuzz { seconds } => fuzz(seconds),
    }
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawn {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    // `cargo run` set these for xtask itself; passed on, they change the
    // fingerprints of build scripts (ring, rustls) and every switch between
    // `cargo xtask ...` and a plain `cargo build` would rebuild them.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name == "CARGO_MANIFEST_DIR"
            || name == "CARGO_MANIFEST_PATH"
            || name == "CARGO_PRIMARY_PACKAGE"
            || name == "CARGO_CRATE_NAME"
            || name == "CARGO_BIN_NAME"
            || name.starts_with("CARGO_PKG_")
        {
            cmd.env_remove(name.as_ref());
        }
    }
    cmd
}

/// Where cargo puts build output: `CARGO_TARGET_DIR` when set, else
/// `target/` in the workspace.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        })
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Builds hoptrace (kernel programs included); returns the binary's path.
fn build(release: bool) -> Result<PathBuf> {
    build_bin("hoptrace", release)
}

/// Builds the binary `name` (of the package of the same name); returns its path.
fn build_bin(name: &str, release: bool) -> Result<PathBuf> {
    build_bin_of(name, name, release)
}

/// Builds the binary `name` of package `package`; returns its path.
fn build_bin_of(package: &str, name: &str, release: bool) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", package, "--bin", name]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    Ok(target_dir()
        .join(if release { "release" } else { "debug" })
        .join(name))
}

fn test(filter: &[String]) -> Result<()> {
    setup::run(setup::Profile::All, false)?;
    let bin = build(false)?;
    // The memory test measures the binary users run.
    let release_bin = build(true)?;
    // Lints: every userspace crate and its tests, warnings are errors.
    run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "hoptrace-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Host tests: no root, no kernel.
    run(cargo().args([
        "test",
        "-p",
        "hoptrace-common",
        "-p",
        "hoptrace-core",
        "-p",
        "hoptrace-lab",
        "-p",
        "hoptrace",
        "-p",
        "hoptrace-bench",
        "-p",
        "xtask",
    ]))?;
    // Root integration tests: one at a time, they build namespaces and
    // some compare latencies.
    let mut cmd = cargo();
    cmd.args(["test", "-p", "tests", "--", "--test-threads=1"])
        .args(filter)
        .env("HOPTRACE_BIN", &bin)
        .env("HOPTRACE_RELEASE_BIN", &release_bin);
    run(&mut cmd)
}

fn demo() -> Result<()> {
    setup::run(setup::Profile::Lab, false)?;
    let bin = build(true)?;
    run(Command::new(&bin).arg("check"))?;
    run(Command::new(&bin).args(["lab", "--duration", "10s"]))
}

/// The cargo-fuzz target of the packet parser (its own workspace).
const FUZZ_DIR: &str = "hoptrace-common/fuzz";
const FUZZ_TARGET: &str = "parse_packet";

/// `cargo <args>` through rustup's proxy on PATH, not the `CARGO` of this
/// process: `+nightly` and cargo-fuzz's own cargo calls must pick their
/// toolchain themselves.
fn proxied_cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root())
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC");
    cmd
}

/// Runs the parser's fuzz target for `seconds` on nightly; findings land in
/// `hoptrace-common/fuzz/artifacts/`, the corpus in `.../corpus/`.
fn fuzz(seconds: u64) -> Result<()> {
    let quiet = |cmd: &mut Command| {
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !quiet(proxied_cargo().args(["fuzz", "--version"])) {
        println!("fuzz: installing cargo-fuzz");
        run(proxied_cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    if !quiet(proxied_cargo().args(["+nightly", "--version"])) {
        bail!(
            "fuzzing needs the nightly toolchain (libFuzzer and the sanitizers); install it with `rustup toolchain install nightly`"
        );
    }
    run(proxied_cargo()
        .args([
            "+nightly",
            "fuzz",
            "run",
            "--fuzz-dir",
            FUZZ_DIR,
            FUZZ_TARGET,
            "--",
        ])
        .arg(format!("-max_total_time={seconds}")))
}
