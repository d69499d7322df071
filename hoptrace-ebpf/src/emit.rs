//! Writing events to the ring buffer without waking the reader.

use core::mem::size_of;

use aya_ebpf::{bindings::BPF_RB_NO_WAKEUP, maps::ring_buf::RingBufEntry};
use hoptrace_common::{
    Counter, HOP_HEADER_BYTES, HeaderWindow, HopEvent, HopHeader, PacketMeta, ParseStatus,
    TraceConfig,
    agg::AggSite,
    packet::{flow_matches, parse_from_l3},
};

use crate::maps::{HOPTRACE_EVENTS, count};

/// Reserves a zeroed record of type `T` (a multiple of 8 bytes), counting
/// a lost event when the ring is full.
#[inline(always)]
fn reserve_zeroed<T: 'static>() -> Option<RingBufEntry<T>> {
    const { assert!(size_of::<T>().is_multiple_of(8)) };
    let Some(mut entry) = HOPTRACE_EVENTS.reserve::<T>(0) else {
        count(Counter::RingFull);
        return None;
    };
    // 8-byte stores: a plain `write` of a zeroed value becomes a
    // byte-by-byte memset loop on BPF.
    let words = entry.as_mut_ptr() as *mut u64;
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: in bounds (the size is a multiple of 8); ring buffer
        // records are 8-aligned.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
        i += 1;
    }
    Some(entry)
}

/// Reserves a zeroed event.
#[inline(always)]
pub fn reserve() -> Option<RingBufEntry<HopEvent>> {
    reserve_zeroed()
}

/// Reserves a zeroed header-only record.
#[inline(always)]
pub fn reserve_header() -> Option<RingBufEntry<HopHeader>> {
    reserve_zeroed()
}

/// Submits a header-only record without a wakeup.
#[inline(always)]
pub fn submit_header(entry: RingBufEntry<HopHeader>) {
    count(Counter::Emitted);
    entry.submit(BPF_RB_NO_WAKEUP as u64);
}

/// Submits without a wakeup: userspace drains on a timer, so the hot path
/// never pays for waking it.
#[inline(always)]
pub fn submit(entry: RingBufEntry<HopEvent>, status: ParseStatus) {
    if status != ParseStatus::Ok && status != ParseStatus::Skipped {
        count(Counter::Unparsed);
    }
    count(Counter::Emitted);
    entry.submit(BPF_RB_NO_WAKEUP as u64);
}

/// Drops a reserved event that a filter rejected.
#[inline(always)]
pub fn discard(entry: RingBufEntry<HopEvent>) {
    count(Counter::Filtered);
    entry.discard(BPF_RB_NO_WAKEUP as u64);
}

/// Parses the headers in `window` (from the network header, of protocol
/// `ethertype`) into the reserved event, then submits it, or discards it
/// when the `--ip/--port` filter rejects it.
#[inline(always)]
pub fn parse_and_submit(
    mut entry: RingBufEntry<HopEvent>,
    window: &HeaderWindow,
    ethertype: u16,
    cfg: &TraceConfig,
) {
    // SAFETY: every `HopEvent` entry comes from `reserve()`, which zeroes all
    // of its bytes; `HopEvent` is plain integers, for which zero is a valid
    // value, so the record is initialised.
    let ev = unsafe { entry.assume_init_mut() };
    let status = parse_from_l3(window, 0, ethertype, cfg, &mut ev.packet);
    if !flow_matches(&ev.packet, cfg) {
        discard(entry);
        return;
    }
    submit(entry, status);
}

/// Copies `size_of::<T>()` bytes of `src` into a reserved record, 8 bytes
/// at a time (a struct copy can become a byte loop on BPF).
#[inline(always)]
fn copy_words<T>(dst: *mut u64, src: &T) {
    const { assert!(size_of::<T>().is_multiple_of(8)) };
    let words = src as *const T as *const u64;
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: `i` words lie within both `T`s (the size is a multiple of
        // 8); `src` is a live reference and `dst` a reserved record of at
        // least `size_of::<T>()` bytes, both 8-aligned (`HopHeader` and
        // `PacketMeta` hold u64 fields; ring records are 8-aligned).
        unsafe { core::ptr::write_volatile(dst.add(i), core::ptr::read_volatile(words.add(i))) };
        i += 1;
    }
}

/// Aggregate mode: writes a hop whose fields and headers were built on the
/// stack: a full event with `meta`, or a header-only record without
/// (a netfilter bracket that does not parse).
#[inline(always)]
pub fn copy_and_submit(h: &HopHeader, meta: Option<&PacketMeta>, status: ParseStatus) {
    match meta {
        Some(m) => {
            let Some(mut entry) = HOPTRACE_EVENTS.reserve::<HopEvent>(0) else {
                count(Counter::RingFull);
                return;
            };
            let base = entry.as_mut_ptr() as *mut u64;
            copy_words(base, h);
            // SAFETY: `HopEvent` is a `HopHeader` (40 bytes, 5 words)
            // followed by a `PacketMeta`, asserted in hoptrace-common.
            copy_words(unsafe { base.add(HOP_HEADER_BYTES / 8) }, m);
            submit(entry, status);
        }
        None => {
            let Some(mut entry) = HOPTRACE_EVENTS.reserve::<HopHeader>(0) else {
                count(Counter::RingFull);
                return;
            };
            copy_words(entry.as_mut_ptr() as *mut u64, h);
            submit_header(entry);
        }
    }
}

/// Aggregate mode: a header-only record of hop `site` at `ts_ns` of the
/// packet in buffer `skb_addr` (the hop before a drop of a journey that
/// was not sampled, so the correlator names where the drop happened).
#[inline(always)]
pub fn site_header(skb_addr: u64, site: &AggSite, ts_ns: u64) {
    let mut h = HopHeader::zeroed();
    h.ts_ns = ts_ns;
    h.skb_addr = skb_addr;
    h.netns_ino = site.netns_ino;
    h.ifindex = site.ifindex;
    h.hook = site.hook;
    h.nf_hook = site.nf_hook;
    h.nf_slot = site.nf_slot;
    copy_and_submit(&h, None, ParseStatus::Skipped);
}
