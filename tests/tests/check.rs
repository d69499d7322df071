//! Root tests of `hoptrace check`: the probes report what this kernel offers,
//! leave nothing behind, and a non-root run exits 2 with one line.

use std::process::Command;

use hoptrace_core::kernel::capabilities::{ITEMS, probe_all};

/// The two tests both run the probes; run them one at a time so one cannot
/// see the other's short-lived links.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn bpftool_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("bpftool json")
}

/// Ids of links whose program is a capability probe (`hoptrace_probe_*`,
/// `ht_probe_*`): other processes on the machine may attach their own links.
fn probe_link_ids() -> Vec<u64> {
    let progs = bpftool_json(&["prog", "show"]);
    let probe_prog = |id: u64| {
        progs.as_array().expect("array").iter().any(|p| {
            p["id"].as_u64() == Some(id)
                && p["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("hoptrace_probe") || n.starts_with("ht_probe"))
        })
    };
    bpftool_json(&["link", "list"])
        .as_array()
        .expect("array")
        .iter()
        .filter(|l| l["prog_id"].as_u64().is_some_and(probe_prog))
        .filter_map(|l| l["id"].as_u64())
        .collect()
}

fn ht_devices() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        // The names the tunnel probes use (other tests may own other ht- names).
        .filter(|l| {
            ["ht-vxlan0", "ht-ipip0", "ht-geneve0"]
                .iter()
                .any(|n| l.contains(&format!(" {n}:")))
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn probes_match_this_kernel_and_leave_nothing() {
    if !tests::can_run_with_kernel_programs("probes_match_this_kernel_and_leave_nothing") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let links_before = probe_link_ids();
    let caps = probe_all();
    let names: Vec<&str> = caps.items.iter().map(|c| c.name).collect();
    assert_eq!(names, ITEMS, "every item, in order");
    for c in &caps.items {
        assert_eq!(
            c.available,
            c.reason.is_none(),
            "{c:?}: reason exactly when unavailable"
        );
        if let Some(reason) = &c.reason {
            assert!(!reason.trim().is_empty(), "{c:?}");
        }
    }
    // What this kind of machine (see shared/kernel-facts.md) offers. These
    // are facts of the test machine, re-measured by trying.
    for name in [
        "btf",
        "ring_buffer",
        "tcx",
        "clsact_tc",
        "netfilter_link",
        "tracepoint",
        "tp_btf",
        "raw_tracepoint",
        "sock_tracepoints",
    ] {
        assert!(
            caps.has(name),
            "{name} should be available here: {:?}",
            caps.get(name)
        );
    }
    for name in ["fentry", "kprobe"] {
        assert!(
            !caps.has(name),
            "{name} should be unavailable here: {:?}",
            caps.get(name)
        );
    }
    assert!(
        caps.fidelity()
            .iter()
            .any(|l| l.contains("fentry/kprobe unavailable")),
        "{:#?}",
        caps.fidelity()
    );

    // Nothing left behind: no probe link, no probe device in this namespace.
    // (The probes use unnamed per-thread namespaces, so there is no named
    // namespace to look for; other tests on the machine may add their own.)
    let leaked: Vec<u64> = probe_link_ids()
        .into_iter()
        .filter(|id| !links_before.contains(id))
        .collect();
    assert!(leaked.is_empty(), "links left by the probes: {leaked:?}");
    assert!(
        ht_devices().is_empty(),
        "probe devices in the root namespace: {:?}",
        ht_devices()
    );
}

#[test]
fn cli_json_and_non_root_exit_code() {
    if !tests::can_run_with_kernel_programs("cli_json_and_non_root_exit_code") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bin = tests::hoptrace_bin();

    let out = Command::new(&bin)
        .args(["check", "--json"])
        .output()
        .expect("run hoptrace check");
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("check --json prints JSON");
    let items = v["items"].as_array().expect("items");
    assert_eq!(items.len(), ITEMS.len());
    for i in items {
        assert!(i["available"].is_boolean(), "{i}");
        assert_eq!(i["available"] == false, !i["reason"].is_null(), "{i}");
    }

    // setpriv drops to nobody; the binary must be readable by it (it usually is).
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .arg("check")
        .output()
        .expect("run setpriv");
    if String::from_utf8_lossy(&out.stderr).contains("Permission denied")
        && out.status.code() != Some(2)
    {
        eprintln!(
            "skipping non-root half: nobody cannot execute {}",
            bin.display()
        );
        return;
    }
    assert_eq!(
        out.status.code(),
        Some(2),
        "non-root exit code; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.contains("root"), "{stderr}");
    assert!(out.stdout.is_empty());
}
