//! Issue "Memory": the peak resident set (VmHWM) of `hoptrace trace` stays
//! under 32 MiB on an idle node and under 64 MiB while 500,000 distinct
//! flows (random source addresses and ports) cross a node for 20 s.
//!
//! The flood is UDP from a raw socket in a pod namespace, through the node
//! (routed), to a second pod; nothing leaves the namespaces this test makes.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use hoptrace_lab::netns::{ChildGuard, NetnsGuard, run_in, with_netns};
use nix::{sys::signal::Signal, unistd::Pid};
use tests::hoptrace_bin;

const MIB: u64 = 1024 * 1024;
const FLOWS: u32 = 500_000;
const FLOOD: Duration = Duration::from_secs(20);

fn run_ok(ns: &str, argv: &[&str]) {
    let out = run_in(ns, argv).unwrap_or_else(|e| panic!("{argv:?} in {ns}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// node + pods `a` (10.96.1.2) and `b` (10.96.2.2), routed by the node.
fn build(tag: &str) -> (NetnsGuard, NetnsGuard, NetnsGuard) {
    let base = format!("ht-mem{}{tag}", std::process::id() % 1000);
    let node = NetnsGuard::create(&format!("{base}n")).expect("node");
    let a = NetnsGuard::create(&format!("{base}a")).expect("pod a");
    let b = NetnsGuard::create(&format!("{base}b")).expect("pod b");
    for ns in [&node, &a, &b] {
        run_ok(
            ns.name(),
            &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"],
        );
    }
    run_ok(node.name(), &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    run_ok(
        node.name(),
        &["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"],
    );
    for (veth, pod, net) in [("hma", &a, 1), ("hmb", &b, 2)] {
        run_ok(
            node.name(),
            &[
                "ip",
                "link",
                "add",
                veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                pod.name(),
            ],
        );
        run_ok(
            node.name(),
            &[
                "sysctl",
                "-qw",
                &format!("net.ipv4.conf.{veth}.rp_filter=0"),
            ],
        );
        run_ok(
            node.name(),
            &[
                "ip",
                "addr",
                "add",
                &format!("10.96.{net}.1/24"),
                "dev",
                veth,
            ],
        );
        run_ok(node.name(), &["ip", "link", "set", veth, "up"]);
        run_ok(
            pod.name(),
            &[
                "ip",
                "addr",
                "add",
                &format!("10.96.{net}.2/24"),
                "dev",
                "eth0",
            ],
        );
        run_ok(pod.name(), &["ip", "link", "set", "eth0", "up"]);
        run_ok(
            pod.name(),
            &[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &format!("10.96.{net}.1"),
            ],
        );
    }
    // Pod b answers nothing (no ICMP port unreachable storm back).
    run_ok(
        b.name(),
        &["iptables", "-A", "INPUT", "-p", "udp", "-j", "DROP"],
    );
    (node, a, b)
}

/// `hoptrace trace` on `node`, ready; returns the child and its temp dir.
fn start_trace(node: &Path) -> (ChildGuard, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ready = dir.path().join("ready");
    let child = Command::new(hoptrace_bin())
        .args(["trace", "--duration", "120s", "--netns"])
        .arg(node)
        .arg("--ready-file")
        .arg(&ready)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr")).expect("stderr"))
        .spawn()
        .expect("spawn hoptrace");
    let mut child = ChildGuard::new(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready.exists() {
        if let Ok(Some(status)) = child.child_mut().try_wait() {
            panic!(
                "hoptrace exited ({status}): {}",
                std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "not ready after 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, dir)
}

/// VmHWM (peak resident set) of a process, bytes.
fn vm_hwm(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

fn stop(mut child: ChildGuard) {
    nix::sys::signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).expect("SIGINT");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.child_mut().try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "still running 30 s after SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends `flows` UDP packets, each of a distinct (source address, source
/// port), spread evenly over `over`, from a raw socket in namespace `pod`.
fn flood(pod: &str, flows: u32, over: Duration) -> u32 {
    with_netns(pod, || {
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(raw >= 0, "raw socket: {}", std::io::Error::last_os_error());
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(raw) };
        let dst = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes([10, 96, 2, 2]),
            },
            sin_zero: [0; 8],
        };
        let started = Instant::now();
        let mut sent = 0u32;
        let mut packet = [0u8; 28 + 16];
        for i in 0..flows {
            // Pace: packet i goes out at i/flows of the flood.
            let due = over.mul_f64(f64::from(i) / f64::from(flows));
            if let Some(wait) = due.checked_sub(started.elapsed())
                && wait > Duration::from_millis(1)
            {
                std::thread::sleep(wait);
            }
            // Source 10.200.x.y and port from the flow number: all distinct.
            let src = [10, 200, (i >> 8) as u8 & 0x3f, i as u8];
            let sport = 1024 + (i >> 14) as u16;
            let len = packet.len() as u16;
            packet[..20].copy_from_slice(&[
                0x45,
                0,
                (len >> 8) as u8,
                len as u8,
                (i >> 8) as u8,
                i as u8,
                0x40,
                0,
                64,
                17,
                0,
                0,
                src[0],
                src[1],
                src[2],
                src[3],
                10,
                96,
                2,
                2,
            ]);
            let csum = checksum(&packet[..20]);
            packet[10..12].copy_from_slice(&csum.to_be_bytes());
            packet[20..28].copy_from_slice(&[
                (sport >> 8) as u8,
                sport as u8,
                0x1f,
                0x90,
                0,
                24,
                0,
                0,
            ]);
            // SAFETY: `packet` and `dst` are valid for the given lengths.
            let n = unsafe {
                libc::sendto(
                    socket.as_raw_fd(),
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&raw const dst).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                )
            };
            if n > 0 {
                sent += 1;
            }
        }
        sent
    })
    .expect("enter the pod")
}

#[test]
#[ignore = "not met yet: peak RSS is ~92 MiB idle and under the flood (was ~148 MiB with the 32 MiB ring); run with --ignored"]
fn peak_memory_idle_and_under_a_flood_of_distinct_flows() {
    if !tests::can_run_with_kernel_programs("peak_memory_idle_and_under_a_flood_of_distinct_flows")
    {
        return;
    }
    let (node, pod_a, _pod_b) = build("f");
    // Idle: 5 s of tracing with no traffic.
    let (idle, _idle_dir) = start_trace(node.path());
    std::thread::sleep(Duration::from_secs(5));
    let idle_peak = vm_hwm(idle.id());
    stop(idle);
    // Flood: 500,000 distinct flows in 20 s.
    let (busy, dir) = start_trace(node.path());
    let sent = flood(pod_a.name(), FLOWS, FLOOD);
    std::thread::sleep(Duration::from_millis(500));
    let busy_peak = vm_hwm(busy.id());
    stop(busy);
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
    eprintln!(
        "VmHWM idle {:.1} MiB, {sent} flows in {FLOOD:?}: {:.1} MiB",
        idle_peak as f64 / MIB as f64,
        busy_peak as f64 / MIB as f64
    );
    assert!(sent >= FLOWS * 99 / 100, "sent {sent} of {FLOWS}");
    assert!(
        idle_peak <= 32 * MIB,
        "idle peak RSS {:.1} MiB > 32 MiB",
        idle_peak as f64 / MIB as f64
    );
    assert!(
        busy_peak <= 64 * MIB,
        "peak RSS under {FLOWS} flows {:.1} MiB > 64 MiB\n{stderr}",
        busy_peak as f64 / MIB as f64
    );
}
