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
    HookKind, PacketBytes,
    packet::{flow_matches, parse_from_l2, parse_from_l3},
};
use tracer_ebpf::{emit, globals::config};

/// Packet bytes of a tc context, offset 0 = start of the frame.
struct TcBytes<'a>(&'a TcContext);

impl PacketBytes for TcBytes<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: u32, buf: &mut [u8; N]) -> bool {
        // A constant length: TcContext::load_bytes clamps it to the packet,
        // which the verifier cannot prove non-zero.
        let ret = unsafe {
            bpf_skb_load_bytes(
                self.0.skb.skb as *const c_void,
                offset,
                buf.as_mut_ptr() as *mut c_void,
                N as u32,
            )
        };
        ret == 0
    }
}

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

#[inline(always)]
fn observe(ctx: &TcContext, hook: HookKind, has_l2: bool) {
    let Some(mut entry) = emit::reserve() else {
        return;
    };
    let cfg = config();
    let ev = unsafe { entry.assume_init_mut() };
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    // The tc context pointer is the kernel's struct sk_buff.
    ev.skb_addr = ctx.skb.skb as u64;
    ev.hook = hook as u8;
    ev.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    ev.skb_len = ctx.len();
    ev.netns_ino = cfg.node_netns_ino;
    let bytes = TcBytes(ctx);
    let status = if has_l2 {
        parse_from_l2(&bytes, &cfg, &mut ev.packet)
    } else {
        let ethertype = u16::from_be(unsafe { (*ctx.skb.skb).protocol } as u16);
        parse_from_l3(&bytes, 0, ethertype, &cfg, &mut ev.packet)
    };
    if !flow_matches(&ev.packet, &cfg) {
        emit::discard(entry);
        return;
    }
    emit::submit(entry, status);
}
