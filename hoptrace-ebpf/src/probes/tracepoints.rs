//! BTF tracepoints (tp_btf) on the device and socket paths. They fire in
//! every network namespace: that is how the pod side of a veth is seen.
//! Events from namespaces that are not part of this node are filtered here
//! when `TraceConfig::filter_netns` is set.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::btf_tracepoint, programs::BtfTracePointContext};
use hoptrace_common::{
    Counter, HeaderWindow, HookKind, HopHeader,
    packet::{ETH_P_IP, ETH_P_IPV6},
};
use hoptrace_ebpf::{
    aggregate::{self, Scratch},
    emit, floor, global,
    globals::{self, aggregate_mode, config},
    maps::{count, netns_traced, tc_covered},
    skb::{BtfPtr, Skb, dev_ifindex, dev_netns},
};

/// A tp_btf program named `$name` on tracepoint `$function` whose first
/// argument is the `struct sk_buff *`: the hop `$hook` of that buffer.
macro_rules! skb_tracepoint {
    ($(#[$doc:meta])* $name:ident, $function:tt, $hook:expr) => {
        $(#[$doc])*
        #[btf_tracepoint(function = $function)]
        pub fn $name(ctx: BtfTracePointContext) -> i32 {
            let skb: *const u8 = ctx.arg(0);
            observe(skb as u64, $hook, 0);
            0
        }
    };
}

skb_tracepoint!(
    /// A device hands the packet to the stack (after tc ingress, before netfilter).
    hoptrace_netif_receive_skb,
    "netif_receive_skb",
    HookKind::DevReceive
);
skb_tracepoint!(
    /// The packet enters a device's transmit path (qdisc).
    hoptrace_net_dev_queue,
    "net_dev_queue",
    HookKind::DevQueue
);
skb_tracepoint!(
    /// The driver takes the packet (after the qdisc).
    hoptrace_net_dev_start_xmit,
    "net_dev_start_xmit",
    HookKind::DevXmit
);
skb_tracepoint!(
    /// A reading socket copies the payload out: delivery to the application.
    hoptrace_skb_copy_datagram_iovec,
    "skb_copy_datagram_iovec",
    HookKind::SocketDeliver
);
skb_tracepoint!(
    /// Normal end of a packet's life (optional: userspace attaches it only when asked).
    hoptrace_consume_skb,
    "consume_skb",
    HookKind::Consume
);

/// The packet is dropped; the kernel says why.
#[btf_tracepoint(function = "kfree_skb")]
pub fn hoptrace_kfree_skb(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let reason: u64 = ctx.arg(2);
    observe(skb as u64, HookKind::Drop, reason as u32);
    0
}

#[inline(always)]
fn observe(addr: u64, hook: HookKind, drop_reason: u32) {
    let floor = globals::floor();
    if floor != 0 {
        floor::run(floor, addr);
        return;
    }
    let skb = Skb(BtfPtr(addr));
    // The namespace first: most runs are for packets of other namespaces
    // (or of the node's tc-timed devices) and end here, before any copy.
    let (dev, netns) = if hook as u8 == HookKind::SocketDeliver as u8 {
        // On the socket path skb->dev shares its storage with dev_scratch.
        (BtfPtr(0), skb.sock_netns())
    } else {
        let dev = skb.dev();
        (dev, dev_netns(dev))
    };
    if global!(HOPTRACE_CONFIG.filter_netns) != 0 && !netns_traced(netns) {
        count(Counter::Filtered);
        return;
    }
    // A buffer without a device that is not IP is no network packet:
    // netlink messages (every `ip link`), unix sockets and the like reach
    // skb_copy_datagram_iovec and kfree_skb too. Their buffers reuse the
    // addresses of traced packets, so they must not even be seen.
    let protocol = skb.protocol();
    if dev.is_null() && protocol != ETH_P_IP && protocol != ETH_P_IPV6 {
        count(Counter::NotPacket);
        return;
    }
    let ifindex = dev_ifindex(dev);
    let device_hop = matches!(
        hook,
        HookKind::DevReceive | HookKind::DevQueue | HookKind::DevXmit
    );
    if device_hop && tc_covered(netns, ifindex) {
        count(Counter::Redundant);
        return;
    }
    // SAFETY: a helper without arguments that touches no memory.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    // The hop's fields, written where each mode keeps its header.
    let skb_len = skb.len();
    let fill = |h: &mut HopHeader| {
        h.ts_ns = ts_ns;
        h.skb_addr = addr;
        h.hook = hook as u8;
        h.netns_ino = netns;
        h.ifindex = ifindex;
        h.skb_len = skb_len;
        h.drop_reason = drop_reason;
    };
    if aggregate_mode() {
        // The hop's fields live in the scratch space: the verifier adds
        // this frame to the parser's.
        let Some(mut guard) = aggregate::scratch() else {
            return;
        };
        let sc = guard.get();
        fill(&mut sc.header);
        observe_aggregate(skb, protocol, sc);
    } else {
        let mut h = HopHeader::zeroed();
        fill(&mut h);
        observe_full(skb, &h, protocol);
    }
}

/// Full mode: one ring buffer record for hop `h` of `skb`. A BPF
/// subprogram, like [`observe_aggregate`]: the verifier adds up the frames
/// of a call chain (512 bytes in all), so the program itself keeps a small
/// one.
#[inline(never)]
fn observe_full(skb: Skb, h: &HopHeader, protocol: u16) {
    let cfg = &config();
    let Some(mut entry) = emit::reserve() else {
        return;
    };
    // SAFETY: `reserve` zeroed every byte, a valid `HopEvent`.
    let ev = unsafe { entry.assume_init_mut() };
    ev.header = *h;
    let mut window = HeaderWindow::new();
    skb.network_window(&mut window);
    emit::parse_and_submit(entry, &window, protocol, cfg);
}

/// Aggregate mode: hop `sc.header` of `skb`, its headers parsed into scratch space
/// and added to the in-kernel histograms. The parser and the aggregation
/// run as two BPF subprograms one after the other: the verifier adds up
/// the frames of a call chain (512 bytes in all), and nested or inlined
/// together they exceed it.
#[inline(always)]
fn observe_aggregate(skb: Skb, protocol: u16, sc: &mut Scratch) {
    let status = parse_into(skb, protocol, sc);
    aggregate::observe_parsed(sc, status, true);
}

/// Copies and parses the headers of `skb` into `sc`
/// ([`aggregate::parse_scratch`]).
#[inline(never)]
fn parse_into(skb: Skb, protocol: u16, sc: &mut Scratch) -> u8 {
    skb.network_window(&mut sc.window);
    aggregate::parse_scratch(sc, protocol)
}
