//! Netfilter BPF programs (BPF_PROG_TYPE_NETFILTER), one per priority slot.
//! Userspace attaches slot N at `NF_PRIORITY_SLOTS[N]` on the hooks where that
//! band exists, so consecutive programs bracket conntrack, DNAT, filter, SNAT.
//! aya 0.14 has no netfilter program type: these sit in a `classifier`
//! section only so that aya-obj can parse the object; hoptrace-core/src/kernel/netfilter.rs
//! loads them with the right type and creates the links. Always NF_ACCEPT.

use core::ffi::c_void;

use aya_ebpf::helpers::bpf_ktime_get_ns;
use hoptrace_common::{
    CtState, Floor, HookKind, HopHeader,
    packet::{ETH_P_IP, ETH_P_IPV6},
};
use hoptrace_ebpf::{
    aggregate::{self, Scratch},
    emit, floor, global,
    globals::{self, aggregate_mode, config},
    skb::{BtfPtr, Skb, dev_ifindex},
};

const NF_ACCEPT: i32 = 1;
const NFPROTO_IPV6: u8 = 10;
/// `struct bpf_nf_ctx { const struct nf_hook_state *state; struct sk_buff *skb; }`.
/// The verifier accepts context loads only at these exact constant offsets.
const NF_CTX_STATE: usize = 0;
const NF_CTX_SKB: usize = 8;

macro_rules! netfilter_slot {
    ($name:ident, $slot:expr) => {
        #[unsafe(no_mangle)]
        #[unsafe(link_section = "classifier")]
        pub extern "C" fn $name(ctx: *mut c_void) -> i32 {
            observe(ctx, $slot);
            NF_ACCEPT
        }
    };
}

netfilter_slot!(hoptrace_nf_slot0, 0);
netfilter_slot!(hoptrace_nf_slot1, 1);
netfilter_slot!(hoptrace_nf_slot2, 2);
netfilter_slot!(hoptrace_nf_slot3, 3);
netfilter_slot!(hoptrace_nf_slot4, 4);
netfilter_slot!(hoptrace_nf_slot5, 5);
netfilter_slot!(hoptrace_nf_slot6, 6);
netfilter_slot!(hoptrace_nf_slot7, 7);
netfilter_slot!(hoptrace_nf_slot8, 8);

#[inline(always)]
fn observe(ctx: *mut c_void, slot: u8) {
    let floor = globals::floor();
    if floor == Floor::Dispatch as u8 {
        return;
    }
    // Both context fields are pointers the verifier knows by BTF type.
    // SAFETY: `ctx` is the kernel's `struct bpf_nf_ctx *`, 16 bytes; these
    // are 8-byte loads at offsets 0 and 8, the only context accesses the
    // verifier accepts for BPF_PROG_TYPE_NETFILTER.
    let (state, skb) = unsafe {
        (
            BtfPtr(*((ctx as *const u8).add(NF_CTX_STATE) as *const u64)),
            Skb(BtfPtr(*((ctx as *const u8).add(NF_CTX_SKB) as *const u64))),
        )
    };
    if floor != 0 {
        floor::run(floor, skb.addr());
        return;
    }
    let nf_hook: u8 = state.load(global!(HOPTRACE_LAYOUT.nf_state_hook));
    let nf_pf: u8 = state.load(global!(HOPTRACE_LAYOUT.nf_state_pf));
    let hook = nf_hook as usize;
    let parse_slots = global!(HOPTRACE_CONFIG.nf_parse_slots);
    let parse = hook >= parse_slots.len() || (parse_slots[hook] >> slot) & 1 != 0;
    if aggregate_mode() {
        observe_aggregate(skb, slot, nf_hook, nf_pf, parse);
        return;
    }
    observe_full(skb, slot, nf_hook, nf_pf, parse);
}

/// Full mode: one ring buffer record for the hop. A BPF subprogram, like
/// [`observe_aggregate`]: with both inlined into each slot's program the
/// frame exceeds the 512-byte BPF stack.
#[inline(never)]
fn observe_full(skb: Skb, slot: u8, nf_hook: u8, nf_pf: u8, parse: bool) {
    let cfg = config();
    let site = NfSite {
        slot,
        nf_hook,
        nf_pf,
        netns_ino: cfg.node_netns_ino,
    };
    if !parse {
        // Same headers as the previous bracket of this hook: a header-only
        // record that just times the packet.
        let Some(mut entry) = emit::reserve_header() else {
            return;
        };
        // SAFETY: `reserve_header` zeroed every byte, a valid `HopHeader`.
        fill_header(unsafe { entry.assume_init_mut() }, skb, site, false);
        emit::submit_header(entry);
        return;
    }
    let Some(mut entry) = emit::reserve() else {
        return;
    };
    // SAFETY: `reserve` zeroed every byte, a valid `HopEvent`.
    fill_header(
        &mut unsafe { entry.assume_init_mut() }.header,
        skb,
        site,
        true,
    );
    // The window lives in the per-CPU scratch space: on the stack it no
    // longer fits beside the parser since the programs gained aggregate mode.
    let Some(mut guard) = aggregate::scratch() else {
        emit::discard(entry);
        return;
    };
    let sc = guard.get();
    skb.network_window(&mut sc.window);
    emit::parse_and_submit(entry, &sc.window, ethertype_of(nf_pf), &cfg);
}

