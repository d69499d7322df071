//! Load-time configuration written into the kernel programs' read-only globals.

/// Byte offsets of kernel struct fields, read from the running kernel's BTF
/// (`/sys/kernel/btf/vmlinux`) at load time: rustc emits no CO-RE
/// relocations, so the kernel programs cannot have them fixed up by the
/// loader. Every field but `valid` is the offset of a member from the start
/// of its struct (offsets of nested members summed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLayout {
    /// `sk_buff.head` (unsigned char *).
    pub skb_head: u32,
    /// `sk_buff.len` (u32).
    pub skb_len: u32,
    /// `sk_buff.network_header` (u16).
    pub skb_network_header: u32,
    /// `sk_buff.tail` (sk_buff_data_t: an offset from `head` on 64-bit kernels).
    pub skb_tail: u32,
    /// `sk_buff.protocol` (__be16).
    pub skb_protocol: u32,
    /// `sk_buff.dev` (struct net_device *).
    pub skb_dev: u32,
    /// `sk_buff._nfct` (unsigned long).
    pub skb_nfct: u32,
    /// `net_device.ifindex` (int).
    pub dev_ifindex: u32,
    /// `net_device.nd_net` (possible_net_t, whose first member is `struct net *net`).
    pub dev_nd_net: u32,
    /// `net.ns` + `ns_common.inum`.
    pub net_ns_inum: u32,
    /// `sk_buff.sk` (struct sock *).
    pub skb_sk: u32,
    /// `sock.__sk_common.skc_net` (possible_net_t).
    pub sk_net: u32,
    /// `nf_hook_state.hook` (u8).
    pub nf_state_hook: u32,
    /// `nf_hook_state.pf` (u8).
    pub nf_state_pf: u32,
    /// `nf_hook_state.net` (struct net *).
    pub nf_state_net: u32,
    /// 1 when every field above was found.
    pub valid: u32,
    /// `nf_conn.status` (unsigned long, `IPS_*` bits); 0 when the kernel's
    /// BTF has no `struct nf_conn` (conntrack built as a module whose BTF
    /// is not read): the netfilter programs then leave
    /// [`crate::CT_STATUS_KNOWN`] unset. Optional, so not part of `valid`.
    pub nf_conn_status: u32,
    /// Explicit tail padding to 72 bytes; always 0.
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<KernelLayout>() == 72);

/// Tracing options.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceConfig {
    /// UDP destination ports that carry VXLAN (default 4789 and 8472).
    pub vxlan_ports: [u16; 2],
    /// UDP destination port that carries GENEVE (6081).
    pub geneve_port: u16,
    /// 1: tracepoint events are kept only for network namespaces listed in the
    /// `HOPTRACE_NETNS` map (the node's and its pods'); others are counted as
    /// [`crate::Counter::Filtered`].
    pub filter_netns: u8,
    /// 1: only packets matching `match_*` are emitted (userspace `--ip/--port`).
    pub filter_flow: u8,
    /// Address of the `--ip` filter in network byte order: IPv4 in the first
    /// 4 bytes (the rest zero), IPv6 in all 16.
    pub match_addr: [u8; 16],
    /// Prefix length of `match_addr` in bits (up to 32 for IPv4, 128 for
    /// IPv6); 0 matches every address of `match_family`.
    pub match_prefix_len: u8,
    /// 4 or 6 when `match_addr` is set, else 0.
    pub match_family: u8,
    /// TCP/UDP port that must appear as source or destination (0: any).
    pub match_port: u16,
    /// Inode of the node's network namespace, stamped on tc events.
    pub node_netns_ino: u32,
    /// [`Floor`] as u8: 0 for real tracing; otherwise every program does
    /// only that floor's fixed work and returns (`hoptrace bench` measures
    /// what the attachments, and the least work any tracer does, cost).
    pub floor: u8,
    /// [`TraceMode`] as u8: what a program does with a packet once it is
    /// timed (ring buffer record per hop, or in-kernel histograms).
    pub mode: u8,
    /// Per netfilter hook (`NfHook` as index), a bit per priority slot: the
    /// program at that slot parses the headers. The others only time the
    /// packet (the first program of a hook and the one after each NAT band
    /// parse; brackets in between see the same headers).
    pub nf_parse_slots: [u16; 5],
    /// Aggregate mode: 1 in `sample_every` journeys (chosen by their
    /// first hop's fingerprint) also write every hop to the ring buffer,
    /// for the correlator's exemplar journeys; 0 samples none.
    pub sample_every: u32,
}

/// Fixed work in place of tracing ([`TraceConfig::floor`]): the cost
/// floors `hoptrace bench` measures with the same attachments.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Floor {
    /// Real tracing (the mode's own work).
    Off = 0,
    /// Every program returns at once: what calling the hooks costs.
    Dispatch = 1,
    /// Every program reads the clock once and adds 1 to a per-CPU array
    /// counter: the least any tracer that times packets does per hop.
    Clock = 2,
    /// [`Floor::Clock`] plus a lookup of the packet's state in an LRU hash
    /// keyed by the skb address and an update (insert when absent): the
    /// least a tracer that joins hops into segments in the kernel does.
    ClockState = 3,
}

impl Floor {
    /// The floor of a [`TraceConfig::floor`] byte (unknown values: `Off`).
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Dispatch,
            2 => Self::Clock,
            3 => Self::ClockState,
            _ => Self::Off,
        }
    }
}

/// What the programs do with a timed packet ([`TraceConfig::mode`]).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceMode {
    /// One ring buffer record per hop; userspace joins them into journeys
    /// (`hoptrace trace`, the lab, `hoptrace agent --mode full`).
    Full = 0,
    /// Hop-to-hop times go into per-CPU histograms in the kernel
    /// ([`crate::agg`]); only drops, sampled journeys and hops of packets
    /// whose headers did not parse reach the ring buffer.
    Aggregate = 1,
}

const _: () = assert!(core::mem::size_of::<TraceConfig>() == 48);
const _: () = assert!(core::mem::offset_of!(TraceConfig, nf_parse_slots) == 34);
const _: () = assert!(core::mem::offset_of!(TraceConfig, sample_every) == 44);

impl TraceConfig {
    /// The defaults, as a `const fn` so the kernel object can initialise its
    /// `HOPTRACE_CONFIG` global with them: VXLAN on 4789 (IANA, RFC 7348) and
    /// 8472 (the Linux vxlan driver's default, used by flannel), GENEVE on
    /// 6081 (RFC 8926), no namespace or flow filter, and every netfilter
    /// slot parsing headers.
    pub const fn default_config() -> Self {
        Self {
            vxlan_ports: [4789, 8472],
            geneve_port: 6081,
            filter_netns: 0,
            filter_flow: 0,
            match_addr: [0; 16],
            match_prefix_len: 0,
            match_family: 0,
            match_port: 0,
            node_netns_ino: 0,
            floor: Floor::Off as u8,
            mode: TraceMode::Full as u8,
            nf_parse_slots: [0xffff; 5],
            sample_every: 0,
        }
    }
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self::default_config()
    }
}

// SAFETY: `#[repr(C)]`, `Copy`, only `u32` fields: no padding, every bit
// pattern is a valid value (the size is asserted above).
#[cfg(feature = "user")]
unsafe impl aya::Pod for KernelLayout {}
// SAFETY: `#[repr(C)]`, `Copy`, only integer fields and arrays of them, with
// no gap (offsets asserted above), so all 48 bytes are
// initialised and any bit pattern is a valid value (size and the offset of
// `nf_parse_slots` are asserted above).
#[cfg(feature = "user")]
unsafe impl aya::Pod for TraceConfig {}
