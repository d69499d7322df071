//! Issue "`hoptrace diagnose`": provoke each condition on a namespace lab,
//! run the real binary with `--netns` on the node concerned, and check the
//! finding's id and severity in `hoptrace.diagnosis.v1` (and the exit
//! code); a healthy lab gives no warning or critical finding.
//!
//! One flannel-vxlan lab serves the healthy run and the conditions that
//! are undone after their run (tbf, rp_filter, MTU) or injected for the
//! run only (conntrack INVALID packets, bad outer UDP checksums): each
//! condition's guard undoes it on drop, also when an assertion fails. The
//! 20,000-service lab is its own.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use hoptrace_lab::{
    flood::checksum,
    kubeproxy::Protocol,
    netns::with_netns,
    topology::{Datapath, KubeProxyMode, Lab, LabSpec},
};
use serde_json::Value;
use tests::{
    can_run_with_kernel_programs, hoptrace_bin, http_requests_new_connection, sh, start_backend,
};

const TRACE: &str = "4s";

fn spec(prefix: &str, services: u32) -> LabSpec {
    LabSpec {
        prefix: prefix.to_owned(),
        nodes: 2,
        pods_per_node: 1,
        datapath: Datapath::FlannelVxlan,
        kube_proxy: KubeProxyMode::Iptables,
        services,
    }
}

/// Runs `ip netns exec ns argv...` in a guard's undo list.
struct Undo(Vec<Vec<String>>);

impl Drop for Undo {
    fn drop(&mut self) {
        for argv in self.0.iter().rev() {
            let _ = Command::new(&argv[0]).args(&argv[1..]).status();
        }
    }
}

fn in_ns(ns: &str, argv: &[&str]) -> Vec<String> {
    let mut full: Vec<String> = ["ip", "netns", "exec", ns].map(str::to_owned).to_vec();
    full.extend(argv.iter().map(|s| (*s).to_owned()));
    full
}

fn run_in(ns: &str, argv: &[&str]) -> String {
    let full = in_ns(ns, argv);
    let refs: Vec<&str> = full.iter().map(String::as_str).collect();
    sh(&refs)
}

