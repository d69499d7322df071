//! Time order across ring buffers drained at different moments.

use hoptrace_common::HopEvent;

/// Holds events from several sources (ring buffers drained at different
/// moments) and releases them in time order up to a watermark: the time
/// before which every source has delivered everything. Without it, an event
/// that reaches a correlator one drain later than a younger event of the
/// same buffer address looks like a straggler of a reused buffer.
#[derive(Default)]
pub struct ReorderBuffer {
    pending: Vec<HopEvent>,
}

impl ReorderBuffer {
    /// Holds one event.
    pub fn push(&mut self, ev: HopEvent) {
        self.pending.push(ev);
    }

    /// Holds every event of `events`.
    pub fn extend_from(&mut self, events: impl IntoIterator<Item = HopEvent>) {
        self.pending.extend(events);
    }

    /// Events held.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// No event held.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Hands `sink` every held event with `ts_ns <= watermark`, oldest
    /// first; keeps the rest.
    pub fn release(&mut self, watermark: u64, mut sink: impl FnMut(&HopEvent)) {
        self.pending.sort_by_key(|ev| ev.ts_ns);
        let ready = self.pending.partition_point(|ev| ev.ts_ns <= watermark);
        for ev in self.pending.drain(..ready) {
            sink(&ev);
        }
    }
}
