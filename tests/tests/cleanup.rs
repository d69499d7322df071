//! Root test: `cleanup_tc_filters` removes a clsact filter left by a "crashed"
//! hoptrace (the attach is leaked with `mem::forget`) and leaves foreign filters alone.

use std::sync::mpsc;

use aya::{
    Ebpf,
    programs::{
        SchedClassifier, TcAttachType,
        tc::{NlOptions, TcAttachOptions, qdisc_add_clsact},
    },
};
use hoptrace_core::kernel::{cleanup::cleanup_tc_filters, objects::probe_object};

/// Sets up the leftover filter in a fresh namespace owned by this thread,
/// hands its namespace path to the test thread, waits for the cleanup, and
/// checks what remains.
fn namespace_side(ready: mpsc::Sender<String>, cleaned: mpsc::Receiver<()>) {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    tests::sh(&[
        "ip", "link", "add", "ht-cl0", "type", "veth", "peer", "name", "ht-cl1",
    ]);
    qdisc_add_clsact("ht-cl0").expect("clsact qdisc");
    // A foreign filter of the same kind (cls_bpf, classic bytecode, no program
    // name) that must survive. (matchall is not built into every kernel.)
    tests::sh(&[
        "tc",
        "filter",
        "add",
        "dev",
        "ht-cl0",
        "ingress",
        "pref",
        "7",
        "bpf",
        "bytecode",
        "1,6 0 0 0,",
    ]);

    // The smallest hoptrace tc program; cleanup goes by the `hoptrace_` name.
    let mut ebpf = Ebpf::load(probe_object().expect("probe object")).expect("load probe object");
    let prog: &mut SchedClassifier = ebpf
        .program_mut("hoptrace_probe_tc")
        .expect("hoptrace_probe_tc")
        .try_into()
        .expect("tc program");
    prog.load().expect("load tc program");
    let id = prog
        .attach_with_options(
            "ht-cl0",
            TcAttachType::Ingress,
            TcAttachOptions::Netlink(NlOptions::default()),
        )
        .expect("clsact attach");
    // Simulate a crash: the link is never detached.
    std::mem::forget(prog.take_link(id).expect("take link"));
    drop(ebpf);
    let before = tests::sh(&["tc", "filter", "show", "dev", "ht-cl0", "ingress"]);
    assert!(
        before.contains("hoptrace_probe_tc"),
        "leftover filter present:\n{before}"
    );
    assert!(before.contains("bytecode"), "{before}");

    let tid = nix::unistd::gettid();
    ready
        .send(format!("/proc/self/task/{tid}/ns/net"))
        .expect("send path");
    cleaned.recv().expect("cleanup done");

    let after = tests::sh(&["tc", "filter", "show", "dev", "ht-cl0", "ingress"]);
    assert!(
        !after.contains("hoptrace_"),
        "hoptrace filter removed:\n{after}"
    );
    assert!(
        after.contains("bytecode"),
        "foreign filter untouched:\n{after}"
    );
    // Running again in this (the calling thread's) namespace finds nothing.
    let again = cleanup_tc_filters(None).expect("second cleanup");
    assert!(again.removed.is_empty(), "{again}");
    assert_eq!(again.kept, 1, "{again}");
}

#[test]
fn cleanup_removes_only_hoptrace_clsact_filters() {
    if !tests::can_run_with_kernel_programs("cleanup_removes_only_hoptrace_clsact_filters") {
        return;
    }
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let side = std::thread::spawn(move || namespace_side(ready_tx, done_rx));
    let Ok(path) = ready_rx.recv() else {
        // The namespace side failed before it was ready: show its panic.
        std::panic::resume_unwind(side.join().expect_err("namespace side failed"));
    };
    let report = cleanup_tc_filters(Some(std::path::Path::new(&path)));
    done_tx.send(()).expect("signal");
    let report = report.unwrap_or_else(|e| panic!("cleanup: {e}"));
    side.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert_eq!(report.removed.len(), 1, "{report}");
    let removed = &report.removed[0];
    assert_eq!(removed.program, "hoptrace_probe_tc");
    assert_eq!(removed.ifname, "ht-cl0");
    assert_eq!(
        removed.direction,
        hoptrace_core::kernel::cleanup::Direction::Ingress
    );
    assert_eq!(
        report.kept, 1,
        "the foreign filter was seen and kept: {report}"
    );
}
