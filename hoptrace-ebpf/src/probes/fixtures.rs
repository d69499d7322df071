//! Test fixtures, not part of hoptrace: tc programs that DO decide verdicts,
//! so the root tests can check that hoptrace attached beside them changes
//! none of their decisions. Their names deliberately lack the `hoptrace_`
//! prefix: `hoptrace cleanup` must leave them alone like any foreign filter.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_redirect, bpf_skb_load_bytes},
    macros::classifier,
    programs::TcContext,
};

/// UDP destination port that [`fixture_drop_port`] drops and
/// [`fixture_redirect`] redirects (set at load time).
#[unsafe(no_mangle)]
static FIXTURE_PORT: u16 = 0;

/// Interface index [`fixture_redirect`] sends matching datagrams out of.
#[unsafe(no_mangle)]
static FIXTURE_IFINDEX: u32 = 0;

const ETH_HLEN: u32 = 14;
const ETH_P_IP: [u8; 2] = [0x08, 0x00];
const IPPROTO_UDP: u8 = 17;

/// Reads `N` bytes at `offset`; the length is a constant, as the verifier
/// wants (aya's `TcContext::load_bytes` clamps it and the verifier rejects that).
#[inline(always)]
fn load<const N: usize>(ctx: &TcContext, offset: u32) -> Option<[u8; N]> {
    let mut buf = [0u8; N];
    // SAFETY: `ctx.skb.skb` is the `__sk_buff` context the kernel passed
    // in; the helper copies at most `N` bytes into the `N`-byte `buf` and
    // checks `offset` against the packet itself.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            offset,
            buf.as_mut_ptr() as *mut c_void,
            N as u32,
        )
    };
    (ret == 0).then_some(buf)
}

/// Whether the frame is Ethernet/IPv4/UDP to `port`. (A plain bool, not an
/// `Option<u16>`: comparing an `Option` can read its uninitialised payload
/// register, which the verifier rejects.)
#[inline(always)]
fn is_udp_to(ctx: &TcContext, port: u16) -> bool {
    let Some(eth) = load::<14>(ctx, 0) else {
        return false;
    };
    if [eth[12], eth[13]] != ETH_P_IP {
        return false;
    }
    let Some(ip) = load::<20>(ctx, ETH_HLEN) else {
        return false;
    };
    // Not UDP, or a later fragment without a UDP header.
    if ip[9] != IPPROTO_UDP || (u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff) != 0 {
        return false;
    }
    let ihl = u32::from(ip[0] & 0x0f) * 4;
    if ihl < 20 {
        return false;
    }
    match load::<4>(ctx, ETH_HLEN + ihl) {
        Some(ports) => u16::from_be_bytes([ports[2], ports[3]]) == port,
        None => false,
    }
}

#[inline(always)]
fn fixture_port() -> u16 {
    // SAFETY: a static `u16`: valid, aligned and initialised; set by the
    // loader before the program runs, only read afterwards.
    unsafe { core::ptr::read_volatile(&raw const FIXTURE_PORT) }
}

/// Drops UDP datagrams to `FIXTURE_PORT`; everything else is accepted.
#[classifier]
pub fn fixture_drop_port(ctx: TcContext) -> i32 {
    if is_udp_to(&ctx, fixture_port()) {
        TC_ACT_SHOT
    } else {
        TC_ACT_OK
    }
}

/// Redirects UDP datagrams to `FIXTURE_PORT` out of (egress) the device
/// `FIXTURE_IFINDEX`; everything else (ARP, other ports) is accepted.
#[classifier]
pub fn fixture_redirect(ctx: TcContext) -> i32 {
    if is_udp_to(&ctx, fixture_port()) {
        // SAFETY: as in `fixture_port`, for a static `u32`.
        let ifindex = unsafe { core::ptr::read_volatile(&raw const FIXTURE_IFINDEX) };
        // SAFETY: the helper takes an ifindex and flags by value and touches
        // no memory of ours.
        unsafe { bpf_redirect(ifindex, 0) as i32 }
    } else {
        TC_ACT_OK
    }
}
