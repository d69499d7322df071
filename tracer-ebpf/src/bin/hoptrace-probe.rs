//! Capability probe programs for `hoptrace check`.
#![no_std]
#![no_main]

#[path = "../probes/capability.rs"]
mod capability;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
