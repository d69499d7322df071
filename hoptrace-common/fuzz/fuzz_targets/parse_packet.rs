//! libFuzzer target: arbitrary bytes into the packet parser, read as a frame
//! from the Ethernet header (tc) and as a packet from the IPv4 or IPv6
//! header (netfilter, tracepoints). The invariants are those of the
//! `fuzz_random_and_mutated_frames` property in `tests/parser.rs`: the parser
//! returns (a panic is a finding), the status it returns is the one in the
//! metadata, a parsed packet has an IPv4 or IPv6 outer header, and bytes that
//! fit the header window parse through the window exactly as from the slice,
//! which refuses reads past the end.
#![no_main]

use hoptrace_common::{
    HEADER_WINDOW, HeaderWindow, PacketBytes, PacketMeta, ParseStatus, TraceConfig,
    packet::{ETH_P_IP, ETH_P_IPV6, parse_from_l2, parse_from_l3},
};
use libfuzzer_sys::fuzz_target;

/// Bounds-checked byte source over a slice, like `bpf_skb_load_bytes`.
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

/// Parses `src` from the Ethernet header (`ethertype` None) or from an IP
/// header of that ethertype at offset 0.
fn parse<P: PacketBytes>(src: &P, ethertype: Option<u16>) -> (ParseStatus, PacketMeta) {
    let cfg = TraceConfig::default();
    let mut meta = PacketMeta::zeroed();
    let status = match ethertype {
        None => parse_from_l2(src, &cfg, &mut meta),
        Some(et) => parse_from_l3(src, 0, et, &cfg, &mut meta),
    };
    (status, meta)
}

fuzz_target!(|data: &[u8]| {
    let window = HeaderWindow::from_slice(data);
    for ethertype in [None, Some(ETH_P_IP), Some(ETH_P_IPV6)] {
        let (status, meta) = parse(&Bytes(data), ethertype);
        assert_eq!(meta.status, status as u8);
        if status == ParseStatus::Ok {
            assert!(meta.outer.version == 4 || meta.outer.version == 6);
        }
        if data.len() <= HEADER_WINDOW {
            assert_eq!(parse(&window, ethertype), (status, meta), "{ethertype:?}");
        }
    }
});
