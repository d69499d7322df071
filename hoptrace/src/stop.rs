//! SIGINT and SIGTERM request a clean stop (detach, report) instead of
//! killing the process with programs attached.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

/// Registers SIGINT and SIGTERM to set the returned flag.
///
/// # Errors
/// When a handler cannot be registered (the signal is forbidden).
pub fn install() -> std::io::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&flag))?;
    }
    Ok(flag)
}

/// Sleeps until `duration` has passed or `stop` was set; returns the time
/// actually waited.
pub fn wait(duration: Duration, stop: &AtomicBool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < duration && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50).min(duration.saturating_sub(start.elapsed())));
    }
    start.elapsed()
}
