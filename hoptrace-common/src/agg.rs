//! Aggregate mode ([`crate::TraceMode::Aggregate`]): the kernel programs add
//! each hop-to-hop time to per-CPU histograms instead of writing one ring
//! buffer record per hop. These are the shared types of its maps
//! (`HOPTRACE_AGG_STATE`, `HOPTRACE_AGG_HIST`, `HOPTRACE_AGG_ZERO`) and the
//! pure functions both sides use (bucket index, netfilter pass bits,
//! fingerprint), unit-tested on the host.
//!
//! The kernel does not name segments: a histogram is keyed by the raw sites
//! of both hops (hook, netfilter hook and slot, namespace, device,
//! encapsulation), the journey's first hop and what its netfilter passes
//! said so far; userspace names each key once with the correlator's device
//! table and `attribution::taxonomy::classify` (one taxonomy).

use crate::{
    CT_STATUS_KNOWN, CT_UNCONFIRMED, CtState, L3Headers, LINK_LOCAL_MULTICAST_GAP_NS,
    NF_PRIORITY_SLOTS,
};

/// Where a hop was seen, as the kernel knows it. For netfilter hops
/// `ifindex` is 0 (the taxonomy names them by hook and slot only); for
/// socket deliveries it is 0 too (no device).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AggSite {
    /// Network namespace inode of the device (or of the netfilter hook).
    pub netns_ino: u32,
    /// Device index (0 for netfilter and socket hops).
    pub ifindex: u32,
    /// [`crate::HookKind`] as u8.
    pub hook: u8,
    /// Netfilter hook ([`crate::NfHook`]) of a netfilter hop, else 0.
    pub nf_hook: u8,
    /// Index into [`NF_PRIORITY_SLOTS`] of a netfilter hop, else 0.
    pub nf_slot: u8,
    /// [`crate::Encap`] of the packet at this hop (the layer a netfilter
    /// bracket that does not parse belongs to: the previous parsed one's).
    pub encap: u8,
}

const _: () = assert!(core::mem::size_of::<AggSite>() == 12);

/// Key of one aggregate histogram: a segment (from `prev` to `cur`) of
/// journeys that started at the same first hop and whose netfilter passes
/// said the same so far.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AggKey {
    /// The hop the segment starts at.
    pub prev: AggSite,
    /// The hop the segment ends at.
    pub cur: AggSite,
    /// The journey's first hop (its direction; `prev == first` marks a
    /// journey's first segment).
    pub first: AggSite,
    /// [`PASS_SEEN`].. bits of the packet's own netfilter pass, up to and
    /// including `cur`.
    pub inner_pass: u8,
    /// The same for the encapsulating outer packet's pass.
    pub outer_pass: u8,
    /// [`AGG_FLAG_SYN`].
    pub flags: u8,
    /// Explicit padding; always 0.
    pub _pad: u8,
}

const _: () = assert!(core::mem::size_of::<AggKey>() == 40);

/// Per-packet state in `HOPTRACE_AGG_STATE`, keyed by the skb address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AggState {
    /// The newest hop.
    pub prev: AggSite,
    /// The journey's first hop.
    pub first: AggSite,
    /// Netfilter pass bits of the packet itself.
    pub inner_pass: u8,
    /// Netfilter pass bits of its outer packet.
    pub outer_pass: u8,
    /// [`AGG_FLAG_SYN`], [`AGG_FLAG_SAMPLED`],
    /// [`AGG_FLAG_LINK_LOCAL_MULTICAST`].
    pub flags: u8,
    /// Explicit padding; always 0.
    pub _pad: u8,
    /// [`agg_fingerprint`] of the first parsed hop (0: none yet).
    pub fingerprint: u32,
    // `prev.encap` is the layer of the newest parsed hop: what a netfilter
    // bracket that does not parse belongs to.
    /// `bpf_ktime_get_ns()` of the newest hop.
    pub prev_ts: u64,
    /// `skb->len` at the newest hop (at a netfilter hop: the bytes from the
    /// network header on), for [`nf_continues`].
    pub skb_len: u32,
    /// Explicit tail padding; always 0.
    pub _pad2: u32,
}

const _: () = assert!(core::mem::size_of::<AggState>() == 48);

