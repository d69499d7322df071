//! Packet identity across NAT and encapsulation.

use std::hash::Hasher as _;

use hoptrace_common::PacketMeta;

/// Fingerprint of the innermost layer from fields that NAT and
/// encapsulation do not change: IP version, IP ID, protocol, TCP flags,
/// seq/ack, payload length and payload head, and whether it is a non-first
/// fragment. A first fragment has the fingerprint of the datagram it
/// starts (same transport header, IP ID and payload head): the reassembled
/// packet continues its journey.
pub fn fingerprint(packet: &PacketMeta) -> u64 {
    let f = packet.flow();
    let mut h = rustc_hash::FxHasher::default();
    h.write_u64(
        u64::from(f.version)
            | (u64::from(f.l4_proto) << 8)
            | (u64::from(f.tcp_flags) << 16)
            | (u64::from(f.ip_id) << 24)
            | (u64::from(f.payload_len) << 40)
            | (u64::from(f.fragment == hoptrace_common::packet::FRAGMENT_LATER) << 56),
    );
    h.write_u64((u64::from(f.tcp_seq) << 32) | u64::from(f.tcp_ack));
    h.write_u64(u64::from_le_bytes(f.payload_head));
    h.finish()
}
