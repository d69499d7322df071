//! Raw `bpf(2)` calls for what aya 0.14 does not offer: netfilter programs and
//! links, kfunc probes, and the read-only data map of the netfilter object.

use std::{
    ffi::CStr,
    io,
    os::fd::{FromRawFd as _, OwnedFd},
};

// The values below are those of include/uapi/linux/bpf.h.

/// `enum bpf_cmd`: create a map; returns its fd.
pub const BPF_MAP_CREATE: u32 = 0;
/// `enum bpf_cmd`: write one map element.
pub const BPF_MAP_UPDATE_ELEM: u32 = 2;
/// `enum bpf_cmd`: verify and load a program; returns its fd.
pub const BPF_PROG_LOAD: u32 = 5;
/// `enum bpf_cmd`: forbid further writes to a map from userspace.
pub const BPF_MAP_FREEZE: u32 = 22;
/// `enum bpf_cmd`: fill `struct bpf_{prog,map,link}_info` for an fd.
pub const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;
/// `enum bpf_cmd`: attach a program through a link; returns the link's fd.
pub const BPF_LINK_CREATE: u32 = 28;
/// `BPF_RAW_TRACEPOINT_OPEN` command.
pub const BPF_RAW_TRACEPOINT_OPEN: u32 = 17;

/// `enum bpf_map_type`: fixed-size array indexed by a `u32`.
pub const BPF_MAP_TYPE_ARRAY: u32 = 2;
/// `enum bpf_prog_type`: tc classifier (the capability probe's kfunc test).
pub const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
/// `enum bpf_prog_type`: netfilter hook program (Linux 6.4 and later).
pub const BPF_PROG_TYPE_NETFILTER: u32 = 32;
/// `BPF_PROG_TYPE_TRACING` (tp_btf, fentry, fexit).
pub const BPF_PROG_TYPE_TRACING: u32 = 26;
/// `BPF_TRACE_RAW_TP`: a tracing program on a BTF tracepoint (tp_btf).
pub const BPF_TRACE_RAW_TP: u32 = 23;
/// `BPF_TRACE_FENTRY`: a tracing program on a function's entry.
pub const BPF_TRACE_FENTRY: u32 = 24;
/// `enum bpf_attach_type` of netfilter links.
pub const BPF_NETFILTER: u32 = 45;
/// Map flag: programs may only read the map.
pub const BPF_F_RDONLY_PROG: u32 = 1 << 7;

/// Size of the `union bpf_attr` prefix we fill; the kernel accepts a shorter
/// attr as long as the bytes it does not know are zero.
const ATTR_SIZE: usize = 128;

/// A zeroed `union bpf_attr`, filled field by field at the offsets of the UAPI.
#[repr(C, align(8))]
struct Attr([u8; ATTR_SIZE]);

impl Attr {
    fn new() -> Self {
        Self([0; ATTR_SIZE])
    }

