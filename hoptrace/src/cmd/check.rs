//! `hoptrace check [--json]`: what this kernel offers, probed by trying.

use hoptrace_core::kernel::capabilities;

/// Prints the probe's table (or JSON) and returns the exit code: 0 when
/// hoptrace can trace here, 1 when it cannot, 2 without privileges.
pub fn run(json: bool) -> i32 {
    if let Err(e) = capabilities::require_tracing(true) {
        eprintln!("hoptrace check: {e}");
        return 2;
    }
    let caps = capabilities::probe_all();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&caps.to_json()).unwrap_or_default()
        );
    } else {
        print!("{}", caps.render_table());
    }
    if caps.usable() { 0 } else { 1 }
}