/// Whether a netfilter hop at `slot` of hook `nf_hook` in namespace
/// `netns_ino`, with `skb->len` `skb_len`, continues the netfilter pass
/// whose newest hop was `prev` (with `skb->len` `prev_len`) without a hop
/// elsewhere in between: a later slot of the same hook, or the hook that
/// follows it in the same traversal (PREROUTING → INPUT or FORWARD,
/// FORWARD or OUTPUT → POSTROUTING), in the same namespace, with the same
/// length. Then the headers are those of `prev`'s layer (NAT rewrites
/// addresses and ports, never the length or the encapsulation), so the hop
/// needs no parse and no fingerprint: a buffer that carries another packet
/// starts its journey at a device or at OUTPUT, never in the middle of a
/// pass. The caller checks the time gap too.
#[inline(always)]
pub fn nf_continues(
    prev: &AggSite,
    prev_len: u32,
    netns_ino: u32,
    nf_hook: u8,
    slot: u8,
    skb_len: u32,
) -> bool {
    if prev.hook != crate::HookKind::Netfilter as u8
        || prev.netns_ino != netns_ino
        || prev_len != skb_len
    {
        return false;
    }
    let (from, to) = (prev.nf_hook, nf_hook);
    if from == to {
        return prev.nf_slot < slot;
    }
    use crate::NfHook::{Forward, LocalIn, LocalOut, PostRouting, PreRouting};
    (from == PreRouting as u8 && (to == LocalIn as u8 || to == Forward as u8))
        || ((from == Forward as u8 || from == LocalOut as u8) && to == PostRouting as u8)
}

/// The journey's first parsed packet was a TCP SYN without ACK (the
/// connection state when no netfilter pass says one).
pub const AGG_FLAG_SYN: u8 = 1;
/// The journey is sampled: its hops also go through the ring buffer
/// (state only, never in a key).
pub const AGG_FLAG_SAMPLED: u8 = 2;

/// The journey's first parsed packet is for a link-local multicast group
/// ([`L3Headers::link_local_multicast`]): [`agg_stale`] allows it
/// [`LINK_LOCAL_MULTICAST_GAP_NS`] between hops (state only, never in a
/// key).
pub const AGG_FLAG_LINK_LOCAL_MULTICAST: u8 = 4;

/// Gap after which a buffer's next hop is another packet, ns: the
/// correlator's default idle timeout.
pub const AGG_IDLE_NS: u64 = 50_000_000;

/// Whether the newest hop `prev` may be followed by a wait in a qdisc:
/// POSTROUTING (the neighbour and the device's queue come next), and a tc
/// egress or a device's queue hop on a device with a qdisc
/// (`device_queues(netns_ino, ifindex)`, asked only for those hooks: the
/// kernel looks the device up in a map). The correlator's `may_wait` for
/// the kernel's sites (IPv4 fragments at defrag excepted).
#[inline(always)]
pub fn may_wait_after(prev: &AggSite, device_queues: impl FnOnce(u32, u32) -> bool) -> bool {
    use crate::HookKind;
    if prev.hook == HookKind::Netfilter as u8 {
        return prev.nf_hook == crate::NfHook::PostRouting as u8;
    }
    (prev.hook == HookKind::TcEgress as u8 || prev.hook == HookKind::DevQueue as u8)
        && device_queues(prev.netns_ino, prev.ifindex)
}

/// Whether a hop `gap_ns` after the newest hop of the journey in state `s`
/// belongs to another packet by time alone: a gap over [`AGG_IDLE_NS`], or,
/// for a link-local multicast journey ([`AGG_FLAG_LINK_LOCAL_MULTICAST`]),
/// over [`LINK_LOCAL_MULTICAST_GAP_NS`] unless its newest hop may wait in a
/// qdisc ([`may_wait_after`]). The same rules as the correlator's idle
/// timeout and its link-local multicast rule. One flag test on the common
/// path; `device_queues` runs only for a late link-local multicast hop.
#[inline(always)]
pub fn agg_stale(s: &AggState, gap_ns: u64, device_queues: impl FnOnce(u32, u32) -> bool) -> bool {
    gap_ns > AGG_IDLE_NS
        || (s.flags & AGG_FLAG_LINK_LOCAL_MULTICAST != 0
            && gap_ns > LINK_LOCAL_MULTICAST_GAP_NS
            && !may_wait_after(&s.prev, device_queues))
}

/// Buckets per histogram: bucket 0 holds times under 64 ns; above, four
/// sub-buckets per power of two of ns (log-linear, each at most 25 % wide),
/// up to 2^37 ns (137 s); the last bucket holds everything longer.
pub const AGG_BUCKETS: usize = 128;
/// Sub-buckets per power of two, as bits.
pub const AGG_SUB_BITS: u32 = 2;
/// Power of two of the first log-linear bucket (64 ns).
const AGG_MIN_POW: u32 = 6;

