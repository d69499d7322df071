//! The fixed work of `hoptrace bench`'s floor rounds
//! ([`hoptrace_common::Floor`]): what every program does instead of
//! tracing when [`crate::globals::floor`] is set. The same attachments with
//! these bodies measure what no tracer with this hook set can go below.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::PerCpuArray};
use hoptrace_common::{Floor, agg::AggState};

use crate::aggregate::HOPTRACE_AGG_STATE;

/// Runs of floor programs, one counter per CPU (the counter every tracer
/// keeps at least; nothing reads it but a test or `bpftool`).
#[map]
pub static HOPTRACE_FLOOR_RUNS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The work of floor `floor` (not [`Floor::Off`]) for the packet in buffer
/// `skb_addr`: nothing ([`Floor::Dispatch`]); one clock read and one
/// per-CPU counter increment ([`Floor::Clock`]); and a lookup and update of
/// the packet's state keyed by its address ([`Floor::ClockState`]). A BPF
/// subprogram: the verifier adds a program's own frame to its deepest
/// call chain's, and the state built here must not enlarge it.
#[inline(never)]
pub fn run(floor: u8, skb_addr: u64) {
    if floor == Floor::Dispatch as u8 {
        return;
    }
    // SAFETY: a helper without arguments that touches no memory.
    let ts = unsafe { bpf_ktime_get_ns() };
    if let Some(slot) = HOPTRACE_FLOOR_RUNS.get_ptr_mut(0) {
        // SAFETY: a non-null pointer to this CPU's `u64` of a per-CPU array,
        // valid for the program's run; no other CPU writes it.
        unsafe { *slot += 1 };
    }
    if floor != Floor::ClockState as u8 {
        return;
    }
    match HOPTRACE_AGG_STATE.get_ptr_mut(skb_addr) {
        // SAFETY: a non-null pointer to an LRU hash value, valid for the
        // program's run (freed after an RCU grace period); a concurrent
        // writer for the same buffer can only tear a timestamp nobody reads.
        Some(p) => unsafe { (*p).prev_ts = ts },
        None => {
            let state = AggState {
                prev_ts: ts,
                ..AggState::default()
            };
            let _ = HOPTRACE_AGG_STATE.insert(skb_addr, state, 0);
        }
    }
}
