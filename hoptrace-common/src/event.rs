//! The record a kernel program writes to the ring buffer for every observed hop.

use crate::packet::PacketMeta;

/// One packet observed at one hook.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HopEvent {
    /// `bpf_ktime_get_ns()` at the hook (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Kernel address of the `struct sk_buff`: the identity of the packet while
    /// it stays in the same buffer.
    pub skb_addr: u64,
    /// Inode number of the network namespace of the device (or of the netfilter
    /// hook) where the packet was seen.
    pub netns_ino: u32,
    /// Index of the device the packet is on (0 when unknown).
    pub ifindex: u32,
    /// `skb->len` at the hook.
    pub skb_len: u32,
    /// Drop reason (`enum skb_drop_reason`) for [`crate::HookKind::Drop`], else 0.
    pub drop_reason: u32,
    /// [`crate::HookKind`] as u8.
    pub hook: u8,
    /// Netfilter hook number ([`crate::NfHook`]) for netfilter events.
    pub nf_hook: u8,
    /// Index into [`crate::NF_PRIORITY_SLOTS`] for netfilter events.
    pub nf_slot: u8,
    /// [`crate::CtState`] as u8 (netfilter events only).
    pub ct_state: u8,
    /// Protocol family of a netfilter hook: 2 (IPv4) or 10 (IPv6); else 0.
    pub nf_pf: u8,
    pub _pad: [u8; 3],
    /// Parsed headers.
    pub packet: PacketMeta,
}

const _: () = assert!(core::mem::size_of::<HopEvent>() == 40 + core::mem::size_of::<PacketMeta>());
const _: () = assert!(core::mem::size_of::<HopEvent>().is_multiple_of(8));
const _: () = assert!(core::mem::offset_of!(HopEvent, hook) == 32);
const _: () = assert!(core::mem::offset_of!(HopEvent, packet) == 40);

/// The first [`HOP_HEADER_BYTES`] of a [`HopEvent`] without the parsed
/// headers: the record of a hop that only times a packet whose headers an
/// earlier hop of the same hook already parsed (netfilter brackets). A ring
/// buffer record of this size is such a hop.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HopHeader {
    pub ts_ns: u64,
    pub skb_addr: u64,
    pub netns_ino: u32,
    pub ifindex: u32,
    pub skb_len: u32,
    pub drop_reason: u32,
    pub hook: u8,
    pub nf_hook: u8,
    pub nf_slot: u8,
    pub ct_state: u8,
    pub nf_pf: u8,
    pub _pad: [u8; 3],
}

/// Bytes of the hop fields every record starts with.
pub const HOP_HEADER_BYTES: usize = core::mem::offset_of!(HopEvent, packet);

const _: () = assert!(core::mem::size_of::<HopHeader>() == HOP_HEADER_BYTES);
const _: () =
    assert!(core::mem::offset_of!(HopHeader, ts_ns) == core::mem::offset_of!(HopEvent, ts_ns));
const _: () = assert!(
    core::mem::offset_of!(HopHeader, skb_addr) == core::mem::offset_of!(HopEvent, skb_addr)
);
const _: () = assert!(
    core::mem::offset_of!(HopHeader, netns_ino) == core::mem::offset_of!(HopEvent, netns_ino)
);
const _: () =
    assert!(core::mem::offset_of!(HopHeader, ifindex) == core::mem::offset_of!(HopEvent, ifindex));
const _: () =
    assert!(core::mem::offset_of!(HopHeader, skb_len) == core::mem::offset_of!(HopEvent, skb_len));
const _: () = assert!(
    core::mem::offset_of!(HopHeader, drop_reason) == core::mem::offset_of!(HopEvent, drop_reason)
);
const _: () =
    assert!(core::mem::offset_of!(HopHeader, hook) == core::mem::offset_of!(HopEvent, hook));
const _: () =
    assert!(core::mem::offset_of!(HopHeader, nf_hook) == core::mem::offset_of!(HopEvent, nf_hook));
const _: () =
    assert!(core::mem::offset_of!(HopHeader, nf_slot) == core::mem::offset_of!(HopEvent, nf_slot));
const _: () = assert!(
    core::mem::offset_of!(HopHeader, ct_state) == core::mem::offset_of!(HopEvent, ct_state)
);
const _: () =
    assert!(core::mem::offset_of!(HopHeader, nf_pf) == core::mem::offset_of!(HopEvent, nf_pf));

impl HopEvent {
    /// The event a header-only record stands for: no parsed headers, status
    /// [`crate::ParseStatus::Skipped`].
    pub fn from_header(h: &HopHeader) -> Self {
        let mut ev = Self::zeroed();
        ev.ts_ns = h.ts_ns;
        ev.skb_addr = h.skb_addr;
        ev.netns_ino = h.netns_ino;
        ev.ifindex = h.ifindex;
        ev.skb_len = h.skb_len;
        ev.drop_reason = h.drop_reason;
        ev.hook = h.hook;
        ev.nf_hook = h.nf_hook;
        ev.nf_slot = h.nf_slot;
        ev.ct_state = h.ct_state;
        ev.nf_pf = h.nf_pf;
        ev.packet.status = crate::ParseStatus::Skipped as u8;
        ev
    }

    pub const fn zeroed() -> Self {
        Self {
            ts_ns: 0,
            skb_addr: 0,
            netns_ino: 0,
            ifindex: 0,
            skb_len: 0,
            drop_reason: 0,
            hook: 0,
            nf_hook: 0,
            nf_slot: 0,
            ct_state: 0,
            nf_pf: 0,
            _pad: [0; 3],
            packet: PacketMeta::zeroed(),
        }
    }
}

/// Slots of the per-CPU error/loss counter array, so nothing is lost silently.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Events emitted to the ring buffer.
    Emitted = 0,
    /// Ring buffer full: the event was lost.
    RingFull = 1,
    /// Headers could not be parsed (passed through, counted).
    Unparsed = 2,
    /// Reading kernel memory failed.
    ReadError = 3,
    /// Event filtered out (namespace not traced).
    Filtered = 4,
    /// Device tracepoint skipped: the device is timed by tc and has no qdisc.
    Redundant = 5,
}

pub const COUNTER_SLOTS: u32 = 8;

impl Counter {
    pub const ALL: [Counter; 6] = [
        Self::Emitted,
        Self::RingFull,
        Self::Unparsed,
        Self::ReadError,
        Self::Filtered,
        Self::Redundant,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Emitted => "emitted",
            Self::RingFull => "ring_full",
            Self::Unparsed => "unparsed",
            Self::ReadError => "read_error",
            Self::Filtered => "filtered",
            Self::Redundant => "redundant",
        }
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for HopEvent {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for HopHeader {}