/// Value of one histogram (per CPU): count, sum and bucket counts.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AggHist {
    /// Segments observed.
    pub count: u64,
    /// Their summed duration, ns.
    pub sum_ns: u64,
    /// Counts per bucket ([`agg_bucket`]).
    pub buckets: [u32; AGG_BUCKETS],
}

const _: () = assert!(core::mem::size_of::<AggHist>() == 16 + 4 * AGG_BUCKETS);

impl AggHist {
    /// Empty histogram.
    pub const fn zeroed() -> Self {
        Self {
            count: 0,
            sum_ns: 0,
            buckets: [0; AGG_BUCKETS],
        }
    }
}

/// Bucket index of a duration of `ns` nanoseconds (always below
/// [`AGG_BUCKETS`]). Written without a loop or a count-leading-zeros, so
/// the verifier sees a bounded index.
#[inline(always)]
pub fn agg_bucket(ns: u64) -> usize {
    if ns < (1 << AGG_MIN_POW) {
        return 0;
    }
    // floor(log2(ns)) by binary search.
    let mut v = ns;
    let mut k: u32 = 0;
    if v >= 1 << 32 {
        v >>= 32;
        k += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        k += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        k += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        k += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        k += 2;
    }
    if v >= 1 << 1 {
        k += 1;
    }
    let sub = ((ns >> (k - AGG_SUB_BITS)) & ((1 << AGG_SUB_BITS) - 1)) as usize;
    let i = 1 + ((k - AGG_MIN_POW) as usize) * (1 << AGG_SUB_BITS) + sub;
    if i >= AGG_BUCKETS { AGG_BUCKETS - 1 } else { i }
}

/// Lower bound of bucket `i` in ns (0 for bucket 0).
pub const fn agg_bucket_lower(i: usize) -> u64 {
    if i == 0 {
        return 0;
    }
    let k = (i - 1) as u32 / (1 << AGG_SUB_BITS) + AGG_MIN_POW;
    let sub = ((i - 1) % (1 << AGG_SUB_BITS)) as u64;
    ((1 << AGG_SUB_BITS) + sub) << (k - AGG_SUB_BITS)
}

/// A representative duration of bucket `i` in ns: the middle of its range
/// (32 ns for bucket 0, the lower bound for the open last bucket).
pub const fn agg_bucket_mid(i: usize) -> u64 {
    if i == 0 {
        return 32;
    }
    if i + 1 >= AGG_BUCKETS {
        return agg_bucket_lower(i);
    }
    (agg_bucket_lower(i) + agg_bucket_lower(i + 1)) / 2
}

/// Netfilter pass bit: a netfilter hop of this layer was seen.
pub const PASS_SEEN: u8 = 1;
/// A hop after conntrack's priority (-200) saw the packet.
pub const PASS_CHECKED: u8 = 2;
/// Such a hop found a conntrack entry.
pub const PASS_FOUND: u8 = 4;
/// A hop reported ctinfo `IP_CT_NEW`.
pub const PASS_CTINFO_NEW: u8 = 8;
/// A hop read the entry's status ([`CT_STATUS_KNOWN`]).
pub const PASS_STATUS_KNOWN: u8 = 16;
/// A hop found the entry unconfirmed: this pass created it.
pub const PASS_UNCONFIRMED: u8 = 32;

/// Netfilter priority of conntrack (`NF_IP_PRI_CONNTRACK`).
const NF_PRIORITY_CONNTRACK: i32 = -200;

/// The first slot of [`NF_PRIORITY_SLOTS`] after conntrack's priority
/// (the table is sorted): a comparison, not a table lookup, in the kernel.
const FIRST_CHECKED_SLOT: u8 = {
    let mut i = 0;
    while i < NF_PRIORITY_SLOTS.len() && NF_PRIORITY_SLOTS[i] <= NF_PRIORITY_CONNTRACK {
        i += 1;
    }
    i as u8
};

