//! Issue "Foundation": a pod-like namespace joined by a veth, a tc program on
//! the host side, N UDP datagrams from the pod, exactly N events for that
//! 5-tuple in userspace; nothing left attached afterwards.

use std::{net::UdpSocket, os::fd::AsFd as _, time::Duration};

use aya::programs::{SchedClassifier, TcAttachType};
use hoptrace_common::{HookKind, packet::IPPROTO_UDP};
use hoptrace_core::kernel::loader::{LoadOptions, TcMode, Tracer};
use hoptrace_lab::netns::NetnsGuard;
use tests::{can_run_as_root, in_fresh_netns, netns_exists, sh, sh_in};

const DATAGRAMS: usize = 50;
const POD_PORT: u16 = 40_000;
const NODE_PORT: u16 = 40_001;

fn send_from_pod(pod: &NetnsGuard) {
    // The socket is created in the pod's namespace; it stays there.
    let path = format!("/run/netns/{}", pod.name());
    let sock = std::thread::scope(|s| {
        s.spawn(|| {
            let ns = std::fs::File::open(&path).expect("open pod netns");
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns pod");
            UdpSocket::bind(("10.99.0.2", POD_PORT)).expect("bind in pod")
        })
        .join()
        .expect("pod thread")
    });
    for i in 0..DATAGRAMS {
        sock.send_to(
            format!("hoptrace {i:04}").as_bytes(),
            ("10.99.0.1", NODE_PORT),
        )
        .expect("send");
    }
}

fn run(mode: TcMode, tag: &str) {
    let pod_name = format!("ht-fp{tag}{}", std::process::id() % 100_000);
    in_fresh_netns(|| {
        let pod = NetnsGuard::create(&pod_name).expect("pod namespace");
        sh(&[
            "ip",
            "link",
            "add",
            "htfp0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod.name(),
        ]);
        sh(&["ip", "addr", "add", "10.99.0.1/30", "dev", "htfp0"]);
        sh(&["ip", "link", "set", "htfp0", "up"]);
        sh_in(&pod, &["ip", "addr", "add", "10.99.0.2/30", "dev", "eth0"]);
        sh_in(&pod, &["ip", "link", "set", "eth0", "up"]);
        sh_in(&pod, &["ip", "link", "set", "lo", "up"]);

        let mut tracer = Tracer::load(&LoadOptions::default()).expect("load main object");
        tracer.attach_tc("htfp0", true, mode).expect("attach tc");
        let mut events = tracer.take_events().expect("ring buffer");

        send_from_pod(&pod);

        // Producers never wake us: drain on a timer until quiet.
        let mut matched = Vec::new();
        let mut idle_rounds = 0;
        while idle_rounds < 5 {
            std::thread::sleep(Duration::from_millis(20));
            let n = events.drain(|ev| {
                let flow = ev.packet.flow();
                if ev.hook == HookKind::TcIngress as u8
                    && flow.l4_proto == IPPROTO_UDP
                    && flow.sport == POD_PORT
                    && flow.dport == NODE_PORT
                    && flow.saddr[..4] == [10, 99, 0, 2]
                    && flow.daddr[..4] == [10, 99, 0, 1]
                {
                    matched.push(*ev);
                }
            });
            idle_rounds = if n == 0 { idle_rounds + 1 } else { 0 };
        }
        assert_eq!(
            matched.len(),
            DATAGRAMS,
            "events for the 5-tuple ({mode:?})"
        );
        assert!(matched.iter().all(|e| e.ts_ns > 0 && e.skb_addr != 0));
        assert!(
            matched.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns),
            "timestamps in order on one CPU"
        );
        let ifindex = nix::net::if_::if_nametoindex("htfp0").unwrap();
        assert!(matched.iter().all(|e| e.ifindex == ifindex));
        let counters = tracer.counters().expect("counters");
        assert_eq!(counters.get(hoptrace_common::Counter::RingFull), 0);

        drop(events);
        drop(tracer);
        // Nothing of ours is left on the device.
        match mode {
            TcMode::Tcx => {
                for attach in [TcAttachType::Ingress, TcAttachType::Egress] {
                    let (_, progs) =
                        SchedClassifier::query_tcx("htfp0", attach).expect("query tcx");
                    assert!(progs.is_empty(), "tcx programs left on {attach:?}");
                }
            }
            TcMode::Clsact => {
                let qdiscs = sh(&["tc", "qdisc", "show", "dev", "htfp0"]);
                assert!(!qdiscs.contains("clsact"), "clsact left: {qdiscs}");
            }
        }
    });
    assert!(!netns_exists(&pod_name), "pod namespace left behind");
}

#[test]
fn tc_tcx_sees_every_datagram_and_detaches() {
    if !can_run_as_root("tc_tcx_sees_every_datagram_and_detaches") {
        return;
    }
    run(TcMode::Tcx, "x");
}

