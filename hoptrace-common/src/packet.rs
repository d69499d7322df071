//! The one packet parser, shared by the kernel programs and by host tests.
//!
//! It reads through [`PacketBytes`], which the kernel implements with
//! `bpf_skb_load_bytes` (tc) or `bpf_probe_read_kernel` (netfilter,
//! tracepoints), and host tests implement over a byte slice. Every read has a
//! constant size and every offset is derived from bounded header fields, so
//! the same code passes the verifier and runs (and is fuzzed) on the host.

use crate::config::TraceConfig;

/// Ethertype of IPv4 (include/uapi/linux/if_ether.h).
pub const ETH_P_IP: u16 = 0x0800;
/// Ethertype of IPv6 (include/uapi/linux/if_ether.h).
pub const ETH_P_IPV6: u16 = 0x86dd;
/// Ethertype of an IEEE 802.1Q VLAN tag; the parser skips one tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// Ethertype of an IEEE 802.1ad service VLAN tag (QinQ outer tag).
pub const ETH_P_8021AD: u16 = 0x88a8;
/// Transparent Ethernet Bridging: the GENEVE protocol type of an inner
/// Ethernet frame (RFC 8926).
pub const ETH_P_TEB: u16 = 0x6558;
/// IP protocol number of ICMP (include/uapi/linux/in.h).
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of IPv4-in-IP (IPIP tunnels, `tunl0`).
pub const IPPROTO_IPIP: u8 = 4;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol number of IPv6-in-IP (SIT, ip6tnl).
pub const IPPROTO_IPV6: u8 = 41;
/// IP protocol number of ICMPv6 (include/uapi/linux/in6.h).
pub const IPPROTO_ICMPV6: u8 = 58;
const ETH_HLEN: u32 = 14;
const VXLAN_HLEN: u32 = 8;
const UDP_HLEN: u32 = 8;

/// Source of packet bytes.
pub trait PacketBytes {
    /// Copies `N` bytes starting at `offset` into `buf`; false when they are
    /// not all available.
    fn load<const N: usize>(&self, offset: u32, buf: &mut [u8; N]) -> bool;
}

/// Bytes a kernel program copies from a packet's linear data, starting at the
/// network header, at every hook. Covers IPv4, UDP, VXLAN, inner Ethernet,
/// inner IPv4, a TCP header with 20 bytes of options and 8 payload bytes;
/// deeper headers (IPv6 on both sides of a tunnel) are parsed as far as the
/// window reaches, the same way at every hook. It fits the 512-byte BPF
/// stack beside the parser's own buffers.
pub const HEADER_WINDOW: usize = 128;

/// Packet headers copied with one helper call, then parsed from the stack.
/// Only the packet's linear data is copied, at every hook alike, so the
/// fields the fingerprint uses read the same wherever the packet is seen.
#[repr(C)]
pub struct HeaderWindow {
    /// Packet bytes from the network header on; only the first `len` hold
    /// packet data.
    pub bytes: [u8; HEADER_WINDOW],
    /// How many leading bytes of `bytes` hold packet data.
    pub len: u32,
}

impl HeaderWindow {
    /// An empty window (`len` 0), zero-filled so the verifier sees every
    /// stack byte initialised.
    pub const fn new() -> Self {
        Self {
            bytes: [0; HEADER_WINDOW],
            len: 0,
        }
    }

    /// A window over the first bytes of `data` (host tests).
    pub fn from_slice(data: &[u8]) -> Self {
        let mut w = Self::new();
        let n = if data.len() < HEADER_WINDOW {
            data.len()
        } else {
            HEADER_WINDOW
        };
        w.bytes[..n].copy_from_slice(&data[..n]);
        w.len = n as u32;
        w
    }
}

impl Default for HeaderWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl PacketBytes for HeaderWindow {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: u32, buf: &mut [u8; N]) -> bool {
        // Volatile reads: when the compiler can prove the window bound below
        // from what it knows of `offset` or `len`, it drops the check, and
        // the BPF verifier, which knows less, then rejects the access.
        let off = offset as usize;
        // SAFETY: `&off` is a reference to a live local: valid, aligned and
        // initialised for the read.
        let off = unsafe { core::ptr::read_volatile(&off) };
        // SAFETY: `&self.len` is a reference to a field of a live window:
        // valid, aligned and initialised for the read.
        let len = unsafe { core::ptr::read_volatile(&self.len) } as usize;
        if N > HEADER_WINDOW || off > HEADER_WINDOW - N || off + N > len {
            return false;
        }
        let mut i = 0;
        while i < N {
            // SAFETY: off + i < off + N <= HEADER_WINDOW (checked above).
            buf[i] = unsafe { *self.bytes.get_unchecked(off + i) };
            i += 1;
        }
        true
    }
}

