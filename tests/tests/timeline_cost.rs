//! What the request timeline's hooks cost per socket operation, and that
//! they see every one: loopback ping-pong inside a fresh network namespace
//! (bounded: 20,000 round trips of 64 bytes) without the socket tracer,
//! with it tracing this namespace, and with it filtering every event out
//! (what every other process on the node pays). Prints the figures, for the
//! tp_btf `sock:` hooks and for the `syscalls:` fallback, with the kernel
//! time of the socket programs per operation (BPF run-time statistics, on
//! only while a test holds them).

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::unix::fs::MetadataExt as _,
    time::Instant,
};

use hoptrace_common::SockKind;
use hoptrace_core::kernel::sock::{SockHooks, SockTracer};
use tests::{can_run_with_kernel_programs, in_fresh_netns};

const ROUND_TRIPS: usize = 20_000;

/// ns per round trip (2 writes, 2 reads) over `ROUND_TRIPS`.
fn ping_pong(client: &mut TcpStream, server: &mut TcpStream) -> f64 {
    let mut buf = [0u8; 64];
    let started = Instant::now();
    for _ in 0..ROUND_TRIPS {
        client.write_all(&buf).unwrap();
        server.read_exact(&mut buf).unwrap();
        server.write_all(&buf).unwrap();
        client.read_exact(&mut buf).unwrap();
    }
    started.elapsed().as_nanos() as f64 / ROUND_TRIPS as f64
}

/// This thread's network namespace inode and a connected loopback TCP
/// pair in it (client, server), without Nagle's delay.
fn loopback_pair() -> (u32, TcpStream, TcpStream) {
    let netns = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino() as u32;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    client.set_nodelay(true).unwrap();
    server.set_nodelay(true).unwrap();
    (netns, client, server)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs and kernel time (ns) of the programs `ids` so far.
fn bpf_time(ids: &BTreeSet<u32>) -> (u64, u64) {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| ids.contains(&p.id()))
        .fold((0, 0), |(n, t), p| {
            (
                n + p.run_count(),
                t + u64::try_from(p.run_time().as_nanos()).unwrap_or(u64::MAX),
            )
        })
}

#[test]
fn sock_hooks_see_every_operation_and_cost_little() {
    if !can_run_with_kernel_programs("sock_hooks_see_every_operation_and_cost_little") {
        return;
    }
    every_operation_seen(SockHooks::Auto);
}

/// The `syscalls:` fallback (kernels without `sock:sock_recv_length`,
/// forced here) sees the same operations, and a read of a file that is not
/// a socket costs its walk from descriptor to file and nothing more.
#[test]
fn syscalls_fallback_sees_every_operation() {
    if !can_run_with_kernel_programs("syscalls_fallback_sees_every_operation") {
        return;
    }
    every_operation_seen(SockHooks::Syscalls);
    file_reads_cost(SockHooks::Syscalls);
}

/// read(2) of 64 bytes from /dev/zero, `ROUND_TRIPS` times, without and
/// with the socket programs: no event, and the cost per read.
fn file_reads_cost(hooks: SockHooks) {
    let mut zero = std::fs::File::open("/dev/zero").unwrap();
    let mut buf = [0u8; 64];
    let mut reads = || {
        let started = Instant::now();
        for _ in 0..ROUND_TRIPS {
            zero.read_exact(&mut buf).unwrap();
        }
        started.elapsed().as_nanos() as f64 / ROUND_TRIPS as f64
    };
    reads(); // warm up
    let (mut base, mut traced) = (Vec::new(), Vec::new());
    let mut kernel = (0, 0);
    for _ in 0..3 {
        base.push(reads());
        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF statistics");
        let tracer = SockTracer::start(&[], hooks).expect("socket tracer, every namespace");
        let ids: BTreeSet<u32> = tracer.program_ids().into_iter().collect();
        let before = bpf_time(&ids);
        traced.push(reads());
        let after = bpf_time(&ids);
        kernel = (after.0 - before.0, after.1 - before.1);
        drop(stats);
        let capture = tracer.stop();
        let pid = std::process::id();
        assert!(
            !capture
                .events
                .iter()
                .any(|e| (e.pid_tgid >> 32) as u32 == pid),
            "a file read is no socket event"
        );
    }
    let (b, t) = (median(base), median(traced));
    eprintln!(
        "{hooks}: per read(2) of /dev/zero: untraced {b:.0} ns, traced {t:.0} ns (+{:.0} ns); \
         socket programs ran {} times, {:.0} ns each (every syscall of the machine meanwhile)",
        t - b,
        kernel.0,
        kernel.1 as f64 / kernel.0.max(1) as f64
    );
}

