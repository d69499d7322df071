//! Builds the kernel programs (hoptrace-ebpf) for the BPF target with aya-build
//! and places the objects in OUT_DIR, where src/ebpf_objects.rs embeds them.
//! `AYA_BUILD_SKIP=1` skips this (no bpf-linker needed); the binary then
//! reports that it carries no kernel programs.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let skip =
        std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    println!("cargo:rustc-check-cfg=cfg(hoptrace_no_ebpf)");
    if skip {
        println!("cargo:rustc-cfg=hoptrace_no_ebpf");
    }
    let metadata =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["locate-project", "--workspace", "--message-format=plain"])
            .output()
            .context("cargo locate-project")?;
    let workspace_manifest = String::from_utf8(metadata.stdout)?;
    let root = std::path::Path::new(workspace_manifest.trim())
        .parent()
        .ok_or_else(|| anyhow!("workspace root"))?
        .join("hoptrace-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path"))?
        .to_owned();
    // aya-build turns every line the inner cargo prints on stderr
    // ("Compiling ...", "Downloading ...") into a `cargo:warning`, which
    // cargo then replays on every later build, even a no-op one. Quiet
    // keeps only what matters: errors and the compiler's own warnings.
    // SAFETY: a build script is single-threaded here: no other thread
    // reads the environment while it changes.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "hoptrace-ebpf",
            root_dir: &root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
