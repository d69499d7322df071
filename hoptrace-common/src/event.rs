//! The record a kernel program writes to the ring buffer for every observed hop.

use crate::packet::PacketMeta;

/// The hop fields every record starts with. Alone, it is the record of a
/// hop that only times a packet whose headers an earlier hop of the same
/// hook already parsed (netfilter brackets): a ring buffer record of
/// [`HOP_HEADER_BYTES`] is such a hop.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HopHeader {
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
    /// Explicit tail padding to 40 bytes; always 0.
    pub _pad: [u8; 3],
}

/// Bytes of a header-only record.
pub const HOP_HEADER_BYTES: usize = core::mem::size_of::<HopHeader>();

const _: () = assert!(HOP_HEADER_BYTES == 40);
const _: () = assert!(core::mem::offset_of!(HopHeader, hook) == 32);

impl HopHeader {
    /// An all-zero header (hook [`crate::HookKind::Unknown`]); `const` so
    /// kernel programs and statics can use it.
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
        }
    }
}

/// One packet observed at one hook, with its parsed headers. The hop
/// fields are reached through `Deref` (`ev.ts_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HopEvent {
    /// Where and when the packet was seen (the first 40 bytes of the record).
    pub header: HopHeader,
    /// Parsed headers.
    pub packet: PacketMeta,
}

const _: () = assert!(core::mem::size_of::<HopEvent>() == 40 + core::mem::size_of::<PacketMeta>());
const _: () = assert!(core::mem::size_of::<HopEvent>().is_multiple_of(8));
const _: () = assert!(core::mem::offset_of!(HopEvent, packet) == HOP_HEADER_BYTES);

impl core::ops::Deref for HopEvent {
    type Target = HopHeader;

    #[inline(always)]
    fn deref(&self) -> &HopHeader {
        &self.header
    }
}

impl core::ops::DerefMut for HopEvent {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut HopHeader {
        &mut self.header
    }
}

impl HopEvent {
    /// An all-zero event: zeroed header, both header layers absent.
    pub const fn zeroed() -> Self {
        Self {
            header: HopHeader::zeroed(),
            packet: PacketMeta::zeroed(),
        }
    }

    /// The event a header-only record stands for: no parsed headers, status
    /// [`crate::ParseStatus::Skipped`].
    pub fn from_header(h: &HopHeader) -> Self {
        let mut ev = Self {
            header: *h,
            packet: PacketMeta::zeroed(),
        };
        ev.packet.status = crate::ParseStatus::Skipped as u8;
        ev
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
    /// Tracepoint skipped: the buffer is no network packet (netlink, unix
    /// socket and other local buffers: no device, not IP).
    NotPacket = 6,
    /// Aggregate mode: a segment was not counted because the histogram
    /// map (`HOPTRACE_AGG_HIST`) is full.
    AggFull = 7,
    /// Aggregate mode: a link-local multicast packet's buffer took a hop
    /// more than [`crate::LINK_LOCAL_MULTICAST_GAP_NS`] after its newest
    /// one, which the other rules would have joined: a new journey started
    /// ([`crate::agg::agg_stale`]; full mode counts these in
    /// `buffer_reuses`).
    AggLinkLocalRepeat = 8,
}

/// Entries of the per-CPU `HOPTRACE_COUNTERS` array: one per [`Counter`].
pub const COUNTER_SLOTS: u32 = 9;

impl Counter {
    /// Every counter, in slot order.
    pub const ALL: [Counter; 9] = [
        Self::Emitted,
        Self::RingFull,
        Self::Unparsed,
        Self::ReadError,
        Self::Filtered,
        Self::Redundant,
        Self::NotPacket,
        Self::AggFull,
        Self::AggLinkLocalRepeat,
    ];

    /// Stable snake_case name, as reports print it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Emitted => "emitted",
            Self::RingFull => "ring_full",
            Self::Unparsed => "unparsed",
            Self::ReadError => "read_error",
            Self::Filtered => "filtered",
            Self::Redundant => "redundant",
            Self::NotPacket => "not_packet",
            Self::AggFull => "agg_full",
            Self::AggLinkLocalRepeat => "agg_link_local_repeats",
        }
    }
}

// SAFETY: `#[repr(C)]`, `Copy`, made of `HopHeader` and `PacketMeta`, whose
// fields are integers and arrays of them with every gap filled by an explicit
// `_pad` field: all bytes are initialised and any bit pattern is a valid
// value (sizes and offsets are asserted above).
#[cfg(feature = "user")]
unsafe impl aya::Pod for HopEvent {}
// SAFETY: `#[repr(C)]`, `Copy`, integer fields plus an explicit `_pad`: no
// implicit padding, any bit pattern is a valid value (size asserted above).
#[cfg(feature = "user")]
unsafe impl aya::Pod for HopHeader {}
