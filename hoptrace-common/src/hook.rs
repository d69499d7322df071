//! Where an event was observed.

/// The family of the hook that emitted an event.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookKind {
    /// Never emitted: what [`HookKind::from_u8`] makes of a value it does
    /// not know.
    Unknown = 0,
    /// tc ingress (tcx or clsact) on a device of this node.
    TcIngress = 1,
    /// tc egress (tcx or clsact) on a device of this node.
    TcEgress = 2,
    /// Netfilter BPF link; `nf_hook` and `nf_slot` say which hook and priority.
    Netfilter = 3,
    /// tracepoint net:netif_receive_skb (a device hands the packet to the stack).
    DevReceive = 4,
    /// tracepoint net:net_dev_queue (the packet enters a device's qdisc).
    DevQueue = 5,
    /// tracepoint net:net_dev_start_xmit (the driver takes the packet).
    DevXmit = 6,
    /// tracepoint skb:skb_copy_datagram_iovec (a socket reader copies the data).
    SocketDeliver = 7,
    /// tracepoint skb:consume_skb (normal end of life).
    Consume = 8,
    /// tracepoint skb:kfree_skb (dropped, with the kernel's reason).
    Drop = 9,
}

impl HookKind {
    /// Decodes [`crate::HopHeader::hook`]; unknown values become
    /// [`HookKind::Unknown`].
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::TcIngress,
            2 => Self::TcEgress,
            3 => Self::Netfilter,
            4 => Self::DevReceive,
            5 => Self::DevQueue,
            6 => Self::DevXmit,
            7 => Self::SocketDeliver,
            8 => Self::Consume,
            9 => Self::Drop,
            _ => Self::Unknown,
        }
    }
}

/// Netfilter hook numbers (IPv4 and IPv6 share them): `enum nf_inet_hooks`
/// of include/uapi/linux/netfilter.h, as `nf_hook_state.hook` carries them.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NfHook {
    /// `NF_INET_PRE_ROUTING`: every received packet, before the routing
    /// decision (conntrack, DNAT).
    PreRouting = 0,
    /// `NF_INET_LOCAL_IN`: routed to a local socket.
    LocalIn = 1,
    /// `NF_INET_FORWARD`: routed through the node (to a pod, or out again).
    Forward = 2,
    /// `NF_INET_LOCAL_OUT`: sent by a local socket, before routing.
    LocalOut = 3,
    /// `NF_INET_POST_ROUTING`: every packet about to leave a device (SNAT,
    /// masquerade).
    PostRouting = 4,
}

impl NfHook {
    /// Every hook, in `enum nf_inet_hooks` order.
    pub const ALL: [NfHook; 5] = [
        Self::PreRouting,
        Self::LocalIn,
        Self::Forward,
        Self::LocalOut,
        Self::PostRouting,
    ];

    /// Decodes `nf_hook_state.hook` ([`crate::HopHeader::nf_hook`]); `None`
    /// for `NF_INET_INGRESS` and anything above, which hoptrace does not
    /// attach to.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::PreRouting),
            1 => Some(Self::LocalIn),
            2 => Some(Self::Forward),
            3 => Some(Self::LocalOut),
            4 => Some(Self::PostRouting),
            _ => None,
        }
    }

    /// Lower-case name used in segment names (`netfilter.prerouting.dnat`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::PreRouting => "prerouting",
            Self::LocalIn => "input",
            Self::Forward => "forward",
            Self::LocalOut => "output",
            Self::PostRouting => "postrouting",
        }
    }
}

/// Priorities at which hoptrace attaches netfilter programs. Each program sits
/// between two well-known bands, so consecutive programs bracket one band
/// (-201 and -199 bracket conntrack at -200, -101 and -99 bracket DNAT, ...).
/// The slot index (position in this table) travels in every event.
pub const NF_PRIORITY_SLOTS: [i32; 9] = [-401, -201, -199, -101, -99, -1, 1, 99, 101];

/// Conntrack state of the packet as seen by a netfilter program
/// (`ctinfo` bits of `skb->_nfct`, `enum ip_conntrack_info` of
/// include/uapi/linux/netfilter/nf_conntrack_common.h), with the reply
/// direction folded into the original one.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CtState {
    /// No conntrack entry attached yet (before conntrack ran, or untracked).
    None = 0,
    /// `IP_CT_NEW`: the first packet of a connection, or a retransmission
    /// of it before any reply.
    New = 1,
    /// `IP_CT_ESTABLISHED` or `IP_CT_ESTABLISHED_REPLY`: the connection has
    /// seen packets both ways.
    Established = 2,
    /// `IP_CT_RELATED` or `IP_CT_RELATED_REPLY`: a new connection expected
    /// by an existing one (ICMP errors, FTP data).
    Related = 3,
}

/// Flag in [`crate::HopHeader::ct_state`]: the netfilter program read the
/// conntrack entry's `status` ([`CT_UNCONFIRMED`] is meaningful).
pub const CT_STATUS_KNOWN: u8 = 0x40;
/// Flag in [`crate::HopHeader::ct_state`]: the packet's conntrack entry is
/// not confirmed yet (`IPS_CONFIRMED` clear): this pass created it, so the
/// nat chains run for it. Only with [`CT_STATUS_KNOWN`].
pub const CT_UNCONFIRMED: u8 = 0x80;
/// `IPS_CONFIRMED_BIT` of include/uapi/linux/netfilter/nf_conntrack_common.h.
pub const IPS_CONFIRMED: u64 = 1 << 3;

impl CtState {
    /// Decodes the low three bits of `skb->_nfct` (enum ip_conntrack_info).
    pub const fn from_nfct(nfct: u64) -> Self {
        if nfct & !7 == 0 {
            return Self::None;
        }
        match nfct & 7 {
            0 | 3 => Self::Established, // IP_CT_ESTABLISHED, IP_CT_ESTABLISHED_REPLY
            1 | 4 => Self::Related,     // IP_CT_RELATED, IP_CT_RELATED_REPLY
            2 => Self::New,             // IP_CT_NEW
            _ => Self::None,
        }
    }

    /// Decodes [`crate::HopHeader::ct_state`] (without the
    /// [`CT_STATUS_KNOWN`] and [`CT_UNCONFIRMED`] flags); unknown values
    /// become [`CtState::None`].
    pub const fn from_u8(v: u8) -> Self {
        match v & !(CT_STATUS_KNOWN | CT_UNCONFIRMED) {
            1 => Self::New,
            2 => Self::Established,
            3 => Self::Related,
            _ => Self::None,
        }
    }
}
