//! Support for the root integration tests: skipping without root, and
//! network namespaces that are removed on drop, also when a test panics.

use std::process::Command;

/// Returns false (and prints why) when the test cannot run here.
pub fn can_run_as_root(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP {test}: needs root (loads BPF programs, builds network namespaces)");
        return false;
    }
    true
}

/// Runs `argv`, panicking with the command and its stderr on failure.
pub fn sh(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawn {argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct NamedNetns {
    pub name: String,
}

impl NamedNetns {
    pub fn create(name: &str) -> Self {
        sh(&["ip", "netns", "add", name]);
        Self { name: name.to_owned() }
    }

    pub fn exec(&self, argv: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(argv);
        sh(&full)
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Runs `f` on a thread that first moves into a brand-new, unnamed network
/// namespace: everything created there (devices, addresses, tc attachments)
/// disappears with the thread, whatever happens in `f`. Commands spawned
/// from that thread run in that namespace too.
pub fn in_fresh_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
            sh(&["ip", "link", "set", "lo", "up"]);
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Is a namespace of this name still present?
pub fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}
