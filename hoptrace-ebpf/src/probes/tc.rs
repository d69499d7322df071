//! tc ingress/egress on node devices (pod veths, bridges, tunnels, uplink).
//! Attached first in the tcx chain where tcx exists, clsact otherwise.
//! Always returns TC_ACT_UNSPEC (== TCX_NEXT): observe, never decide.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::classifier,
    programs::TcContext,
};
use hoptrace_common::{
    HeaderWindow, HookKind, HopHeader,
    packet::{ETH_P_8021AD, ETH_P_8021Q},
};
use hoptrace_ebpf::{
    aggregate::{self, Scratch},
    emit, floor, global,
    globals::{self, aggregate_mode, config},
    skb::window_len,
};

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;

/// Devices with an Ethernet header (veth, bridge, vxlan, geneve, uplink).
#[classifier]
pub fn hoptrace_tc_ingress(ctx: TcContext) -> i32 {
    observe(&ctx, HookKind::TcIngress, true);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn hoptrace_tc_egress(ctx: TcContext) -> i32 {
    observe(&ctx, HookKind::TcEgress, true);
    TC_ACT_UNSPEC
}

/// Devices without a link-layer header (ipip/tunl0, tun): the frame starts at IP.
#[classifier]
pub fn hoptrace_tc_ingress_l3(ctx: TcContext) -> i32 {
    observe(&ctx, HookKind::TcIngress, false);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn hoptrace_tc_egress_l3(ctx: TcContext) -> i32 {
    observe(&ctx, HookKind::TcEgress, false);
    TC_ACT_UNSPEC
}

/// Where the network header starts and its ethertype, read directly from
/// the packet: after the Ethernet header (and one VLAN tag) when the device
/// has one, at the first byte otherwise.
#[inline(always)]
fn network_header(ctx: &TcContext, has_l2: bool) -> Option<(u32, u16)> {
    if !has_l2 {
        // SAFETY: `ctx.skb.skb` is the `__sk_buff` context the kernel passed
        // in; the verifier rewrites this read of `protocol` into a load from
        // the real `sk_buff`.
        return Some((0, u16::from_be(unsafe { (*ctx.skb.skb).protocol } as u16)));
    }
    let data = ctx.data();
    if data + ETH_HLEN + VLAN_HLEN <= ctx.data_end() {
        // SAFETY: the 18 bytes at `data` lie in the packet's linear data
        // (checked against `data_end` just above, as the verifier requires
        // for direct packet access); a byte array needs no alignment.
        let eth = unsafe { &*(data as *const [u8; ETH_HLEN + VLAN_HLEN]) };
        let ethertype = u16::from_be_bytes([eth[12], eth[13]]);
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            return Some((
                (ETH_HLEN + VLAN_HLEN) as u32,
                u16::from_be_bytes([eth[16], eth[17]]),
            ));
        }
        return Some((ETH_HLEN as u32, ethertype));
    }
    if data + ETH_HLEN <= ctx.data_end() {
        // SAFETY: as above, for the 14 bytes checked against `data_end`.
        let eth = unsafe { &*(data as *const [u8; ETH_HLEN]) };
        return Some((ETH_HLEN as u32, u16::from_be_bytes([eth[12], eth[13]])));
    }
    None
}

/// Copies the linear bytes from `offset` on (at most `HEADER_WINDOW`)
/// with one call.
#[inline(always)]
fn copy_window(ctx: &TcContext, offset: u32, window: &mut HeaderWindow) {
    let linear = ctx.data_end().saturating_sub(ctx.data());
    let available = linear.saturating_sub(offset as usize);
    if available == 0 {
        return;
    }
    let n = window_len(available);
    // A bounded, non-zero length: TcContext::load_bytes clamps it to the
    // packet in a way the verifier cannot prove non-zero.
    // SAFETY: `ctx.skb.skb` is the context the kernel passed in; `n` is in
    // 1..=HEADER_WINDOW (`window_len`), the size of `window.bytes`, and the
    // helper checks `offset + n` against the packet.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            offset,
            window.bytes.as_mut_ptr() as *mut c_void,
            n as u32,
        )
    };
    if ret == 0 {
        window.len = n as u32;
    }
}

