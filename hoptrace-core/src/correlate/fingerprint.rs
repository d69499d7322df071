//! Packet identity across NAT and encapsulation.

use std::hash::Hasher as _;

use hoptrace_common::PacketMeta;

/// Fingerprint of the innermost layer from fields that NAT and
/// encapsulation do not change: IP version, IP ID, protocol, TCP flags,
/// seq/ack, payload length and payload head; and the addresses of IPv6
/// packets that NAT never rewrites (a link-local source or a link-scope
/// multicast destination: MLD reports, router and neighbour solicitations
/// of different hosts are otherwise alike, and IPv6 has no IP ID); and
/// whether it is a non-first fragment. A first fragment has the fingerprint of the datagram it starts (same transport
/// header, IP ID and payload head): the reassembled packet continues its
/// journey.
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
    let link_local = f.version == 6
        && ((f.saddr[0] == 0xfe && f.saddr[1] & 0xc0 == 0x80)
            || (f.daddr[0] == 0xff && f.daddr[1] & 0x0f == 0x02));
    if link_local {
        h.write(&f.saddr);
        h.write(&f.daddr);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::fingerprint;
    use hoptrace_common::PacketMeta;

    #[test]
    fn link_local_ipv6_packets_of_different_hosts_differ() {
        // Two MLD reports (next header 0: hop-by-hop) from two hosts.
        let mld = |last: u8| {
            let mut p = PacketMeta::zeroed();
            p.outer.version = 6;
            p.outer.saddr[..2].copy_from_slice(&[0xfe, 0x80]);
            p.outer.saddr[15] = last;
            p.outer.daddr[..2].copy_from_slice(&[0xff, 0x02]);
            p.outer.daddr[15] = 0x16;
            p.outer.payload_len = 36;
            p
        };
        assert_ne!(fingerprint(&mld(1)), fingerprint(&mld(2)));
        assert_eq!(fingerprint(&mld(1)), fingerprint(&mld(1)));
        // Global IPv6 unicast: addresses stay out (NAT may rewrite them).
        let mut a = mld(1);
        a.outer.saddr[..2].copy_from_slice(&[0xfd, 0x00]);
        a.outer.daddr[..2].copy_from_slice(&[0xfd, 0x00]);
        let mut b = a;
        b.outer.daddr[15] = 0x99;
        assert_eq!(fingerprint(&a), fingerprint(&b));
    }
}