/// Adds a netfilter hop at `slot` with `ct_state` (a
/// [`crate::HopHeader::ct_state`]) to a pass's bits: the same rules as the
/// correlator's `NetfilterPass::add`.
#[inline(always)]
pub fn pass_add(bits: u8, slot: u8, ct_state: u8) -> u8 {
    let checked = slot >= FIRST_CHECKED_SLOT && (slot as usize) < NF_PRIORITY_SLOTS.len();
    let state = CtState::from_u8(ct_state) as u8;
    let mut out = bits | PASS_SEEN;
    if checked {
        out |= PASS_CHECKED;
        if state != CtState::None as u8 {
            out |= PASS_FOUND;
        }
    }
    if state == CtState::New as u8 {
        out |= PASS_CTINFO_NEW;
    }
    if ct_state & CT_STATUS_KNOWN != 0 {
        out |= PASS_STATUS_KNOWN;
        if ct_state & CT_UNCONFIRMED != 0 {
            out |= PASS_UNCONFIRMED;
        }
    }
    out
}

/// 32-bit fingerprint of a packet's innermost headers from the fields NAT
/// and encapsulation leave alone (IP ID, protocol, TCP flags, seq/ack,
/// payload length and head), never 0: a buffer that carries another packet
/// (a recycled skb) has another one, so it starts a new journey.
#[inline(always)]
pub fn agg_fingerprint(f: &L3Headers) -> u32 {
    const M: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = (u64::from(f.version)
        | (u64::from(f.l4_proto) << 8)
        | (u64::from(f.tcp_flags) << 16)
        | (u64::from(f.ip_id) << 24)
        | (u64::from(f.payload_len) << 40))
        .wrapping_mul(M);
    h ^= ((u64::from(f.tcp_seq) << 32) | u64::from(f.tcp_ack)).wrapping_mul(M);
    h = h.rotate_left(29) ^ u64::from_le_bytes(f.payload_head).wrapping_mul(M);
    ((h ^ (h >> 32)) as u32) | 1
}

// SAFETY: `#[repr(C)]`, `Copy`, integer fields only with no implicit
// padding (sizes asserted above): every bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for AggKey {}
// SAFETY: as for `AggKey`: integers and an array of them, no implicit
// padding (size asserted above).
#[cfg(feature = "user")]
unsafe impl aya::Pod for AggHist {}
// SAFETY: as for `AggKey` (size asserted above, `_pad` explicit).
#[cfg(feature = "user")]
unsafe impl aya::Pod for AggState {}

