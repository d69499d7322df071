//! Kernel-side parts shared by hoptrace's programs: maps, load-time globals,
//! reading `struct sk_buff` through BTF offsets, and event emission.
//!
//! The programs themselves live in `src/probes/`, one file per hook family.
#![no_std]

pub mod aggregate;
pub mod emit;
pub mod floor;
pub mod globals;
pub mod maps;
pub mod skb;

/// The panic handler and license every kernel object needs (a BPF program
/// cannot unwind; the verifier rejects any path that would reach the loop).
#[macro_export]
macro_rules! kernel_object {
    () => {
        #[cfg(not(test))]
        #[panic_handler]
        fn panic(_info: &core::panic::PanicInfo) -> ! {
            loop {}
        }

        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 4] = *b"GPL\0";
    };
}
