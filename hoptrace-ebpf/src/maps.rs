//! Maps shared by every program (and by the separately loaded netfilter object,
//! whose references userspace points at these same maps).

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use hoptrace_common::{COUNTER_SLOTS, Counter};

/// Hop events. Userspace resizes it at load time; submissions never wake the
/// reader, which drains on a timer.
#[map]
pub static HOPTRACE_EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Per-CPU counters of emitted, lost, unparsed and filtered events.
#[map]
pub static HOPTRACE_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Network namespaces (inode numbers) whose tracepoint events are kept when
/// `TraceConfig::filter_netns` is set: the node and its pods.
#[map]
pub static HOPTRACE_NETNS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// Node devices that hoptrace times with tc and that have no qdisc
/// (noqueue), keyed by [`hoptrace_common::device_key`] (namespace inode,
/// ifindex): their device tracepoints fire back to back with tc and add
/// nothing but cost, so they are skipped.
#[map]
pub static HOPTRACE_TC_COVERED: HashMap<u64, u8> = HashMap::with_max_entries(4096, 0);

/// Whether the device (`netns_ino`, `ifindex`) is in `HOPTRACE_TC_COVERED`:
/// its device tracepoints are redundant with tc.
#[inline(always)]
pub fn tc_covered(netns_ino: u32, ifindex: u32) -> bool {
    let key = hoptrace_common::device_key(netns_ino, ifindex);
    // SAFETY: `get` is unsafe because userspace may update or delete the
    // value while the reference lives; only its presence is used here, the
    // value is never read.
    unsafe { HOPTRACE_TC_COVERED.get(key).is_some() }
}

/// Adds 1 to `counter` in this CPU's slot of `HOPTRACE_COUNTERS`.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = HOPTRACE_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a non-null pointer to this CPU's `u64` of a per-CPU array,
        // valid for the program's run (array elements are never freed); no
        // other CPU writes it, and the program is not migrated while it runs.
        unsafe { *slot += 1 };
    }
}

/// Whether the network namespace inode `ino` is in `HOPTRACE_NETNS`.
#[inline(always)]
pub fn netns_traced(ino: u32) -> bool {
    // SAFETY: as in `tc_covered`: only the key's presence is used, the value
    // (which userspace may change meanwhile) is never read.
    unsafe { HOPTRACE_NETNS.get(ino).is_some() }
}
