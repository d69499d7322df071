//! Aggregate mode ([`hoptrace_common::TraceMode::Aggregate`]): per-packet
//! state keyed by the skb address and per-CPU histograms of hop-to-hop
//! times, instead of one ring buffer record per hop. Types and the pure
//! functions (buckets, pass bits, fingerprint) are in `hoptrace_common::agg`.
//!
//! Per hop: one LRU hash lookup (the kernel inlines it), one per-CPU hash
//! lookup (inlined too), no helper call besides the clock read and the
//! header copy the hook already makes. Netfilter brackets that continue a
//! pass ([`nf_continue`]) and tc egress hops that follow POSTROUTING or a
//! bridge's tc ([`tc_egress_continue`]) copy and parse nothing: the other
//! hops parse, where a layer can change or a recycled buffer can start a
//! new journey. A journey's first hop inserts its
//! state; its last (socket delivery, drop) deletes it; the LRU evicts the
//! state of packets that leave the node.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{LruHashMap, PerCpuArray, PerCpuHashMap},
};
use hoptrace_common::{
    Counter, HeaderWindow, HookKind, HopHeader, PacketMeta, ParseStatus, TraceConfig,
    agg::{
        AGG_BUCKETS, AGG_FLAG_LINK_LOCAL_MULTICAST, AGG_FLAG_SAMPLED, AGG_FLAG_SYN, AGG_IDLE_NS,
        AggHist, AggKey, AggSite, AggState, PASS_STATUS_KNOWN, agg_bucket, agg_fingerprint,
        agg_stale, nf_continues, pass_add, tc_egress_continues,
    },
    packet::{IPPROTO_TCP, flow_matches, parse_from_l3},
};

use crate::{
    emit,
    maps::{count, tc_covered},
    skb::Skb,
};

/// Per-packet state of journeys in flight, keyed by the skb address.
/// Least recently used entries are evicted: a packet that leaves the node
/// ends no journey explicitly.
#[map]
pub static HOPTRACE_AGG_STATE: LruHashMap<u64, AggState> = LruHashMap::with_max_entries(65536, 0);

/// Histograms by segment key, one value per CPU; userspace sums them.
/// A full map is counted ([`Counter::AggFull`]), never silent.
#[map]
pub static HOPTRACE_AGG_HIST: PerCpuHashMap<AggKey, AggHist> =
    PerCpuHashMap::with_max_entries(4096, 0);

/// One empty histogram: the value a new key is inserted with (it does not
/// fit the 512-byte BPF stack).
#[map]
pub static HOPTRACE_AGG_ZERO: PerCpuArray<AggHist> = PerCpuArray::with_max_entries(1, 0);

/// Headers of one hop: copied and parsed outside the 512-byte BPF stack,
/// which cannot hold them beside the parser's own buffers.
#[repr(C)]
pub struct Scratch {
    /// The hop's fields (time, buffer, hook, device).
    pub header: HopHeader,
    /// Packet bytes from the network header on.
    pub window: HeaderWindow,
    /// The parsed headers.
    pub meta: PacketMeta,
}

/// Scratch space per CPU and nesting level: a tracepoint program in a
/// task can be interrupted by a softirq that runs a tc program on the same
/// CPU, which must not overwrite its headers.
#[map]
static HOPTRACE_AGG_SCRATCH: PerCpuArray<Scratch> =
    PerCpuArray::with_max_entries(SCRATCH_LEVELS, 0);

/// This CPU's nesting level of aggregate-mode programs.
#[map]
static HOPTRACE_AGG_NEST: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Nesting levels with scratch space of their own (task, softirq, and
/// margin); deeper runs skip the hop.
const SCRATCH_LEVELS: u32 = 4;

/// This run's scratch space; gives its level back when dropped.
pub struct ScratchGuard {
    nest: *mut u32,
    level: u32,
    scratch: *mut Scratch,
}

impl ScratchGuard {
    /// The scratch space, with an empty window and zeroed headers.
    #[inline(always)]
    pub fn get(&mut self) -> &mut Scratch {
        // SAFETY: a non-null pointer to this CPU's element `level` of a
        // per-CPU array, valid for the program's run; only this run (at this
        // nesting level) uses it until the guard is dropped.
        let s = unsafe { &mut *self.scratch };
        s.header = HopHeader::zeroed();
        s.window.len = 0;
        let words = &raw mut s.meta as *mut u64;
        let mut i = 0;
        while i < core::mem::size_of::<PacketMeta>() / 8 {
            // SAFETY: in bounds (PacketMeta is 136 bytes, asserted in
            // hoptrace-common, a multiple of 8); an unaligned store, since
            // the 132-byte window before it leaves `meta` 4-aligned.
            unsafe { core::ptr::write_unaligned(words.add(i), 0) };
            i += 1;
        }
        s
    }
}

impl Drop for ScratchGuard {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: as in `scratch`: this CPU's counter, valid for the run.
        unsafe { *self.nest = self.level };
    }
}

