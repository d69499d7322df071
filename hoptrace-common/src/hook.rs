//! Where an event was observed.

/// The family of the hook that emitted an event.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookKind {
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

/// Netfilter hook numbers (IPv4 and IPv6 share them).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NfHook {
    PreRouting = 0,
    LocalIn = 1,
    Forward = 2,
    LocalOut = 3,
    PostRouting = 4,
}

impl NfHook {
    pub const ALL: [NfHook; 5] = [
        Self::PreRouting,
        Self::LocalIn,
        Self::Forward,
        Self::LocalOut,
        Self::PostRouting,
    ];

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
/// (`ctinfo` bits of `skb->_nfct`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CtState {
    /// No conntrack entry attached yet (before conntrack ran, or untracked).
    None = 0,
    New = 1,
    Established = 2,
    Related = 3,
}

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

    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::New,
            2 => Self::Established,
            3 => Self::Related,
            _ => Self::None,
        }
    }
}