/// Outcome of parsing, carried in every event.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseStatus {
    /// Parsed as far as hoptrace reads: IP and transport headers, through
    /// one tunnel layer. A non-first fragment or an unknown transport
    /// protocol stops early and still counts as parsed.
    Ok = 0,
    /// Not IPv4/IPv6 (ARP, LLDP, ...).
    NotIp = 1,
    /// Headers shorter than they claim.
    Truncated = 2,
    /// Malformed header (bad version, IHL < 5, ...).
    BadHeader = 3,
    /// Not parsed on purpose: a netfilter bracket between two others of
    /// the same hook, which sees the headers the previous one parsed.
    Skipped = 4,
}

impl ParseStatus {
    /// Decodes [`PacketMeta::status`]; unknown values become
    /// [`ParseStatus::BadHeader`].
    pub const fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Ok,
            1 => Self::NotIp,
            2 => Self::Truncated,
            4 => Self::Skipped,
            _ => Self::BadHeader,
        }
    }
}

/// Encapsulation found around the inner packet.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encap {
    /// No tunnel: [`PacketMeta::outer`] is the packet itself.
    None = 0,
    /// VXLAN (RFC 7348) on one of [`TraceConfig::vxlan_ports`]: outer
    /// IP/UDP/VXLAN, then an inner Ethernet frame.
    Vxlan = 1,
    /// GENEVE (RFC 8926) on [`TraceConfig::geneve_port`], carrying an
    /// Ethernet frame (protocol type [`ETH_P_TEB`]).
    Geneve = 2,
    /// IPv4 or IPv6 inside IPv4/IPv6 (IPIP, SIT, ip6tnl).
    IpIp = 3,
}

impl Encap {
    /// Decodes [`PacketMeta::encap`]; unknown values become [`Encap::None`].
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Vxlan,
            2 => Self::Geneve,
            3 => Self::IpIp,
            _ => Self::None,
        }
    }
}

/// Headers of one IP layer and its transport header.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L3Headers {
    /// Source address in network byte order; IPv4 in the first 4 bytes.
    pub saddr: [u8; 16],
    /// Destination address in network byte order; IPv4 in the first 4 bytes.
    pub daddr: [u8; 16],
    /// TCP sequence number (host order); 0 for other protocols.
    pub tcp_seq: u32,
    /// TCP acknowledgment number (host order); 0 for other protocols.
    pub tcp_ack: u32,
    /// TCP/UDP source port (host order); for ICMP the echo identifier.
    pub sport: u16,
    /// TCP/UDP destination port (host order); for ICMP the echo sequence.
    pub dport: u16,
    /// IPv4 identification; IPv6: low 16 bits of the flow label.
    pub ip_id: u16,
    /// Transport payload length in bytes.
    pub payload_len: u16,
    /// 0 (absent), 4 or 6.
    pub version: u8,
    /// IP protocol number of the transport header (`IPPROTO_*`): the IPv4
    /// protocol field, or the IPv6 fixed header's next header (extension
    /// headers are not followed).
    pub l4_proto: u8,
    /// TCP flags; ICMP type.
    pub tcp_flags: u8,
    /// IPv4 fragmentation: 0 for a whole packet, [`FRAGMENT_LATER`] for a
    /// non-first fragment (no transport header), [`FRAGMENT_FIRST`] for the
    /// first fragment (offset 0, more fragments follow; its transport
    /// header is parsed, its payload length is the whole datagram's).
    pub fragment: u8,
    /// First 8 bytes of the transport payload (UDP, ICMP); all zero when the
    /// payload is shorter than 8 bytes or lies outside the header window.
    pub payload_head: [u8; 8],
    /// ICMP/ICMPv6 code (with the type in `tcp_flags`); 0 for other protocols.
    pub icmp_code: u8,
    /// Explicit tail padding to 64 bytes; always 0.
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<L3Headers>() == 64);

impl L3Headers {
    /// An absent layer (`version` 0), every field zero.
    pub const fn zeroed() -> Self {
        Self {
            saddr: [0; 16],
            daddr: [0; 16],
            tcp_seq: 0,
            tcp_ack: 0,
            sport: 0,
            dport: 0,
            ip_id: 0,
            payload_len: 0,
            version: 0,
            l4_proto: 0,
            tcp_flags: 0,
            fragment: 0,
            payload_head: [0; 8],
            icmp_code: 0,
            _pad: [0; 3],
        }
    }