#[test]
fn tc_clsact_sees_every_datagram_and_detaches() {
    if !can_run_as_root("tc_clsact_sees_every_datagram_and_detaches") {
        return;
    }
    run(TcMode::Clsact, "c");
}

/// IPv6: the same through the tc hook and the netfilter links for pf 10.
#[test]
fn ipv6_udp_is_parsed_at_tc_and_netfilter() {
    if !can_run_as_root("ipv6_udp_is_parsed_at_tc_and_netfilter") {
        return;
    }
    use std::net::{Ipv6Addr, SocketAddrV6};
    let pod_name = format!("ht-fp6{}", std::process::id() % 100_000);
    in_fresh_netns(|| {
        let pod = NetnsGuard::create(&pod_name).expect("pod namespace");
        sh(&[
            "ip",
            "link",
            "add",
            "htfp6",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod.name(),
        ]);
        sh(&[
            "ip",
            "-6",
            "addr",
            "add",
            "fd00:99::1/64",
            "dev",
            "htfp6",
            "nodad",
        ]);
        sh(&["ip", "link", "set", "htfp6", "up"]);
        sh_in(
            &pod,
            &[
                "ip",
                "-6",
                "addr",
                "add",
                "fd00:99::2/64",
                "dev",
                "eth0",
                "nodad",
            ],
        );
        sh_in(&pod, &["ip", "link", "set", "eth0", "up"]);
        // Conntrack only tracks a namespace once a rule needs it.
        sh(&[
            "ip6tables",
            "-A",
            "INPUT",
            "-m",
            "conntrack",
            "--ctstate",
            "NEW,ESTABLISHED",
            "-j",
            "ACCEPT",
        ]);

        let layout = hoptrace_core::kernel::btf::kernel_layout().expect("BTF layout");
        let config = hoptrace_common::TraceConfig {
            node_netns_ino: hoptrace_core::node::devices::own_netns_inode().unwrap(),
            ..Default::default()
        };
        let mut tracer = Tracer::load(&LoadOptions {
            layout,
            config,
            ..LoadOptions::default()
        })
        .expect("load");
        tracer
            .attach_tc("htfp6", true, TcMode::Tcx)
            .expect("attach tc");
        let nf = hoptrace_core::kernel::netfilter::load_netfilter_programs(
            hoptrace_core::kernel::objects::netfilter_object().unwrap(),
            tracer.ebpf(),
            &layout,
            &config,
        )
        .expect("netfilter programs");
        let links = nf
            .attach(&hoptrace_core::kernel::netfilter::default_plan())
            .expect("netfilter links");
        let mut events = tracer.take_events().expect("ring buffer");
        let node = std::net::UdpSocket::bind(SocketAddrV6::new(
            "fd00:99::1".parse().unwrap(),
            NODE_PORT,
            0,
            0,
        ))
        .expect("bind node");

        let path = format!("/run/netns/{}", pod.name());
        let sock = std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).unwrap();
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                UdpSocket::bind(SocketAddrV6::new(
                    "fd00:99::2".parse().unwrap(),
                    POD_PORT,
                    0,
                    0,
                ))
                .unwrap()
            })
            .join()
            .unwrap()
        });
        for i in 0..DATAGRAMS {
            sock.send_to(
                format!("hoptrace v6 {i:04}").as_bytes(),
                SocketAddrV6::new("fd00:99::1".parse().unwrap(), NODE_PORT, 0, 0),
            )
            .expect("send");
        }
        let mut buf = [0u8; 64];
        node.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut received = 0;
        while received < DATAGRAMS && node.recv(&mut buf).is_ok() {
            received += 1;
        }
        assert_eq!(received, DATAGRAMS);

        let pod_addr: [u8; 16] = "fd00:99::2".parse::<Ipv6Addr>().unwrap().octets();
        let (mut tc, mut nf_events) = (0, 0);
        let mut idle_rounds = 0;
        while idle_rounds < 5 {
            std::thread::sleep(Duration::from_millis(20));
            let n = events.drain(|ev| {
                let flow = ev.packet.flow();
                if flow.version == 6
                    && flow.saddr == pod_addr
                    && flow.sport == POD_PORT
                    && flow.dport == NODE_PORT
                {
                    if ev.hook == HookKind::TcIngress as u8 {
                        tc += 1;
                    } else if ev.hook == HookKind::Netfilter as u8 {
                        assert_eq!(ev.nf_pf, 10, "IPv6 netfilter hook");
                        nf_events += 1;
                    }
                }
            });
            idle_rounds = if n == 0 { idle_rounds + 1 } else { 0 };
        }
        assert_eq!(tc, DATAGRAMS, "tc ingress saw every IPv6 datagram");
        // PRE_ROUTING (4 slots) and LOCAL_IN (2 slots) per datagram.
        assert_eq!(
            nf_events,
            DATAGRAMS * 6,
            "netfilter (pf 10) saw every datagram at every slot"
        );
        drop(links);
        drop(nf);
    });
    assert!(!netns_exists(&pod_name), "pod namespace left behind");
}