/// The ping-pong with the socket tracer on `hooks`: every write and read
/// seen, every write with its syscall entry, nothing seen of a namespace
/// that is not traced; prints the cost.
fn every_operation_seen(hooks: SockHooks) {
    in_fresh_netns(|| {
        let (netns, mut client, mut server) = loopback_pair();
        ping_pong(&mut client, &mut server); // warm up
        let (mut base, mut traced, mut filtered) = (Vec::new(), Vec::new(), Vec::new());
        let mut seen = None;
        let mut kernel = (0u64, 0u64);
        for _ in 0..3 {
            base.push(ping_pong(&mut client, &mut server));
            let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF statistics");
            let tracer = SockTracer::start(&[netns], hooks).expect("socket tracer");
            assert_eq!(tracer.syscalls_fallback(), hooks == SockHooks::Syscalls);
            let ids: BTreeSet<u32> = tracer.program_ids().into_iter().collect();
            let before = bpf_time(&ids);
            traced.push(ping_pong(&mut client, &mut server));
            let after = bpf_time(&ids);
            kernel = (after.0 - before.0, after.1 - before.1);
            drop(stats);
            let capture = tracer.stop();
            let sends = capture
                .events
                .iter()
                .filter(|e| e.kind == SockKind::Send as u8)
                .collect::<Vec<_>>();
            let recvs = capture
                .events
                .iter()
                .filter(|e| e.kind == SockKind::Recv as u8)
                .count();
            let timed = sends
                .iter()
                .filter(|e| e.entry_ns != 0 && e.entry_ns <= e.ts_ns)
                .count();
            seen = Some((sends.len(), recvs, timed, capture.lost));
            let tracer = SockTracer::start(&[1], hooks).expect("socket tracer, filtering");
            filtered.push(ping_pong(&mut client, &mut server));
            assert!(
                tracer.stop().events.is_empty(),
                "another namespace's filter keeps nothing"
            );
        }
        let (sends, recvs, timed, lost) = seen.unwrap();
        let (b, t, f) = (median(base), median(traced), median(filtered));
        eprintln!(
            "{hooks}: per round trip (2 writes + 2 reads): untraced {b:.0} ns, traced {t:.0} ns (+{:.0} ns, {:.1}%), \
             hooks filtering out {f:.0} ns (+{:.0} ns, {:.1}%); events: {sends} sends ({timed} with their syscall entry), {recvs} reads, {lost} lost",
            t - b,
            100.0 * (t - b) / b,
            f - b,
            100.0 * (f - b) / b
        );
        eprintln!(
            "{hooks}: socket programs ran {} times in the traced ping-pong, {:.0} ns each, {:.0} ns of kernel time per socket operation",
            kernel.0,
            kernel.1 as f64 / kernel.0.max(1) as f64,
            kernel.1 as f64 / (4 * ROUND_TRIPS) as f64
        );
        assert_eq!(lost, 0);
        assert_eq!(sends, 2 * ROUND_TRIPS, "every write seen");
        assert!(recvs >= 2 * ROUND_TRIPS, "every read seen: {recvs}");
        assert_eq!(timed, sends, "every write has its syscall entry");
    });
}

/// The two kinds of hook side by side on the same ping-pong: the tp_btf
/// `sock:` tracer and the `syscalls:` fallback see the same operations in
/// the same order (kind, bytes, socket, thread, ports), and time them
/// within microseconds of each other: the fallback's read is at the
/// syscall's exit, a little after `sock_recvmsg` returned; its write ends
/// at the syscall's exit, a little after `sock_sendmsg`, and both take the
/// write's start from its syscall entry. Prints the differences.
#[test]
fn syscalls_fallback_matches_the_sock_tracepoints() {
    if !can_run_with_kernel_programs("syscalls_fallback_matches_the_sock_tracepoints") {
        return;
    }
    in_fresh_netns(|| {
        let (netns, mut client, mut server) = loopback_pair();
        let btf = SockTracer::start(&[netns], SockHooks::Auto).expect("socket tracer, tp_btf");
        if btf.syscalls_fallback() {
            eprintln!("skipping: this kernel has no sock:sock_recv_length to compare with");
            return;
        }
        let sys =
            SockTracer::start(&[netns], SockHooks::Syscalls).expect("socket tracer, syscalls");
        ping_pong(&mut client, &mut server);
        let rw = |mut events: Vec<hoptrace_common::SockEvent>| {
            events.retain(|e| e.kind != SockKind::State as u8);
            events.sort_by_key(|e| e.ts_ns);
            events
        };
        // Stopped in reverse order: each saw the whole ping-pong.
        let (sys, btf) = (sys.stop(), btf.stop());
        assert_eq!((sys.lost, btf.lost), (0, 0));
        let (sys, btf) = (rw(sys.events), rw(btf.events));
        assert_eq!(sys.len(), btf.len(), "as many reads and writes");
        assert!(sys.len() >= 4 * ROUND_TRIPS);
        let (mut ends, mut starts) = (Vec::new(), Vec::new());
        for (s, b) in sys.iter().zip(&btf) {
            assert_eq!(
                (
                    s.kind, s.bytes, s.sk_addr, s.pid_tgid, s.sport, s.dport, s.saddr, s.daddr
                ),
                (
                    b.kind, b.bytes, b.sk_addr, b.pid_tgid, b.sport, b.dport, b.saddr, b.daddr
                ),
                "the same operation"
            );
            assert_eq!(s.comm, b.comm);
            ends.push(s.ts_ns as f64 - b.ts_ns as f64);
            // tp_btf's entry is per CPU: 0 when the thread migrated.
            if s.kind == SockKind::Send as u8 && b.entry_ns != 0 {
                starts.push(s.entry_ns as f64 - b.entry_ns as f64);
            }
        }
        let p = |v: &mut Vec<f64>, q: f64| {
            v.sort_by(f64::total_cmp);
            v[((v.len() - 1) as f64 * q) as usize]
        };
        let (end50, end99) = (p(&mut ends, 0.5), p(&mut ends, 0.99));
        let (start50, start99) = (p(&mut starts, 0.5), p(&mut starts, 0.99));
        eprintln!(
            "syscalls fallback minus tp_btf, {} operations: end p50 {end50:.0} ns, p99 {end99:.0} ns, min {:.0} ns; \
             write start p50 {start50:.0} ns, p99 {start99:.0} ns",
            ends.len(),
            ends[0]
        );
        // Both tracers' programs run in the same syscall, one after the
        // other: the fallback's end comes later, by the rest of the syscall.
        assert!(
            ends[0] >= 0.0,
            "the syscall exit is after sock_*msg returned"
        );
        assert!(end99 < 20_000.0, "within 20 µs (p99 {end99:.0} ns)");
        assert!(
            start50.abs() < 2_000.0,
            "the same syscall entry (p50 {start50:.0} ns)"
        );
    });
}
