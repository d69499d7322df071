//! Issue 9, "Published accuracy": the smallest case of `cargo xtask
//! accuracy` runs (a tbf queue on node 0's uplink against a run without
//! it), the client sees the delay and hoptrace puts it in `qdisc`.

use std::time::Duration;

use hoptrace_lab::accuracy::{self, Cause};
use tests::can_run_as_root;

#[test]
fn accuracy_smallest_case_runs() {
    if !can_run_as_root("accuracy_smallest_case_runs") {
        return;
    }
    let mut base = accuracy::base_options(200.0, Duration::from_secs(2));
    base.prefix = format!("ht-ac{}-", std::process::id() % 1000);
    let result = accuracy::run_case(Cause::UplinkQdisc { rate_kbit: 230 }, &base)
        .expect("the qdisc case runs");
    eprintln!(
        "{}",
        accuracy::render_markdown(std::slice::from_ref(&result), "")
    );
    assert!(result.requests.0 > 0 && result.requests.1 > 0, "{result:?}");
    // A full 800-byte queue at 230 kbit/s: about 28 ms per request.
    assert!(
        result.client_growth_us() > 5_000.0,
        "the client sees the queue: {result:?}"
    );
    assert!(
        result.attributed_growth_us() > 0.5 * result.client_growth_us(),
        "hoptrace puts it in qdisc: {result:?}"
    );
    assert!(result.ratio().is_finite());
}
