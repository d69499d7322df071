//! Reading a kernel `struct sk_buff` by address, with offsets taken from BTF.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use hoptrace_common::PacketBytes;

use crate::global;

pub const NO_HEADER: u16 = 0xffff;

#[inline(always)]
pub fn read<T: Copy>(addr: u64) -> Option<T> {
    unsafe { bpf_probe_read_kernel(addr as *const T).ok() }
}

/// A `struct sk_buff *` read with `bpf_probe_read_kernel`.
#[derive(Clone, Copy)]
pub struct KernelSkb {
    pub addr: u64,
}

impl KernelSkb {
    #[expect(clippy::len_without_is_empty, reason = "skb->len of a kernel buffer; emptiness is never asked")]
    #[inline(always)]
    pub fn len(&self) -> u32 {
        read::<u32>(self.addr + global!(HOPTRACE_LAYOUT.skb_len) as u64).unwrap_or(0)
    }

    #[inline(always)]
    pub fn dev(&self) -> u64 {
        read::<u64>(self.addr + global!(HOPTRACE_LAYOUT.skb_dev) as u64).unwrap_or(0)
    }

    #[inline(always)]
    pub fn nfct(&self) -> u64 {
        read::<u64>(self.addr + global!(HOPTRACE_LAYOUT.skb_nfct) as u64).unwrap_or(0)
    }

    /// Ethertype (host order) from `skb->protocol`.
    #[inline(always)]
    pub fn protocol(&self) -> u16 {
        u16::from_be(read::<u16>(self.addr + global!(HOPTRACE_LAYOUT.skb_protocol) as u64).unwrap_or(0))
    }

    /// Start of the network header, if set.
    #[inline(always)]
    pub fn network_header(&self) -> Option<u64> {
        let head = read::<u64>(self.addr + global!(HOPTRACE_LAYOUT.skb_head) as u64)?;
        let nh = read::<u16>(self.addr + global!(HOPTRACE_LAYOUT.skb_network_header) as u64)?;
        if nh == NO_HEADER || head == 0 {
            return None;
        }
        Some(head + nh as u64)
    }

    /// Network namespace inode of the skb's device (0 when unknown).
    #[inline(always)]
    pub fn dev_netns(&self, dev: u64) -> u32 {
        if dev == 0 {
            return 0;
        }
        net_inum(read::<u64>(dev + global!(HOPTRACE_LAYOUT.dev_nd_net) as u64).unwrap_or(0))
    }

    /// Network namespace inode of the owning socket (0 when unknown).
    #[inline(always)]
    pub fn sock_netns(&self) -> u32 {
        let sk = read::<u64>(self.addr + global!(HOPTRACE_LAYOUT.skb_sk) as u64).unwrap_or(0);
        if sk == 0 {
            return 0;
        }
        net_inum(read::<u64>(sk + global!(HOPTRACE_LAYOUT.sk_net) as u64).unwrap_or(0))
    }
}

#[inline(always)]
pub fn dev_ifindex(dev: u64) -> u32 {
    if dev == 0 {
        return 0;
    }
    read::<u32>(dev + global!(HOPTRACE_LAYOUT.dev_ifindex) as u64).unwrap_or(0)
}

/// `net->ns.inum` for a `struct net *`.
#[inline(always)]
pub fn net_inum(net: u64) -> u32 {
    if net == 0 {
        return 0;
    }
    read::<u32>(net + global!(HOPTRACE_LAYOUT.net_ns_inum) as u64).unwrap_or(0)
}

/// Packet bytes starting at the network header of a kernel skb.
pub struct NetworkHeaderBytes {
    pub start: u64,
}

impl PacketBytes for NetworkHeaderBytes {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: u32, buf: &mut [u8; N]) -> bool {
        match unsafe { bpf_probe_read_kernel((self.start + offset as u64) as *const [u8; N]) } {
            Ok(bytes) => {
                *buf = bytes;
                true
            }
            Err(_) => false,
        }
    }
}
