//! Programs that attach by BTF id (tp_btf, fentry), loaded without aya's
//! parse of the kernel's BTF, and the relocation of an object's programs
//! against maps that already exist.
//!
//! aya 0.14 parses all of `/sys/kernel/btf/vmlinux` into its own type table
//! in `EbpfLoader::new` (about 19 MB of heap for a 5.5 MB blob) and needs
//! that table again for every tp_btf or fentry load. hoptrace needs one
//! number per program from it: the type id of `btf_trace_<tracepoint>` (or
//! of the traced function), which [`crate::kernel::btf::Btf`] finds in the
//! raw blob. So the objects are loaded by aya with the kernel's BTF hidden
//! ([`without_kernel_btf`]; hoptrace's programs carry no CO-RE relocations,
//! so aya has no use for it), and these programs are loaded here with
//! `BPF_PROG_LOAD` (`attach_btf_id`) and attached with
//! `BPF_RAW_TRACEPOINT_OPEN` (kernel/bpf/syscall.c: a tracing program with
//! no name attaches at its BTF id). That keeps a run's peak memory at the
//! blob's size instead of aya's table.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
};

use aya_obj::Object;

use crate::kernel::{btf::Btf, netfilter::aya_map_fd, sys};

/// Errors relocating an object or loading one of its tracing programs.
#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    /// The bytes are not a BPF ELF object aya-obj can read, or its
    /// read-only globals could not be patched.
    #[error("cannot parse the object")]
    Parse(#[from] aya_obj::ParseError),
    /// Pointing the object's map references or `.text` calls at their
    /// targets failed.
    #[error("cannot relocate the object")]
    Relocate(#[from] aya_obj::relocation::EbpfRelocationError),
    /// The object references a map that was not provided.
    #[error("the object references map `{0}`, which is not loaded")]
    MissingMap(String),
    /// The object has no program of that name: it was not built from this
    /// source.
    #[error("the object has no program `{0}`")]
    MissingProgram(String),
    /// The kernel's BTF has no such tracepoint or function.
    #[error(transparent)]
    Btf(#[from] crate::kernel::btf::BtfError),
    /// `BPF_PROG_LOAD` refused the program (verifier or attach target).
    #[error("loading {name}: {}", .error.error)]
    Load {
        /// The program.
        name: String,
        /// The kernel's error and the verifier log's tail.
        error: sys::ProgLoadError,
    },
    /// `BPF_RAW_TRACEPOINT_OPEN` refused the loaded program.
    #[error("attaching {name}: {source}")]
    Attach {
        /// The program.
        name: String,
        /// The `bpf(2)` error.
        #[source]
        source: std::io::Error,
    },
}

/// An object parsed by aya-obj whose map references point at live maps and
/// whose `.text` calls are linked: its programs' instructions are ready to
/// load.
pub struct RelocatedObject {
    obj: Object,
}

impl RelocatedObject {
    /// Parses `object`, writes `globals` (name → bytes of a read-only
    /// global) into its data sections, and points every map reference at
    /// the fd that `map_fd(name, map)` gives (the caller keeps those fds
    /// open while programs are loaded from this object).
    ///
    /// # Errors
    ///
    /// What `map_fd` returns; [`TracingError::Parse`] and
    /// [`TracingError::Relocate`] (as `E`) for an object this build does
    /// not expect.
    pub fn new<E>(
        object: &[u8],
        globals: &[(&str, &[u8])],
        mut map_fd: impl FnMut(&str, &aya_obj::Map) -> Result<i32, E>,
    ) -> Result<Self, E>
    where
        E: From<aya_obj::ParseError> + From<aya_obj::relocation::EbpfRelocationError>,
    {
        let mut obj = Object::parse(object)?;
        obj.patch_map_data(
            globals
                .iter()
                .map(|(name, bytes)| (*name, (*bytes, true)))
                .collect(),
        )?;
        let mut fds = Vec::with_capacity(obj.maps.len());
        for (name, map) in &obj.maps {
            fds.push((name.clone(), map_fd(name, map)?, map.clone()));
        }
        let text_sections: HashSet<usize> =
            obj.functions.keys().map(|(section, _)| *section).collect();
        obj.relocate_maps(
            fds.iter().map(|(n, fd, m)| (n.as_str(), *fd, m)),
            &text_sections,
        )?;
        obj.relocate_calls(&text_sections)?;
        Ok(Self { obj })
    }

    /// Relocates `object` against the maps of a loaded aya object, by name
    /// (its `.rodata` included: the same globals were written into it).
    ///
    /// # Errors
    ///
    /// As [`RelocatedObject::new`]; [`TracingError::MissingMap`] for a map
    /// `ebpf` does not have.
    pub fn against(object: &[u8], ebpf: &aya::Ebpf) -> Result<Self, TracingError> {
        let fds: HashMap<&str, BorrowedFd<'_>> = ebpf
            .maps()
            .map(|(name, map)| (name, aya_map_fd(map)))
            .collect();
        Self::new(object, &[], |name, _| {
            fds.get(name)
                .map(std::os::fd::AsRawFd::as_raw_fd)
                .ok_or_else(|| TracingError::MissingMap(name.to_owned()))
        })
    }

    /// The raw 8-byte instructions of program `name`, relocated.
    ///
    /// # Errors
    ///
    /// [`TracingError::MissingProgram`] when the object has no such program.
    pub fn instructions(&self, name: &str) -> Result<Vec<u64>, TracingError> {
        let prog = self
            .obj
            .programs
            .get(name)
            .ok_or_else(|| TracingError::MissingProgram(name.to_owned()))?;
        let function = self
            .obj
            .functions
            .get(&prog.function_key())
            .ok_or_else(|| TracingError::MissingProgram(name.to_owned()))?;
        Ok(function
            .instructions
            .iter()
            .map(|insn| {
                // SAFETY: `bpf_insn` is the `#[repr(C)]` 8-byte UAPI struct
                // (u8 code, two 4-bit registers, i16 offset, i32 immediate)
                // without padding: every byte is initialised, and transmute
                // checks that the sizes match.
                u64::from_ne_bytes(unsafe {
                    std::mem::transmute::<aya_obj::generated::bpf_insn, [u8; 8]>(*insn)
                })
            })
            .collect())
    }
}

/// Where a tracing program attaches.
#[derive(Clone, Copy, Debug)]
pub enum TracingTarget<'a> {
    /// A BTF-enabled tracepoint (tp_btf), e.g. `netif_receive_skb`.
    Tracepoint(&'a str),
    /// The entry of a kernel function (fentry).
    FunctionEntry(&'a str),
}

/// A loaded and attached tracing program; dropping it detaches it.
pub struct TracingLink {
    prog: OwnedFd,
    _link: OwnedFd,
    name: String,
}

impl TracingLink {
    /// Kernel id of the program.
    ///
    /// # Errors
    ///
    /// The `bpf(2)` error of `BPF_OBJ_GET_INFO_BY_FD`.
    pub fn program_id(&self) -> std::io::Result<u32> {
        sys::object_id(self.prog.as_fd())
    }

    /// The program's name in the object (the kernel keeps 15 bytes of it).
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Kernel ids of the programs aya loaded in `ebpf` and of `links`'
/// programs (the ones hoptrace loads itself), e.g. to read their run-time
/// statistics. Programs whose id cannot be read are left out.
pub fn program_ids<'a>(
    ebpf: &aya::Ebpf,
    links: impl IntoIterator<Item = &'a TracingLink>,
) -> Vec<u32> {
    ebpf.programs()
        .filter_map(|(_, prog)| prog.fd().ok())
        .filter_map(|fd| sys::object_id(fd.as_fd()).ok())
        .chain(links.into_iter().filter_map(|l| l.program_id().ok()))
        .collect()
}

/// Loads program `name` of `obj` as a tracing program at `target` (its type
/// id read from `btf`) and attaches it.
///
/// # Errors
///
/// [`TracingError::MissingProgram`], [`TracingError::Btf`] (no such
/// tracepoint or function in this kernel), [`TracingError::Load`] (verifier),
/// [`TracingError::Attach`].
pub fn attach(
    obj: &RelocatedObject,
    name: &str,
    target: TracingTarget<'_>,
    btf: &Btf,
) -> Result<TracingLink, TracingError> {
    let insns = obj.instructions(name)?;
    let (attach_type, btf_id) = match target {
        TracingTarget::Tracepoint(tp) => (sys::BPF_TRACE_RAW_TP, btf.tracepoint_id(tp)?),
        TracingTarget::FunctionEntry(func) => (sys::BPF_TRACE_FENTRY, btf.func_id(func)?),
    };
    let license = CString::new("GPL").expect("no NUL");
    let prog = sys::prog_load(&sys::ProgLoad {
        prog_type: sys::BPF_PROG_TYPE_TRACING,
        expected_attach_type: attach_type,
        attach_btf_id: btf_id,
        insns: &insns,
        license: &license,
        name,
    })
    .map_err(|error| TracingError::Load {
        name: name.to_owned(),
        error,
    })?;
    let link = sys::raw_tracepoint_open(&prog).map_err(|source| TracingError::Attach {
        name: name.to_owned(),
        source,
    })?;
    Ok(TracingLink {
        prog,
        _link: link,
        name: name.to_owned(),
    })
}

/// Runs `f` (an aya `EbpfLoader::new()...load(..)`) on a thread that cannot
/// see `/sys/kernel/btf`, so aya's loader does not parse the kernel's BTF
/// (see the module docs). The thread has a private mount namespace with an
/// empty read-only tmpfs on `/sys/kernel/btf`; both go away with it. Where
/// that cannot be set up (no CAP_SYS_ADMIN, no tmpfs), `f` runs anyway and
/// aya parses the BTF as usual: only memory is at stake.
///
/// # Panics
///
/// Re-raises a panic of `f`.
pub fn without_kernel_btf<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let mut f = Some(f);
    let spawned = std::thread::scope(|scope| {
        let f = &mut f;
        std::thread::Builder::new()
            .name("ht-load".into())
            .spawn_scoped(scope, move || {
                let _ = hide_kernel_btf();
                f.take().map(|f| f())
            })
            .ok()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
    });
    // No thread (out of threads): load here, with aya's parse.
    match (spawned.flatten(), f) {
        (Some(result), _) => result,
        (None, Some(f)) => f(),
        (None, None) => unreachable!("the thread took `f` and returned its result"),
    }
}

/// On the calling thread only: a private mount namespace (unshare(2) with
/// CLONE_NEWNS also unshares the thread's filesystem context, so other
/// threads keep theirs) where `/sys/kernel/btf` is an empty tmpfs.
fn hide_kernel_btf() -> nix::Result<()> {
    use nix::mount::{MsFlags, mount};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    // No propagation back to the node's mounts.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    mount(
        Some("hoptrace-nobtf"),
        "/sys/kernel/btf",
        Some("tmpfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=4k"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_object_is_a_parse_error() {
        let err = RelocatedObject::new::<TracingError>(b"not an ELF", &[], |_, _| Ok(0))
            .err()
            .expect("error");
        assert!(matches!(err, TracingError::Parse(_)), "{err}");
    }

    #[test]
    fn the_closure_runs_and_returns_without_root_too() {
        // Without privileges the mount namespace cannot be made: `f` runs
        // all the same.
        assert_eq!(without_kernel_btf(|| 6 * 7), 42);
    }
}
