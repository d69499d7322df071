//! The record the socket programs (`hoptrace-sock` object) write for every
//! read, write and TCP state change of a traced socket: the raw material of
//! the request timeline (docs/segments.md, "Requests").

/// What a [`SockEvent`] records.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SockKind {
    /// Never emitted: what [`SockKind::from_u8`] makes of a value it does not know.
    Unknown = 0,
    /// `sock:sock_recv_length`: the process read `bytes` bytes (fired at the
    /// end of `sock_recvmsg`, after the copy); in the `syscalls:` fallback,
    /// the exit of read(2), readv(2), recvfrom(2) or recvmsg(2) on a socket.
    Recv = 1,
    /// `sock:sock_send_length`: the process wrote `bytes` bytes (fired at the
    /// end of `sock_sendmsg`); in the `syscalls:` fallback, the exit of
    /// write(2), writev(2), sendto(2) or sendmsg(2) on a socket.
    Send = 2,
    /// `sock:inet_sock_set_state`: the TCP state went `old_state` → `new_state`.
    State = 3,
    /// `tcp:tcp_retransmit_skb`: TCP retransmitted a segment of this socket
    /// (a retransmission timeout or a fast retransmit; a tail loss probe
    /// bypasses the tracepoint on kernel 6.18). Fired in softirq or timer
    /// context, so `pid_tgid` and `comm` are whatever the CPU ran. `bytes`
    /// is 0.
    Retransmit = 4,
}

impl SockKind {
    /// Decodes [`SockEvent::kind`]; unknown values become [`SockKind::Unknown`].
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Recv,
            2 => Self::Send,
            3 => Self::State,
            4 => Self::Retransmit,
            _ => Self::Unknown,
        }
    }
}

/// TCP states of `include/net/tcp_states.h` that the request timeline uses.
pub mod tcp_state {
    /// `TCP_ESTABLISHED`.
    pub const ESTABLISHED: u8 = 1;
    /// `TCP_SYN_SENT`: an active open (`connect`).
    pub const SYN_SENT: u8 = 2;
    /// `TCP_SYN_RECV`: a passive open (the child socket of a listener).
    pub const SYN_RECV: u8 = 3;
    /// `TCP_CLOSE`.
    pub const CLOSE: u8 = 7;
}

/// One socket operation of one thread. IPv4 only (`family` 2); IPv6
/// sockets are skipped by the kernel program and counted.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC), the same clock as [`crate::HopHeader::ts_ns`].
    pub ts_ns: u64,
    /// `bpf_get_current_pid_tgid()`: tgid (process id) in the high 32 bits,
    /// thread id in the low 32. For state changes in softirq context this
    /// is whatever thread the CPU was running.
    pub pid_tgid: u64,
    /// Kernel address of the `struct sock`: the identity of the connection's
    /// end while the socket lives.
    pub sk_addr: u64,
    /// Inode of the socket's network namespace.
    pub netns_ino: u32,
    /// Bytes read or written (`ret` of the tracepoint: negative is -errno;
    /// the kernel program emits only positive values); 0 for state changes
    /// and retransmissions.
    pub bytes: i32,
    /// Local IPv4 address (`skc_rcv_saddr`), network byte order as in memory.
    pub saddr: [u8; 4],
    /// Remote IPv4 address (`skc_daddr`), network byte order as in memory.
    pub daddr: [u8; 4],
    /// Local port (`skc_num`), host order.
    pub sport: u16,
    /// Remote port (`skc_dport`), host order.
    pub dport: u16,
    /// Address family (`skc_family`): 2 for IPv4.
    pub family: u16,
    /// [`SockKind`] as u8.
    pub kind: u8,
    /// TCP state before a [`SockKind::State`] change, else 0.
    pub old_state: u8,
    /// TCP state after a [`SockKind::State`] change, else 0.
    pub new_state: u8,
    /// Explicit padding to the 8-byte boundary; always 0.
    pub _pad: [u8; 7],
    /// `bpf_get_current_comm()`: the thread's name, NUL-padded.
    pub comm: [u8; 16],
    /// For [`SockKind::Send`]: when the thread entered the write syscall
    /// (`syscalls:sys_enter_write`, `_writev`, `_sendto`, `_sendmsg`), ns;
    /// 0 when unknown (another syscall, or those tracepoints missing); the
    /// `syscalls:` fallback always knows it. The
    /// send tracepoint fires at the end of `sendmsg`, after the packet may
    /// already have crossed veths into the peer's socket.
    pub entry_ns: u64,
}

const _: () = assert!(core::mem::size_of::<SockEvent>() == 80);
const _: () = assert!(core::mem::offset_of!(SockEvent, saddr) == 32);
const _: () = assert!(core::mem::offset_of!(SockEvent, kind) == 46);
const _: () = assert!(core::mem::offset_of!(SockEvent, comm) == 56);