/// Whether a tc egress hop on device `ifindex` in namespace `netns_ino`
/// (`skb->len` `skb_len`, of which `l3_len` from the network header on)
/// continues the journey whose newest hop was `prev` (`skb->len`
/// `prev_len`) in the same layer without a parse: after POSTROUTING of the
/// same namespace with the same length from the network header on (the
/// packet leaves through the device routing chose: a tunnel device sees
/// the inner packet here, the outer one is parsed at OUTPUT), or after tc
/// on another device of the namespace with the same `skb->len` (a bridge
/// forwarding to its port). A recycled buffer starts its journey at a
/// device's ingress, at OUTPUT or in a pod, never at a tc egress that
/// follows such a hop. The caller checks the time gap too.
#[inline(always)]
pub fn tc_egress_continues(
    prev: &AggSite,
    prev_len: u32,
    netns_ino: u32,
    ifindex: u32,
    skb_len: u32,
    l3_len: u32,
) -> bool {
    use crate::HookKind;
    if prev.netns_ino != netns_ino {
        return false;
    }
    if prev.hook == HookKind::Netfilter as u8 {
        return prev.nf_hook == crate::NfHook::PostRouting as u8 && prev_len == l3_len;
    }
    (prev.hook == HookKind::TcIngress as u8 || prev.hook == HookKind::TcEgress as u8)
        && prev.ifindex != ifindex
        && prev_len == skb_len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HookKind, NfHook};

    /// A site in namespace 7: device `ifindex` (0 for netfilter), `nf` the
    /// netfilter hook and slot of a netfilter hop.
    fn site(hook: HookKind, ifindex: u32, nf: Option<(NfHook, u8)>) -> AggSite {
        let (nf_hook, nf_slot) = nf.map_or((0, 0), |(h, slot)| (h as u8, slot));
        AggSite {
            netns_ino: 7,
            ifindex,
            hook: hook as u8,
            nf_hook,
            nf_slot,
            encap: 0,
        }
    }

    #[test]
    fn buckets_are_log_linear_and_bounded() {
        assert_eq!(agg_bucket(0), 0);
        assert_eq!(agg_bucket(63), 0);
        assert_eq!(agg_bucket(64), 1);
        assert_eq!(agg_bucket(79), 1);
        assert_eq!(agg_bucket(80), 2);
        assert_eq!(agg_bucket(127), 4);
        assert_eq!(agg_bucket(128), 5);
        assert_eq!(agg_bucket(u64::MAX), AGG_BUCKETS - 1);
        for i in 1..AGG_BUCKETS - 1 {
            let lo = agg_bucket_lower(i);
            let hi = agg_bucket_lower(i + 1);
            assert_eq!(agg_bucket(lo), i, "lower bound of {i}");
            assert_eq!(agg_bucket(hi - 1), i, "upper end of {i}");
            // At most 25 % wide.
            assert!((hi - lo) * 4 <= lo, "bucket {i}: {lo}..{hi}");
            let mid = agg_bucket_mid(i);
            assert!(lo <= mid && mid < hi);
        }
    }

    #[test]
    fn pass_bits_follow_conntrack() {
        // Slot 0 (-401) is before conntrack: seen, not checked.
        assert_eq!(pass_add(0, 0, 0), PASS_SEEN);
        // Slot 2 (-199) with an established entry whose status was read.
        let est = CtState::Established as u8 | CT_STATUS_KNOWN;
        assert_eq!(
            pass_add(0, 2, est),
            PASS_SEEN | PASS_CHECKED | PASS_FOUND | PASS_STATUS_KNOWN
        );
        let new = CtState::New as u8 | CT_STATUS_KNOWN | CT_UNCONFIRMED;
        assert_eq!(
            pass_add(PASS_SEEN, 2, new),
            PASS_SEEN
                | PASS_CHECKED
                | PASS_FOUND
                | PASS_CTINFO_NEW
                | PASS_STATUS_KNOWN
                | PASS_UNCONFIRMED
        );
        // After conntrack without an entry: checked, not found (untracked).
        assert_eq!(pass_add(0, 3, 0), PASS_SEEN | PASS_CHECKED);
    }

    #[test]
    fn netfilter_passes_continue_only_within_a_traversal() {
        let nf = |hook: NfHook, slot: u8| site(HookKind::Netfilter, 0, Some((hook, slot)));
        let pre = nf(NfHook::PreRouting, 2);
        // A later slot of the same hook, same length and namespace.
        assert!(nf_continues(&pre, 100, 7, NfHook::PreRouting as u8, 3, 100));
        // Not an earlier or the same slot, another length or namespace.
        assert!(!nf_continues(
            &pre,
            100,
            7,
            NfHook::PreRouting as u8,
            2,
            100
        ));
        assert!(!nf_continues(
            &pre,
            100,
            7,
            NfHook::PreRouting as u8,
            3,
            150
        ));
        assert!(!nf_continues(
            &pre,
            100,
            8,
            NfHook::PreRouting as u8,
            3,
            100
        ));
        // The hooks of one traversal follow each other.
        assert!(nf_continues(&pre, 100, 7, NfHook::Forward as u8, 0, 100));
        assert!(nf_continues(&pre, 100, 7, NfHook::LocalIn as u8, 0, 100));
        let fwd = nf(NfHook::Forward, 8);
        assert!(nf_continues(
            &fwd,
            100,
            7,
            NfHook::PostRouting as u8,
            0,
            100
        ));
        let out = nf(NfHook::LocalOut, 8);
        assert!(nf_continues(
            &out,
            100,
            7,
            NfHook::PostRouting as u8,
            0,
            100
        ));
        // Anything else starts a parse: a hook out of order, or a device hop before.
        assert!(!nf_continues(
            &fwd,
            100,
            7,
            NfHook::PreRouting as u8,
            0,
            100
        ));
        let post = nf(NfHook::PostRouting, 8);
        assert!(!nf_continues(&post, 100, 7, NfHook::LocalOut as u8, 0, 100));
        let tc = AggSite {
            hook: HookKind::TcEgress as u8,
            ..pre
        };
        assert!(!nf_continues(&tc, 100, 7, NfHook::PreRouting as u8, 3, 100));
    }

    #[test]
    fn tc_egress_continues_after_postrouting_or_a_bridge() {
        let post = site(HookKind::Netfilter, 0, Some((NfHook::PostRouting, 8)));
        // 1514 bytes at tc (Ethernet header included), 1500 from IP on.
        assert!(tc_egress_continues(&post, 1500, 7, 3, 1514, 1500));
        assert!(
            !tc_egress_continues(&post, 1500, 7, 3, 1564, 1550),
            "encapsulated: parse"
        );
        assert!(
            !tc_egress_continues(&post, 1500, 8, 3, 1514, 1500),
            "another namespace"
        );
        let fwd = AggSite {
            nf_hook: NfHook::Forward as u8,
            ..post
        };
        assert!(!tc_egress_continues(&fwd, 1500, 7, 3, 1514, 1500));
        let bridge = site(HookKind::TcEgress, 2, None);
        assert!(tc_egress_continues(&bridge, 1514, 7, 3, 1514, 1500));
        assert!(
            !tc_egress_continues(&bridge, 1514, 7, 2, 1514, 1500),
            "the same device twice"
        );
        let rx = AggSite {
            hook: HookKind::DevReceive as u8,
            ..bridge
        };
        assert!(!tc_egress_continues(&rx, 1514, 7, 3, 1514, 1500));
    }

    #[test]
    fn link_local_multicast_groups_by_their_bytes() {
        let mut v4 = L3Headers::zeroed();
        v4.version = 4;
        v4.daddr[..4].copy_from_slice(&[224, 0, 0, 22]);
        assert!(v4.link_local_multicast(), "IGMPv3 reports");
        v4.daddr[..4].copy_from_slice(&[224, 0, 1, 22]);
        assert!(!v4.link_local_multicast(), "224.0.1.0/24 is routed");
        v4.daddr[..4].copy_from_slice(&[10, 244, 1, 5]);
        assert!(!v4.link_local_multicast());
        let mut v6 = L3Headers::zeroed();
        v6.version = 6;
        v6.daddr = core::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16).octets();
        assert!(v6.link_local_multicast(), "MLDv2 reports");
        v6.daddr = core::net::Ipv6Addr::new(0xff12, 0, 0, 0, 0, 0, 0, 1).octets();
        assert!(v6.link_local_multicast(), "transient link-scope group");
        v6.daddr = core::net::Ipv6Addr::new(0xff05, 0, 0, 0, 0, 0, 0, 2).octets();
        assert!(!v6.link_local_multicast(), "site scope");
        v6.daddr = core::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1).octets();
        assert!(!v6.link_local_multicast(), "link-local unicast");
        assert!(!L3Headers::zeroed().link_local_multicast(), "no layer");
    }

    #[test]
    fn a_late_hop_of_link_local_multicast_is_another_packet() {
        // The lab flake: an MLD report's journey ends at the uplink's tc
        // ingress, its repeat's flood copy takes the buffer 32 ms later.
        let uplink_in = site(HookKind::TcIngress, 2, None);
        let mut s = AggState {
            prev: uplink_in,
            first: uplink_in,
            flags: AGG_FLAG_LINK_LOCAL_MULTICAST,
            ..AggState::default()
        };
        let no_device = |_, _| panic!("asked only after a tc egress or a queue hop");
        assert!(agg_stale(&s, 32_000_000, no_device));
        assert!(!agg_stale(&s, LINK_LOCAL_MULTICAST_GAP_NS, no_device));
        assert!(!agg_stale(&s, 40_000, no_device), "one softirq");
        // Other packets keep the idle timeout.
        s.flags = AGG_FLAG_SYN;
        assert!(!agg_stale(&s, 32_000_000, no_device));
        assert!(agg_stale(&s, AGG_IDLE_NS + 1, no_device));
        // After POSTROUTING or a queueing device's egress the packet may
        // wait in a qdisc: the idle timeout applies.
        s.flags = AGG_FLAG_LINK_LOCAL_MULTICAST;
        s.prev = site(HookKind::Netfilter, 0, Some((NfHook::PostRouting, 8)));
        assert!(!agg_stale(&s, 32_000_000, no_device));
        assert!(agg_stale(&s, AGG_IDLE_NS + 1, no_device));
        s.prev = site(HookKind::TcEgress, 2, None);
        assert!(!agg_stale(&s, 32_000_000, |ns, ifindex| (ns, ifindex) == (7, 2)));
        assert!(agg_stale(&s, 32_000_000, |_, _| false), "noqueue device");
        s.prev = site(HookKind::DevQueue, 2, None);
        assert!(!agg_stale(&s, 32_000_000, |_, _| true));
    }

    #[test]
    fn fingerprints_differ_by_sequence_and_never_zero() {
        let mut a = L3Headers::zeroed();
        a.version = 4;
        a.l4_proto = 6;
        a.tcp_seq = 1000;
        let mut b = a;
        b.tcp_seq = 2000;
        assert_ne!(agg_fingerprint(&a), agg_fingerprint(&b));
        assert_eq!(agg_fingerprint(&a), agg_fingerprint(&a));
        assert_ne!(agg_fingerprint(&L3Headers::zeroed()), 0);
    }
}
