//! Issue "hoptrace lab": every datapath builds, carries traffic, is traced
//! and leaves nothing behind; categories follow the datapath; the compare
//! page renders; clashes, interruptions and missing tools are clear.
//! Runs the real binary, as a user would.

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{PrefixGuard, can_run_as_root, hoptrace_bin};

fn prefix(tag: &str) -> String {
    format!("ht-{tag}{}-", std::process::id() % 1000)
}

fn leftovers(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn lab(args: &[&str]) -> Output {
    let out = Command::new(hoptrace_bin())
        .arg("lab")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run hoptrace lab");
    eprintln!(
        "hoptrace lab {args:?}: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn read_runs(path: &Path) -> Vec<Value> {
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("lab json")).expect("parse");
    assert_eq!(doc["schema"], "hoptrace.lab.v1");
    doc["runs"].as_array().expect("runs").clone()
}

/// Total count of a category over every node of a run.
fn category_count(run: &Value, category: &str) -> u64 {
    run["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .flat_map(|n| n["categories"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["category"] == category)
        .map(|c| c["count"].as_u64().unwrap_or(0))
        .sum()
}

/// p50 of a category on new connections, the largest over the nodes.
fn category_p50_new(run: &Value, category: &str) -> f64 {
    run["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .flat_map(|n| n["categories"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["category"] == category && c["conn_state"] == "new")
        .map(|c| c["p50_us"].as_f64().unwrap_or(0.0))
        .fold(0.0, f64::max)
}

/// Share of a run's attributed time (every node's segments) in segments no
/// taxonomy rule names (`<a>..<b>`), and the worst of them.
fn unnamed_share(run: &Value) -> (f64, Vec<(String, f64)>) {
    let mut total = 0.0;
    let mut unnamed: Vec<(String, f64)> = Vec::new();
    for node in run["nodes"].as_array().expect("nodes") {
        for s in node["segments"].as_array().expect("segments") {
            let us = s["total_us"].as_f64().unwrap_or(0.0);
            total += us;
            let name = s["segment"].as_str().unwrap_or_default();
            if name.contains("..") {
                match unnamed.iter_mut().find(|(n, _)| n == name) {
                    Some((_, t)) => *t += us,
                    None => unnamed.push((name.to_owned(), us)),
                }
            }
        }
    }
    unnamed.sort_by(|a, b| b.1.total_cmp(&a.1));
    let sum: f64 = unnamed.iter().map(|u| u.1).sum();
    (sum / total.max(f64::MIN_POSITIVE), unnamed)
}

/// kube-proxy time per request: every node's `all`/`all` kube-proxy row,
/// summed (one value per journey), over the requests answered.
fn kube_proxy_us_per_request(run: &Value) -> f64 {
    let total: f64 = run["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .flat_map(|n| n["categories"].as_array().cloned().unwrap_or_default())
        .filter(|c| {
            c["category"] == "kube-proxy" && c["direction"] == "all" && c["conn_state"] == "all"
        })
        .map(|c| c["total_us"].as_f64().unwrap_or(0.0))
        .sum();
    total
        / run["lab"]["requests_ok"]
            .as_f64()
            .expect("requests_ok")
            .max(1.0)
}

fn quick_lab(prefix: &str, json: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "--duration",
        "1s",
        "--rate",
        "200",
        "--prefix",
        prefix,
        "--json",
        json.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    lab(&args)
}

#[test]
fn every_datapath_carries_traffic_and_leaves_nothing() {
    if !can_run_as_root("every_datapath_carries_traffic_and_leaves_nothing") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for datapath in hoptrace_lab::topology::Datapath::ALL {
        let prefix = prefix("d");
        let _guard = PrefixGuard(prefix.clone());
        let json = dir.path().join(format!("{datapath}.json"));
        let out = quick_lab(&prefix, &json, &["--datapath", datapath.as_str()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if datapath.as_str() == "calico-ipip" && stderr.contains("calico-ipip cannot run here") {
            // This kernel has no ipip devices: the lab says so in one line,
            // a usage error (exit 2), before it builds anything.
            assert_eq!(out.status.code(), Some(2), "{stderr}");
            assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
            assert!(
                stderr.contains("IPIP") && !stderr.contains("building"),
                "{stderr}"
            );
            assert!(
                leftovers(&prefix).is_empty(),
                "{datapath} left {:?}",
                leftovers(&prefix)
            );
            continue;
        }
        assert!(out.status.success(), "{datapath} failed");
        let runs = read_runs(&json);
        let run = &runs[0];
        assert_eq!(
            run["nodes"].as_array().unwrap().len(),
            2,
            "{datapath}: a report per node"
        );
        assert!(
            run["lab"]["requests_ok"].as_u64().unwrap() > 100,
            "{datapath}: traffic flowed"
        );
        assert!(
            category_count(run, "cni") > 0,
            "{datapath}: cni time attributed"
        );
        let encapsulated = category_count(run, "encapsulation") > 0;
        match datapath.as_str() {
            "flannel-vxlan" | "calico-vxlan" => {
                assert!(encapsulated, "{datapath} has an encapsulation category")
            }
            _ => assert!(!encapsulated, "{datapath} must not show encapsulation"),
        }
        if datapath.as_str() == "cilium-like" {
            assert_eq!(
                category_count(run, "kube-proxy"),
                0,
                "cilium-like has no kube-proxy rules"
            );
        }
        // Issue 9: what real nodes do has names. Unnamed `a..b` segments
        // (br_netfilter's bridge, 6.18's tc egress before the queue,
        // recycled buffers) hold under 1% of the attributed time.
        let (share, unnamed) = unnamed_share(run);
        eprintln!(
            "{datapath}: unnamed segments {:.3}% {unnamed:?}",
            100.0 * share
        );
        assert!(
            share < 0.01,
            "{datapath}: unnamed segments hold {:.2}% of the attributed time: {unnamed:?}",
            100.0 * share
        );
        assert!(
            leftovers(&prefix).is_empty(),
            "{datapath} left {:?}",
            leftovers(&prefix)
        );
    }
}

/// Issue 14: three-node labs lost 1-5 of 2,500 requests. The cause: only
/// the first of the service's endpoints had a server, and kube-proxy sends
/// every other new connection to the second (refused; the builtin proxy
/// answered 502). With a new connection per request, about half failed.
#[test]
fn three_node_labs_lose_no_request() {
    if !can_run_as_root("three_node_labs_lose_no_request") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (datapath, ingress) in [("flannel-vxlan", "builtin"), ("calico-vxlan", "none")] {
        let prefix = prefix("3");
        let _guard = PrefixGuard(prefix.clone());
        let json = dir.path().join(format!("{datapath}.json"));
        let out = quick_lab(
            &prefix,
            &json,
            &[
                "--nodes",
                "3",
                "--datapath",
                datapath,
                "--ingress",
                ingress,
                "--load",
                "http-new-connection",
            ],
        );
        assert!(
            out.status.success(),
            "{datapath}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let runs = read_runs(&json);
        let lab = &runs[0]["lab"];
        let summary = format!(
            "{datapath}: {} ok, {} errors {}, {} timeouts",
            lab["requests_ok"], lab["errors"], lab["error_kinds"], lab["timeouts"]
        );
        assert_eq!(runs[0]["nodes"].as_array().unwrap().len(), 3);
        assert!(lab["requests_ok"].as_u64().unwrap() >= 150, "{summary}");
        assert_eq!(lab["errors"].as_u64(), Some(0), "{summary}");
        assert_eq!(lab["timeouts"].as_u64(), Some(0), "{summary}");
        assert!(
            leftovers(&prefix).is_empty(),
            "{datapath} left {:?}",
            leftovers(&prefix)
        );
    }
}

#[test]
fn kube_proxy_none_shows_no_kube_proxy_category() {
    if !can_run_as_root("kube_proxy_none_shows_no_kube_proxy_category") {
        return;
    }
    let prefix = prefix("k");
    let _guard = PrefixGuard(prefix.clone());
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("none.json");
    // `--html` without `--compare` writes the page of the one run (issue 9).
    let html = dir.path().join("none.html");
    let out = quick_lab(
        &prefix,
        &json,
        &[
            "--datapath",
            "calico-bgp",
            "--kube-proxy",
            "none",
            "--ingress",
            "none",
            "--html",
            html.to_str().unwrap(),
        ],
    );
    assert!(out.status.success());
    let page = std::fs::read_to_string(&html).expect("the page of one run");
    assert!(
        page.contains("calico-bgp") && page.contains("<svg"),
        "{}",
        &page[..page.len().min(300)]
    );
    let runs = read_runs(&json);
    assert_eq!(category_count(&runs[0], "kube-proxy"), 0);
    // Without kube-proxy's rules nothing asks for conntrack in the node
    // namespace, so conntrack does not run: its band is `untracked`, in
    // netfilter-other (docs/segments.md). Netfilter is still traced.
    assert_eq!(category_count(&runs[0], "conntrack"), 0);
    assert!(
        category_count(&runs[0], "netfilter-other") > 0,
        "netfilter is still traced"
    );
}

/// Issue 9, attribution that adds up: with a new connection per request,
/// 10,000 extra services make every request walk kube-proxy's nat chains
/// several times (the inner SYN, and each new outer VXLAN flow on both
/// nodes). The kube-proxy time per request (sums per journey over every
/// node, divided by the requests) must rise by what the client saw, within
/// 30% (means). iptables mode: nftables' verdict maps do not grow with the
/// number of services. Two nodes, ~150 s per 10,000-service build here.
///
/// The request timeline must see the same rise: a request on a new
/// connection starts at the client's connect, and its SYN's and SYN-ACK's
/// journeys (where kube-proxy's chains are walked) are in its categories
/// (before, the connect hid in `client.wait` and the timeline's kube-proxy
/// did not grow: 22 → 18 µs). `hoptrace compare` of the two runs, which
/// uses the timeline's figures, names kube-proxy in its verdict.
#[test]
fn ten_thousand_services_raise_kube_proxy_per_request_by_the_client_rise() {
    if !can_run_as_root("ten_thousand_services_raise_kube_proxy_per_request_by_the_client_rise") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut p50 = Vec::new();
    let mut kube = Vec::new();
    let mut client = Vec::new();
    let mut timeline = Vec::new();
    let mut files = Vec::new();
    for services in ["100", "10000"] {
        let prefix = prefix("v");
        let _guard = PrefixGuard(prefix.clone());
        let json = dir.path().join(format!("{services}.json"));
        let out = lab(&[
            "--duration",
            "10s",
            "--rate",
            "50",
            "--connections",
            "1",
            "--prefix",
            &prefix,
            "--json",
            json.to_str().unwrap(),
            "--services",
            services,
            "--kube-proxy",
            "iptables",
            "--load",
            "http-new-connection",
            "--ingress",
            "none",
        ]);
        assert!(out.status.success());
        let run = &read_runs(&json)[0];
        timeline.push(
            run["requests"]["categories"]["kube-proxy"]["mean_us"]
                .as_f64()
                .expect("the request timeline's kube-proxy time per request"),
        );
        files.push(json.clone());
        p50.push(category_p50_new(run, "kube-proxy"));
        kube.push(kube_proxy_us_per_request(run));
        // The client's mean less the load generator's own record of
        // itself (its timer's lateness before it connects, its parsing
        // after its read): that record wanders by milliseconds between
        // runs on a busy 2-vCPU machine and has nothing to do with the
        // services (one run here: 5.7 ms of it against 1.8 ms).
        client.push(
            run["lab"]["client_latency"]["mean_us"]
                .as_f64()
                .expect("client mean")
                - run["requests"]["client_own_mean_us"]
                    .as_f64()
                    .expect("the load generator's own record"),
        );
    }
    let kube_rise = kube[1] - kube[0];
    let client_rise = client[1] - client[0];
    eprintln!(
        "kube-proxy p50 on new connections {p50:?} µs; kube-proxy per request {kube:?} µs \
         (rise {kube_rise:.1}); client mean from its connect to its read {client:?} µs (rise {client_rise:.1}); ratio {:.2}",
        kube_rise / client_rise
    );
    let timeline_rise = timeline[1] - timeline[0];
    eprintln!(
        "request timeline: kube-proxy per request {timeline:?} µs (rise {timeline_rise:.1}); \
         against the ledger's rise {:.2}, against the client's {:.2}",
        timeline_rise / kube_rise,
        timeline_rise / client_rise
    );
    assert!(
        p50[1] > p50[0] * 2.0,
        "10,000 services must raise kube-proxy's p50 clearly: {p50:?}"
    );
    // The request timeline sees the walk where the ledger does (before
    // the connect was part of the request, it rose by nothing: 22 → 18 µs).
    assert!(
        (timeline_rise / kube_rise - 1.0).abs() <= 0.1,
        "the timeline's kube-proxy per request rose {timeline_rise:.1} µs, the ledger's {kube_rise:.1} µs"
    );
    let out = Command::new(hoptrace_bin())
        .arg("compare")
        .args(&files)
        .output()
        .expect("run hoptrace compare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("hoptrace compare:\n{stdout}");
    assert!(out.status.success());
    let verdict = stdout.split("\n\n").next().unwrap_or_default();
    assert!(
        verdict.starts_with("Verdict: ") && verdict.contains("kube-proxy"),
        "compare's verdict names kube-proxy: {verdict}"
    );
    // Against the client: the least stable figure on a shared 2-vCPU
    // machine (from its connect to its read it rose by 0.08 and 2.50 ms
    // in two pairs of runs of the same settings here, and its mean fell
    // by 5.9 ms in a third; see ACCURACY.md).
    assert!(
        client_rise > 200.0,
        "the client must see the services: {client:?}"
    );
    assert!(
        (kube_rise / client_rise - 1.0).abs() <= 0.3,
        "kube-proxy per request rose {kube_rise:.1} µs, the client's mean {client_rise:.1} µs"
    );
    assert!(
        (timeline_rise / client_rise - 1.0).abs() <= 0.3,
        "the timeline's kube-proxy per request rose {timeline_rise:.1} µs, the client's mean {client_rise:.1} µs"
    );
}

#[test]
fn compare_html_of_real_runs_renders() {
    if !can_run_as_root("compare_html_of_real_runs_renders") {
        return;
    }
    if !tests::browser::chromium_available() {
        println!("SKIP compare_html_of_real_runs_renders: chromium not installed");
        return;
    }
    let prefix = prefix("c");
    let _guard = PrefixGuard(prefix.clone());
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("compare.html");
    let json = dir.path().join("compare.json");
    let out = quick_lab(
        &prefix,
        &json,
        &[
            "--compare",
            "flannel-vxlan,calico-bgp",
            "--html",
            html.to_str().unwrap(),
        ],
    );
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("flannel-vxlan") && stdout.contains("calico-bgp"));
    assert_eq!(read_runs(&json).len(), 2);
    assert!(dir.path().join("compare-categories.svg").exists());
    tests::browser::assert_page_renders(
        &html,
        &["flannel-vxlan", "calico-bgp", "encapsulation"],
        2,
    );
}

#[test]
fn name_clash_is_clear_and_touches_nothing() {
    if !can_run_as_root("name_clash_is_clear_and_touches_nothing") {
        return;
    }
    let prefix = prefix("x");
    let _guard = PrefixGuard(prefix.clone());
    let existing =
        hoptrace_lab::netns::NetnsGuard::create(&format!("{prefix}n1")).expect("namespace");
    let dir = tempfile::tempdir().unwrap();
    let out = quick_lab(&prefix, &dir.path().join("x.json"), &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("already exists"),
        "clear clash message: {stderr}"
    );
    assert!(
        Path::new("/run/netns").join(existing.name()).exists(),
        "the existing namespace stays"
    );
    assert_eq!(
        leftovers(&prefix),
        vec![existing.name().to_owned()],
        "nothing else left"
    );
}

#[test]
fn missing_tool_is_named_with_its_package() {
    if !can_run_as_root("missing_tool_is_named_with_its_package") {
        return;
    }
    let prefix = prefix("m");
    let _guard = PrefixGuard(prefix.clone());
    // Hide /usr/sbin (haproxy, nginx, iptables-restore, nft) in a private
    // mount namespace for this one run.
    let script = format!(
        "mount --make-rprivate / && mount -t tmpfs tmpfs /usr/sbin && exec {} lab --ingress haproxy --duration 1s --prefix {prefix}",
        hoptrace_bin().display()
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .expect("unshare");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(!out.status.success());
    assert!(
        stderr.contains("haproxy is not installed") && stderr.contains("package haproxy"),
        "{stderr}"
    );
    assert!(leftovers(&prefix).is_empty());
}

#[test]
fn ctrl_c_tears_everything_down() {
    if !can_run_as_root("ctrl_c_tears_everything_down") {
        return;
    }
    let prefix = prefix("i");
    let _guard = PrefixGuard(prefix.clone());
    let mut child = Command::new(hoptrace_bin())
        .args(["lab", "--duration", "60s", "--prefix", &prefix])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lab");
    // Wait until the lab is built and traced (bounded).
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let programs = Command::new("bpftool")
            .args(["prog", "list"])
            .output()
            .unwrap();
        if leftovers(&prefix).len() > 3
            && String::from_utf8_lossy(&programs.stdout).contains("hoptrace_tc_in")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "lab did not stop after Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    eprintln!("{stderr}");
    assert_eq!(status.code(), Some(130), "interrupted exit code");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(
        leftovers(&prefix).is_empty(),
        "left {:?}",
        leftovers(&prefix)
    );
    // Other tests may run hoptrace concurrently: what must not exist is a
    // hoptrace program that no process holds (kept alive by a leaked link).
    let programs = Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
        .unwrap();
    let programs: Value = serde_json::from_slice(&programs.stdout).unwrap_or(Value::Null);
    let orphans: Vec<&Value> = programs
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|p| {
                    p["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("hoptrace_"))
                })
                .filter(|p| p["pids"].as_array().is_none_or(|pids| pids.is_empty()))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        orphans.is_empty(),
        "hoptrace programs left without an owner: {orphans:?}"
    );
}

#[test]
fn nginx_and_haproxy_ingress_carry_the_lab_traffic() {
    if !can_run_as_root("nginx_and_haproxy_ingress_carry_the_lab_traffic") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for ingress in ["nginx", "haproxy"] {
        if hoptrace_lab::ingress::find_tool(ingress).is_none() {
            println!("SKIP {ingress}: not installed");
            continue;
        }
        let prefix = prefix(&ingress[..1]);
        let _guard = PrefixGuard(prefix.clone());
        let json = dir.path().join(format!("{ingress}.json"));
        let out = quick_lab(&prefix, &json, &["--ingress", ingress]);
        assert!(out.status.success(), "{ingress}");
        let run = &read_runs(&json)[0];
        assert_eq!(run["lab"]["ingress"], ingress);
        assert!(
            run["lab"]["requests_ok"].as_u64().unwrap() > 100,
            "{ingress} proxied the requests"
        );
        assert_eq!(run["lab"]["errors"].as_u64(), Some(0));
        assert!(leftovers(&prefix).is_empty());
    }
}
