//! Issue 10, the request timeline: the lab joins every HTTP request from
//! the client's write to its read through the ingress proxy and the
//! application, and names the proxy's and the application's own time.
//! Runs the real binary (`hoptrace lab`), as a user would; every run uses
//! its own namespace prefix and leaves nothing behind.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use serde_json::Value;
use tests::{PrefixGuard, can_run_as_root, hoptrace_bin};

/// Runs `hoptrace lab` (2 keep-alive connections or workers, 100
/// requests/s for 4 s: bounded traffic inside the lab's namespaces) and
/// returns `runs[0]` of its JSON.
fn lab_run(tag: &str, extra: &[&str]) -> Value {
    let mut args = vec!["--duration", "4s", "--rate", "100", "--connections", "2"];
    args.extend_from_slice(extra);
    lab_run_with(tag, &args).0
}

/// Runs `hoptrace lab --services 10` with `extra` (bounded traffic inside
/// the lab's namespaces) and returns `runs[0]` of its JSON and its stdout.
fn lab_run_with(tag: &str, extra: &[&str]) -> (Value, String) {
    let prefix = format!("ht-tl{tag}{}-", std::process::id() % 1000);
    let _guard = PrefixGuard(prefix.clone());
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("lab.json");
    let mut args = vec![
        "lab",
        "--services",
        "10",
        "--prefix",
        &prefix,
        "--json",
        json.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = Command::new(hoptrace_bin())
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .expect("run hoptrace lab");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "hoptrace {args:?}: {}\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "hoptrace lab failed");
    assert!(
        stdout.contains("per request: "),
        "the lab prints where the time per request goes"
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(Path::new(&json)).unwrap())
        .expect("lab json");
    (doc["runs"][0].clone(), stdout.into_owned())
}

fn requests(run: &Value) -> &Value {
    let r = &run["requests"];
    assert!(r.is_object(), "the run has a request timeline: {run:#}");
    r
}

fn mean(r: &Value, category: &str) -> f64 {
    r["categories"][category]["mean_us"].as_f64().unwrap_or(0.0)
}

/// Growth of ingress-proxy time against growth of the client's latency,
/// `held` against `base`: both the client's mean (what the load generator
/// measured from its intended send time) and the client's mean from its
/// write to its read (that mean less what the load generator recorded of
/// itself: its millisecond timer's lateness, which on a loaded machine
/// wanders by several hundred µs between runs and has nothing to do with
/// the proxy). The proxy's growth must be within 10 % of the latter, and
/// the latter must have grown by the hold.
fn check_growth(what: &str, rb: &Value, rh: &Value) {
    let f = |r: &Value, k: &str| r[k].as_f64().unwrap();
    let proxy_growth = mean(rh, "ingress-proxy") - mean(rb, "ingress-proxy");
    let client_growth = f(rh, "client_mean_us") - f(rb, "client_mean_us");
    let write_to_read_growth = (f(rh, "client_mean_us") - f(rh, "client_own_mean_us"))
        - (f(rb, "client_mean_us") - f(rb, "client_own_mean_us"));
    eprintln!(
        "{what}: ingress-proxy growth {proxy_growth:.1} µs; client mean growth {client_growth:.1} µs ({:.1}%), from its write to its read {write_to_read_growth:.1} µs ({:.1}%)",
        100.0 * (proxy_growth - client_growth) / client_growth,
        100.0 * (proxy_growth - write_to_read_growth) / write_to_read_growth
    );
    // The guard that the hold happened, on the client's write-to-read
    // time: its mean from the intended send time also carries the load
    // generator's timer lateness, which wanders by several hundred µs
    // between runs (one pair of runs showed 1.27 ms for a 2 ms hold).
    assert!(
        write_to_read_growth >= 2000.0,
        "{what}: a 2 ms hold grows the client's write-to-read mean by 2 ms or more: {write_to_read_growth}"
    );
    assert!(
        (proxy_growth - write_to_read_growth).abs() <= 0.10 * write_to_read_growth,
        "{what}: ingress-proxy growth {proxy_growth:.1} µs is not within 10% of the client's write-to-read growth {write_to_read_growth:.1} µs"
    );
}

fn check_joined_and_covered(r: &Value, what: &str) {
    let count = r["count"].as_u64().unwrap();
    let joined = r["joined"].as_u64().unwrap();
    let rate = r["join_rate"].as_f64().unwrap();
    let coverage = r["coverage"].as_f64().unwrap();
    let own = r["client_own_mean_us"].as_f64().unwrap();
    let client = r["client_mean_us"].as_f64().unwrap();
    eprintln!(
        "{what}: joined {joined} of {count} ({rate:.4}), coverage {coverage:.3}, of the client's mean {client:.0} µs the load generator's own record {own:.0} µs ({:.3} measured by the hooks)",
        coverage - own / client
    );
    assert!(
        count >= 300,
        "{what}: the client sent {count} requests while traced"
    );
    assert!(rate >= 0.99, "{what}: join rate {rate} < 0.99");
    assert!(coverage >= 0.90, "{what}: coverage {coverage} < 0.90");
    assert!(mean(r, "application") > 0.0, "{what}: application measured");
}

/// `--proxy-delay 2ms` against the same run without: the ingress proxy's
/// time per request grows by what the client's latency grows (within 10 %,
/// see `check_growth`), and the proxy's own measure of its hold is in the
/// document.
#[test]
fn proxy_delay_shows_as_ingress_proxy_time() {
    if !can_run_as_root("proxy_delay_shows_as_ingress_proxy_time") {
        return;
    }
    let base = lab_run("b", &["--ingress", "builtin"]);
    let held = lab_run("h", &["--ingress", "builtin", "--proxy-delay", "2ms"]);
    let (rb, rh) = (requests(&base), requests(&held));
    check_joined_and_covered(rb, "builtin");
    check_joined_and_covered(rh, "builtin + 2ms");
    check_growth("builtin", rb, rh);
    let hold = rh["proxy_hold_mean_us"]
        .as_f64()
        .expect("the proxy reports its hold");
    eprintln!("hold measured by the builtin proxy {hold:.1} µs");
    assert!(hold >= 2000.0, "a 2 ms hold is at least 2 ms: {hold}");
    assert!(rb.get("proxy_hold_mean_us").is_none() || rb["proxy_hold_mean_us"].is_null());
}

/// Builtin ingress with a new connection per request: still joined, still
/// covered, and the proxy's time is there.
#[test]
fn new_connections_are_joined_and_covered() {
    if !can_run_as_root("new_connections_are_joined_and_covered") {
        return;
    }
    let run = lab_run(
        "n",
        &["--ingress", "builtin", "--load", "http-new-connection"],
    );
    let r = requests(&run);
    check_joined_and_covered(r, "builtin, new connections");
    assert!(mean(r, "ingress-proxy") > 0.0);
}

/// Without an ingress proxy: no ingress-proxy time, the application is
/// still measured, every request joined.
#[test]
fn without_ingress_there_is_no_proxy_time() {
    if !can_run_as_root("without_ingress_there_is_no_proxy_time") {
        return;
    }
    let run = lab_run("i", &["--ingress", "none"]);
    let r = requests(&run);
    check_joined_and_covered(r, "no ingress");
    assert_eq!(mean(r, "ingress-proxy"), 0.0, "no proxy, no proxy time");
    let slowest = r["slowest"].as_array().expect("waterfalls");
    assert!(!slowest.is_empty());
    assert!(slowest.iter().all(|w| w["proxied"] == false));
}

/// HAProxy (Debian) as the ingress: joined and covered with keep-alive
/// and new connections, and a Lua `core.msleep(2)` hold per request shows
/// as ingress-proxy time that grows with the client's mean (within 10 %).
#[test]
fn haproxy_ingress_is_joined_and_its_delay_is_ingress_proxy_time() {
    if !can_run_as_root("haproxy_ingress_is_joined_and_its_delay_is_ingress_proxy_time") {
        return;
    }
    if hoptrace_lab::ingress::find_tool("haproxy").is_none() {
        eprintln!("skipped: haproxy is not installed (Debian package haproxy)");
        return;
    }
    let new = lab_run(
        "x",
        &["--ingress", "haproxy", "--load", "http-new-connection"],
    );
    let r = requests(&new);
    check_joined_and_covered(r, "haproxy, new connections");
    assert!(mean(r, "ingress-proxy") > 0.0);
    let base = lab_run("y", &["--ingress", "haproxy"]);
    let held = lab_run("z", &["--ingress", "haproxy", "--proxy-delay", "2ms"]);
    let (rb, rh) = (requests(&base), requests(&held));
    check_joined_and_covered(rb, "haproxy");
    check_joined_and_covered(rh, "haproxy + 2ms");
    check_growth("haproxy", rb, rh);
}

/// nginx (Debian) as the ingress: its worker is known by its name and
/// every request is joined through it, with keep-alive and with a new
/// connection per request.
#[test]
fn nginx_ingress_is_joined() {
    if !can_run_as_root("nginx_ingress_is_joined") {
        return;
    }
    if hoptrace_lab::ingress::find_tool("nginx").is_none() {
        eprintln!("skipped: nginx is not installed (Debian package nginx-light)");
        return;
    }
    let run = lab_run("g", &["--ingress", "nginx"]);
    let r = requests(&run);
    check_joined_and_covered(r, "nginx");
    assert!(mean(r, "ingress-proxy") > 0.0);
    let new = lab_run(
        "k",
        &["--ingress", "nginx", "--load", "http-new-connection"],
    );
    let r = requests(&new);
    check_joined_and_covered(r, "nginx, new connections");
    assert!(mean(r, "ingress-proxy") > 0.0);
}

/// Issue 10's saturated proxy and issue 13's finding: the builtin proxy
/// pinned to one CPU (`--proxy-cpus 1`) under a Kubernetes-style CPU limit
/// of 50m (`--proxy-cpu-limit`), 64 keep-alive connections at 300
/// requests/s, more than it can serve in its quota: its requests wait in
/// its sockets (at least half the client's mean), it is the largest
/// category after the client's own, and the lab's closing finding names
/// it. The same lab at 100 requests/s on two connections, unpinned and
/// unlimited: no such finding.
#[test]
fn a_saturated_proxy_waits_to_be_read() {
    if !can_run_as_root("a_saturated_proxy_waits_to_be_read") {
        return;
    }
    let (run, stdout) = lab_run_with(
        "s",
        &[
            "--ingress",
            "builtin",
            "--proxy-cpus",
            "1",
            "--proxy-cpu-limit",
            "50m",
            "--connections",
            "64",
            "--rate",
            "300",
            "--duration",
            "3s",
        ],
    );
    let r = requests(&run);
    let proxy = &r["categories"]["ingress-proxy"];
    let proxy_mean = proxy["mean_us"].as_f64().unwrap();
    let queue = proxy["socket_queue_mean_us"].as_f64().unwrap();
    eprintln!(
        "saturated: ingress proxy {proxy_mean:.0} µs per request, of which waiting to be read {queue:.0} µs; joined {} of {}",
        r["joined"], r["count"]
    );
    let rate = r["join_rate"].as_f64().unwrap();
    assert!(
        rate >= 0.99,
        "join rate {rate} < 0.99 (measured 900 of 900 in 6 runs since the proxy's upstream exchanges are matched, 886-900 before)"
    );
    // Under a 50m CPU limit (a CFS quota of 5 ms per 100 ms) the proxy's
    // thread is throttled most of each period and requests wait to be
    // read: measured 32.8 of 33.9 ms of the proxy's time, 94 % of the
    // client's mean of 35.1 ms, against about 100 µs of 270 µs in a
    // healthy lab. Waits longer than the correlator's idle timeout (the
    // packets' journeys end without a delivery hop) count from the
    // packets' last hop. In a heavier run (client mean 318 ms) the
    // throttled thread also stalls between its reads and writes: 135 of
    // the proxy's 231 ms waited to be read.
    let client_mean = r["client_mean_us"].as_f64().unwrap();
    assert!(
        proxy_mean >= 0.5 * client_mean && queue >= 0.3 * proxy_mean,
        "the proxy's requests wait to be read: {queue:.0} of its {proxy_mean:.0} µs, the client's mean {client_mean:.0} µs"
    );
    for (name, c) in r["categories"].as_object().unwrap() {
        if name != "ingress-proxy" && name != "client" {
            assert!(
                c["mean_us"].as_f64().unwrap() < proxy_mean,
                "{name} ({}) must be below the ingress proxy ({proxy_mean:.0} µs)",
                c["mean_us"]
            );
        }
    }
    assert!(
        stdout.contains("Top finding (warning, ingress-proxy.saturated)"),
        "the closing finding names the saturated ingress proxy"
    );
    let (_, healthy) = lab_run_with(
        "t",
        &[
            "--ingress",
            "builtin",
            "--connections",
            "2",
            "--rate",
            "100",
            "--duration",
            "3s",
        ],
    );
    assert!(
        !healthy.contains("ingress-proxy.saturated"),
        "a healthy proxy is not saturated"
    );
}

/// `--node-view node1` on three nodes, a new connection per request: node1
/// holds the ingress proxy and one backend, the client is on node0 and
/// the other backend on node2, so node1 alone never sees the client. It
/// joins every request as `hoptrace diagnose` there would (a stand-in
/// client, from real kernel events), finds the same ingress-proxy time as
/// the lab's view of every node, no less application time (more when a
/// pooled upstream connection of the proxy landed on node2's backend:
/// `app.remote` holds node2's datapath and the wire; measured 188 against
/// 107 µs then, 97 against 97 µs when kube-proxy's random pick put every
/// upstream connection on node1), a client mean below the load
/// generator's, and no wait of the stand-in client to read. node0 alone,
/// with only the client, sees each request as one round trip to a
/// service beyond it.
#[test]
fn a_node_alone_joins_its_requests_with_stand_ins_for_the_rest() {
    if !can_run_as_root("a_node_alone_joins_its_requests_with_stand_ins_for_the_rest") {
        return;
    }
    let new_connections = lab_run(
        "v",
        &[
            "--nodes",
            "3",
            "--node-view",
            "node1",
            "--load",
            "http-new-connection",
        ],
    );
    check_node_view(&new_connections, "http-new-connection");
    // Keep-alive connections, each with a gap of 16 ms between its
    // requests: a stand-in client once took the previous request's packets
    // for the next one's and added the gap to it (8 ms per request).
    let (keep_alive, _) = lab_run_with(
        "w",
        &[
            "--nodes",
            "3",
            "--node-view",
            "node1",
            "--connections",
            "8",
            "--rate",
            "500",
            "--duration",
            "3s",
        ],
    );
    check_node_view(&keep_alive, "http-keep-alive");
    // node0 holds only the client: each request is one round trip to a
    // service node0 does not see (`app.remote`, category application),
    // with node0's datapath and the response's wait in the client's socket.
    let client_node = lab_run("u", &["--node-view", "node0"]);
    let all = requests(&client_node);
    let node = &client_node["node_view"]["requests"];
    let f = |r: &Value, k: &str| r[k].as_f64().unwrap();
    eprintln!(
        "node0 alone: joined {} of {}, client mean {:.0} µs ({:.0}), application {:.0} µs ({:.0}), ingress-proxy {:.0} µs ({:.0})",
        node["joined"],
        node["count"],
        f(node, "client_mean_us"),
        f(all, "client_mean_us"),
        mean(node, "application"),
        mean(all, "application"),
        mean(node, "ingress-proxy"),
        mean(all, "ingress-proxy"),
    );
    assert_eq!(client_node["node_view"]["node"], "node0");
    assert!(
        f(node, "join_rate") >= 0.99,
        "node0 alone joins its client's requests"
    );
    assert_eq!(
        mean(node, "ingress-proxy"),
        0.0,
        "node0 does not see the proxy"
    );
    assert!(
        mean(node, "application") > mean(all, "ingress-proxy") + mean(all, "application"),
        "the service beyond node0 holds the proxy's and the backend's time"
    );
    assert!(f(node, "client_mean_us") < f(all, "client_mean_us"));
}

/// The checks of [`a_node_alone_joins_its_requests_with_stand_ins_for_the_rest`]
/// on one run.
fn check_node_view(run: &Value, load: &str) {
    let all = requests(run);
    check_joined_and_covered(all, &format!("every node, {load}"));
    let view = &run["node_view"];
    assert_eq!(view["node"], "node1");
    let node = &view["requests"];
    let f = |r: &Value, k: &str| r[k].as_f64().unwrap();
    let (proxy_node, proxy_all) = (mean(node, "ingress-proxy"), mean(all, "ingress-proxy"));
    let (app_node, app_all) = (mean(node, "application"), mean(all, "application"));
    let slowest = |r: &Value| r["slowest"][0]["total_us"].as_f64().unwrap();
    eprintln!(
        "node1 alone, {load}: joined {} of {}, client mean {:.0} µs (the load generator's {:.0}), ingress-proxy {proxy_node:.1} µs ({proxy_all:.1}), application {app_node:.1} µs ({app_all:.1}), slowest {:.0} µs ({:.0})",
        node["joined"],
        node["count"],
        f(node, "client_mean_us"),
        f(all, "client_mean_us"),
        slowest(node),
        slowest(all),
    );
    assert!(
        f(node, "join_rate") >= 0.99,
        "node1 alone joins its requests"
    );
    assert!(node["count"].as_u64().unwrap() >= 300);
    // The proxy runs on node1: every one of its segments is node1's.
    // Measured 229.2 against 229.2 µs and 306.9 against 306.9 µs; on a
    // loaded machine once 381.9 against 459.3 µs (one request among 400
    // with some 31 ms more in the lab's view, not found again in 5 runs
    // of both views on the same events): the median is compared.
    let p50 = |r: &Value| r["categories"]["ingress-proxy"]["p50_us"].as_f64().unwrap();
    assert!(
        (p50(node) - p50(all)).abs() <= 0.05 * p50(all),
        "the same ingress-proxy time per request: median {:.1} against {:.1} µs (means {proxy_node:.1}, {proxy_all:.1})",
        p50(node),
        p50(all)
    );
    assert!(
        app_node >= 0.95 * app_all,
        "no less application time: {app_node:.1} against {app_all:.1} µs"
    );
    // Each request node1 sees is part of the same request the lab sees.
    assert!(
        f(node, "client_mean_us") < f(all, "client_mean_us"),
        "node1 does not see node0's part of the request"
    );
    assert!(
        slowest(node) <= slowest(all),
        "no request is longer in node1's view than in the lab's"
    );
    let client_queue = node["categories"]["client"]["socket_queue_mean_us"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(
        client_queue < 1.0,
        "a stand-in client reads when the response left node1: {client_queue} µs"
    );
}

/// Whether the run's timeline took reads and writes from the `syscalls:`
/// fallback (its note says so).
fn used_syscalls_fallback(r: &Value) -> bool {
    r["notes"].as_array().is_some_and(|notes| {
        notes.iter().any(|n| {
            n.as_str()
                .is_some_and(|n| n.contains("from the syscalls: tracepoints"))
        })
    })
}

/// Issue 10's fallback for kernels without `sock:sock_recv_length`
/// (forced with `--sock-hooks syscalls`): joined and covered like the
/// tp_btf hooks with the builtin ingress (keep-alive and new connections)
/// and without ingress, and the same split of the client's time. The
/// split is compared as shares of each run's client mean within 0.15:
/// back-to-back tp_btf runs of this load differ by up to 0.06 in the
/// ingress proxy's and the application's share on this 2-vCPU machine
/// (shares 0.32-0.38 and 0.09-0.19 over six runs of either kind), while
/// the hooks themselves time each operation within microseconds of each
/// other (timeline_cost.rs, `syscalls_fallback_matches_the_sock_tracepoints`).
#[test]
fn syscalls_fallback_joins_and_splits_like_the_sock_tracepoints() {
    if !can_run_as_root("syscalls_fallback_joins_and_splits_like_the_sock_tracepoints") {
        return;
    }
    let btf = lab_run("sa", &["--ingress", "builtin"]);
    let sys = lab_run("sb", &["--ingress", "builtin", "--sock-hooks", "syscalls"]);
    let (rb, rs) = (requests(&btf), requests(&sys));
    check_joined_and_covered(rb, "builtin, tp_btf");
    check_joined_and_covered(rs, "builtin, syscalls fallback");
    assert!(used_syscalls_fallback(rs), "the fallback's note: {rs:#}");
    let share = |r: &Value, c: &str| mean(r, c) / r["client_mean_us"].as_f64().unwrap();
    for category in ["ingress-proxy", "application"] {
        let (b, s) = (share(rb, category), share(rs, category));
        eprintln!(
            "{category}: tp_btf {:.1} µs ({b:.3} of the client's mean), syscalls {:.1} µs ({s:.3})",
            mean(rb, category),
            mean(rs, category)
        );
        assert!(s > 0.0, "{category} measured by the fallback");
        assert!(
            (s - b).abs() <= 0.15,
            "{category}: share {s:.3} with the fallback, {b:.3} with tp_btf"
        );
    }
    let run = lab_run(
        "sc",
        &[
            "--ingress",
            "builtin",
            "--load",
            "http-new-connection",
            "--sock-hooks",
            "syscalls",
        ],
    );
    let r = requests(&run);
    check_joined_and_covered(r, "builtin, new connections, syscalls fallback");
    assert!(used_syscalls_fallback(r));
    assert!(mean(r, "ingress-proxy") > 0.0);
    let run = lab_run("sd", &["--ingress", "none", "--sock-hooks", "syscalls"]);
    let r = requests(&run);
    check_joined_and_covered(r, "no ingress, syscalls fallback");
    assert!(used_syscalls_fallback(r));
    assert_eq!(mean(r, "ingress-proxy"), 0.0, "no proxy, no proxy time");
}

/// The fallback with the real proxies whose syscalls it was built for
/// (nginx: recv/readv and writev/send; HAProxy: recv and send): nginx with
/// keep-alive, HAProxy with a new connection per request, each joined and
/// covered, with the proxy's time measured.
#[test]
fn syscalls_fallback_joins_nginx_and_haproxy() {
    if !can_run_as_root("syscalls_fallback_joins_nginx_and_haproxy") {
        return;
    }
    for (proxy, tag, load) in [
        ("nginx", "se", "http-keep-alive"),
        ("haproxy", "sf", "http-new-connection"),
    ] {
        if hoptrace_lab::ingress::find_tool(proxy).is_none() {
            eprintln!("skipped {proxy}: not installed (its Debian package)");
            continue;
        }
        let run = lab_run(
            tag,
            &[
                "--ingress",
                proxy,
                "--load",
                load,
                "--sock-hooks",
                "syscalls",
            ],
        );
        let r = requests(&run);
        check_joined_and_covered(r, &format!("{proxy}, {load}, syscalls fallback"));
        assert!(used_syscalls_fallback(r));
        assert!(mean(r, "ingress-proxy") > 0.0, "{proxy}: its time measured");
    }
}

/// Packets netfilter rules dropped in a run, over its nodes' ledgers.
fn netfilter_drops(run: &Value) -> u64 {
    run["nodes"]
        .as_array()
        .expect("node reports")
        .iter()
        .flat_map(|n| n["drops"].as_array().cloned().unwrap_or_default())
        .filter(|d| d["reason"] == "netfilter_drop")
        .map(|d| d["count"].as_u64().unwrap_or(0))
        .sum()
}

/// `requests.retransmitted` and `requests.retransmit_mean_us` of a run.
fn retransmits(r: &Value) -> (u64, f64) {
    (
        r["retransmitted"].as_u64().expect("requests.retransmitted"),
        r["retransmit_mean_us"]
            .as_f64()
            .expect("requests.retransmit_mean_us"),
    )
}

/// Every slowest waterfall's segments sum to its total (µs, rounded in
/// the document), and the categories' means to the attributed mean.
fn check_sums(r: &Value, what: &str) {
    for w in r["slowest"].as_array().expect("waterfalls") {
        let total = w["total_us"].as_f64().unwrap();
        let sum: f64 = w["segments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["duration_us"].as_f64().unwrap())
            .sum();
        assert!(
            (sum - total).abs() <= 0.01,
            "{what}: segments sum to {sum} µs, the request took {total} µs"
        );
    }
    let attributed = r["attributed_mean_us"].as_f64().unwrap();
    let categories: f64 = r["categories"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["mean_us"].as_f64().unwrap())
        .sum();
    assert!(
        (categories - attributed).abs() <= 1e-6 * attributed.max(1.0),
        "{what}: categories sum to {categories} µs per request, attributed {attributed} µs"
    );
}

/// `--drop-probability 0.05`: the ingress proxy's pod drops 5 % of the
/// backends' response data segments on arrival (an iptables `statistic`
/// rule in its namespace), TCP waits for a retransmission, and the request timeline names that wait
/// `tcp.retransmit` instead of leaving it in the leg's `stack`. The wait
/// is of the retransmission timeout's order: Linux's minimum RTO is
/// 200 ms (`TCP_RTO_MIN`) and on a quiet lab link (srtt of tens of µs)
/// the RTO is that minimum (a tail loss probe of a one-segment response
/// waits 2 × srtt + 200 ms); a retransmission lost again adds the doubled
/// timeout (another 400 ms), which a few of some 20 requests do, so the
/// mean over the retransmitted requests lies between 190 ms (a timer
/// that fires a few ms early against the write) and 400 ms. Measured: 15-26 of 400
/// requests, mean 217-276 ms (the higher with more double losses: 26
/// requests for 32 drops), 400 of 400 joined. The same lab without loss:
/// none.
#[test]
fn lost_responses_wait_in_tcp_retransmit() {
    if !can_run_as_root("lost_responses_wait_in_tcp_retransmit") {
        return;
    }
    let clean = lab_run("c", &["--ingress", "builtin"]);
    let (lossy, stdout) = lab_run_with(
        "l",
        &[
            "--duration",
            "4s",
            "--rate",
            "100",
            "--connections",
            "2",
            "--ingress",
            "builtin",
            "--drop-probability",
            "0.05",
        ],
    );
    let (rc, rl) = (requests(&clean), requests(&lossy));
    let (clean_n, _) = retransmits(rc);
    let (n, mean_us) = retransmits(rl);
    let joined = rl["joined"].as_u64().unwrap();
    let rate = rl["join_rate"].as_f64().unwrap();
    eprintln!(
        "loss 5%: {n} of {joined} joined requests retransmitted, tcp.retransmit mean {mean_us:.0} µs, join rate {rate:.4}; without loss: {clean_n}"
    );
    check_sums(rc, "without loss");
    check_sums(rl, "with loss");
    assert_eq!(clean_n, 0, "no loss, no retransmission");
    assert!(
        rc["slowest"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["segments"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["segment"] != "tcp.retransmit")),
        "no tcp.retransmit segment without loss"
    );
    assert!(
        n >= 3,
        "5% of about 400 responses lost: some requests retransmitted ({n})"
    );
    assert!(
        (190_000.0..=400_000.0).contains(&mean_us),
        "tcp.retransmit's mean {mean_us:.0} µs is of the RTO's order (200 ms minimum)"
    );
    assert!(rate >= 0.99, "join rate {rate} < 0.99 with loss");
    // What loss adds to kernel-other is named: measured 1.00 of the
    // growth in three runs (the wait of a loss whose probe the tracepoint
    // misses is found by the lost packet's two journeys); before the
    // journeys were used, 0.52-0.74 (a tail loss probe answered before
    // the receiver's own timeout left no event).
    let retransmit_per_request = mean_us * n as f64 / joined as f64;
    let growth = mean(rl, "kernel-other") - mean(rc, "kernel-other");
    eprintln!(
        "kernel-other grew {growth:.0} µs per request, of which tcp.retransmit {retransmit_per_request:.0} µs ({:.2})",
        retransmit_per_request / growth
    );
    assert!(
        mean(rl, "kernel-other") >= retransmit_per_request,
        "tcp.retransmit is kernel-other time"
    );
    assert!(
        retransmit_per_request >= 0.8 * growth,
        "tcp.retransmit ({retransmit_per_request:.0} µs per request) is most of kernel-other's growth ({growth:.0} µs)"
    );
    // The ground truth: the packets the rule dropped, counted by the
    // node ledger's drop reasons. Each retransmitted request lost at least
    // one; a request that lost its response twice counts once. Measured
    // 15 of 15, 23 of 24, 22 of 25, 16 of 17, 21 of 24, 26 of 32 drops;
    // with the tracepoint alone about half the waits were found.
    let dropped = netfilter_drops(&lossy) - netfilter_drops(&clean);
    eprintln!("netfilter drops: {dropped} more with loss");
    assert!(
        n <= dropped && n as f64 >= 0.6 * dropped as f64,
        "{n} retransmitted requests for {dropped} lost responses"
    );
    assert!(
        stdout.contains("waited for a TCP retransmission"),
        "the terminal says how many requests waited for a retransmission"
    );
}
