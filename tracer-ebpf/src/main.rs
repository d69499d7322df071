//! The main kernel object: tc and tracepoint programs, loaded with aya.
#![no_std]
#![no_main]

#[path = "probes/tc.rs"]
mod tc;
#[path = "probes/tracepoints.rs"]
mod tracepoints;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
