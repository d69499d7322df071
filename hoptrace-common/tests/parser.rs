//! Host tests of the shared packet parser: the same code runs in the kernel.

use hoptrace_common::{
    Encap, HEADER_WINDOW, HeaderWindow, PacketBytes, PacketMeta, ParseStatus, TraceConfig,
    packet::{
        ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, flow_matches, parse_from_l2,
        parse_from_l3,
    },
};
use proptest::{
    prelude::*,
    test_runner::{TestCaseError, TestRunner},
};

/// Bounds-checked byte source over a slice, like bpf_skb_load_bytes.
struct Bytes<'a>(&'a [u8]);

impl PacketBytes for Bytes<'_> {
    fn load<const N: usize>(&self, offset: u32, buf: &mut [u8; N]) -> bool {
        let start = offset as usize;
        match self.0.get(start..start.saturating_add(N)) {
            Some(src) if src.len() == N => {
                buf.copy_from_slice(src);
                true
            }
            _ => false,
        }
    }
}

fn eth(ethertype: u16) -> Vec<u8> {
    let mut v = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    v.extend_from_slice(&ethertype.to_be_bytes());
    v
}

fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], id: u16, payload_len: usize) -> Vec<u8> {
    let total = (20 + payload_len) as u16;
    let mut v = vec![0x45, 0];
    v.extend_from_slice(&total.to_be_bytes());
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&[0x40, 0, 64, proto, 0, 0]);
    v.extend_from_slice(&src);
    v.extend_from_slice(&dst);
    v
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&sport.to_be_bytes());
    v.extend_from_slice(&dport.to_be_bytes());
    v.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(payload);
    v
}

fn tcp(sport: u16, dport: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&sport.to_be_bytes());
    v.extend_from_slice(&dport.to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&ack.to_be_bytes());
    v.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    v.extend_from_slice(payload);
    v
}

fn udp_frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let l4 = udp(sport, dport, payload);
    let mut f = eth(0x0800);
    f.extend(ipv4(IPPROTO_UDP, src, dst, 0x1234, l4.len()));
    f.extend(l4);
    f
}

fn parse(frame: &[u8]) -> (ParseStatus, PacketMeta) {
    let mut meta = PacketMeta::zeroed();
    let status = parse_from_l2(&Bytes(frame), &TraceConfig::default(), &mut meta);
    (status, meta)
}

#[test]
fn ipv4_udp() {
    let frame = udp_frame([10, 244, 0, 2], [10, 96, 0, 10], 40000, 53, b"hello world");
    let (status, meta) = parse(&frame);
    assert_eq!(status, ParseStatus::Ok);
    let f = meta.flow();
    assert_eq!((f.version, f.l4_proto), (4, IPPROTO_UDP));
    assert_eq!(&f.saddr[..4], &[10, 244, 0, 2]);
    assert_eq!(&f.daddr[..4], &[10, 96, 0, 10]);
    assert_eq!(
        (f.sport, f.dport, f.ip_id, f.payload_len),
        (40000, 53, 0x1234, 11)
    );
    assert_eq!(&f.payload_head, b"hello wo");
    assert_eq!(meta.encap, Encap::None as u8);
}

#[test]
fn ipv4_tcp_seq_ack_flags() {
    let l4 = tcp(5555, 80, 0xdead_beef, 0x0102_0304, 0x12, b"GET /");
    let mut frame = eth(0x0800);
    frame.extend(ipv4(IPPROTO_TCP, [1, 1, 1, 1], [2, 2, 2, 2], 7, l4.len()));
    frame.extend(l4);
    let (status, meta) = parse(&frame);
    assert_eq!(status, ParseStatus::Ok);
    let f = meta.flow();
    assert_eq!(
        (f.sport, f.dport, f.tcp_seq, f.tcp_ack, f.tcp_flags),
        (5555, 80, 0xdead_beef, 0x0102_0304, 0x12)
    );
    assert_eq!(f.payload_len, 5);
}

#[test]
fn icmp_echo_id_and_seq() {
    let mut l4 = vec![8, 0, 0, 0, 0x12, 0x34, 0, 7];
    l4.extend_from_slice(b"pingpingping");
    let mut frame = eth(0x0800);
    frame.extend(ipv4(IPPROTO_ICMP, [1, 1, 1, 1], [2, 2, 2, 2], 9, l4.len()));
    frame.extend(l4);
    let (_, meta) = parse(&frame);
    let f = meta.flow();
    assert_eq!(
        (f.l4_proto, f.tcp_flags, f.sport, f.dport),
        (IPPROTO_ICMP, 8, 0x1234, 7)
    );
}