/// Takes this CPU's scratch space for the current nesting level.
#[inline(always)]
pub fn scratch() -> Option<ScratchGuard> {
    let nest = HOPTRACE_AGG_NEST.get_ptr_mut(0)?;
    // SAFETY: a non-null pointer to this CPU's `u32` of a per-CPU array,
    // valid for the program's run; a run that interrupts this one restores
    // it before this one continues.
    let level = unsafe { *nest };
    if level >= SCRATCH_LEVELS {
        return None;
    }
    let scratch = HOPTRACE_AGG_SCRATCH.get_ptr_mut(level)?;
    // SAFETY: as above.
    unsafe { *nest = level + 1 };
    Some(ScratchGuard {
        nest,
        level,
        scratch,
    })
}

/// Whether the device (`netns_ino`, `ifindex`) has a qdisc, for
/// [`agg_stale`]: tc egress and queue hops happen on devices hoptrace times
/// with tc, and `HOPTRACE_TC_COVERED` holds those without one. Looked up
/// only for a link-local multicast hop late after such a hop.
#[inline(always)]
fn device_queues(netns_ino: u32, ifindex: u32) -> bool {
    !tc_covered(netns_ino, ifindex)
}

/// TCP SYN and ACK flags.
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Adds `delta_ns` to this CPU's histogram of `key`, inserting it first.
#[inline(always)]
fn add(key: &AggKey, delta_ns: u64) {
    let hist = match HOPTRACE_AGG_HIST.get_ptr_mut(key) {
        Some(p) => p,
        None => {
            let Some(zero) = HOPTRACE_AGG_ZERO.get_ptr(0) else {
                return;
            };
            // SAFETY: a non-null pointer to this CPU's element of a
            // per-CPU array, valid for the program's run; nothing writes it.
            let zero = unsafe { &*zero };
            // Another CPU may insert the key first (EEXIST): fine, the
            // lookup below finds it.
            let _ = HOPTRACE_AGG_HIST.insert(key, zero, u64::from(BPF_NOEXIST));
            match HOPTRACE_AGG_HIST.get_ptr_mut(key) {
                Some(p) => p,
                None => {
                    count(Counter::AggFull);
                    return;
                }
            }
        }
    };
    // SAFETY: a non-null pointer to this CPU's value of a per-CPU hash
    // entry, valid for the program's run (an element deleted meanwhile is
    // freed only after an RCU grace period); no other CPU writes it.
    let h = unsafe { &mut *hist };
    h.count += 1;
    h.sum_ns += delta_ns;
    let i = agg_bucket(delta_ns) & (AGG_BUCKETS - 1);
    // SAFETY: `i` < AGG_BUCKETS (masked with a power of two minus one).
    unsafe { *h.buckets.get_unchecked_mut(i) += 1 };
}

/// What a packet's hop did to its journey.
pub struct Outcome {
    /// The journey is sampled: write this hop to the ring buffer too.
    pub sampled: bool,
    /// For a hop that ends a journey that was not sampled: the journey's
    /// previous hop and its time, so that a drop reaches the correlator
    /// with the hop before it.
    pub prev: Option<(AggSite, u64)>,
}

