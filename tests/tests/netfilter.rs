//! Root test: netfilter BPF links see loopback UDP in a throwaway namespace.
//!
//! Everything runs in one thread that `unshare(CLONE_NEWNET)`s: the links,
//! sockets and loopback device live in a namespace that vanishes with the
//! thread, so nothing can be left behind even when an assertion fails.

use std::{
    net::UdpSocket,
    os::unix::fs::MetadataExt as _,
    process::Command,
    time::{Duration, Instant},
};

use aya::{EbpfLoader, maps::RingBuf};
use hoptrace_common::{CtState, HookKind, HopEvent, NF_PRIORITY_SLOTS, NfHook, TraceConfig};
use hoptrace_core::kernel::{
    netfilter::{NFPROTO_IPV4, default_plan, load_netfilter_programs},
    objects::{main_object, netfilter_object},
};

/// Netfilter link ids (from `bpftool link list`) whose program is one of `prog_ids`.
fn netfilter_links_of(prog_ids: &[u32]) -> Vec<u64> {
    let out = Command::new("bpftool")
        .args(["-j", "link", "list"])
        .output()
        .expect("run bpftool");
    assert!(
        out.status.success(),
        "bpftool link list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    links
        .as_array()
        .expect("array")
        .iter()
        // bpftool 7.1 prints link types it does not know (netfilter, 10) as numbers.
        .filter(|l| l["type"] == "netfilter" || l["type"] == 10)
        .filter(|l| {
            l["prog_id"]
                .as_u64()
                .is_some_and(|id| prog_ids.contains(&(id as u32)))
        })
        .filter_map(|l| l["id"].as_u64())
        .collect()
}

fn read_events(ring: &mut RingBuf<aya::maps::MapData>) -> Vec<HopEvent> {
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        assert!(
            item.len() >= size_of::<HopEvent>(),
            "short record {}",
            item.len()
        );
        // SAFETY: the kernel wrote a HopEvent; read_unaligned copes with any alignment.
        events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<HopEvent>()) });
    }
    events
}