#[test]
fn ipv6_udp() {
    let l4 = udp(1000, 2000, b"abcdefgh12");
    let mut frame = eth(0x86dd);
    let mut ip6 = vec![0x60, 0x0a, 0xbc, 0xde];
    ip6.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    ip6.extend_from_slice(&[IPPROTO_UDP, 64]);
    ip6.extend_from_slice(&[0xfd; 16]);
    ip6.extend_from_slice(&[0xfe; 16]);
    frame.extend(ip6);
    frame.extend(l4);
    let (status, meta) = parse(&frame);
    assert_eq!(status, ParseStatus::Ok);
    let f = meta.flow();
    assert_eq!(
        (f.version, f.sport, f.dport, f.payload_len),
        (6, 1000, 2000, 10)
    );
    assert_eq!(f.saddr, [0xfd; 16]);
    assert_eq!(f.ip_id, 0xbcde);
}

#[test]
fn vxlan_inner_headers() {
    let inner = udp_frame([10, 244, 1, 2], [10, 244, 2, 3], 12345, 8080, b"payload!!");
    let mut vx = vec![0x08, 0, 0, 0, 0, 0, 1, 0]; // VNI 1
    vx.extend(inner);
    let l4 = udp(50000, 8472, &vx);
    let mut frame = eth(0x0800);
    frame.extend(ipv4(
        IPPROTO_UDP,
        [198, 18, 0, 1],
        [198, 18, 0, 2],
        77,
        l4.len(),
    ));
    frame.extend(l4);
    let (status, meta) = parse(&frame);
    assert_eq!(status, ParseStatus::Ok);
    assert_eq!(meta.encap, Encap::Vxlan as u8);
    assert_eq!(meta.vni, 1);
    assert_eq!(&meta.outer.saddr[..4], &[198, 18, 0, 1]);
    let f = meta.flow();
    assert_eq!(&f.saddr[..4], &[10, 244, 1, 2]);
    assert_eq!((f.sport, f.dport, f.ip_id), (12345, 8080, 0x1234));
}

#[test]
fn ipip_inner_headers() {
    let inner_l4 = udp(1, 2, b"xxxxxxxx");
    let mut inner = ipv4(IPPROTO_UDP, [10, 0, 0, 1], [10, 0, 0, 2], 5, inner_l4.len());
    inner.extend(inner_l4);
    let mut frame = eth(0x0800);
    frame.extend(ipv4(4, [198, 18, 0, 1], [198, 18, 0, 2], 6, inner.len()));
    frame.extend(inner);
    let (_, meta) = parse(&frame);
    assert_eq!(meta.encap, Encap::IpIp as u8);
    assert_eq!(&meta.flow().daddr[..4], &[10, 0, 0, 2]);
    assert_eq!(meta.flow().ip_id, 5);
}

#[test]
fn l3_start_and_vlan() {
    let frame = udp_frame([1, 2, 3, 4], [5, 6, 7, 8], 9, 10, b"zzzzzzzzzz");
    let mut meta = PacketMeta::zeroed();
    let status = parse_from_l3(
        &Bytes(&frame[14..]),
        0,
        0x0800,
        &TraceConfig::default(),
        &mut meta,
    );
    assert_eq!(status, ParseStatus::Ok);
    assert_eq!(meta.flow().dport, 10);
    let mut tagged = frame[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x64, 0x08, 0x00]);
    tagged.extend_from_slice(&frame[14..]);
    let (status, meta) = parse(&tagged);
    assert_eq!(status, ParseStatus::Ok);
    assert_eq!(meta.flow().sport, 9);
}

#[test]
fn non_ip_truncated_and_malformed() {
    assert_eq!(parse(&eth(0x0806)).0, ParseStatus::NotIp);
    let frame = udp_frame([1, 2, 3, 4], [5, 6, 7, 8], 9, 10, b"");
    assert_eq!(parse(&frame[..20]).0, ParseStatus::Truncated);
    assert_eq!(
        parse(&frame[..38]).0,
        ParseStatus::Truncated,
        "UDP header cut"
    );
    let mut bad = frame.clone();
    bad[14] = 0x43; // IHL 3
    assert_eq!(parse(&bad).0, ParseStatus::BadHeader);
    assert_eq!(parse(&[]).0, ParseStatus::Truncated);
}

