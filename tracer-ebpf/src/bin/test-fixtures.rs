//! Test fixtures for the root tests (verdict.rs): tc programs that drop or
//! redirect, to check that hoptrace never changes another program's verdict.
#![no_std]
#![no_main]

#[path = "../probes/fixtures.rs"]
mod fixtures;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