    fn u32(&mut self, offset: usize, v: u32) -> &mut Self {
        self.0[offset..offset + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }

    fn u64(&mut self, offset: usize, v: u64) -> &mut Self {
        self.0[offset..offset + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }

    fn name(&mut self, offset: usize, name: &str) -> &mut Self {
        // BPF_OBJ_NAME_LEN is 16 including the terminating NUL.
        let bytes: Vec<u8> = name
            .bytes()
            .filter(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.')
            .take(15)
            .collect();
        self.0[offset..offset + bytes.len()].copy_from_slice(&bytes);
        self
    }
}

fn bpf(cmd: u32, attr: &mut Attr) -> io::Result<i64> {
    // SAFETY: attr is a valid, writable buffer of ATTR_SIZE bytes; pointers
    // stored in it stay alive for the duration of the call (callers' borrows).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr.0.as_mut_ptr(),
            ATTR_SIZE as u32,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn bpf_fd(cmd: u32, attr: &mut Attr) -> io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)?;
    // SAFETY: these commands return a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Creates a map (`BPF_MAP_CREATE`) of `map_type` with keys and values of
/// `key_size` and `value_size` bytes, `max_entries` entries and `flags`
/// (`BPF_F_*`); `name` is sanitised and cut to 15 bytes.
///
/// # Errors
///
/// The `bpf(2)` error: `EPERM` without `CAP_BPF`, `EINVAL` for a map type,
/// size or flag the kernel rejects, `ENOMEM` when the map does not fit.
pub fn map_create(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
    name: &str,
) -> io::Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.u32(0, map_type)
        .u32(4, key_size)
        .u32(8, value_size)
        .u32(12, max_entries)
        .u32(16, flags)
        .name(28, name);
    bpf_fd(BPF_MAP_CREATE, &mut attr)
}

/// Writes one element (`BPF_MAP_UPDATE_ELEM`, flags `BPF_ANY`); `key` and
/// `value` must be exactly the map's key and value sizes.
///
/// # Errors
///
/// The `bpf(2)` error, e.g. `E2BIG` for an array index past `max_entries`,
/// `EPERM` for a frozen map.
pub fn map_update(map: &OwnedFd, key: &[u8], value: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let mut attr = Attr::new();
    attr.u32(0, map.as_raw_fd() as u32)
        .u64(8, key.as_ptr() as u64)
        .u64(16, value.as_ptr() as u64)
        .u64(24, 0);
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// Makes a map read-only for userspace too (`BPF_MAP_FREEZE`).
///
/// # Errors
///
/// The `bpf(2)` error, e.g. `EBUSY` for a map already frozen.
pub fn map_freeze(map: &OwnedFd) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let mut attr = Attr::new();
    attr.u32(0, map.as_raw_fd() as u32);
    bpf(BPF_MAP_FREEZE, &mut attr).map(drop)
}

/// What to load with [`prog_load`].
pub struct ProgLoad<'a> {
    /// `enum bpf_prog_type`, e.g. [`BPF_PROG_TYPE_NETFILTER`].
    pub prog_type: u32,
    /// `enum bpf_attach_type` the program will be attached with (e.g.
    /// [`BPF_NETFILTER`]); 0 for types that take none.
    pub expected_attach_type: u32,
    /// Type id in the kernel's BTF of what a tracing program attaches to
    /// (`btf_trace_<tracepoint>`, a function); 0 for other types.
    pub attach_btf_id: u32,
    /// Raw 8-byte `struct bpf_insn`s.
    pub insns: &'a [u64],
    /// License string; GPL-only helpers and kfuncs need a GPL-compatible one.
    pub license: &'a CStr,
    /// Program name as `bpftool prog` shows it; sanitised to ASCII letters,
    /// digits, `_` and `.` and cut to 15 bytes.
    pub name: &'a str,
}

/// A failed program load with the verifier's explanation.
#[derive(Debug, thiserror::Error)]
#[error("BPF_PROG_LOAD failed")]
pub struct ProgLoadError {
    /// The `bpf(2)` error of the first attempt.
    #[source]
    pub error: io::Error,
    /// The last 6000 bytes of the verifier log, from a second attempt with
    /// logging on (empty when the kernel gave none). Several lines; not part
    /// of the error message.
    pub verifier_log: String,
}

/// Loads a program (`BPF_PROG_LOAD`). On failure it loads once more with the
/// verifier log enabled and returns the log's tail.
///
/// # Errors
///
/// [`ProgLoadError`] with the kernel's error (`EACCES` or `EINVAL` when the
/// verifier rejects the program, `EPERM` without `CAP_BPF`) and the tail of
/// the verifier log.
pub fn prog_load(prog: &ProgLoad<'_>) -> Result<OwnedFd, ProgLoadError> {
    let attempt = |log: Option<&mut Vec<u8>>| {
        let mut attr = Attr::new();
        attr.u32(0, prog.prog_type)
            .u32(4, prog.insns.len() as u32)
            .u64(8, prog.insns.as_ptr() as u64)
            .u64(16, prog.license.as_ptr() as u64)
            .name(48, prog.name)
            .u32(68, prog.expected_attach_type)
            .u32(108, prog.attach_btf_id);
        if let Some(buf) = log {
            attr.u32(24, 1)
                .u32(28, buf.len() as u32)
                .u64(32, buf.as_mut_ptr() as u64);
        }
        bpf_fd(BPF_PROG_LOAD, &mut attr)
    };
    match attempt(None) {
        Ok(fd) => Ok(fd),
        Err(error) => {
            let mut log = vec![0u8; 4 * 1024 * 1024];
            // The second attempt fails the same way (or with ENOSPC when the
            // log is longer than the buffer); only its log matters.
            let _ = attempt(Some(&mut log));
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            const TAIL: usize = 6000;
            let tail = if text.len() > TAIL {
                let mut start = text.len() - TAIL;
                while !text.is_char_boundary(start) {
                    start += 1;
                }
                format!("...\n{}", &text[start..])
            } else {
                text.into_owned()
            };
            Err(ProgLoadError {
                error,
                verifier_log: tail,
            })
        }
    }
}

/// Attaches a netfilter program (`BPF_LINK_CREATE` with `BPF_NETFILTER`) in
/// the calling thread's network namespace, at protocol family `pf`
/// (`NFPROTO_IPV4` 2, `NFPROTO_IPV6` 10), hook `hooknum` (`enum
/// nf_inet_hooks`) and `priority` (lower runs first). Closing the fd detaches
/// it.
///
/// # Errors
///
/// The `bpf(2)` error, e.g. `EAFNOSUPPORT` for another `pf`, `ERANGE` for
/// the reserved priorities `NF_IP_PRI_FIRST` and `NF_IP_PRI_LAST`
/// (net/netfilter/nf_bpf_link.c), `EINVAL` for a program of another type.
pub fn netfilter_link_create(
    prog: &OwnedFd,
    pf: u32,
    hooknum: u32,
    priority: i32,
) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd as _;
    let mut attr = Attr::new();
    attr.u32(0, prog.as_raw_fd() as u32)
        .u32(8, BPF_NETFILTER)
        .u32(16, pf)
        .u32(20, hooknum)
        .u32(24, priority as u32)
        .u32(28, 0);
    bpf_fd(BPF_LINK_CREATE, &mut attr)
}