/// Adds the hop at `site` (time `ts`, `skb->len` `skb_len`) to the journey
/// whose state is `s`: the segment from its newest hop to this one goes to
/// the histograms, and this hop becomes the newest. `fingerprint` and
/// `first_flags` ([`AGG_FLAG_SYN`], [`AGG_FLAG_LINK_LOCAL_MULTICAST`]) come
/// from the hop's headers (0 when it did not parse); `ct_state` is a
/// netfilter hop's conntrack state.
#[inline(always)]
pub fn extend(
    s: &mut AggState,
    site: AggSite,
    ts: u64,
    skb_len: u32,
    fingerprint: u32,
    first_flags: u8,
    ct_state: Option<u8>,
) -> Outcome {
    if let Some(ct) = ct_state {
        if site.encap == 0 {
            s.inner_pass = pass_add(s.inner_pass, site.nf_slot, ct);
        } else {
            s.outer_pass = pass_add(s.outer_pass, site.nf_slot, ct);
        }
    }
    let key = AggKey {
        prev: s.prev,
        cur: site,
        first: s.first,
        inner_pass: s.inner_pass,
        outer_pass: s.outer_pass,
        flags: s.flags & AGG_FLAG_SYN,
        _pad: 0,
    };
    add(&key, ts.wrapping_sub(s.prev_ts));
    let out = Outcome {
        sampled: s.flags & AGG_FLAG_SAMPLED != 0,
        prev: Some((s.prev, s.prev_ts)),
    };
    if s.fingerprint == 0 && fingerprint != 0 {
        s.fingerprint = fingerprint;
        s.flags |= first_flags;
    }
    s.prev = site;
    s.prev_ts = ts;
    s.skb_len = skb_len;
    out
}

/// Records one hop of the packet in buffer `addr` at `site` (time `ts`,
/// `skb->len` `skb_len`). `meta` are its parsed headers (`None` for a
/// netfilter bracket that does not parse: it belongs to the previous parsed
/// hop's layer); `ct_state` is the netfilter hop's conntrack state; `ends`
/// deletes the state (socket delivery, drop).
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "one value per field of the hop, inlined"
)]
pub fn hop(
    addr: u64,
    mut site: AggSite,
    ts: u64,
    skb_len: u32,
    meta: Option<&PacketMeta>,
    ct_state: Option<u8>,
    cfg: &TraceConfig,
    ends: bool,
) -> Outcome {
    let (fingerprint, first_flags) = match meta {
        Some(m) => {
            let f = m.flow();
            let mut flags = 0;
            if f.l4_proto == IPPROTO_TCP && f.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
                flags |= AGG_FLAG_SYN;
            }
            if f.link_local_multicast() {
                flags |= AGG_FLAG_LINK_LOCAL_MULTICAST;
            }
            (agg_fingerprint(f), flags)
        }
        None => (0, 0),
    };
    let device_hop = site.hook != HookKind::Netfilter as u8;
    if let Some(p) = HOPTRACE_AGG_STATE.get_ptr_mut(addr) {
        // SAFETY: a non-null pointer to an LRU hash value, valid for the
        // program's run (a deleted or evicted element is freed after an RCU
        // grace period). Another CPU may write it concurrently for the same
        // buffer; a torn state costs one segment, never memory safety.
        let s = unsafe { &mut *p };
        if meta.is_none() {
            site.encap = s.prev.encap;
        }
        let gap = ts.wrapping_sub(s.prev_ts);
        let fp_diff = fingerprint != 0 && s.fingerprint != 0 && fingerprint != s.fingerprint;
        let twice = device_hop && site == s.prev;
        let stale = agg_stale(s, gap, device_queues);
        let recycled = stale || fp_diff || twice;
        // Stale within the idle timeout: only the link-local multicast rule
        // says so; counted where it alone starts the new journey.
        if stale && gap <= AGG_IDLE_NS && !fp_diff && !twice {
            count(Counter::AggLinkLocalRepeat);
        }
        if !recycled {
            let out = extend(s, site, ts, skb_len, fingerprint, first_flags, ct_state);
            if ends {
                let _ = HOPTRACE_AGG_STATE.remove(addr);
            }
            return out;
        }
    }
    // A new journey starts here.
    let sampled =
        cfg.sample_every != 0 && fingerprint != 0 && (fingerprint >> 1) % cfg.sample_every == 0;
    if ends {
        let _ = HOPTRACE_AGG_STATE.remove(addr);
        return Outcome {
            sampled,
            prev: None,
        };
    }
    let (mut inner_pass, mut outer_pass) = (0, 0);
    if let Some(ct) = ct_state {
        if site.encap == 0 {
            inner_pass = pass_add(0, site.nf_slot, ct);
        } else {
            outer_pass = pass_add(0, site.nf_slot, ct);
        }
    }
    let mut flags = first_flags;
    if sampled {
        flags |= AGG_FLAG_SAMPLED;
    }
    let state = AggState {
        prev: site,
        first: site,
        inner_pass,
        outer_pass,
        flags,
        _pad: 0,
        fingerprint,
        prev_ts: ts,
        skb_len,
        _pad2: 0,
    };
    let _ = HOPTRACE_AGG_STATE.insert(addr, state, 0);
    Outcome {
        sampled,
        prev: None,
    }
}

