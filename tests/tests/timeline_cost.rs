//! What the request timeline's hooks cost per socket operation, and that
//! they see every one: loopback ping-pong inside a fresh network namespace
//! (bounded: 20,000 round trips of 64 bytes) without the socket tracer,
//! with it tracing this namespace, and with it filtering every event out
//! (what every other process on the node pays). Prints the figures.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::unix::fs::MetadataExt as _,
    time::Instant,
};

use hoptrace_common::SockKind;
use hoptrace_core::kernel::sock::SockTracer;
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn sock_hooks_see_every_operation_and_cost_little() {
    if !can_run_with_kernel_programs("sock_hooks_see_every_operation_and_cost_little") {
        return;
    }
    in_fresh_netns(|| {
        let netns = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino() as u32;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.set_nodelay(true).unwrap();
        server.set_nodelay(true).unwrap();
        ping_pong(&mut client, &mut server); // warm up
        let (mut base, mut traced, mut filtered) = (Vec::new(), Vec::new(), Vec::new());
        let mut seen = None;
        for _ in 0..3 {
            base.push(ping_pong(&mut client, &mut server));
            let tracer = SockTracer::start(&[netns]).expect("socket tracer");
            traced.push(ping_pong(&mut client, &mut server));
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
            let tracer = SockTracer::start(&[1]).expect("socket tracer, filtering");
            filtered.push(ping_pong(&mut client, &mut server));
            assert!(
                tracer.stop().events.is_empty(),
                "another namespace's filter keeps nothing"
            );
        }
        let (sends, recvs, timed, lost) = seen.unwrap();
        let (b, t, f) = (median(base), median(traced), median(filtered));
        eprintln!(
            "per round trip (2 writes + 2 reads): untraced {b:.0} ns, traced {t:.0} ns (+{:.0} ns, {:.1}%), \
             hooks filtering out {f:.0} ns (+{:.0} ns, {:.1}%); events: {sends} sends ({timed} with their syscall entry), {recvs} reads, {lost} lost",
            t - b,
            100.0 * (t - b) / b,
            f - b,
            100.0 * (f - b) / b
        );
        assert_eq!(lost, 0);
        assert_eq!(sends, 2 * ROUND_TRIPS, "every write seen");
        assert!(recvs >= 2 * ROUND_TRIPS, "every read seen: {recvs}");
        assert_eq!(timed, sends, "every write has its syscall entry");
    });
}
