//! Reading a kernel `struct sk_buff`, with offsets taken from BTF.
//!
//! Netfilter programs and BTF tracepoints receive the skb as a pointer the
//! verifier knows by its BTF type, so its fields (and those of the device,
//! namespace and socket it points to) are read with plain loads: no helper
//! call, and a fault (a NULL device) reads as zero. The offsets are
//! read-only globals, constants to the verifier.

use aya_ebpf::helpers::bpf_probe_read_kernel_buf;
use hoptrace_common::{HEADER_WINDOW, HeaderWindow};

use crate::global;

/// A 16-bit `sk_buff` header offset that is not set: all ones, as the kernel
/// marks an unset `mac_header` or `transport_header` (include/linux/skbuff.h).
/// A `network_header` that reads so has no network header to copy.
pub const NO_HEADER: u16 = 0xffff;

/// A kernel pointer of a BTF-typed struct (`sk_buff`, `net_device`, `net`,
/// `sock`, `nf_hook_state`) as the verifier tracks it.
#[derive(Clone, Copy)]
pub struct BtfPtr(pub u64);

impl BtfPtr {
    /// A NULL pointer (no device, no socket).
    #[inline(always)]
    pub fn is_null(self) -> bool {
        self.0 == 0
    }

    /// The field of type `T` at byte offset `off`.
    #[inline(always)]
    pub fn load<T: Copy>(self, off: u32) -> T {
        // SAFETY: `self` holds a pointer the verifier types by BTF (a
        // tracepoint argument, a netfilter context field, or a pointer
        // loaded from one): it checks `off` and the size of `T` against that
        // type and turns the read into a fault-tolerant load (a bad pointer
        // reads as zero). A `BtfPtr` built from anything else fails to load.
        unsafe { core::ptr::read_volatile((self.0 + off as u64) as *const T) }
    }

    /// The pointer field at byte offset `off`.
    #[inline(always)]
    pub fn ptr(self, off: u32) -> BtfPtr {
        BtfPtr(self.load::<u64>(off))
    }
}

/// A kernel struct pointer whose fields can be read at BTF offsets: a
/// [`BtfPtr`] (plain loads the verifier checks by type) or a [`ProbePtr`]
/// (an untyped address, read with `bpf_probe_read_kernel`). Code that
/// reads a struct is written once, generic over this trait.
pub trait KernelPtr: Copy {
    /// The kernel address.
    fn addr(self) -> u64;

    /// A NULL pointer.
    #[inline(always)]
    fn is_null(self) -> bool {
        self.addr() == 0
    }

    /// The field of type `T` at byte offset `off`; zero when unreadable.
    fn load<T: Copy + Default>(self, off: u32) -> T;

    /// The pointer field at byte offset `off`, of the same kind.
    fn ptr(self, off: u32) -> Self;
}

impl KernelPtr for BtfPtr {
    #[inline(always)]
    fn addr(self) -> u64 {
        self.0
    }

    #[inline(always)]
    fn load<T: Copy + Default>(self, off: u32) -> T {
        BtfPtr::load(self, off)
    }

    #[inline(always)]
    fn ptr(self, off: u32) -> Self {
        BtfPtr::ptr(self, off)
    }
}

/// A kernel address the verifier knows only as a number (from a
/// `syscalls:` tracepoint's task walk, or a field read by probe): every
/// field is read with `bpf_probe_read_kernel`, one helper call each.
#[derive(Clone, Copy)]
pub struct ProbePtr(pub u64);

impl KernelPtr for ProbePtr {
    #[inline(always)]
    fn addr(self) -> u64 {
        self.0
    }

    #[inline(always)]
    fn load<T: Copy + Default>(self, off: u32) -> T {
        // SAFETY: `bpf_probe_read_kernel` never faults: an unreadable
        // address (NULL, freed, garbage) is an error return, read as zero.
        unsafe { aya_ebpf::helpers::bpf_probe_read_kernel((self.0 + u64::from(off)) as *const T) }
            .unwrap_or_default()
    }

    #[inline(always)]
    fn ptr(self, off: u32) -> Self {
        ProbePtr(self.load::<u64>(off))
    }
}

/// A `struct sk_buff *` of a netfilter context or a BTF tracepoint.
#[derive(Clone, Copy)]
pub struct Skb(pub BtfPtr);

impl Skb {
    /// Kernel address of the `struct sk_buff`: the packet's identity while it
    /// stays in this buffer.
    #[inline(always)]
    pub fn addr(self) -> u64 {
        self.0.0
    }

