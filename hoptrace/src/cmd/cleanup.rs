//! `hoptrace cleanup [--netns PATH]`: removes clsact filters a killed
//! hoptrace left behind (only programs named `hoptrace_*`).

use std::path::Path;

use hoptrace_core::kernel::{capabilities, cleanup};

/// Prints what was removed; returns 0, 1 on error, 2 without privileges.
pub fn run(netns: Option<&Path>) -> i32 {
    if let Err(e) = capabilities::require_tracing(netns.is_some()) {
        eprintln!("hoptrace cleanup: {e}");
        return 2;
    }
    if let Err(line) = super::check_node_args(netns, &[]) {
        eprintln!("hoptrace cleanup: {line}");
        return 2;
    }
    match cleanup::cleanup_tc_filters(netns) {
        Ok(report) => {
            print!("{report}");
            0
        }
        Err(e) => {
            eprintln!("hoptrace cleanup: {e}");
            1
        }
    }
}
