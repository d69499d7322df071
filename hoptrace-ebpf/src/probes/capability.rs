//! Minimal programs that `hoptrace check` loads and attaches to find out what
//! the running kernel offers. They do nothing and pass everything.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    macros::{btf_tracepoint, classifier, fentry, kprobe, raw_tracepoint, tracepoint},
    programs::{
        BtfTracePointContext, FEntryContext, ProbeContext, RawTracePointContext, TcContext,
        TracePointContext,
    },
};

#[classifier]
pub fn hoptrace_probe_tc(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[tracepoint]
pub fn hoptrace_probe_tracepoint(_ctx: TracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "netif_receive_skb")]
pub fn hoptrace_probe_tp_btf(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "netif_receive_skb")]
pub fn hoptrace_probe_raw_tp(_ctx: RawTracePointContext) -> i32 {
    0
}

#[fentry(function = "__dev_queue_xmit")]
pub fn hoptrace_probe_fentry(_ctx: FEntryContext) -> u32 {
    0
}

#[kprobe]
pub fn hoptrace_probe_kprobe(_ctx: ProbeContext) -> u32 {
    0
}