/// Ethertype of a netfilter hook's protocol family.
#[inline(always)]
fn ethertype_of(nf_pf: u8) -> u16 {
    if nf_pf == NFPROTO_IPV6 {
        ETH_P_IPV6
    } else {
        ETH_P_IP
    }
}

/// Where a netfilter bracket runs: its priority slot, hook, protocol
/// family, and the namespace whose links it belongs to (the node's).
#[derive(Clone, Copy)]
struct NfSite {
    slot: u8,
    nf_hook: u8,
    nf_pf: u8,
    netns_ino: u32,
}

impl NfSite {
    /// The bracket at `slot` of hook `nf_hook` (family `nf_pf`) of the
    /// traced node.
    #[inline(always)]
    fn of_node(slot: u8, nf_hook: u8, nf_pf: u8) -> Self {
        Self {
            slot,
            nf_hook,
            nf_pf,
            // Netfilter links belong to the namespace that created them: the node.
            netns_ino: global!(HOPTRACE_CONFIG.node_netns_ino),
        }
    }
}

/// The hop's fields and its time. `ct_status`: also read the conntrack
/// entry's status (one helper call), done by the parsing brackets only (the
/// first of each hook and the one after each NAT band), which is where a
/// pass's entry is seen.
#[inline(always)]
fn fill_header(h: &mut HopHeader, skb: Skb, site: NfSite, ct_status: bool) {
    fill_untimed(h, skb, site, ct_status);
    // SAFETY: a helper without arguments that touches no memory.
    h.ts_ns = unsafe { bpf_ktime_get_ns() };
}

/// [`fill_header`] without the time.
#[inline(always)]
fn fill_untimed(h: &mut HopHeader, skb: Skb, site: NfSite, ct_status: bool) {
    h.skb_addr = skb.addr();
    h.hook = HookKind::Netfilter as u8;
    h.nf_slot = site.slot;
    h.nf_hook = site.nf_hook;
    h.nf_pf = site.nf_pf;
    h.netns_ino = site.netns_ino;
    h.ifindex = dev_ifindex(skb.dev());
    h.skb_len = skb.len();
    let nfct = skb.nfct();
    h.ct_state = CtState::from_nfct(nfct) as u8;
    if ct_status {
        h.ct_state |= Skb::ct_flags(nfct);
    }
}

/// Aggregate mode: the hop of `skb` at `slot` of netfilter hook `nf_hook`
/// (family `nf_pf`), its headers parsed into scratch space when `parse`,
/// added to the in-kernel histograms. The parser and the aggregation run
/// as two BPF subprograms one after the other: the verifier adds up the
/// frames of a call chain (512 bytes in all), and nested or inlined
/// together they exceed it.
#[inline(always)]
fn observe_aggregate(skb: Skb, slot: u8, nf_hook: u8, nf_pf: u8, parse: bool) {
    if continue_pass(skb, slot, nf_hook, nf_pf, parse) {
        return;
    }
    let Some(mut guard) = aggregate::scratch() else {
        return;
    };
    let sc = guard.get();
    // The hop's fields live in the scratch space: the verifier adds this
    // frame to the parser's.
    let site = NfSite::of_node(slot, nf_hook, nf_pf);
    fill_header(&mut sc.header, skb, site, true);
    // A hop that does not continue a pass parses, whatever its slot: it is
    // the first of a pass (after a device hop, at OUTPUT), where a layer
    // can change or a recycled buffer start a new journey.
    let status = parse_into(skb, nf_pf, sc);
    aggregate::observe_parsed(sc, status, true);
}

/// Aggregate mode's cheap path ([`aggregate::nf_continue`]): the hop
/// continues the packet's netfilter pass, so it is added without parsing.
/// `parse` is the bracket's full-mode parse slot: it reads the conntrack
/// entry's status (where a pass's entry is seen) until one bracket of the
/// pass has. A BPF subprogram: its
/// header does not add to the parsing path's frame.
#[inline(never)]
fn continue_pass(skb: Skb, slot: u8, nf_hook: u8, nf_pf: u8, parse: bool) -> bool {
    let mut h = HopHeader::zeroed();
    fill_untimed(&mut h, skb, NfSite::of_node(slot, nf_hook, nf_pf), false);
    aggregate::nf_continue(&mut h, skb.nfct(), parse)
}

/// Copies and parses the headers of `skb` into `sc`
/// ([`aggregate::parse_scratch`]).
#[inline(never)]
fn parse_into(skb: Skb, nf_pf: u8, sc: &mut Scratch) -> u8 {
    skb.network_window(&mut sc.window);
    aggregate::parse_scratch(sc, ethertype_of(nf_pf))
}