/// Adds hop `h` (its time not yet set) of the journey in state `s` without
/// headers, in the layer of the journey's newest hop; a sampled journey
/// writes it as a header-only record. `ct_state` for a netfilter hop.
#[inline(always)]
fn continue_with(s: &mut AggState, h: &mut HopHeader, ts: u64, ct_state: Option<u8>) {
    h.ts_ns = ts;
    let site = AggSite {
        netns_ino: h.netns_ino,
        ifindex: h.ifindex,
        hook: h.hook,
        nf_hook: h.nf_hook,
        nf_slot: h.nf_slot,
        encap: s.prev.encap,
    };
    let out = extend(s, site, ts, h.skb_len, 0, 0, ct_state);
    if out.sampled {
        emit::copy_and_submit(h, None, ParseStatus::Skipped);
    }
}

/// A netfilter hop that continues the pass of the packet in buffer
/// `h.skb_addr` ([`nf_continues`]: a later bracket of the same hook or the
/// next hook of the traversal, same length, within the gap [`agg_stale`]
/// allows): added to the journey without parsing, copying or
/// fingerprinting anything. `h` is the hop without its time, which this
/// sets; `nfct` its `skb->_nfct`;
/// `parse_slot` says the bracket parses in full mode, so a sampled
/// journey's ring record needs headers there, and the conntrack entry's
/// status is read there (one helper call) until a bracket of the pass has
/// read it (it stays the same until conntrack confirms the entry at the
/// pass's end). `false` (nothing recorded) when the hop does not continue a
/// pass or needs headers: the caller takes the parsing path.
#[inline(always)]
pub fn nf_continue(h: &mut HopHeader, nfct: u64, parse_slot: bool) -> bool {
    let Some(p) = HOPTRACE_AGG_STATE.get_ptr_mut(h.skb_addr) else {
        return false;
    };
    // SAFETY: as in `hop`: an LRU hash value valid for the program's run; a
    // concurrent writer can tear it, never make it unsafe to use.
    let s = unsafe { &mut *p };
    if !nf_continues(
        &s.prev,
        s.skb_len,
        h.netns_ino,
        h.nf_hook,
        h.nf_slot,
        h.skb_len,
    ) || (parse_slot && s.flags & AGG_FLAG_SAMPLED != 0)
    {
        return false;
    }
    // SAFETY: a helper without arguments that touches no memory.
    let ts = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    if agg_stale(s, ts.wrapping_sub(s.prev_ts), device_queues) {
        return false;
    }
    let pass = if s.prev.encap == 0 {
        s.inner_pass
    } else {
        s.outer_pass
    };
    if parse_slot && pass & PASS_STATUS_KNOWN == 0 {
        h.ct_state |= Skb::ct_flags(nfct);
    }
    let ct_state = h.ct_state;
    continue_with(s, h, ts, Some(ct_state));
    true
}