    #[expect(
        clippy::len_without_is_empty,
        reason = "skb->len of a kernel buffer; emptiness is never asked"
    )]
    /// `skb->len`: bytes of data, linear and paged, from `skb->data` on.
    #[inline(always)]
    pub fn len(self) -> u32 {
        self.0.load(global!(HOPTRACE_LAYOUT.skb_len))
    }

    /// `skb->dev`, the device the packet is on (NULL when none).
    #[inline(always)]
    pub fn dev(self) -> BtfPtr {
        self.0.ptr(global!(HOPTRACE_LAYOUT.skb_dev))
    }

    /// `skb->_nfct`: the conntrack entry pointer with `ip_conntrack_info`
    /// in its low 3 bits (see [`hoptrace_common::CtState::from_nfct`]).
    #[inline(always)]
    pub fn nfct(self) -> u64 {
        self.0.load(global!(HOPTRACE_LAYOUT.skb_nfct))
    }

    /// Conntrack flags of [`hoptrace_common::HopHeader::ct_state`]:
    /// [`hoptrace_common::CT_STATUS_KNOWN`], with
    /// [`hoptrace_common::CT_UNCONFIRMED`] when the entry is not confirmed
    /// (this pass created it); 0 without an entry or a known offset.
    #[inline(always)]
    pub fn ct_flags(nfct: u64) -> u8 {
        let off = global!(HOPTRACE_LAYOUT.nf_conn_status);
        let ct = nfct & !7;
        if ct == 0 || off == 0 {
            return 0;
        }
        // `_nfct` is a plain integer to the verifier, not a typed pointer:
        // read the entry's status with the fault-tolerant helper.
        // SAFETY: `bpf_probe_read_kernel` never faults; an unreadable
        // address is an error return, counted as unknown.
        match unsafe {
            aya_ebpf::helpers::bpf_probe_read_kernel((ct + u64::from(off)) as *const u64)
        } {
            Ok(status) if status & hoptrace_common::IPS_CONFIRMED == 0 => {
                hoptrace_common::CT_STATUS_KNOWN | hoptrace_common::CT_UNCONFIRMED
            }
            Ok(_) => hoptrace_common::CT_STATUS_KNOWN,
            Err(_) => 0,
        }
    }

    /// Ethertype (host order) from `skb->protocol`.
    #[inline(always)]
    pub fn protocol(self) -> u16 {
        u16::from_be(self.0.load(global!(HOPTRACE_LAYOUT.skb_protocol)))
    }

    /// Network namespace inode of the owning socket (0 when unknown). On the
    /// socket path `skb->dev` shares its storage with `dev_scratch`.
    #[inline(always)]
    pub fn sock_netns(self) -> u32 {
        let sk = self.0.ptr(global!(HOPTRACE_LAYOUT.skb_sk));
        if sk.is_null() {
            return 0;
        }
        net_inum(sk.ptr(global!(HOPTRACE_LAYOUT.sk_net)))
    }

    /// Copies the linear bytes from the network header on (at most
    /// [`HEADER_WINDOW`]) with one helper call. Empty when the network
    /// header is unset or the copy fails.
    #[inline(always)]
    pub fn network_window(self, window: &mut HeaderWindow) {
        window.len = 0;
        let head: u64 = self.0.load(global!(HOPTRACE_LAYOUT.skb_head));
        let nh: u16 = self.0.load(global!(HOPTRACE_LAYOUT.skb_network_header));
        let tail: u32 = self.0.load(global!(HOPTRACE_LAYOUT.skb_tail));
        if nh == NO_HEADER || head == 0 || tail <= nh as u32 {
            return;
        }
        let n = window_len((tail - nh as u32) as usize);
        let src = (head + nh as u64) as *const u8;
        // SAFETY: `window_len` returns 1..=HEADER_WINDOW, the length of
        // `bytes`, so the range is in bounds.
        let dst = unsafe { window.bytes.get_unchecked_mut(..n) };
        // SAFETY: `bpf_probe_read_kernel` never faults (an unreadable source
        // is an error return); `dst` is `n` writable bytes of the window.
        if unsafe { bpf_probe_read_kernel_buf(src, dst) }.is_ok() {
            window.len = n as u32;
        }
    }
}

/// `min(available, HEADER_WINDOW)` for `available >= 1`, written so that the
/// verifier sees a length in `1..=HEADER_WINDOW` (a plain `min` can be
/// reordered past the zero check).
#[inline(always)]
pub fn window_len(available: usize) -> usize {
    const _: () = assert!(HEADER_WINDOW.is_power_of_two());
    let n = if available < HEADER_WINDOW {
        available
    } else {
        HEADER_WINDOW
    };
    (n.wrapping_sub(1) & (HEADER_WINDOW - 1)) + 1
}

/// `dev->ifindex` (0 without a device).
#[inline(always)]
pub fn dev_ifindex(dev: BtfPtr) -> u32 {
    if dev.is_null() {
        return 0;
    }
    dev.load(global!(HOPTRACE_LAYOUT.dev_ifindex))
}

/// Network namespace inode of a device (0 without a device).
#[inline(always)]
pub fn dev_netns(dev: BtfPtr) -> u32 {
    if dev.is_null() {
        return 0;
    }
    net_inum(dev.ptr(global!(HOPTRACE_LAYOUT.dev_nd_net)))
}

/// `net->ns.inum` for a `struct net *`.
#[inline(always)]
pub fn net_inum(net: BtfPtr) -> u32 {
    if net.is_null() {
        return 0;
    }
    net.load(global!(HOPTRACE_LAYOUT.net_ns_inum))
}