    /// Whether the destination is a link-local multicast group: IPv4
    /// 224.0.0.0/24 (IGMP, VRRP), IPv6 ff02::/16 with any flags (neighbour
    /// discovery, MLD). Such a packet is never routed and waits for no
    /// neighbour ([`crate::LINK_LOCAL_MULTICAST_GAP_NS`]). Byte compares only, for
    /// the kernel programs.
    #[inline(always)]
    pub fn link_local_multicast(&self) -> bool {
        if self.version == 6 {
            self.daddr[0] == 0xff && self.daddr[1] & 0x0f == 0x02
        } else {
            self.daddr[0] == 224 && self.daddr[1] == 0 && self.daddr[2] == 0
        }
    }

    /// The source address, as `version` says (an IPv4 address for 0 too).
    pub fn src_addr(&self) -> core::net::IpAddr {
        self.addr(&self.saddr)
    }

    /// The destination address, as `version` says (an IPv4 address for 0 too).
    pub fn dst_addr(&self) -> core::net::IpAddr {
        self.addr(&self.daddr)
    }

    fn addr(&self, raw: &[u8; 16]) -> core::net::IpAddr {
        if self.version == 6 {
            core::net::IpAddr::V6(core::net::Ipv6Addr::from(*raw))
        } else {
            core::net::IpAddr::V4(core::net::Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
        }
    }
}

/// Everything hoptrace extracts from a packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketMeta {
    /// The outermost IP layer.
    pub outer: L3Headers,
    /// The encapsulated IP layer when `encap != 0`, else zeroed.
    pub inner: L3Headers,
    /// VXLAN/GENEVE network identifier.
    pub vni: u32,
    /// [`Encap`] as u8.
    pub encap: u8,
    /// [`ParseStatus`] as u8.
    pub status: u8,
    /// Explicit tail padding to 136 bytes; always 0.
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<PacketMeta>() == 136);

impl PacketMeta {
    /// Nothing parsed yet: both layers absent, no tunnel, every byte zero.
    pub const fn zeroed() -> Self {
        Self {
            outer: L3Headers::zeroed(),
            inner: L3Headers::zeroed(),
            vni: 0,
            encap: 0,
            status: 0,
            _pad: [0; 2],
        }
    }

    /// The innermost parsed layer: what the application sent.
    pub fn flow(&self) -> &L3Headers {
        if self.encap != Encap::None as u8 && self.inner.version != 0 {
            &self.inner
        } else {
            &self.outer
        }
    }
}

#[inline(always)]
fn be16(b0: u8, b1: u8) -> u16 {
    ((b0 as u16) << 8) | b1 as u16
}

#[inline(always)]
fn be32(b: [u8; 4]) -> u32 {
    u32::from_be_bytes(b)
}

/// Parses a frame that starts with an Ethernet header (tc hooks).
#[inline(always)]
pub fn parse_from_l2<P: PacketBytes>(
    src: &P,
    cfg: &TraceConfig,
    out: &mut PacketMeta,
) -> ParseStatus {
    let mut eth = [0u8; ETH_HLEN as usize];
    if !src.load(0, &mut eth) {
        return finish(out, ParseStatus::Truncated);
    }
    let mut ethertype = be16(eth[12], eth[13]);
    let mut l3 = ETH_HLEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let mut vlan = [0u8; 4];
        if !src.load(ETH_HLEN, &mut vlan) {
            return finish(out, ParseStatus::Truncated);
        }
        ethertype = be16(vlan[2], vlan[3]);
        l3 += 4;
    }
    parse_from_l3(src, l3, ethertype, cfg, out)
}

