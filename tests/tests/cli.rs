//! Issue 9, "a CLI that refuses bad input before it starts": each bad
//! input gives one line on stderr, a non-zero exit, quickly (before any
//! hook is attached or namespace built), and leaves nothing behind.
//! Privileges are checked by capability: a root process without CAP_BPF
//! (or CAP_SYS_ADMIN where namespaces are entered) is refused by name.
//! Runs the real binary, as a user would; the capability cases need root
//! (to drop a capability from a root process with `setpriv`).

use std::{
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use tests::{can_run_as_root, hoptrace_bin};

/// Network namespaces and links present now (to check that nothing was left).
fn system_state() -> (Vec<String>, usize) {
    let netns = std::fs::read_dir("/run/netns")
        .map(|dir| {
            let mut names: Vec<_> = dir
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        })
        .unwrap_or_default();
    let links = std::fs::read_dir("/sys/class/net").map_or(0, Iterator::count);
    (netns, links)
}

fn run(prefix: &[&str], args: &[&str]) -> (Output, Duration) {
    let start = Instant::now();
    let (program, pre) = match prefix.split_first() {
        Some((p, rest)) => (std::path::PathBuf::from(p), rest.to_vec()),
        None => (hoptrace_bin(), vec![]),
    };
    let mut cmd = Command::new(program);
    cmd.args(&pre);
    if !prefix.is_empty() {
        cmd.arg(hoptrace_bin());
    }
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run hoptrace");
    let took = start.elapsed();
    eprintln!(
        "hoptrace {args:?}: {} in {took:?}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (out, took)
}

/// Runs `args` and checks the refusal: non-zero exit, one stderr line
/// containing every `expect`, under 3 s, nothing left behind.
fn refused(args: &[&str], expect: &[&str]) -> String {
    refused_with(&[], args, expect)
}

/// As [`refused`], and the exit code is 2 (a usage error, as clap's own).
fn refused_usage(args: &[&str], expect: &[&str]) -> String {
    let before = system_state();
    let (out, _) = run(&[], args);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?}: a usage error exits 2"
    );
    assert_eq!(system_state(), before, "{args:?} left something behind");
    refused(args, expect)
}

