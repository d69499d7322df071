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
    HeaderWindow, HookKind,
    packet::{ETH_P_8021AD, ETH_P_8021Q},
};
use hoptrace_ebpf::{
    emit,
    globals::{config, dispatch_only},
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
    if dispatch_only() {
        return;
    }
    let Some(mut entry) = emit::reserve() else {
        return;
    };
    let cfg = config();
    // SAFETY: `reserve` zeroed every byte, a valid `HopEvent`.
    let ev = unsafe { entry.assume_init_mut() };
    // SAFETY: a helper without arguments that touches no memory.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    // The tc context pointer is the kernel's struct sk_buff.
    ev.skb_addr = ctx.skb.skb as u64;
    ev.hook = hook as u8;
    // SAFETY: a read of the `__sk_buff` context the kernel passed in, which
    // the verifier rewrites into a load of `skb->dev->ifindex`.
    ev.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    ev.skb_len = ctx.len();
    ev.netns_ino = cfg.node_netns_ino;
    let mut window = HeaderWindow::new();
    let ethertype = match network_header(ctx, has_l2) {
        Some((offset, ethertype)) => {
            copy_window(ctx, offset, &mut window);
            ethertype
        }
        None => 0,
    };
    emit::parse_and_submit(entry, &window, ethertype, &cfg);
}
