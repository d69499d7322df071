//! The kernel objects built by build.rs, embedded in the binary.

/// Kernel objects are absent when the crate was built with `AYA_BUILD_SKIP=1`.
#[derive(Debug, thiserror::Error)]
#[error(
    "this hoptrace binary was built without its kernel programs (AYA_BUILD_SKIP=1); \
     rebuild with bpf-linker installed (`cargo xtask setup`)"
)]
pub struct NoKernelObjects;

#[cfg(not(hoptrace_no_ebpf))]
mod embedded {
    pub static MAIN: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hoptrace"));
    pub static NETFILTER: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hoptrace-nf"));
    pub static PROBE: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hoptrace-probe"));
    pub static FIXTURE: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/test-fixtures"));
    pub static SOCK: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hoptrace-sock"));
}

#[cfg(hoptrace_no_ebpf)]
mod embedded {
    pub static MAIN: &[u8] = &[];
    pub static NETFILTER: &[u8] = &[];
    pub static PROBE: &[u8] = &[];
    pub static FIXTURE: &[u8] = &[];
    pub static SOCK: &[u8] = &[];
}

fn present(bytes: &'static [u8]) -> Result<&'static [u8], NoKernelObjects> {
    if bytes.is_empty() {
        Err(NoKernelObjects)
    } else {
        Ok(bytes)
    }
}

/// The main object (`hoptrace`): tc and tracepoint programs and the maps
/// every object shares.
///
/// # Errors
///
/// [`NoKernelObjects`] when the binary was built with `AYA_BUILD_SKIP=1`.
pub fn main_object() -> Result<&'static [u8], NoKernelObjects> {
    present(embedded::MAIN)
}

/// Netfilter programs (loaded by [`crate::kernel::netfilter`]).
///
/// # Errors
///
/// [`NoKernelObjects`] when the binary was built with `AYA_BUILD_SKIP=1`.
pub fn netfilter_object() -> Result<&'static [u8], NoKernelObjects> {
    present(embedded::NETFILTER)
}

/// Capability probe programs (`hoptrace check`).
///
/// # Errors
///
/// [`NoKernelObjects`] when the binary was built with `AYA_BUILD_SKIP=1`.
pub fn probe_object() -> Result<&'static [u8], NoKernelObjects> {
    present(embedded::PROBE)
}

/// Test fixtures that drop or redirect (`fixture_drop_port`,
/// `fixture_redirect`): only the root tests load them, to check that hoptrace
/// never changes another program's verdict.
///
/// # Errors
///
/// [`NoKernelObjects`] when the binary was built with `AYA_BUILD_SKIP=1`.
pub fn fixture_object() -> Result<&'static [u8], NoKernelObjects> {
    present(embedded::FIXTURE)
}

/// Socket programs of the request timeline (loaded by [`crate::kernel::sock`]).
///
/// # Errors
///
/// [`NoKernelObjects`] when the binary was built with `AYA_BUILD_SKIP=1`.
pub fn sock_object() -> Result<&'static [u8], NoKernelObjects> {
    present(embedded::SOCK)
}
