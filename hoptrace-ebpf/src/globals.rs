//! Read-only globals written by userspace at load time (`EbpfLoader::set_global`).

use hoptrace_common::{KernelLayout, TraceConfig};

/// Kernel struct offsets from the running kernel's BTF.
#[unsafe(no_mangle)]
pub static HOPTRACE_LAYOUT: KernelLayout = KernelLayout {
    skb_head: 0,
    skb_len: 0,
    skb_network_header: 0,
    skb_tail: 0,
    skb_protocol: 0,
    skb_dev: 0,
    skb_nfct: 0,
    dev_ifindex: 0,
    dev_nd_net: 0,
    net_ns_inum: 0,
    skb_sk: 0,
    sk_net: 0,
    nf_state_hook: 0,
    nf_state_pf: 0,
    nf_state_net: 0,
    valid: 0,
    nf_conn_status: 0,
    _pad: 0,
};

/// Tracing options.
#[unsafe(no_mangle)]
pub static HOPTRACE_CONFIG: TraceConfig = TraceConfig::default_config();

/// Reads one field of a global without letting the compiler fold the
/// compile-time initialiser into the code.
#[macro_export]
macro_rules! global {
    ($global:ident . $field:ident) => {
        // SAFETY: a field of a static: valid, aligned and initialised for the
        // whole run; the loader writes it before any program runs and the
        // program only reads it, so the read races with no write.
        unsafe { core::ptr::read_volatile(&raw const $crate::globals::$global.$field) }
    };
}

/// The whole trace configuration (small; read once per program run).
#[inline(always)]
pub fn config() -> TraceConfig {
    // SAFETY: a static `Copy` struct: valid, aligned and initialised; written
    // by the loader before any program runs, only read afterwards.
    unsafe { core::ptr::read_volatile(&raw const HOPTRACE_CONFIG) }
}

/// `hoptrace bench`'s floor measurements ([`hoptrace_common::Floor`] as
/// u8): 0 for real tracing; otherwise the program runs
/// [`crate::floor::run`] and returns.
#[inline(always)]
pub fn floor() -> u8 {
    global!(HOPTRACE_CONFIG.floor)
}

/// Aggregate mode ([`hoptrace_common::TraceMode::Aggregate`]): hop times go
/// into in-kernel histograms (`crate::aggregate`). Reads one byte: a
/// program's own frame stays small (the verifier adds it to its
/// subprograms'), so the whole configuration is copied only where needed.
#[inline(always)]
pub fn aggregate_mode() -> bool {
    global!(HOPTRACE_CONFIG.mode) == hoptrace_common::TraceMode::Aggregate as u8
}