/// Attaches a loaded tracing program at the BTF id it was loaded with
/// (`BPF_RAW_TRACEPOINT_OPEN` without a name, kernel/bpf/syscall.c).
/// Closing the returned link fd detaches it.
///
/// # Errors
///
/// The `bpf(2)` error, e.g. `EINVAL` for a program of another type.
pub fn raw_tracepoint_open(prog: &OwnedFd) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd as _;
    let mut attr = Attr::new();
    attr.u64(0, 0).u32(8, prog.as_raw_fd() as u32);
    bpf_fd(BPF_RAW_TRACEPOINT_OPEN, &mut attr)
}

/// Kernel id of a program, map or link (the `id` field that
/// `bpf_prog_info`, `bpf_map_info` and `bpf_link_info` all carry at offset 4).
///
/// # Errors
///
/// The `bpf(2)` error, e.g. `EINVAL` or `EBADF` when `fd` is not a BPF
/// object.
pub fn object_id(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<u32> {
    use std::os::fd::AsRawFd as _;
    let mut info = [0u32; 4];
    let mut attr = Attr::new();
    attr.u32(0, fd.as_raw_fd() as u32)
        .u32(4, std::mem::size_of_val(&info) as u32)
        .u64(8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info[1])
}

/// Encodes one `struct bpf_insn` (code, dst/src registers, offset, immediate).
pub const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    (code as u64)
        | (((dst & 0xf) as u64) << 8)
        | (((src & 0xf) as u64) << 12)
        | ((off as u16 as u64) << 16)
        | ((imm as u32 as u64) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insn_encoding_matches_the_uapi_bit_layout() {
        // mov64 r0, 1  (BPF_ALU64 | BPF_MOV | BPF_K = 0xb7)
        assert_eq!(
            insn(0xb7, 0, 0, 0, 1).to_le_bytes(),
            [0xb7, 0x00, 0, 0, 1, 0, 0, 0]
        );
        // call kfunc: code 0x85, src_reg = BPF_PSEUDO_KFUNC_CALL (2), imm = btf id
        assert_eq!(
            insn(0x85, 0, 2, 0, 0x1234).to_le_bytes(),
            [0x85, 0x20, 0, 0, 0x34, 0x12, 0, 0]
        );
        // negative offset
        assert_eq!(
            insn(0x05, 0, 0, -1, 0).to_le_bytes(),
            [0x05, 0, 0xff, 0xff, 0, 0, 0, 0]
        );
    }

    #[test]
    fn object_names_are_truncated_and_sanitised() {
        let mut attr = Attr::new();
        attr.name(0, "hoptrace-nf slot 10 too long");
        assert_eq!(&attr.0[..16], b"hoptracenfslot1\0");
    }
}
