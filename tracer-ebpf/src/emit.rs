//! Writing events to the ring buffer without waking the reader.

use aya_ebpf::{bindings::BPF_RB_NO_WAKEUP, maps::ring_buf::RingBufEntry};
use hoptrace_common::{
    Counter, HopEvent, ParseStatus, TraceConfig,
    packet::{flow_matches, parse_from_l3},
};

use crate::{
    maps::{HOPTRACE_EVENTS, count},
    skb::NetworkHeaderBytes,
};

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

/// Parses the headers at `network_header` into the reserved event, then
/// submits it, or discards it when the `--ip/--port` filter rejects it.
#[inline(always)]
pub fn parse_and_submit(
    mut entry: RingBufEntry<HopEvent>,
    network_header: Option<u64>,
    ethertype: u16,
    cfg: &TraceConfig,
) {
    let ev = unsafe { entry.assume_init_mut() };
    let status = match network_header {
        Some(start) => parse_from_l3(
            &NetworkHeaderBytes { start },
            0,
            ethertype,
            cfg,
            &mut ev.packet,
        ),
        None => {
            ev.packet.status = ParseStatus::Truncated as u8;
            ParseStatus::Truncated
        }
    };
    if !flow_matches(&ev.packet, cfg) {
        discard(entry);
        return;
    }
    submit(entry, status);
}