/// A tc egress hop that continues its journey in the same layer
/// ([`tc_egress_continues`]: after POSTROUTING or a bridge's tc, same
/// length, within the gap [`agg_stale`] allows): added without parsing.
/// `h` is the hop without its time; `l3_len` its bytes from the network
/// header on. Sampled journeys take the parsing path (their ring record
/// carries headers).
/// `false` (nothing recorded): the caller parses.
#[inline(always)]
pub fn tc_egress_continue(h: &mut HopHeader, l3_len: u32) -> bool {
    let Some(p) = HOPTRACE_AGG_STATE.get_ptr_mut(h.skb_addr) else {
        return false;
    };
    // SAFETY: as in `nf_continue`.
    let s = unsafe { &mut *p };
    if !tc_egress_continues(
        &s.prev,
        s.skb_len,
        h.netns_ino,
        h.ifindex,
        h.skb_len,
        l3_len,
    ) || s.flags & AGG_FLAG_SAMPLED != 0
    {
        return false;
    }
    // SAFETY: a helper without arguments that touches no memory.
    let ts = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    if agg_stale(s, ts.wrapping_sub(s.prev_ts), device_queues) {
        return false;
    }
    continue_with(s, h, ts, None);
    true
}

/// The aggregate-mode path of every hook: `h` is the hop (time, buffer,
/// hook, device, netfilter fields), `meta` its parsed headers with parse
/// status `status` (`None`: a netfilter bracket that does not parse).
/// Packets whose headers did not parse go to the ring buffer as in full
/// mode (the correlator counts them); drops always do (drop records and
/// diagnosis need them), with the hop before them; sampled journeys write
/// every hop.
#[inline(always)]
pub fn observe(h: &HopHeader, meta: Option<&PacketMeta>, status: ParseStatus, cfg: &TraceConfig) {
    let hook = h.hook;
    if hook == HookKind::Consume as u8 {
        let _ = HOPTRACE_AGG_STATE.remove(h.skb_addr);
        return;
    }
    if status != ParseStatus::Ok && status != ParseStatus::Skipped {
        emit::copy_and_submit(h, meta, status);
        return;
    }
    let site = AggSite {
        netns_ino: h.netns_ino,
        ifindex: h.ifindex,
        hook,
        nf_hook: h.nf_hook,
        nf_slot: h.nf_slot,
        encap: match meta {
            Some(m) => m.encap,
            None => 0,
        },
    };
    let is_drop = hook == HookKind::Drop as u8;
    let ends = is_drop || hook == HookKind::SocketDeliver as u8;
    let ct_state = if hook == HookKind::Netfilter as u8 {
        Some(h.ct_state)
    } else {
        None
    };
    let out = hop(
        h.skb_addr, site, h.ts_ns, h.skb_len, meta, ct_state, cfg, ends,
    );
    if let Some((prev, prev_ts)) = out.prev
        && is_drop
        && !out.sampled
    {
        emit::site_header(h.skb_addr, &prev, prev_ts);
    }
    if out.sampled || is_drop {
        emit::copy_and_submit(h, meta, status);
    }
}

/// [`observe`] as a BPF subprogram of its own, reading the configuration
/// itself: the verifier adds a program's frame to its deepest call's, and
/// the parser's and this one's do not fit the 512-byte stack together.
#[inline(never)]
pub fn observe_subprogram(h: &HopHeader, meta: Option<&PacketMeta>, status: ParseStatus) {
    observe(h, meta, status, &crate::globals::config());
}

/// What [`parse_scratch`] returns for a packet the `--ip/--port` filter
/// rejects.
pub const PARSE_FILTERED: u8 = 0xff;

/// Parses the headers in `sc.window` (from the network header on, of
/// protocol `ethertype`) into `sc.meta`: the [`ParseStatus`] as u8, or
/// [`PARSE_FILTERED`]. Each hook calls it from a BPF subprogram of its own
/// that first copies the window.
#[inline(always)]
pub fn parse_scratch(sc: &mut Scratch, ethertype: u16) -> u8 {
    let cfg = crate::globals::config();
    let status = parse_from_l3(&sc.window, 0, ethertype, &cfg, &mut sc.meta);
    if !flow_matches(&sc.meta, &cfg) {
        return PARSE_FILTERED;
    }
    status as u8
}

/// After a hook's parse: counts a filtered packet, or adds the hop in
/// `sc.header` with the headers in `sc.meta` (`parsed`) or without (a
/// netfilter bracket that does not parse).
#[inline(always)]
pub fn observe_parsed(sc: &Scratch, status: u8, parsed: bool) {
    if status == PARSE_FILTERED {
        count(Counter::Filtered);
        return;
    }
    let meta = if parsed { Some(&sc.meta) } else { None };
    observe_subprogram(&sc.header, meta, ParseStatus::from_u8(status));
}
