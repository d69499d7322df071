//! Writing events to the ring buffer without waking the reader.

use aya_ebpf::{bindings::BPF_RB_NO_WAKEUP, maps::ring_buf::RingBufEntry};
use hoptrace_common::{Counter, HopEvent, ParseStatus};

use crate::maps::{HOPTRACE_EVENTS, count};

/// Reserves a zeroed event, counting a lost event when the ring is full.
#[inline(always)]
pub fn reserve() -> Option<RingBufEntry<HopEvent>> {
    match HOPTRACE_EVENTS.reserve::<HopEvent>(0) {
        Some(mut entry) => {
            entry.write(HopEvent::zeroed());
            Some(entry)
        }
        None => {
            count(Counter::RingFull);
            None
        }
    }
}

/// Submits without a wakeup: userspace drains on a timer, so the hot path
/// never pays for waking it.
#[inline(always)]
pub fn submit(entry: RingBufEntry<HopEvent>, status: ParseStatus) {
    if status != ParseStatus::Ok {
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