#[inline(always)]
fn observe(ctx: &TcContext, hook: HookKind, has_l2: bool) {
    let floor = globals::floor();
    if floor != 0 {
        // The tc context pointer is the kernel's struct sk_buff.
        floor::run(floor, ctx.skb.skb as u64);
        return;
    }
    if aggregate_mode() {
        observe_aggregate(ctx, hook, has_l2);
        return;
    }
    observe_full(ctx, hook, has_l2);
}

/// Full mode: one ring buffer record for the hop. A BPF subprogram, like
/// [`observe_aggregate`]: the verifier adds up the frames of a call chain
/// (512 bytes in all), so the program itself keeps a small one.
#[inline(never)]
fn observe_full(ctx: &TcContext, hook: HookKind, has_l2: bool) {
    let cfg = &config();
    let Some(mut entry) = emit::reserve() else {
        return;
    };
    // SAFETY: `reserve` zeroed every byte, a valid `HopEvent`.
    let ev = unsafe { entry.assume_init_mut() };
    fill_header(ctx, hook, ev);
    let mut window = HeaderWindow::new();
    let ethertype = window_of(ctx, has_l2, &mut window);
    emit::parse_and_submit(entry, &window, ethertype, cfg);
}

/// The hop's fields: time, buffer, hook, device, length.
#[inline(always)]
fn fill_header(ctx: &TcContext, hook: HookKind, h: &mut HopHeader) {
    // SAFETY: a helper without arguments that touches no memory.
    h.ts_ns = unsafe { bpf_ktime_get_ns() };
    fill_untimed(ctx, hook, h);
}

/// [`fill_header`] without the time.
#[inline(always)]
fn fill_untimed(ctx: &TcContext, hook: HookKind, h: &mut HopHeader) {
    // The tc context pointer is the kernel's struct sk_buff.
    h.skb_addr = ctx.skb.skb as u64;
    h.hook = hook as u8;
    // SAFETY: a read of the `__sk_buff` context the kernel passed in, which
    // the verifier rewrites into a load of `skb->dev->ifindex`.
    h.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    h.skb_len = ctx.len();
    h.netns_ino = global!(HOPTRACE_CONFIG.node_netns_ino);
}

/// Copies the headers from the network header on into `window`; returns
/// their ethertype (0 when the frame is too short).
#[inline(always)]
fn window_of(ctx: &TcContext, has_l2: bool, window: &mut HeaderWindow) -> u16 {
    match network_header(ctx, has_l2) {
        Some((offset, ethertype)) => {
            copy_window(ctx, offset, window);
            ethertype
        }
        None => 0,
    }
}

/// Aggregate mode: the same hop, its headers parsed into scratch space and
/// added to the in-kernel histograms (`hoptrace_ebpf::aggregate`). The
/// parser and the aggregation run as two BPF subprograms one after the
/// other: the verifier adds up the frames of a call chain (512 bytes in
/// all), and nested or inlined together they exceed it.
#[inline(always)]
fn observe_aggregate(ctx: &TcContext, hook: HookKind, has_l2: bool) {
    if hook == HookKind::TcEgress && continue_egress(ctx, has_l2) {
        return;
    }
    let Some(mut guard) = aggregate::scratch() else {
        return;
    };
    let sc = guard.get();
    // The hop's fields live in the scratch space too: the verifier adds
    // this frame to the parser's.
    fill_header(ctx, hook, &mut sc.header);
    let status = parse_into(ctx, has_l2, sc);
    aggregate::observe_parsed(sc, status, true);
}

/// Aggregate mode's cheap path for tc egress
/// ([`aggregate::tc_egress_continue`]): the hop continues its journey in
/// the same layer, so it is added without copying or parsing headers. A
/// BPF subprogram: its header does not add to the parsing path's frame.
#[inline(never)]
fn continue_egress(ctx: &TcContext, has_l2: bool) -> bool {
    let Some((offset, _)) = network_header(ctx, has_l2) else {
        return false;
    };
    let mut h = HopHeader::zeroed();
    fill_untimed(ctx, HookKind::TcEgress, &mut h);
    if h.skb_len <= offset {
        return false;
    }
    let l3_len = h.skb_len - offset;
    aggregate::tc_egress_continue(&mut h, l3_len)
}

/// Copies and parses the packet's headers into `sc`
/// ([`aggregate::parse_scratch`]).
#[inline(never)]
fn parse_into(ctx: &TcContext, has_l2: bool, sc: &mut Scratch) -> u8 {
    let ethertype = window_of(ctx, has_l2, &mut sc.window);
    aggregate::parse_scratch(sc, ethertype)
}