fn refused_with(prefix: &[&str], args: &[&str], expect: &[&str]) -> String {
    let before = system_state();
    let (out, took) = run(prefix, args);
    let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_owned();
    assert!(!out.status.success(), "{args:?} must fail");
    assert_eq!(
        stderr.lines().count(),
        1,
        "{args:?}: one line of error, got {stderr:?}"
    );
    for word in expect {
        assert!(
            stderr.contains(word),
            "{args:?}: {stderr:?} must say {word:?}"
        );
    }
    assert!(
        took < Duration::from_secs(3),
        "{args:?} took {took:?}: refused before starting?"
    );
    assert!(
        out.stdout.is_empty(),
        "{args:?} printed a report: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(system_state(), before, "{args:?} left something behind");
    stderr
}

#[test]
fn trace_refuses_bad_input() {
    refused(
        &["trace", "--duration", "0s"],
        &["--duration", "more than zero"],
    );
    refused(&["trace", "--port", "0"], &["--port", "0"]);
    refused(
        &["trace", "--ip", "10.0.0.0/99"],
        &["--ip", "too long", "/32"],
    );
    refused(&["trace", "--ip", "10.0.0/8"], &["--ip"]);
    // --json into a missing directory: refused before tracing (a 60 s
    // trace that failed at the end would take 60 s).
    refused(
        &[
            "trace",
            "--duration",
            "60s",
            "--json",
            "/nonexistent-dir/r.json",
        ],
        &["--json", "does not exist"],
    );
    refused(
        &["diagnose", "--json", "/nonexistent-dir/d.json"],
        &["--json", "does not exist"],
    );
    // A bare address is accepted (as /32): the error is about --json, the
    // argument after it, not about --ip.
    let line = refused(
        &[
            "trace",
            "--ip",
            "10.0.0.5",
            "--json",
            "/nonexistent-dir/r.json",
        ],
        &["--json"],
    );
    assert!(!line.contains("--ip"), "{line}");
}

#[test]
fn lab_refuses_bad_input_before_building() {
    let prefix = format!("ht-cli{}-", std::process::id() % 1000);
    for (args, expect) in [
        (vec!["--rate", "0"], vec!["--rate", "more than zero"]),
        (vec!["--rate=-5"], vec!["--rate", "more than zero"]),
        (
            vec!["--duration", "0s"],
            vec!["--duration", "more than zero"],
        ),
        (vec!["--nodes", "7"], vec!["--nodes", "7"]),
        (vec!["--connections", "0"], vec!["--connections"]),
        (
            vec!["--json", "/nonexistent-dir/lab.json"],
            vec!["--json", "does not exist"],
        ),
        (
            vec!["--rate", "0.5", "--duration", "1s"],
            vec!["no request"],
        ),
        (
            vec!["--node-view", "node2"],
            vec!["--node-view node2", "--nodes 3"],
        ),
        (
            vec!["--node-view", "gw"],
            vec!["--node-view", "not a lab node"],
        ),
        (
            vec!["--node-view", "node1", "--load", "udp"],
            vec!["--node-view", "http-keep-alive"],
        ),
        (
            vec!["--drop-probability", "0.05", "--load", "udp"],
            vec!["--drop-probability", "http-keep-alive"],
        ),
        (
            vec!["--sock-hooks", "syscalls", "--load", "udp"],
            vec!["--sock-hooks", "http-keep-alive"],
        ),
    ] {
        let mut full = vec!["lab", "--prefix", prefix.as_str()];
        full.extend(args);
        refused(&full, &expect);
    }
}

#[test]
fn compare_refuses_files_that_are_not_hoptrace_documents() {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in [
        ("hello.json", r#"{"hello":"world"}"#),
        ("array.json", "[1,2,3]"),
        (
            "check.json",
            r#"{"items":[{"name":"btf","available":true}]}"#,
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        refused(&["compare", path.to_str().unwrap()], &[name]);
    }
    refused(&["compare", "/nonexistent-dir/a.json"], &["a.json"]);
}

#[test]
fn privileges_are_checked_by_capability() {
    if !can_run_as_root("privileges_are_checked_by_capability") {
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIP privileges_are_checked_by_capability: no setpriv (util-linux)");
        return;
    }
    // Root without CAP_BPF in its bounding set: exec leaves it out of the
    // effective set. The uid is 0, the error names CAP_BPF and only it.
    let no_bpf = ["setpriv", "--bounding-set", "-bpf,-sys_admin"];
    let line = refused_with(&no_bpf, &["trace", "--duration", "1s"], &["CAP_BPF"]);
    assert!(
        !line.contains("CAP_PERFMON") && !line.contains("CAP_NET_ADMIN"),
        "{line}"
    );
    refused_with(&no_bpf, &["check"], &["CAP_BPF"]);
    let no_net_admin = ["setpriv", "--bounding-set", "-net_admin"];
    let line = refused_with(
        &no_net_admin,
        &["lab", "--duration", "1s"],
        &["CAP_NET_ADMIN"],
    );
    assert!(!line.contains("CAP_BPF"), "{line}");
    // Entering a namespace needs CAP_SYS_ADMIN (CAP_BPF and CAP_PERFMON are
    // still there).
    let no_sys_admin = ["setpriv", "--bounding-set", "-sys_admin"];
    let line = refused_with(
        &no_sys_admin,
        &["trace", "--duration", "1s", "--netns", "/run/netns/none"],
        &["CAP_SYS_ADMIN"],
    );
    assert!(!line.contains("CAP_BPF"), "{line}");
    let status = |prefix: &[&str], args: &[&str]| run(prefix, args).0.status.code();
    assert_eq!(status(&no_bpf, &["agent"]), Some(2));
}

/// Fresh-eyes trial: inputs that used to start building or tracing, or
/// gave unclear errors, are refused first, in one line, with exit 2.
#[test]
fn node_and_lab_inputs_are_refused_before_anything_starts() {
    if !can_run_as_root("node_and_lab_inputs_are_refused_before_anything_starts") {
        return;
    }
    let prefix = format!("ht-cli{}-", std::process::id() % 1000);
    for bad in ["a/b", "", &"x".repeat(41), "-x"] {
        let arg = format!("--prefix={bad}");
        refused_usage(&["lab", &arg, "--duration", "1s"], &["--prefix"]);
    }
    refused_usage(
        &["diagnose", "--netns", "/nonexistent", "--duration", "1s"],
        &["--netns", "/nonexistent", "no such network namespace"],
    );
    refused_usage(
        &["trace", "--netns", "/tmp", "--duration", "1s"],
        &["--netns", "not a network namespace"],
    );
    for command in ["cleanup", "agent"] {
        refused_usage(
            &[command, "--netns", "/nonexistent"],
            &["--netns", "no such network namespace"],
        );
    }
    refused_usage(
        &["trace", "--iface", "nosuchdev", "--duration", "1s"],
        &["--iface", "nosuchdev"],
    );
    for command in ["trace", "diagnose", "lab"] {
        refused_usage(
            &[command, "--duration", "abc"],
            &["--duration", "not a duration", "10s"],
        );
        refused_usage(
            &[command, "--duration", "100000h"],
            &["--duration", "at most 24h"],
        );
        // A negative duration is a bad duration, not an unknown flag.
        refused_usage(
            &[command, "--duration", "-5s"],
            &["--duration", "\"-5s\" is not a duration"],
        );
    }
    // A kernel without IPIP devices (this project's machine): the lab
    // says so before it builds anything. Where the kernel has them,
    // calico-ipip builds, and tests/lab.rs runs it.
    let ipip = Command::new("unshare")
        .args(["--net", "ip", "link", "add", "ht-t0", "type", "ipip"])
        .stderr(Stdio::null())
        .status();
    if ipip.is_ok_and(|s| !s.success()) {
        refused_usage(
            &["lab", "--datapath", "calico-ipip", "--prefix", &prefix],
            &["calico-ipip", "IPIP"],
        );
    } else {
        eprintln!("SKIP calico-ipip refusal: this kernel creates IPIP devices");
    }
}

#[test]
fn compare_refuses_a_column_without_data() {
    let dir = tempfile::tempdir().unwrap();
    // A trace of an idle node (0 journeys) and a lab run that answered
    // nothing: either would be called "faster" than anything.
    let empty_report = serde_json::json!({
        "schema": "hoptrace.report.v1", "node": "idle", "kernel": "", "started_at": "",
        "duration_s": 1.0, "capabilities": null, "journeys": 0, "segments": [],
        "categories": [], "end_to_end": [], "exemplars": [], "drops": [],
        "lost_events": 0, "unparsed_packets": 0, "foreign_events": 0,
        "counters": hoptrace_core::report::LedgerCounters::default(), "notes": []
    });
    let path = dir.path().join("idle.json");
    std::fs::write(&path, empty_report.to_string()).unwrap();
    let other = dir.path().join("other.json");
    std::fs::write(&other, empty_report.to_string()).unwrap();
    let line = refused(
        &["compare", other.to_str().unwrap(), path.to_str().unwrap()],
        &["other.json", "no data", "0 journeys"],
    );
    assert!(!line.contains("faster"), "{line}");
}

/// `--help` and `-h` of every subcommand fit 100 columns (clap does not
/// wrap without its terminal_size feature: lab's were 328 wide).
#[test]
fn every_help_fits_100_columns() {
    for command in [
        "", "check", "trace", "diagnose", "cleanup", "lab", "agent", "compare",
    ] {
        for flag in ["--help", "-h"] {
            let args: Vec<&str> = [command, flag]
                .into_iter()
                .filter(|a| !a.is_empty())
                .collect();
            let out = Command::new(hoptrace_bin())
                .args(&args)
                .env("COLUMNS", "300")
                .output()
                .expect("run hoptrace");
            assert!(out.status.success(), "{args:?}");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.lines().count() > 3, "{args:?}: {text}");
            for line in text.lines() {
                assert!(
                    line.chars().count() <= 100,
                    "{args:?}: {} columns: {line}",
                    line.chars().count()
                );
            }
        }
    }
}