fn run_in_fresh_netns() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    let status = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("run ip");
    assert!(status.success(), "ip link set lo up");
    // Conntrack runs in a namespace only once a rule needs it.
    let status = Command::new("iptables")
        .args([
            "-A",
            "OUTPUT",
            "-m",
            "conntrack",
            "--ctstate",
            "NEW,ESTABLISHED",
            "-j",
            "ACCEPT",
        ])
        .status()
        .expect("run iptables");
    assert!(
        status.success(),
        "iptables conntrack rule in the test namespace"
    );
    let netns_ino = std::fs::metadata("/proc/thread-self/ns/net")
        .expect("netns")
        .ino() as u32;

    let layout = hoptrace_core::kernel::btf::kernel_layout().expect("kernel layout from BTF");
    let config = TraceConfig {
        node_netns_ino: netns_ino,
        ..TraceConfig::default()
    };
    let mut ebpf = EbpfLoader::new()
        .override_global("HOPTRACE_LAYOUT", &layout, true)
        .override_global("HOPTRACE_CONFIG", &config, true)
        .load(main_object().expect("main object"))
        .expect("load main object");
    let programs = load_netfilter_programs(
        netfilter_object().expect("nf object"),
        &ebpf,
        &layout,
        &config,
    )
    .unwrap_or_else(|e| panic!("load netfilter programs: {e}"));
    let prog_ids = programs.program_ids().expect("program ids");
    let plan = default_plan();
    let links = programs
        .attach(&plan)
        .unwrap_or_else(|e| panic!("attach: {e}"));
    assert_eq!(links.len(), plan.len());
    assert_eq!(
        netfilter_links_of(&prog_ids).len(),
        plan.len(),
        "bpftool sees every link"
    );

    let mut ring = RingBuf::try_from(ebpf.take_map("HOPTRACE_EVENTS").expect("events map"))
        .expect("ring buffer");
    let receiver = UdpSocket::bind("127.0.0.1:0").expect("bind receiver");
    receiver
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    let (sport, dport) = (
        sender.local_addr().unwrap().port(),
        receiver.local_addr().unwrap().port(),
    );
    let mut buf = [0u8; 64];
    for i in 0..3u8 {
        sender
            .send_to(&[b'h', b't', i], receiver.local_addr().unwrap())
            .expect("send");
        let (n, _) = receiver.recv_from(&mut buf).expect("datagram arrives");
        assert_eq!(&buf[..n], &[b'h', b't', i]);
    }

    // Events are submitted without wakeup: poll until all arrive (bounded).
    let per_packet = 4 + 2 + 6 + 2; // PREROUTING, INPUT, OUTPUT, POSTROUTING slots
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut ours = Vec::new();
    while ours.len() < 3 * per_packet && Instant::now() < deadline {
        ours.extend(read_events(&mut ring).into_iter().filter(|e| {
            e.hook == HookKind::Netfilter as u8
                && e.packet.outer.l4_proto == 17
                && e.packet.outer.sport == sport
                && e.packet.outer.dport == dport
        }));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        ours.len(),
        3 * per_packet,
        "netfilter events for 3 datagrams: {ours:#?}"
    );
    ours.sort_by_key(|e| e.ts_ns);

    // The first datagram's events share its IPv4 identification.
    let first_id = ours[0].packet.outer.ip_id;
    let first: Vec<&HopEvent> = ours
        .iter()
        .filter(|e| e.packet.outer.ip_id == first_id)
        .collect();
    assert_eq!(first.len(), per_packet);
    let seen: Vec<(NfHook, i32)> = first
        .iter()
        .map(|e| {
            (
                NfHook::from_u8(e.nf_hook).expect("hook number"),
                NF_PRIORITY_SLOTS[e.nf_slot as usize],
            )
        })
        .collect();
    let expected: Vec<(NfHook, i32)> = [
        (NfHook::LocalOut, &[-201, -199, -101, -99, -1, 1][..]),
        (NfHook::PostRouting, &[99, 101]),
        (NfHook::PreRouting, &[-201, -199, -101, -99]),
        (NfHook::LocalIn, &[-1, 1]),
    ]
    .iter()
    .flat_map(|(hook, prios)| prios.iter().map(move |&p| (*hook, p)))
    .collect();
    assert_eq!(seen, expected, "hooks and priorities in time order");

    for e in &first {
        assert_eq!(e.nf_pf, NFPROTO_IPV4);
        assert_eq!(e.netns_ino, netns_ino);
        let flow = &e.packet.outer;
        assert_eq!(flow.version, 4);
        assert_eq!(&flow.saddr[..4], &[127, 0, 0, 1]);
        assert_eq!(&flow.daddr[..4], &[127, 0, 0, 1]);
        assert_eq!(flow.payload_len, 3);
        assert_eq!(e.skb_len, 20 + 8 + 3, "IPv4 + UDP + payload");
    }
    // Before conntrack (-201 in OUTPUT) the packet has no entry; after it, New.
    assert_eq!(
        CtState::from_u8(first[0].ct_state),
        CtState::None,
        "before conntrack"
    );
    assert_eq!(
        CtState::from_u8(first[1].ct_state),
        CtState::New,
        "after conntrack"
    );
    assert!(
        first[1..]
            .iter()
            .all(|e| CtState::from_u8(e.ct_state) == CtState::New)
    );
    // skb->dev is set from POST_ROUTING on (ip_output); lo is ifindex 1 in a new netns.
    assert!(
        first
            .iter()
            .filter(|e| e.nf_hook != NfHook::LocalOut as u8)
            .all(|e| e.ifindex == 1),
        "device of the loopback hops: {first:#?}"
    );

    drop(links);
    assert!(
        netfilter_links_of(&prog_ids).is_empty(),
        "dropping the links detaches them"
    );
}

#[test]
fn netfilter_links_time_loopback_udp_in_a_fresh_namespace() {
    if !tests::can_run_with_kernel_programs(
        "netfilter_links_time_loopback_udp_in_a_fresh_namespace",
    ) {
        return;
    }
    std::thread::spawn(run_in_fresh_netns)
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
}