/// A running `hoptrace diagnose`; killed on drop if still running.
struct Diagnose {
    child: Option<Child>,
    json: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Diagnose {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `hoptrace diagnose` on node namespace `ns`; returns once every
/// hook is attached.
fn start_diagnose(ns: &str) -> Diagnose {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("diagnosis.json");
    let ready = dir.path().join("ready");
    let child = Command::new(hoptrace_bin())
        .args(["diagnose", "--duration", TRACE, "--netns"])
        .arg(Path::new("/run/netns").join(ns))
        .arg("--json")
        .arg(&json)
        .arg("--ready-file")
        .arg(&ready)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hoptrace diagnose");
    let mut d = Diagnose {
        child: Some(child),
        json,
        _dir: dir,
    };
    let start = Instant::now();
    while !ready.exists() {
        let exited = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
        assert!(
            exited.is_none(),
            "hoptrace diagnose exited early: {exited:?}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not ready in 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    d
}

/// Waits for the diagnosis; returns its exit code and document.
fn finish(mut d: Diagnose) -> (i32, Value) {
    let child = d.child.take().expect("running");
    let out = child
        .wait_with_output()
        .expect("wait for hoptrace diagnose");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for line in stdout.lines() {
        assert!(
            line.chars().count() <= 100,
            "wider than 100 columns: {line}"
        );
    }
    let code = out.status.code().expect("exit code");
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&d.json).expect("diagnosis.json"))
            .expect("JSON");
    assert_eq!(doc["schema"], "hoptrace.diagnosis.v1");
    assert_eq!(doc["report"]["schema"], "hoptrace.report.v1");
    (code, doc)
}

fn findings(doc: &Value) -> Vec<(String, String)> {
    doc["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["id"].as_str().unwrap_or_default().to_owned(),
                f["severity"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn finding<'a>(doc: &'a Value, id: &str) -> &'a Value {
    doc["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no finding {id}: {:?}", findings(doc)))
}

fn number(finding: &Value, name: &str) -> f64 {
    finding["numbers"]
        .as_array()
        .expect("numbers")
        .iter()
        .find(|n| n["name"] == name)
        .and_then(|n| n["value"].as_f64())
        .unwrap_or_else(|| panic!("no number {name} in {finding}"))
}

/// Sends `n` UDP datagrams of `len` bytes from inside `ns` to `to`; with
/// `df`, the kernel sets DF and never fragments them.
fn udp_burst(ns: &str, to: SocketAddr, n: usize, len: usize, df: bool) {
    with_netns(ns, || {
        let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
        if df {
            use std::os::fd::AsRawFd as _;
            let value: libc::c_int = libc::IP_PMTUDISC_DO;
            // SAFETY: a valid socket fd and a pointer to a c_int of the
            // length passed, alive for the call.
            let rc = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_MTU_DISCOVER,
                    (&raw const value).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "IP_MTU_DISCOVER");
        }
        let payload = vec![b'x'; len];
        for _ in 0..n {
            // EMSGSIZE after a learned PMTU is part of what is tested.
            let _ = socket.send_to(&payload, to);
        }
    })
    .expect("enter netns");
}

fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload_len: usize) -> Vec<u8> {
    let total = (20 + payload_len) as u16;
    let mut h = vec![0x45, 0];
    h.extend(total.to_be_bytes());
    h.extend([0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
    h.extend(src.octets());
    h.extend(dst.octets());
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// `n` TCP segments with SYN and FIN set (flags conntrack calls INVALID)
/// from `src` to `dst`, sent through a raw socket inside `ns`.
fn syn_fin(ns: &str, src: Ipv4Addr, dst: SocketAddrV4, n: usize) {
    with_netns(ns, || {
        // SAFETY: plain socket(2) call; the fd is closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(fd >= 0, "raw socket");
        for i in 0..n {
            let mut tcp = vec![0u8; 20];
            tcp[0..2].copy_from_slice(&(40000 + i as u16).to_be_bytes());
            tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
            tcp[4..8].copy_from_slice(&(1000 + i as u32).to_be_bytes());
            tcp[12] = 5 << 4;
            tcp[13] = 0x03; // FIN | SYN
            tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
            let mut pseudo = Vec::new();
            pseudo.extend(src.octets());
            pseudo.extend(dst.ip().octets());
            pseudo.extend([0, 6, 0, 20]);
            pseudo.extend(&tcp);
            let c = checksum(&pseudo);
            tcp[16..18].copy_from_slice(&c.to_be_bytes());
            let mut packet = ipv4_header(src, *dst.ip(), 6, tcp.len());
            packet.extend(&tcp);
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(dst.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: `packet` and `addr` are valid for the lengths passed.
            let sent = unsafe {
                libc::sendto(
                    fd,
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&raw const addr).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            assert_eq!(sent, packet.len() as isize, "sendto");
        }
        // SAFETY: `fd` is ours and closed once.
        unsafe { libc::close(fd) };
    })
    .expect("enter netns");
}

fn mac(text: &str) -> [u8; 6] {
    let mut out = [0u8; 6];
    for (i, part) in text.trim().split(':').enumerate() {
        out[i] = u8::from_str_radix(part, 16).expect("mac");
    }
    out
}

/// `n` VXLAN frames (port 8472, VNI 1) carrying a UDP datagram from
/// `inner_src` to `inner_dst`, with a wrong outer UDP checksum, written
/// into switch port `port` (in namespace `switch_ns`) towards the node
/// whose uplink MAC is `dst_mac` and underlay IP `outer_dst`.
#[expect(clippy::too_many_arguments, reason = "one frame's every field")]
fn bad_vxlan(
    switch_ns: &str,
    port: &str,
    dst_mac: [u8; 6],
    outer_src: Ipv4Addr,
    outer_dst: Ipv4Addr,
    inner_dst_mac: [u8; 6],
    inner_src: Ipv4Addr,
    inner_dst: SocketAddrV4,
    n: usize,
) {
    with_netns(switch_ns, || {
        let ifindex = nix::net::if_::if_nametoindex(port).expect("switch port index");
        // SAFETY: plain socket(2) call; the fd is closed below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            )
        };
        assert!(fd >= 0, "packet socket");
        for i in 0..n {
            let payload = b"hoptrace bad checksum";
            let mut inner_udp = Vec::new();
            inner_udp.extend((41000 + i as u16).to_be_bytes());
            inner_udp.extend(inner_dst.port().to_be_bytes());
            inner_udp.extend(((8 + payload.len()) as u16).to_be_bytes());
            inner_udp.extend([0, 0]);
            inner_udp.extend(payload);
            let mut inner = Vec::new();
            inner.extend(inner_dst_mac);
            inner.extend([0x02, 0, 0, 0, 0, 0x01]);
            inner.extend([0x08, 0x00]);
            inner.extend(ipv4_header(inner_src, *inner_dst.ip(), 17, inner_udp.len()));
            inner.extend(&inner_udp);
            let mut vxlan = vec![0x08, 0, 0, 0, 0, 0, 0x01, 0];
            vxlan.extend(&inner);
            let mut udp = Vec::new();
            udp.extend(50000u16.to_be_bytes());
            udp.extend(8472u16.to_be_bytes());
            udp.extend(((8 + vxlan.len()) as u16).to_be_bytes());
            udp.extend(0xdeadu16.to_be_bytes()); // wrong, non-zero
            udp.extend(&vxlan);
            let mut frame = Vec::new();
            frame.extend(dst_mac);
            frame.extend([0x02, 0, 0, 0, 0, 0x02]);
            frame.extend([0x08, 0x00]);
            frame.extend(ipv4_header(outer_src, outer_dst, 17, udp.len()));
            frame.extend(&udp);
            // SAFETY: zeroed sockaddr_ll is a valid value; fields set below.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&dst_mac);
            // SAFETY: `frame` and `addr` are valid for the lengths passed.
            let sent = unsafe {
                libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const addr).cast(),
                    size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            assert_eq!(sent, frame.len() as isize, "sendto");
        }
        // SAFETY: `fd` is ours and closed once.
        unsafe { libc::close(fd) };
    })
    .expect("enter switch netns");
}

fn no_warning_or_critical(doc: &Value) {
    let bad: Vec<_> = findings(doc)
        .into_iter()
        .filter(|(_, s)| s != "info")
        .collect();
    assert!(bad.is_empty(), "a healthy lab has warnings: {bad:?}");
}

#[test]
fn provoked_conditions_give_their_findings_and_a_healthy_lab_none() {
    if !can_run_with_kernel_programs(
        "provoked_conditions_give_their_findings_and_a_healthy_lab_none",
    ) {
        return;
    }
    let prefix = format!("ht-d{}-", std::process::id() % 1000);
    let lab = Lab::build(&spec(&prefix, 0)).expect("build lab");
    let service = lab.service();
    let backend = service.backends[0].clone();
    let _server = start_backend(&backend.netns);
    let tcp: SocketAddr = service.connect_addr(Protocol::Tcp).expect("tcp").into();
    let udp: SocketAddr = service.connect_addr(Protocol::Udp).expect("udp").into();
    let client = lab.client_pod().clone();
    let node0 = lab.nodes()[0].clone();
    let node1 = lab.nodes()[backend.node_index].clone();
    let switch = spec(&prefix, 0).switch_netns();
    assert_eq!(
        http_requests_new_connection(&client.netns, tcp, 3),
        3,
        "warm-up"
    );

    // Healthy: new connections and UDP through the ClusterIP.
    let d = start_diagnose(&node0.netns);
    assert_eq!(http_requests_new_connection(&client.netns, tcp, 20), 20);
    udp_burst(&client.netns, udp, 20, 100, false);
    let (code, doc) = finish(d);
    no_warning_or_critical(&doc);
    assert_eq!(code, 0);
    let kp = finding(&doc, "kube-proxy.rule-cost");
    eprintln!(
        "healthy: kube-proxy {} µs per new connection",
        number(kp, "mean_us")
    );

    // A tbf qdisc on node 0's uplink, overrun by a burst of UDP.
    {
        run_in(
            &node0.netns,
            &[
                "tc",
                "qdisc",
                "add",
                "dev",
                &node0.uplink_device,
                "root",
                "tbf",
                "rate",
                "8mbit",
                "burst",
                "10kb",
                "latency",
                "20ms",
            ],
        );
        let _undo = Undo(vec![in_ns(
            &node0.netns,
            &["tc", "qdisc", "del", "dev", &node0.uplink_device, "root"],
        )]);
        let d = start_diagnose(&node0.netns);
        udp_burst(&client.netns, udp, 300, 1000, false);
        let (_, doc) = finish(d);
        let f = finding(&doc, "queueing.qdisc-delay");
        eprintln!(
            "tbf: qdisc p99 {} µs, mean {} µs",
            number(f, "p99_us"),
            number(f, "mean_us")
        );
        assert_eq!(f["severity"], "warning");
        let f = finding(&doc, "queueing.qdisc-drops");
        eprintln!("tbf: {} qdisc drops", number(f, "drops"));
        assert_eq!(f["severity"], "warning");
    }

    // Strict rp_filter on node 1 with an asymmetric route back to the client.
    {
        let client_ip = format!("{}/32", client.ip);
        let tunnel = node1.tunnel_device.clone().expect("flannel.1");
        let old_all = run_in(
            &node1.netns,
            &["sysctl", "-n", "net.ipv4.conf.all.rp_filter"],
        );
        let old_dev = run_in(
            &node1.netns,
            &["sysctl", "-n", &format!("net/ipv4/conf/{tunnel}/rp_filter")],
        );
        let _undo = Undo(vec![
            in_ns(
                &node1.netns,
                &[
                    "sysctl",
                    "-q",
                    "-w",
                    &format!("net.ipv4.conf.all.rp_filter={}", old_all.trim()),
                ],
            ),
            in_ns(
                &node1.netns,
                &[
                    "sysctl",
                    "-q",
                    "-w",
                    &format!("net/ipv4/conf/{tunnel}/rp_filter={}", old_dev.trim()),
                ],
            ),
            in_ns(&node1.netns, &["ip", "route", "del", &client_ip]),
        ]);
        run_in(
            &node1.netns,
            &[
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.conf.all.rp_filter=1",
                &format!("net/ipv4/conf/{tunnel}/rp_filter=1"),
            ],
        );
        run_in(
            &node1.netns,
            &[
                "ip",
                "route",
                "add",
                &client_ip,
                "dev",
                &node1.uplink_device,
            ],
        );
        let d = start_diagnose(&node1.netns);
        udp_burst(&client.netns, udp, 20, 100, false);
        let (code, doc) = finish(d);
        let f = finding(&doc, "drops.rp-filter");
        eprintln!("rp_filter: {} drops", number(f, "drops"));
        assert_eq!(f["severity"], "critical");
        assert!(
            f["examples"].as_array().is_some_and(|e| !e.is_empty()),
            "example flows"
        );
        assert_eq!(code, 3, "critical → exit code 3");
    }

    // conntrack INVALID packets (SYN+FIN) dropped by KUBE-FORWARD on node 0.
    {
        let d = start_diagnose(&node0.netns);
        syn_fin(
            &client.netns,
            client.ip,
            SocketAddrV4::new(backend.ip, 8080),
            20,
        );
        let (_, doc) = finish(d);
        let f = finding(&doc, "drops.conntrack-invalid");
        eprintln!(
            "INVALID: {} drops, {} INVALID by conntrack",
            number(f, "drops"),
            number(f, "conntrack_invalid")
        );
        assert_eq!(f["severity"], "warning");
        // Issue 9: every drop is in the report with its flow and length,
        // not only slow exemplars; the drop in kube-proxy's filter band
        // (KUBE-FORWARD) is kube-proxy's time, not an unnamed segment.
        let report = &doc["report"];
        let to_backend = format!("{}:8080", backend.ip);
        let group = report["drop_records"]
            .as_array()
            .expect("drop_records")
            .iter()
            .find(|g| {
                g["location"] == "nf.forward.-1"
                    && g["records"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|r| r["flow"]["dst"] == to_backend.as_str()))
            })
            .unwrap_or_else(|| {
                panic!("no drop group at nf.forward.-1: {}", report["drop_records"])
            });
        let records = group["records"].as_array().expect("records");
        let ours: Vec<&Value> = records
            .iter()
            .filter(|r| r["flow"]["dst"] == to_backend.as_str())
            .collect();
        assert_eq!(ours.len(), 20, "every SYN+FIN drop listed: {group}");
        for r in &ours {
            assert_eq!(r["flow"]["proto"], "tcp");
            assert_eq!(r["len_bytes"], 40, "IPv4 + TCP headers: {r}");
        }
        let segments = report["segments"].as_array().expect("segments");
        assert!(
            segments
                .iter()
                .all(|s| s["segment"] != "nf.forward.-1..drop"),
            "the filter-band drop has a name"
        );
        assert!(
            segments.iter().any(
                |s| s["segment"] == "netfilter.forward.filter" && s["category"] == "kube-proxy"
            )
        );
    }

    // Bad outer UDP checksums on the VXLAN port of node 1.
    {
        let tunnel = node1.tunnel_device.clone().expect("flannel.1");
        let uplink_mac = mac(&run_in(
            &node1.netns,
            &[
                "cat",
                &format!("/sys/class/net/{}/address", node1.uplink_device),
            ],
        ));
        let vtep_mac = mac(&run_in(
            &node1.netns,
            &["cat", &format!("/sys/class/net/{tunnel}/address")],
        ));
        let d = start_diagnose(&node1.netns);
        bad_vxlan(
            &switch,
            &node1.switch_port,
            uplink_mac,
            node0.underlay_ip,
            node1.underlay_ip,
            vtep_mac,
            client.ip,
            SocketAddrV4::new(backend.ip, 5353),
            20,
        );
        let (code, doc) = finish(d);
        let f = finding(&doc, "tunnel.udp-checksum");
        eprintln!(
            "checksum: {} tunnel drops, {} UDP_CSUM drops, InCsumErrors +{}",
            number(f, "tunnel_drops"),
            number(f, "udp_csum_drops"),
            number(f, "udp_in_csum_errors")
        );
        // The dropped packets are seen as the VXLAN packets they were
        // (before, their flows said `encapsulation none` and this was 0).
        assert!(number(f, "tunnel_drops") > 0.0, "{f}");
        assert_eq!(f["severity"], "critical");
        assert_eq!(code, 3);
    }

    // Underlay MTU 1400 under a 1450 VXLAN that sets DF.
    {
        let tunnel = node0.tunnel_device.clone().expect("flannel.1");
        let _undo = Undo(vec![
            in_ns(
                &node0.netns,
                &["ip", "link", "set", &node0.uplink_device, "mtu", "1500"],
            ),
            in_ns(
                &node0.netns,
                &["ip", "link", "set", &tunnel, "type", "vxlan", "df", "unset"],
            ),
        ]);
        run_in(
            &node0.netns,
            &["ip", "link", "set", &node0.uplink_device, "mtu", "1400"],
        );
        run_in(
            &node0.netns,
            &["ip", "link", "set", &tunnel, "type", "vxlan", "df", "set"],
        );
        let d = start_diagnose(&node0.netns);
        udp_burst(&client.netns, udp, 20, 1400, true);
        let (code, doc) = finish(d);
        let f = finding(&doc, "mtu.tunnel-exceeds-underlay");
        eprintln!(
            "MTU: tunnel {} underlay {}; FragFails +{}, ICMP unreachable sent +{}, encapsulated drops {}",
            number(f, "tunnel_mtu"),
            number(f, "underlay_mtu"),
            number(f, "frag_fails"),
            number(f, "icmp_dest_unreach_sent"),
            number(f, "encapsulated_drops")
        );
        assert_eq!(f["severity"], "critical");
        assert!(
            number(f, "frag_fails") + number(f, "encapsulated_drops") > 0.0,
            "the oversized packets were seen failing"
        );
        // Issue 9: the node's ICMP "fragmentation needed" to the client is
        // visible as such, with the MTU it announces.
        let icmp = doc["report"]["icmp"].as_array().expect("icmp");
        if number(f, "icmp_dest_unreach_sent") > 0.0 {
            let frag = icmp
                .iter()
                .find(|m| m["name"] == "fragmentation-needed")
                .unwrap_or_else(|| panic!("no fragmentation-needed in {icmp:?}"));
            assert_eq!(
                (frag["type"].as_u64(), frag["code"].as_u64()),
                (Some(3), Some(4))
            );
            assert!(
                frag["mtu"].as_u64().is_some_and(|m| m > 1000 && m < 1450),
                "{frag}"
            );
        }
        assert_eq!(code, 3);
    }
    lab.teardown().expect("teardown");
}

/// 20,000 services in iptables mode. The rules go in through the legacy
/// (x_tables) backend, as on nodes whose `iptables` is `iptables-legacy`:
/// the nf_tables backend takes over 10 minutes per node to restore them on
/// the 2-core CI VM, the legacy one about 4 s; kube-proxy's chains and
/// their cost per new connection are the same.
#[test]
fn twenty_thousand_services_in_iptables_mode_are_critical() {
    if !can_run_with_kernel_programs("twenty_thousand_services_in_iptables_mode_are_critical") {
        return;
    }
    let prefix = format!("ht-s{}-", std::process::id() % 1000);
    let lab = Lab::build(&LabSpec {
        kube_proxy: KubeProxyMode::IptablesLegacy,
        ..spec(&prefix, 20_000)
    })
    .expect("build lab");
    let service = lab.service();
    let _server = start_backend(&service.backends[0].netns);
    let tcp: SocketAddr = service.connect_addr(Protocol::Tcp).expect("tcp").into();
    let client = lab.client_pod().netns.clone();
    assert_eq!(http_requests_new_connection(&client, tcp, 3), 3, "warm-up");
    let d = start_diagnose(&lab.nodes()[0].netns);
    assert_eq!(http_requests_new_connection(&client, tcp, 10), 10);
    let (code, doc) = finish(d);
    let f = finding(&doc, "kube-proxy.rule-cost");
    eprintln!(
        "20,000 services: kube-proxy {} µs per new connection (p99 {} µs), {} services, {} KUBE-SERVICES rules",
        number(f, "mean_us"),
        number(f, "p99_us"),
        number(f, "services"),
        number(f, "service_rules")
    );
    assert_eq!(f["severity"], "critical");
    assert!(number(f, "services") >= 20_000.0);
    assert_eq!(code, 3);
    lab.teardown().expect("teardown");
}

#[test]
fn diagnose_without_root_exits_2() {
    if nix::unistd::geteuid().is_root() {
        // As root, the unprivileged path is exercised by dropping to nobody.
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(hoptrace_bin())
            .args(["diagnose", "--duration", "1s"])
            .output();
        let Ok(out) = out else {
            eprintln!("SKIP: setpriv not available");
            return;
        };
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Issue 13's ingress-proxy finding through `diagnose` itself (the lab
/// reaches the same rule through its own tracer): the builtin proxy, named
/// as the lab names it, in a pod of the backend's node, under a CPU limit
/// of 50m (`hoptrace_lab::cpulimit`, as `lab --proxy-cpu-limit`: a CFS
/// quota of 5 ms per 100 ms, as Kubernetes sets for `limits.cpu: 50m`;
/// unlike a saturating rate, this does not depend on how fast the machine
/// is); 64 keep-alive connections at 300 requests/s
/// from the client pod on the other node. `diagnose --netns` on the proxy's node joins the
/// proxy's reads and writes into its request timeline and reports
/// `ingress-proxy.saturated` (warning); the same proxy at 50 requests/s on
/// two connections does not.
#[test]
fn diagnose_names_a_saturated_ingress_proxy() {
    use hoptrace_core::correlate::requests::BUILTIN_PROXY_COMM;
    use hoptrace_lab::{
        ingress,
        loadgen::{LoadMode, LoadSpec, run_load},
        servers::{NetnsTask, stopped},
    };
    use std::sync::Arc;

    if !can_run_with_kernel_programs("diagnose_names_a_saturated_ingress_proxy") {
        return;
    }
    let prefix = format!("ht-q{}-", std::process::id() % 1000);
    let lab = Lab::build(&LabSpec {
        pods_per_node: 2,
        ..spec(&prefix, 0)
    })
    .expect("build lab");
    let service = lab.service();
    let backend = service.backends[0].clone();
    let _servers: Vec<_> = service
        .backends
        .iter()
        .flat_map(|b| start_backend(&b.netns))
        .collect();
    let tcp: SocketAddr = service.connect_addr(Protocol::Tcp).expect("tcp").into();
    let client = lab.client_pod().clone();
    let proxy_pod = lab
        .pods_on(backend.node_index)
        .find(|p| p.netns != backend.netns && p.netns != client.netns)
        .expect("a second pod on the backend's node")
        .clone();
    let proxy_node = lab.nodes()[backend.node_index].netns.clone();
    let listen = SocketAddr::from((proxy_pod.ip, 8081));
    let limit = match hoptrace_lab::cpulimit::CpuLimit::new(50) {
        Ok(limit) => limit,
        Err(e @ hoptrace_lab::cpulimit::CpuLimitError::NoController) => {
            eprintln!("SKIP: {e}");
            return;
        }
        Err(e) => panic!("CPU limit: {e}"),
    };
    let Ok(tasks) = limit.thread_file() else {
        eprintln!("SKIP: cgroup v2 cannot limit the builtin proxy's thread apart");
        return;
    };
    let _proxy = NetnsTask::spawn(
        proxy_pod.netns.clone(),
        move || std::net::TcpListener::bind(listen),
        move |listener, stop| {
            ingress::name_this_thread(BUILTIN_PROXY_COMM);
            // "0": this thread only (cgroup v1 `tasks`).
            std::fs::write(&tasks, "0").expect("the proxy thread joins its CPU limit");
            async move {
                let _ = ingress::serve_builtin_proxy_with(
                    listener,
                    tcp,
                    stopped(stop),
                    Duration::ZERO,
                    Arc::default(),
                )
                .await;
            }
        },
    )
    .expect("builtin proxy");
    assert_eq!(
        http_requests_new_connection(&client.netns, listen, 3),
        3,
        "warm-up through the proxy"
    );

    let load = move |connections: usize, rate: f64, seconds: u64| {
        let spec = LoadSpec {
            mode: LoadMode::HttpKeepAlive,
            connections,
            rate,
            duration: Duration::from_secs(seconds),
            ..LoadSpec::default()
        };
        let result = hoptrace_lab::netns::with_netns(&client.netns, move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(run_load(&spec, listen, None))
                .expect("load")
        })
        .expect("enter the client pod");
        eprintln!(
            "load {rate}/s over {connections}: {} of {} answered",
            result.ok, result.scheduled
        );
        assert!(result.ok * 2 >= result.scheduled, "the proxy answers");
        result
    };
    let proxy_finding = |doc: &Value| {
        doc["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .find(|f| f["id"] == "ingress-proxy.saturated")
            .cloned()
    };

    let d = start_diagnose(&proxy_node);
    load(64, 300.0, 3);
    eprintln!(
        "the proxy's CPU limit ({}): (periods, throttled) {:?}",
        limit.describe(),
        limit.throttled()
    );
    let (_, doc) = finish(d);
    let requests = &doc["report"]["requests"];
    eprintln!(
        "saturated: joined {} of {}, ingress-proxy {} µs per request ({} µs waiting to be read), client mean {} µs, lost {}",
        requests["joined"],
        requests["count"],
        requests["categories"]["ingress-proxy"]["mean_us"],
        requests["categories"]["ingress-proxy"]["socket_queue_mean_us"],
        requests["client_mean_us"],
        doc["report"]["lost_events"]
    );
    let f = proxy_finding(&doc).expect("ingress-proxy.saturated under a 50m CPU limit");
    eprintln!(
        "saturated: waiting to be read {} µs",
        number(&f, "socket_queue_mean_us")
    );
    assert_eq!(f["severity"], "warning");

    // The healthy run's keep-alive connections are open before the
    // diagnosis starts (its hooks attach while requests are in flight):
    // its join matches the client's own latency. Before the socket
    // tracer left out the events before its last hook was attached, a
    // read seen without its answer merged with the next request's read
    // and every later request on the connection was paired one off (80
    // ms per request against the client's 1 ms).
    let healthy = std::thread::spawn(move || load(2, 50.0, 7));
    std::thread::sleep(Duration::from_secs(1));
    let d = start_diagnose(&proxy_node);
    let (_, doc) = finish(d);
    let result = healthy.join().expect("the healthy load");
    assert!(
        proxy_finding(&doc).is_none(),
        "a proxy that keeps up is not saturated"
    );
    let requests = &doc["report"]["requests"];
    let (joined, count) = (
        requests["joined"].as_f64().unwrap_or(0.0),
        requests["count"].as_f64().unwrap_or(0.0),
    );
    let node_mean = requests["client_mean_us"].as_f64().unwrap_or(0.0);
    let client_mean = result.client_latency.mean_us;
    eprintln!(
        "healthy: joined {joined} of {count}, the node's client mean {node_mean:.0} µs, the client's own {client_mean:.0} µs"
    );
    assert!(
        count > 0.0 && joined >= 0.95 * count,
        "the healthy run's requests are joined"
    );
    // The node's figure runs from the first hop to the last read, the
    // client's from its intended send time: the node's is the smaller.
    assert!(
        node_mean <= 1.2 * client_mean,
        "a keep-alive request is joined with its own response: {node_mean:.0} µs against the client's {client_mean:.0} µs"
    );
    drop(_proxy);
    drop(limit);
    lab.teardown().expect("teardown");
}