/// Parses a packet whose IP header starts at `l3_off` (netfilter hooks,
/// tracepoints, and devices without a link-layer header).
#[inline(always)]
pub fn parse_from_l3<P: PacketBytes>(
    src: &P,
    l3_off: u32,
    ethertype: u16,
    cfg: &TraceConfig,
    out: &mut PacketMeta,
) -> ParseStatus {
    if ethertype != ETH_P_IP && ethertype != ETH_P_IPV6 {
        return finish(out, ParseStatus::NotIp);
    }
    let l4_off = match parse_ip_layer(src, l3_off, ethertype, &mut out.outer) {
        Ok(off) => off,
        Err(status) => return finish(out, status),
    };
    let outer = &out.outer;
    if outer.fragment != 0 {
        return finish(out, ParseStatus::Ok);
    }
    // Encapsulation: find where the inner IP header starts.
    let mut inner_eth_off = 0u32;
    let mut inner_ethertype = 0u16;
    let mut inner_ip_off = 0u32;
    if outer.l4_proto == IPPROTO_UDP
        && (outer.dport == cfg.vxlan_ports[0] || outer.dport == cfg.vxlan_ports[1])
    {
        let mut vx = [0u8; VXLAN_HLEN as usize];
        if !src.load(l4_off + UDP_HLEN, &mut vx) {
            return finish(out, ParseStatus::Ok);
        }
        if vx[0] & 0x08 == 0 {
            return finish(out, ParseStatus::Ok);
        }
        out.vni = be32([0, vx[4], vx[5], vx[6]]);
        out.encap = Encap::Vxlan as u8;
        inner_eth_off = l4_off + UDP_HLEN + VXLAN_HLEN;
    } else if outer.l4_proto == IPPROTO_UDP && outer.dport == cfg.geneve_port {
        let mut gn = [0u8; 8];
        if !src.load(l4_off + UDP_HLEN, &mut gn) {
            return finish(out, ParseStatus::Ok);
        }
        if be16(gn[2], gn[3]) != ETH_P_TEB {
            return finish(out, ParseStatus::Ok);
        }
        let opt_len = ((gn[0] & 0x3f) as u32) * 4;
        out.vni = be32([0, gn[4], gn[5], gn[6]]);
        out.encap = Encap::Geneve as u8;
        inner_eth_off = l4_off + UDP_HLEN + 8 + opt_len;
    } else if outer.l4_proto == IPPROTO_IPIP {
        out.encap = Encap::IpIp as u8;
        inner_ethertype = ETH_P_IP;
        inner_ip_off = l4_off;
    } else if outer.l4_proto == IPPROTO_IPV6 {
        out.encap = Encap::IpIp as u8;
        inner_ethertype = ETH_P_IPV6;
        inner_ip_off = l4_off;
    } else {
        return finish(out, ParseStatus::Ok);
    }
    if inner_eth_off != 0 {
        let mut eth = [0u8; ETH_HLEN as usize];
        if !src.load(inner_eth_off, &mut eth) {
            return finish(out, ParseStatus::Truncated);
        }
        inner_ethertype = be16(eth[12], eth[13]);
        inner_ip_off = inner_eth_off + ETH_HLEN;
        if inner_ethertype != ETH_P_IP && inner_ethertype != ETH_P_IPV6 {
            // Encapsulated ARP and the like: the outer layer is all we know.
            return finish(out, ParseStatus::Ok);
        }
    }
    match parse_ip_layer(src, inner_ip_off, inner_ethertype, &mut out.inner) {
        Ok(_) => finish(out, ParseStatus::Ok),
        Err(status) => finish(out, status),
    }
}

#[inline(always)]
fn finish(out: &mut PacketMeta, status: ParseStatus) -> ParseStatus {
    out.status = status as u8;
    status
}

