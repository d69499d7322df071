//! Writing events to the ring buffer without waking the reader.

use core::mem::size_of;

use aya_ebpf::{bindings::BPF_RB_NO_WAKEUP, maps::ring_buf::RingBufEntry};
use hoptrace_common::{
    Counter, HeaderWindow, HopEvent, HopHeader, ParseStatus, TraceConfig,
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
