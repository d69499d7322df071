//! Reading a kernel `struct sk_buff` by address, with offsets taken from BTF.

use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_buf};
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
    #[expect(
        clippy::len_without_is_empty,
        reason = "skb->len of a kernel buffer; emptiness is never asked"
    )]
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
        u16::from_be(
            read::<u16>(self.addr + global!(HOPTRACE_LAYOUT.skb_protocol) as u64).unwrap_or(0),
        )
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

/// Bytes of `struct sk_buff` read in one go, starting at `skb->dev`: on
/// common kernels it covers dev, _nfct, len, protocol, the header offsets and
/// head, so one `bpf_probe_read_kernel` replaces six. A field outside the
/// window (another kernel's layout) is read on its own. The offsets are
/// read-only globals, constants to the verifier, so every access below has a
/// constant stack offset.
pub const SKB_WINDOW: usize = 192;

/// The `sk_buff` fields every program needs.
#[derive(Clone, Copy)]
pub struct SkbFields {
    pub dev: u64,
    pub len: u32,
    pub nfct: u64,
    /// Ethertype, host order.
    pub protocol: u16,
    /// Start of the network header, when set.
    pub network_header: Option<u64>,
}

#[inline(always)]
fn window_field<T: Copy + Default>(
    window: &[u8; SKB_WINDOW],
    base: u32,
    field: u32,
    addr: u64,
) -> T {
    let rel = field.wrapping_sub(base) as usize;
    if rel + core::mem::size_of::<T>() <= SKB_WINDOW {
        // SAFETY: in bounds (checked above); the window is plain bytes.
        unsafe { core::ptr::read_unaligned(window.as_ptr().add(rel) as *const T) }
    } else {
        read::<T>(addr + field as u64).unwrap_or_default()
    }
}

impl KernelSkb {
    /// Reads dev, _nfct, len, protocol, head and network_header at once.
    #[inline(always)]
    pub fn fields(&self) -> Option<SkbFields> {
        let base = global!(HOPTRACE_LAYOUT.skb_dev);
        let mut window = [0u8; SKB_WINDOW];
        unsafe { bpf_probe_read_kernel_buf((self.addr + base as u64) as *const u8, &mut window) }
            .ok()?;
        let head: u64 = window_field(&window, base, global!(HOPTRACE_LAYOUT.skb_head), self.addr);
        let nh: u16 = window_field(
            &window,
            base,
            global!(HOPTRACE_LAYOUT.skb_network_header),
            self.addr,
        );
        let protocol: u16 = window_field(
            &window,
            base,
            global!(HOPTRACE_LAYOUT.skb_protocol),
            self.addr,
        );
        Some(SkbFields {
            dev: window_field(&window, base, base, self.addr),
            len: window_field(&window, base, global!(HOPTRACE_LAYOUT.skb_len), self.addr),
            nfct: window_field(&window, base, global!(HOPTRACE_LAYOUT.skb_nfct), self.addr),
            protocol: u16::from_be(protocol),
            network_header: if nh == NO_HEADER || head == 0 {
                None
            } else {
                Some(head + nh as u64)
            },
        })
    }
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