/// Parses one IP header and its transport header into `hdr`; returns the
/// offset of the transport header.
#[inline(always)]
fn parse_ip_layer<P: PacketBytes>(
    src: &P,
    off: u32,
    ethertype: u16,
    hdr: &mut L3Headers,
) -> Result<u32, ParseStatus> {
    let l4_off;
    let ip_payload_len: u32;
    if ethertype == ETH_P_IP {
        let mut ip = [0u8; 20];
        if !src.load(off, &mut ip) {
            return Err(ParseStatus::Truncated);
        }
        if ip[0] >> 4 != 4 {
            return Err(ParseStatus::BadHeader);
        }
        let ihl = ((ip[0] & 0x0f) as u32) * 4;
        if ihl < 20 {
            return Err(ParseStatus::BadHeader);
        }
        let total_len = be16(ip[2], ip[3]) as u32;
        hdr.version = 4;
        hdr.ip_id = be16(ip[4], ip[5]);
        hdr.l4_proto = ip[9];
        hdr.saddr[..4].copy_from_slice(&ip[12..16]);
        hdr.daddr[..4].copy_from_slice(&ip[16..20]);
        let frag = be16(ip[6], ip[7]);
        if frag & 0x1fff != 0 {
            hdr.fragment = FRAGMENT_LATER;
        } else if frag & 0x2000 != 0 {
            hdr.fragment = FRAGMENT_FIRST;
        }
        // GSO super-packets may carry total_len 0; keep what is known.
        ip_payload_len = total_len.saturating_sub(ihl);
        l4_off = off + ihl;
    } else {
        let mut ip = [0u8; 40];
        if !src.load(off, &mut ip) {
            return Err(ParseStatus::Truncated);
        }
        if ip[0] >> 4 != 6 {
            return Err(ParseStatus::BadHeader);
        }
        hdr.version = 6;
        hdr.ip_id = be16(ip[2], ip[3]);
        hdr.l4_proto = ip[6];
        hdr.saddr.copy_from_slice(&ip[8..24]);
        hdr.daddr.copy_from_slice(&ip[24..40]);
        ip_payload_len = be16(ip[4], ip[5]) as u32;
        l4_off = off + 40;
    }
    if hdr.fragment == FRAGMENT_LATER {
        return Ok(l4_off);
    }
    match hdr.l4_proto {
        IPPROTO_TCP => {
            let mut tcp = [0u8; 20];
            if !src.load(l4_off, &mut tcp) {
                return Err(ParseStatus::Truncated);
            }
            hdr.sport = be16(tcp[0], tcp[1]);
            hdr.dport = be16(tcp[2], tcp[3]);
            hdr.tcp_seq = be32([tcp[4], tcp[5], tcp[6], tcp[7]]);
            hdr.tcp_ack = be32([tcp[8], tcp[9], tcp[10], tcp[11]]);
            let doff = ((tcp[12] >> 4) as u32) * 4;
            hdr.tcp_flags = tcp[13];
            hdr.payload_len = ip_payload_len.saturating_sub(doff) as u16;
        }
        IPPROTO_UDP => {
            let mut udp = [0u8; 8];
            if !src.load(l4_off, &mut udp) {
                return Err(ParseStatus::Truncated);
            }
            hdr.sport = be16(udp[0], udp[1]);
            hdr.dport = be16(udp[2], udp[3]);
            let udp_len = be16(udp[4], udp[5]) as u32;
            hdr.payload_len = udp_len.saturating_sub(UDP_HLEN) as u16;
            load_payload_head(src, l4_off + UDP_HLEN, hdr);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let mut icmp = [0u8; 8];
            if !src.load(l4_off, &mut icmp) {
                return Err(ParseStatus::Truncated);
            }
            hdr.tcp_flags = icmp[0];
            hdr.icmp_code = icmp[1];
            hdr.sport = be16(icmp[4], icmp[5]);
            hdr.dport = be16(icmp[6], icmp[7]);
            hdr.payload_len = ip_payload_len.saturating_sub(8) as u16;
            load_payload_head(src, l4_off + 8, hdr);
        }
        _ => {}
    }
    Ok(l4_off)
}

#[inline(always)]
fn load_payload_head<P: PacketBytes>(src: &P, off: u32, hdr: &mut L3Headers) {
    if hdr.payload_len >= 8 {
        let mut head = [0u8; 8];
        if src.load(off, &mut head) {
            hdr.payload_head = head;
        }
    }
}

/// [`L3Headers::fragment`] of a non-first IPv4 fragment.
pub const FRAGMENT_LATER: u8 = 1;
/// [`L3Headers::fragment`] of the first IPv4 fragment (offset 0, MF set).
pub const FRAGMENT_FIRST: u8 = 2;

/// Does the packet match the `--ip/--port` filter of `cfg`? Checks the
/// innermost and the outer layer, so an encapsulated flow is kept whole.
#[inline(always)]
pub fn flow_matches(meta: &PacketMeta, cfg: &TraceConfig) -> bool {
    if cfg.filter_flow == 0 {
        return true;
    }
    layer_matches(&meta.outer, cfg) || (meta.encap != 0 && layer_matches(&meta.inner, cfg))
}

#[inline(always)]
fn layer_matches(h: &L3Headers, cfg: &TraceConfig) -> bool {
    if cfg.match_port != 0 && h.sport != cfg.match_port && h.dport != cfg.match_port {
        return false;
    }
    if cfg.match_family == 0 {
        return true;
    }
    if h.version != cfg.match_family {
        return false;
    }
    prefix_matches(&h.saddr, cfg) || prefix_matches(&h.daddr, cfg)
}

#[inline(always)]
fn prefix_matches(addr: &[u8; 16], cfg: &TraceConfig) -> bool {
    let bits = cfg.match_prefix_len as u32;
    let mut i = 0u32;
    while i < 16 {
        let start = i * 8;
        if start >= bits {
            break;
        }
        let take = if bits - start >= 8 { 8 } else { bits - start };
        let mask: u8 = (0xffu16 << (8 - take)) as u8;
        if (addr[i as usize] ^ cfg.match_addr[i as usize]) & mask != 0 {
            return false;
        }
        i += 1;
    }
    true
}