#[test]
fn flow_filter() {
    let frame = udp_frame([10, 244, 0, 2], [10, 96, 0, 10], 40000, 53, b"hello world");
    let (_, meta) = parse(&frame);
    let mut cfg = TraceConfig::default();
    assert!(flow_matches(&meta, &cfg), "no filter: everything matches");
    cfg.filter_flow = 1;
    cfg.match_family = 4;
    cfg.match_addr[..4].copy_from_slice(&[10, 96, 0, 0]);
    cfg.match_prefix_len = 16;
    assert!(flow_matches(&meta, &cfg));
    cfg.match_prefix_len = 32;
    assert!(
        !flow_matches(&meta, &cfg),
        "10.96.0.0/32 does not contain either address"
    );
    cfg.match_prefix_len = 12;
    cfg.match_port = 53;
    assert!(flow_matches(&meta, &cfg));
    cfg.match_port = 54;
    assert!(!flow_matches(&meta, &cfg));
}

/// Frames the fuzz property mutates: VXLAN, GENEVE and plain UDP.
fn seed_frames() -> [Vec<u8>; 3] {
    [
        udp_frame(
            [10, 244, 0, 2],
            [10, 96, 0, 10],
            1,
            4789,
            &[0x08, 0, 0, 0, 0, 0, 1, 0, 1, 2, 3],
        ),
        udp_frame(
            [1, 1, 1, 1],
            [2, 2, 2, 2],
            1,
            6081,
            &[0, 0, 0x65, 0x58, 0, 0, 1, 0],
        ),
        udp_frame([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, b"0123456789"),
    ]
}

/// Frames: random bytes (up to 199) or a seed frame with up to five bytes
/// overwritten, either one cut short one time in four.
fn frames() -> impl Strategy<Value = Vec<u8>> {
    let random = prop::collection::vec(any::<u8>(), 0..200);
    let mutated = (
        0..seed_frames().len(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
    )
        .prop_map(|(seed, edits)| {
            let mut frame = seed_frames()[seed].clone();
            for (at, byte) in edits {
                let i = at.index(frame.len());
                frame[i] = byte;
            }
            frame
        });
    (
        prop_oneof![random, mutated],
        0..4u8,
        any::<prop::sample::Index>(),
    )
        .prop_map(|(mut frame, cut, at)| {
            if cut == 0 {
                frame.truncate(at.index(frame.len() + 1));
            }
            frame
        })
}

/// The parser's invariants on any bytes, read as a frame from the Ethernet
/// header (tc) and as a packet from the IPv4 or IPv6 header (netfilter,
/// tracepoints): it returns (a panic fails the property), the status it
/// returns is the one in the metadata, a parsed packet has an IPv4 or IPv6
/// outer header, and bytes that fit the header window parse through the
/// window exactly as from the slice (which refuses reads past the end, so no
/// read strays outside). Returns whether the frame parsed from Ethernet.
/// `fuzz/fuzz_targets/parse_packet.rs` checks the same.
fn check_frame(frame: &[u8]) -> Result<bool, TestCaseError> {
    let cfg = TraceConfig::default();
    let window = HeaderWindow::from_slice(frame);
    let fits = frame.len() <= HEADER_WINDOW;
    let mut parsed_from_l2 = false;
    for ethertype in [None, Some(ETH_P_IP), Some(ETH_P_IPV6)] {
        let parse_with = |src: &dyn Fn(&mut PacketMeta) -> ParseStatus| {
            let mut meta = PacketMeta::zeroed();
            let status = src(&mut meta);
            (status, meta)
        };
        let (status, meta) = parse_with(&|meta| match ethertype {
            None => parse_from_l2(&Bytes(frame), &cfg, meta),
            Some(et) => parse_from_l3(&Bytes(frame), 0, et, &cfg, meta),
        });
        prop_assert_eq!(meta.status, status as u8);
        if status == ParseStatus::Ok {
            prop_assert!(meta.outer.version == 4 || meta.outer.version == 6);
        }
        if fits {
            let (wstatus, windowed) = parse_with(&|meta| match ethertype {
                None => parse_from_l2(&window, &cfg, meta),
                Some(et) => parse_from_l3(&window, 0, et, &cfg, meta),
            });
            prop_assert_eq!(wstatus, status, "ethertype {:?}", ethertype);
            prop_assert_eq!(windowed, meta, "ethertype {:?}", ethertype);
        }
        if ethertype.is_none() {
            parsed_from_l2 = status == ParseStatus::Ok;
        }
    }
    Ok(parsed_from_l2)
}

/// Property-based fuzzing: random and mutated frames keep the invariants of
/// [`check_frame`]. proptest shrinks a failure to a minimal frame and prints
/// it. Mutations of valid frames must often still parse, or the generator
/// has stopped reaching the parser's deeper layers.
#[test]
fn fuzz_random_and_mutated_frames() {
    const CASES: u32 = 30_000;
    let mut runner = TestRunner::new(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let ok = std::cell::Cell::new(0u32);
    runner
        .run(&frames(), |frame| {
            if check_frame(&frame)? {
                ok.set(ok.get() + 1);
            }
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    assert!(
        ok.get() > CASES / 20,
        "mutations of valid frames should often still parse ({} of {CASES})",
        ok.get()
    );
}

/// Parses from the network header through a kernel-style header window.
fn parse_window(l3: &[u8]) -> (ParseStatus, PacketMeta) {
    let mut meta = PacketMeta::zeroed();
    let window = HeaderWindow::from_slice(l3);
    let status = parse_from_l3(&window, 0, 0x0800, &TraceConfig::default(), &mut meta);
    (status, meta)
}

fn parse_whole(l3: &[u8]) -> (ParseStatus, PacketMeta) {
    let mut meta = PacketMeta::zeroed();
    let status = parse_from_l3(&Bytes(l3), 0, 0x0800, &TraceConfig::default(), &mut meta);
    (status, meta)
}

/// An IPv4 header with 40 bytes of options (IHL 15).
fn ipv4_with_options(proto: u8, src: [u8; 4], dst: [u8; 4], payload_len: usize) -> Vec<u8> {
    let mut h = ipv4(proto, src, dst, 3, payload_len + 40);
    h[0] = 0x4f;
    h.extend_from_slice(&[1u8; 40]); // NOP options
    h
}

/// VXLAN (outer IPv4 with `outer_options`) around IPv4/UDP with a payload.
fn vxlan_l3(outer_options: bool, inner_options: bool) -> Vec<u8> {
    let inner_udp = udp(12345, 8080, b"payload!!");
    let mut inner = eth(0x0800);
    if inner_options {
        inner.extend(ipv4_with_options(
            IPPROTO_UDP,
            [10, 244, 1, 2],
            [10, 244, 2, 3],
            inner_udp.len(),
        ));
    } else {
        inner.extend(ipv4(
            IPPROTO_UDP,
            [10, 244, 1, 2],
            [10, 244, 2, 3],
            9,
            inner_udp.len(),
        ));
    }
    inner.extend(inner_udp);
    let mut vx = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    vx.extend(inner);
    let l4 = udp(50000, 8472, &vx);
    let mut l3 = if outer_options {
        ipv4_with_options(IPPROTO_UDP, [198, 18, 0, 1], [198, 18, 0, 2], l4.len())
    } else {
        ipv4(IPPROTO_UDP, [198, 18, 0, 1], [198, 18, 0, 2], 77, l4.len())
    };
    l3.extend(l4);
    l3
}

#[test]
fn header_window_parses_like_the_whole_packet() {
    for (outer_options, inner_options) in [(false, false), (true, false), (false, true)] {
        let l3 = vxlan_l3(outer_options, inner_options);
        let (status, whole) = parse_whole(&l3);
        assert_eq!(status, ParseStatus::Ok);
        let (wstatus, windowed) = parse_window(&l3);
        assert_eq!(wstatus, status);
        assert_eq!(windowed.encap, Encap::Vxlan as u8);
        assert_eq!(
            windowed.flow(),
            whole.flow(),
            "options {outer_options}/{inner_options}"
        );
        assert_eq!(&windowed.flow().payload_head, b"payload!");
    }
}

#[test]
fn header_window_reads_nothing_past_its_end() {
    // Options on both layers put the inner headers past the window: the
    // packet is truncated for every hook alike (each copies the same window
    // from the network header), never parsed from bytes beyond it.
    let l3 = vxlan_l3(true, true);
    assert!(l3.len() > HEADER_WINDOW);
    let (status, whole) = parse_whole(&l3);
    assert_eq!(status, ParseStatus::Ok);
    assert_eq!(&whole.flow().payload_head, b"payload!");
    let (status, _) = parse_window(&l3);
    assert_eq!(status, ParseStatus::Truncated);
    let window = HeaderWindow::from_slice(&l3);
    assert_eq!(window.len as usize, HEADER_WINDOW);
    let mut buf = [0u8; 8];
    assert!(!window.load(HEADER_WINDOW as u32 - 4, &mut buf));
    assert!(window.load(HEADER_WINDOW as u32 - 8, &mut buf));
    let short = HeaderWindow::from_slice(&l3[..10]);
    let mut ip = [0u8; 20];
    assert!(!short.load(0, &mut ip), "a short copy is not padded");
}