impl SockEvent {
    /// An all-zero event.
    pub const fn zeroed() -> Self {
        Self {
            ts_ns: 0,
            pid_tgid: 0,
            sk_addr: 0,
            netns_ino: 0,
            bytes: 0,
            saddr: [0; 4],
            daddr: [0; 4],
            sport: 0,
            dport: 0,
            family: 0,
            kind: 0,
            old_state: 0,
            new_state: 0,
            _pad: [0; 7],
            comm: [0; 16],
            entry_ns: 0,
        }
    }

    /// When the operation began: the syscall entry of a write when known,
    /// else the tracepoint's own time.
    pub const fn begin_ns(&self) -> u64 {
        if self.entry_ns != 0 && self.entry_ns <= self.ts_ns {
            self.entry_ns
        } else {
            self.ts_ns
        }
    }

    /// Thread id (the low 32 bits of `pid_tgid`).
    pub const fn tid(&self) -> u32 {
        self.pid_tgid as u32
    }

    /// The thread name up to its first NUL (lossy on invalid UTF-8: `?`).
    pub fn comm_str(&self) -> &str {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(16);
        core::str::from_utf8(&self.comm[..end]).unwrap_or("?")
    }
}

/// Byte offsets in `struct sock` from the running kernel's BTF, for the
/// socket programs (read-only global `HOPTRACE_SOCK_LAYOUT`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockLayout {
    /// `sock.__sk_common.skc_daddr` (__be32).
    pub sk_daddr: u32,
    /// `sock.__sk_common.skc_rcv_saddr` (__be32).
    pub sk_rcv_saddr: u32,
    /// `sock.__sk_common.skc_dport` (__be16).
    pub sk_dport: u32,
    /// `sock.__sk_common.skc_num` (u16, host order).
    pub sk_num: u32,
    /// `sock.__sk_common.skc_family` (u16).
    pub sk_family: u32,
    /// `sock.__sk_common.skc_net.net` (struct net *).
    pub sk_net: u32,
    /// `net.ns.inum`.
    pub net_ns_inum: u32,
    /// `sock.sk_protocol` (u16).
    pub sk_protocol: u32,
    /// 1: events are kept only for namespaces in `HOPTRACE_SOCK_NETNS`.
    pub filter_netns: u32,
    /// 1 when every offset above was found.
    pub valid: u32,
}

const _: () = assert!(core::mem::size_of::<SockLayout>() == 40);

/// Byte offsets from the running kernel's BTF that take a file descriptor
/// of the current task to its `struct sock`, for the `syscalls:` fallback
/// of the socket programs (read-only global `HOPTRACE_SOCK_FD_LAYOUT`):
/// `task->files->fdt->fd[fd]` is the `struct file`; it is a socket when
/// `file->f_inode->i_mode & S_IFMT == S_IFSOCK`, and then
/// `((struct socket *)file->private_data)->sk` is the socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockFdLayout {
    /// `task_struct.files` (struct files_struct *).
    pub task_files: u32,
    /// `files_struct.fdt` (struct fdtable *).
    pub files_fdt: u32,
    /// `fdtable.max_fds` (unsigned int): the length of `fdtable.fd`.
    pub fdt_max_fds: u32,
    /// `fdtable.fd` (struct file **).
    pub fdt_fd: u32,
    /// `file.f_inode` (struct inode *).
    pub file_f_inode: u32,
    /// `inode.i_mode` (umode_t, u16).
    pub inode_i_mode: u32,
    /// `file.private_data` (a `struct socket *` for a socket's file).
    pub file_private_data: u32,
    /// `socket.sk` (struct sock *).
    pub socket_sk: u32,
}

const _: () = assert!(core::mem::size_of::<SockFdLayout>() == 32);
const _: () = assert!(core::mem::offset_of!(SockFdLayout, socket_sk) == 28);

/// `S_IFMT`: the file-type bits of `inode.i_mode` (include/uapi/linux/stat.h).
pub const S_IFMT: u16 = 0o170_000;
/// `S_IFSOCK`: a socket's file type.
pub const S_IFSOCK: u16 = 0o140_000;

// SAFETY: `#[repr(C)]`, `Copy`, integer fields and arrays of them with the
// one gap filled by an explicit `_pad`: no implicit padding, any bit
// pattern is a valid value (size and offsets asserted above).
#[cfg(feature = "user")]
unsafe impl aya::Pod for SockEvent {}
// SAFETY: `#[repr(C)]`, `Copy`, only `u32` fields: no padding, any bit
// pattern is valid (size asserted above).
#[cfg(feature = "user")]
unsafe impl aya::Pod for SockLayout {}
// SAFETY: `#[repr(C)]`, `Copy`, only `u32` fields: no padding, any bit
// pattern is valid (size asserted above).
#[cfg(feature = "user")]
unsafe impl aya::Pod for SockFdLayout {}
