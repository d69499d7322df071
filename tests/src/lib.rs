//! Support for the root integration tests: skipping without root, and
//! network namespaces that are removed on drop, also when a test panics.

pub mod browser;
pub mod modes;

use std::process::Command;

/// Returns false (and prints why) when the test cannot run here.
pub fn can_run_as_root(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP {test}: needs root (loads BPF programs, builds network namespaces)");
        return false;
    }
    true
}

/// Root, and kernel programs in this build (not `AYA_BUILD_SKIP=1`).
pub fn can_run_with_kernel_programs(test: &str) -> bool {
    if !can_run_as_root(test) {
        return false;
    }
    if hoptrace_core::kernel::objects::main_object().is_err() {
        eprintln!("SKIP {test}: built with AYA_BUILD_SKIP=1, no kernel programs");
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

/// Runs `argv` inside the named namespace, panicking with the command and
/// its stderr on failure.
pub fn sh_in(ns: &hoptrace_lab::netns::NetnsGuard, argv: &[&str]) -> String {
    let mut full = vec!["ip", "netns", "exec", ns.name()];
    full.extend_from_slice(argv);
    sh(&full)
}

/// Runs `f` on a thread that first moves into a brand-new, unnamed network
/// namespace: everything created there (devices, addresses, tc attachments)
/// disappears with the thread, whatever happens in `f`. Commands spawned
/// from that thread run in that namespace too.
pub fn in_fresh_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET)");
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

/// The hoptrace binary under test (set by `cargo xtask test`), or the debug build.
pub fn hoptrace_bin() -> std::path::PathBuf {
    built_bin("HOPTRACE_BIN", "debug", "cargo build -p hoptrace")
}

/// The release build of hoptrace, what users run (memory figures depend on
/// the build: a debug binary maps ~30 MiB of its own code): from
/// `HOPTRACE_RELEASE_BIN` (`cargo xtask test` sets it), else
/// `target/release/hoptrace`.
///
/// # Panics
///
/// Neither exists: build it with `cargo xtask build --release`.
pub fn hoptrace_release_bin() -> std::path::PathBuf {
    built_bin(
        "HOPTRACE_RELEASE_BIN",
        "release",
        "cargo xtask build --release",
    )
}

/// The path in `env`, else `target/<profile>/hoptrace`; panics with `how`
/// to build it when neither exists.
fn built_bin(env: &str, profile: &str, how: &str) -> std::path::PathBuf {
    if let Ok(path) = std::env::var(env) {
        return path.into();
    }
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../target/{profile}/hoptrace"))
        .canonicalize()
        .unwrap_or_else(|e| {
            panic!("target/{profile}/hoptrace: {e}; run `{how}` first (or `cargo xtask test`)")
        })
}

/// Starts the lab's HTTP (8080) and UDP (5353) backend inside `netns`,
/// listening when this returns; dropping the tasks stops them.
pub fn start_backend(netns: &str) -> Vec<hoptrace_lab::servers::NetnsTask> {
    hoptrace_lab::servers::start_backend(
        netns,
        Some(std::net::SocketAddr::from(([0, 0, 0, 0], 8080))),
        Some(std::net::SocketAddr::from(([0, 0, 0, 0], 5353))),
    )
    .unwrap_or_else(|e| panic!("backend in {netns}: {e}"))
}

/// Sends `n` HTTP requests from inside `netns`, one new TCP connection each
/// (so every request opens a conntrack entry and walks kube-proxy's rules).
/// Returns how many got a response.
pub fn http_requests_new_connection(netns: &str, target: std::net::SocketAddr, n: usize) -> usize {
    use std::io::{Read as _, Write as _};
    hoptrace_lab::netns::with_netns(netns, || {
        let mut ok = 0;
        for _ in 0..n {
            let Ok(mut stream) =
                std::net::TcpStream::connect_timeout(&target, std::time::Duration::from_secs(2))
            else {
                continue;
            };
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
            if stream
                .write_all(b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
                .is_err()
            {
                continue;
            }
            let mut buf = Vec::new();
            if stream.read_to_end(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200") {
                ok += 1;
            }
        }
        ok
    })
    .expect("enter client netns")
}

/// `GET path` on `addr`; the status code and the body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))
        .expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("response");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A `hoptrace` child started with `--netns PATH --ready-file F`, waited
/// for (bounded) until every hook is attached; SIGKILLed on drop if still
/// alive. Its stdout and stderr go to files in its own temp dir.
pub struct HoptraceRun {
    child: hoptrace_lab::netns::ChildGuard,
    dir: tempfile::TempDir,
}

impl HoptraceRun {
    /// Runs `hoptrace <args> --netns <netns> --ready-file <dir>/ready`; a
    /// `{dir}` in an argument becomes the run's temp dir (for `--json`).
    pub fn start(args: &[&str], netns: &std::path::Path) -> Self {
        Self::start_bin(&hoptrace_bin(), args, netns)
    }

    /// As [`HoptraceRun::start`], with the binary at `bin` (e.g.
    /// [`hoptrace_release_bin`]).
    pub fn start_bin(bin: &std::path::Path, args: &[&str], netns: &std::path::Path) -> Self {
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().expect("temp dir");
        let ready = dir.path().join("ready");
        let dir_text = dir.path().to_str().expect("UTF-8 temp dir").to_owned();
        let child = Command::new(bin)
            .args(args.iter().map(|a| a.replace("{dir}", &dir_text)))
            .arg("--netns")
            .arg(netns)
            .arg("--ready-file")
            .arg(&ready)
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout")).expect("stdout file"))
            .stderr(std::fs::File::create(dir.path().join("stderr")).expect("stderr file"))
            .spawn()
            .expect("spawn hoptrace");
        let mut run = Self {
            child: hoptrace_lab::netns::ChildGuard::new(child),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready.exists() {
            if let Ok(Some(status)) = run.child.child_mut().try_wait() {
                panic!(
                    "hoptrace {args:?} exited before ready ({status}): {}",
                    run.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "hoptrace {args:?}: no ready file after 60 s: {}",
                run.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        run
    }

    /// The run's temp dir (`{dir}` in the arguments).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The process id.
    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits"))
    }

    /// Sends `signal`.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), signal).expect("send signal");
    }

    /// Waits (bounded by `limit`) for the exit and returns its status.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.child_mut().try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "hoptrace still running {limit:?} after the signal: {}",
                self.stderr()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// What it printed on stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    /// What it printed on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// The agent's `/metrics` address, from its ready file.
    pub fn metrics_addr(&self) -> std::net::SocketAddr {
        let ready = std::fs::read_to_string(self.dir.path().join("ready")).expect("ready file");
        ready
            .lines()
            .find_map(|l| l.strip_prefix("metrics http://")?.strip_suffix("/metrics"))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no metrics address in the ready file: {ready:?}"))
    }
}

/// A node namespace with two pods, each behind a veth of its own
/// (`<veth>a`, `<veth>b`), routed by the node; pod `a` is `10.<net>.1.2`,
/// pod `b` `10.<net>.2.2`. IPv6 is off and rp_filter off (0)
/// everywhere, so that the only traffic is what a test sends and spoofed
/// sources are forwarded. Removed on drop, also when a test panics.
pub struct TwoPodNode {
    node: hoptrace_lab::netns::NetnsGuard,
    /// Pod `a`, the client side.
    pub pod_a: hoptrace_lab::netns::NetnsGuard,
    /// Pod `b`, the server side.
    pub pod_b: hoptrace_lab::netns::NetnsGuard,
    net: u8,
}

impl TwoPodNode {
    /// Builds `ht-<tag><pid % 1000>{n,a,b}` with pods in `10.<net>.{1,2}.0/24`
    /// and node-side veths `<veth>a`, `<veth>b`.
    pub fn build(tag: &str, net: u8, veth: &str) -> Self {
        use hoptrace_lab::netns::NetnsGuard;
        let base = format!("ht-{tag}{}", std::process::id() % 1000);
        let node = NetnsGuard::create(&format!("{base}n")).expect("node namespace");
        let pod_a = NetnsGuard::create(&format!("{base}a")).expect("pod namespace");
        let pod_b = NetnsGuard::create(&format!("{base}b")).expect("pod namespace");
        for ns in [&node, &pod_a, &pod_b] {
            for key in [
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ] {
                sh_in(ns, &["sysctl", "-qw", key]);
            }
        }
        sh_in(&node, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        for (side, pod, subnet) in [("a", &pod_a, 1), ("b", &pod_b, 2)] {
            let dev = format!("{veth}{side}");
            let gateway = format!("10.{net}.{subnet}.1");
            let ns = pod.name();
            sh_in(
                &node,
                &[
                    "ip", "link", "add", &dev, "type", "veth", "peer", "name", "eth0", "netns", ns,
                ],
            );
            sh_in(
                &node,
                &["ip", "addr", "add", &format!("{gateway}/24"), "dev", &dev],
            );
            sh_in(&node, &["ip", "link", "set", &dev, "up"]);
            sh_in(
                pod,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("10.{net}.{subnet}.2/24"),
                    "dev",
                    "eth0",
                ],
            );
            sh_in(pod, &["ip", "link", "set", "eth0", "up"]);
            sh_in(pod, &["ip", "link", "set", "lo", "up"]);
            sh_in(pod, &["ip", "route", "add", "default", "via", &gateway]);
        }
        Self {
            node,
            pod_a,
            pod_b,
            net,
        }
    }

    /// The node's namespace.
    pub fn node(&self) -> &hoptrace_lab::netns::NetnsGuard {
        &self.node
    }

    /// The node's namespace path (for `--netns`).
    pub fn path(&self) -> &std::path::Path {
        self.node.path()
    }

    /// The node's namespace name.
    pub fn name(&self) -> &str {
        self.node.name()
    }

    /// Pod `b`'s address.
    pub fn pod_b_addr(&self) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(10, self.net, 2, 2)
    }
}

/// Removes every namespace of a lab prefix when dropped (`hoptrace lab`
/// runs started by a test), whatever happens in the test.
pub struct PrefixGuard(pub String);

impl Drop for PrefixGuard {
    fn drop(&mut self) {
        let _ = hoptrace_lab::topology::cleanup(&self.0);
    }
}
