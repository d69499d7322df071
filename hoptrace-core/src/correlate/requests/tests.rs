use hoptrace_common::{SockEvent, SockKind, sock::tcp_state};

use super::*;

const CLIENT: [u8; 4] = [10, 244, 0, 2];
const PROXY: [u8; 4] = [10, 244, 1, 3];
const BACKEND: [u8; 4] = [10, 244, 1, 2];
const SERVICE: [u8; 4] = [10, 96, 0, 10];

fn ev(
    kind: SockKind,
    ts_us: u64,
    sk: u64,
    local: Endpoint,
    remote: Endpoint,
    tid: u32,
    comm: &str,
) -> SockEvent {
    let mut e = SockEvent::zeroed();
    e.ts_ns = ts_us * 1000;
    e.pid_tgid = (1u64 << 32) | u64::from(tid);
    e.sk_addr = sk;
    e.family = 2;
    e.kind = kind as u8;
    e.bytes = if kind == SockKind::State { 0 } else { 100 };
    e.saddr = local.0;
    e.sport = local.1;
    e.daddr = remote.0;
    e.dport = remote.1;
    e.comm[..comm.len()].copy_from_slice(comm.as_bytes());
    e
}

fn state(ts_us: u64, sk: u64, local: Endpoint, remote: Endpoint, old: u8, new: u8) -> SockEvent {
    let mut e = ev(SockKind::State, ts_us, sk, local, remote, 0, "swapper");
    e.old_state = old;
    e.new_state = new;
    e
}

fn opts() -> JoinOptions {
    let mut o = JoinOptions::default();
    o.proxies.push(BUILTIN_PROXY_COMM.into());
    o
}

/// One proxied request at `t` µs on client port `cport` and proxy
/// upstream port `uport`, with the proxy holding it `hold` µs; the
/// backend serves in 50 µs; every leg takes 30 µs.
fn proxied(t: u64, cport: u16, uport: u16, hold: u64, ptid: u32) -> Vec<SockEvent> {
    proxied_read_at(t, t + 30, cport, uport, hold, ptid)
}

/// As [`proxied`], with the client's write at `t` and the proxy's read at
/// `read` µs (a saturated proxy reads late, and not in the clients' order).
fn proxied_read_at(
    t: u64,
    read: u64,
    cport: u16,
    uport: u16,
    hold: u64,
    ptid: u32,
) -> Vec<SockEvent> {
    use SockKind::{Recv, Send};
    // The proxy's side, as if the write had been at `base`.
    let base = read - 30;
    let c = (CLIENT, cport);
    let pd = (PROXY, 8081);
    let pu = (PROXY, uport);
    let svc = (SERVICE, 80);
    let b = (BACKEND, 8080);
    let csk = 0x1000 + u64::from(cport);
    let pdsk = 0x2000 + u64::from(cport);
    let pusk = 0x3000 + u64::from(uport);
    let bsk = 0x4000 + u64::from(uport);
    vec![
        ev(Send, t, csk, c, pd, 7, "hoptrace-netns"),
        ev(Recv, read, pdsk, pd, c, ptid, BUILTIN_PROXY_COMM),
        ev(
            Send,
            base + 30 + hold,
            pusk,
            pu,
            svc,
            ptid,
            BUILTIN_PROXY_COMM,
        ),
        ev(Recv, base + 60 + hold, bsk, b, pu, 9, "hoptrace"),
        ev(Send, base + 110 + hold, bsk, b, pu, 9, "hoptrace"),
        ev(
            Recv,
            base + 140 + hold,
            pusk,
            pu,
            svc,
            ptid,
            BUILTIN_PROXY_COMM,
        ),
        ev(
            Send,
            base + 150 + hold,
            pdsk,
            pd,
            c,
            ptid,
            BUILTIN_PROXY_COMM,
        ),
        ev(Recv, base + 180 + hold, csk, c, pd, 7, "hoptrace-netns"),
    ]
}

/// A journey of one packet with payload from `src` to `dst` on this node:
/// 15 µs from `start_us`, 10 µs of it `cni`, in the reading socket after
/// 10 µs when `arrival` (else it left the node).
fn payload_journey(src: Endpoint, dst: Endpoint, start_us: u64, arrival: bool) -> LegJourney {
    LegJourney {
        src,
        dst,
        start_ns: start_us * 1000,
        end_ns: (start_us + 15) * 1000,
        arrival_ns: arrival.then_some((start_us + 10) * 1000),
        categories: vec![(Category::Cni, 10_000)],
        handshake: false,
        seq: 0,
        dropped: false,
    }
}

fn with_states(mut events: Vec<SockEvent>) -> Vec<SockEvent> {
    // Every end learns its side from its state change.
    let mut extra = Vec::new();
    for e in &events {
        let local = (e.saddr, e.sport);
        let remote = (e.daddr, e.dport);
        let active = local.1 >= 32768;
        if extra.iter().any(|x: &SockEvent| x.sk_addr == e.sk_addr) {
            continue;
        }
        let old = if active {
            tcp_state::SYN_SENT
        } else {
            tcp_state::SYN_RECV
        };
        extra.push(state(
            e.ts_ns / 1000 - 1,
            e.sk_addr,
            local,
            remote,
            old,
            tcp_state::ESTABLISHED,
        ));
    }
    events.extend(extra);
    events
}

#[test]
fn a_proxied_request_is_one_chain_of_contiguous_segments() {
    let events = proxied(1000, 40000, 50000, 2000, 5);
    let joined = join(&events, &[], &opts());
    assert_eq!(joined.seen, 1);
    assert_eq!(joined.requests.len(), 1);
    let r = &joined.requests[0];
    assert!(r.proxied);
    let sum: u64 = r.segments.iter().map(|s| s.duration_ns).sum();
    assert_eq!(sum, r.end_ns - r.start_ns);
    assert_eq!(r.end_ns - r.start_ns, 2_180_000);
    assert_eq!(
        r.segment_ns(segment::PROXY_REQUEST, Category::IngressProxy),
        2_000_000
    );
    assert_eq!(
        r.segment_ns(segment::PROXY_RESPONSE, Category::IngressProxy),
        10_000
    );
    assert_eq!(
        r.segment_ns(segment::APP_SERVICE, Category::Application),
        50_000
    );
    let cats = r.category_ns();
    assert_eq!(cats[&Category::IngressProxy], 2_010_000);
    assert_eq!(cats[&Category::KernelOther], 120_000);
}

#[test]
fn concurrent_requests_on_one_proxy_thread_join_in_order() {
    // Two connections, one proxy thread; the second request arrives while
    // the first is held.
    let mut events = proxied(1000, 40000, 50000, 500, 5);
    events.extend(proxied(1100, 40001, 50001, 500, 5));
    let events = with_states(events);
    let joined = join(&events, &[], &opts());
    assert_eq!(joined.seen, 2);
    assert_eq!(joined.requests.len(), 2);
    for r in &joined.requests {
        assert_eq!(
            r.segment_ns(segment::PROXY_REQUEST, Category::IngressProxy),
            500_000
        );
        assert_eq!(r.end_ns - r.start_ns, 680_000);
    }
}

#[test]
fn a_saturated_proxy_reading_out_of_the_clients_order_joins_each() {
    // Three connections write at 1000, 1010, 1020 µs; the proxy's single
    // thread reads them late and in another order (B, A, C), each
    // followed by its upstream write 10 µs later. Upstream writes are
    // the thread's in the order of its reads, not of the clients' writes.
    let mut events = proxied_read_at(1010, 3000, 40001, 50001, 10, 5);
    events.extend(proxied_read_at(1000, 3020, 40000, 50000, 10, 5));
    events.extend(proxied_read_at(1020, 3040, 40002, 50002, 10, 5));
    let joined = join(&with_states(events), &[], &opts());
    assert_eq!(joined.seen, 3);
    assert_eq!(joined.requests.len(), 3, "every request joined");
    for r in &joined.requests {
        assert_eq!(
            r.segment_ns(segment::PROXY_REQUEST, Category::IngressProxy),
            10_000,
            "each request's own hold: {r:?}"
        );
        assert_eq!(
            r.segment_ns(segment::PROXY_RESPONSE, Category::IngressProxy),
            10_000
        );
    }
}

#[test]
fn keep_alive_requests_on_one_connection_join_each() {
    let mut events = proxied(1000, 40000, 50000, 100, 5);
    events.extend(proxied(5000, 40000, 50000, 300, 5));
    let joined = join(&events, &[], &opts());
    assert_eq!(joined.seen, 2);
    let holds: Vec<u64> = joined
        .requests
        .iter()
        .map(|r| r.segment_ns(segment::PROXY_REQUEST, Category::IngressProxy))
        .collect();
    assert_eq!(holds, vec![100_000, 300_000]);
}

#[test]
fn a_hand_off_to_another_thread_is_not_joined() {
    let mut events = proxied(1000, 40000, 50000, 100, 5);
    // The upstream write (and the rest) happen on thread 6.
    for e in events.iter_mut().skip(2) {
        if e.comm_str() == BUILTIN_PROXY_COMM {
            e.pid_tgid = (1 << 32) | 6;
        }
    }
    let joined = join(&events, &[], &opts());
    assert_eq!(joined.seen, 1);
    assert!(joined.requests.is_empty());
}

#[test]
fn without_proxy_the_application_serves_directly() {
    use SockKind::{Recv, Send};
    let c = (CLIENT, 40000);
    let svc = (SERVICE, 80);
    let b = (BACKEND, 8080);
    let events = vec![
        ev(Send, 100, 1, c, svc, 7, "hoptrace-netns"),
        ev(Recv, 130, 2, b, c, 9, "hoptrace"),
        ev(Send, 200, 2, b, c, 9, "hoptrace"),
        ev(Recv, 240, 1, c, svc, 7, "hoptrace-netns"),
    ];
    let joined = join(&events, &[], &opts());
    assert_eq!(joined.requests.len(), 1);
    let r = &joined.requests[0];
    assert!(!r.proxied);
    let cats = r.category_ns();
    assert!(!cats.contains_key(&Category::IngressProxy));
    assert_eq!(cats[&Category::Application], 70_000);
}

#[test]
fn a_leg_is_split_into_datapath_stack_and_socket_queue() {
    use SockKind::{Recv, Send};
    let c = (CLIENT, 40000);
    let svc = (SERVICE, 80);
    let b = (BACKEND, 8080);
    let events = vec![
        ev(Send, 100, 1, c, svc, 7, "hoptrace-netns"),
        ev(Recv, 200, 2, b, c, 9, "hoptrace"),
        ev(Send, 300, 2, b, c, 9, "hoptrace"),
        ev(Recv, 400, 1, c, svc, 7, "hoptrace-netns"),
    ];
    // The request's packet: 30 µs of datapath, at the socket at 140 µs.
    let journeys = vec![LegJourney {
        src: c,
        dst: svc,
        start_ns: 105_000,
        end_ns: 195_000,
        arrival_ns: Some(140_000),
        categories: vec![(Category::KubeProxy, 10_000), (Category::Cni, 20_000)],
        handshake: false,
        seq: 0,
        dropped: false,
    }];
    let joined = join(&events, &journeys, &opts());
    let r = &joined.requests[0];
    assert_eq!(
        r.segment_ns(segment::SOCKET_QUEUE, Category::Application),
        60_000
    );
    let cats = r.category_ns();
    assert_eq!(cats[&Category::KubeProxy], 10_000);
    assert_eq!(cats[&Category::Cni], 20_000);
    // 100 µs leg = 30 datapath + 60 queue + 10 stack; the response leg
    // (no journey) is all stack.
    assert_eq!(cats[&Category::KernelOther], 10_000 + 100_000);
    let sum: u64 = r.segments.iter().map(|s| s.duration_ns).sum();
    assert_eq!(sum, 300_000);
}

#[test]
fn proxy_names_match_truncated_comm() {
    let mut o = JoinOptions::default();
    o.proxies.push("a-very-long-proxy-name".into());
    assert!(o.is_proxy("a-very-long-pro"));
    assert!(o.is_proxy("nginx"));
    assert!(!o.is_proxy("nginx2"));
}

#[test]
fn the_clients_own_times_extend_each_request_once() {
    let mut events = proxied(1000, 40000, 50000, 100, 5);
    events.extend(proxied(1050, 40001, 50001, 100, 5));
    let events = with_states(events);
    let mut joined = join(&events, &[], &opts());
    assert_eq!(joined.requests.len(), 2);
    // Intended 200 µs and 150 µs before the writes; complete 20 µs after the reads.
    let times = [
        (800_000, 1_300_000),
        (900_000, 1_350_000),
        (100_000, 150_000),
    ];
    assert_eq!(add_client_times(&mut joined.requests, &times), 2);
    let mut waits: Vec<u64> = joined
        .requests
        .iter()
        .map(|r| r.segment_ns(segment::CLIENT_WAIT, Category::Client))
        .collect();
    waits.sort_unstable();
    assert_eq!(waits, vec![150_000, 200_000]);
    for r in &joined.requests {
        let sum: u64 = r.segments.iter().map(|s| s.duration_ns).sum();
        assert_eq!(sum, r.end_ns - r.start_ns);
        assert_eq!(
            r.segment_ns(segment::CLIENT_PROCESS, Category::Client),
            20_000
        );
    }
}

/// The load generator queues requests per connection: while connection A
/// waits 200 ms for a retransmission, request 2 (due at 20 ms, A's) waits
/// behind it, and request 3 (due at 30 ms, B's) is served at once. Request
/// 3 must take its own record, not request 2's (intended earlier,
/// completed later), which request 2 needs.
#[test]
fn a_stalled_connections_queued_records_stay_with_their_requests() {
    const MS: u64 = 1_000_000;
    let request = |write: u64, end: u64| Request {
        start_ns: write,
        write_ns: write,
        end_ns: end,
        proxied: false,
        segments: vec![RequestSegment {
            name: segment::STACK,
            category: Category::KernelOther,
            start_ns: write,
            duration_ns: end - write,
        }],
    };
    // (write, read): 0 on A stalls; 1 and 3 on B; 2 on A after the stall.
    let mut requests = vec![
        request(0, 200 * MS),
        request(10 * MS, 10 * MS + 100_000),
        request(200 * MS + 20_000, 200 * MS + 200_000),
        request(30 * MS, 30 * MS + 100_000),
    ];
    // (intended, complete): 10 µs after each read.
    let times = [
        (0, 200 * MS + 10_000),
        (10 * MS, 10 * MS + 110_000),
        (20 * MS, 200 * MS + 210_000),
        (30 * MS, 30 * MS + 110_000),
    ];
    assert_eq!(add_client_times(&mut requests, &times), 4);
    let intended: Vec<u64> = requests.iter().map(|r| r.start_ns).collect();
    assert_eq!(intended, vec![0, 10 * MS, 20 * MS, 30 * MS]);
    for r in &requests {
        assert_eq!(
            r.segment_ns(segment::CLIENT_PROCESS, Category::Client),
            10_000,
            "{r:?}"
        );
    }
}

/// A client's new connection to a service (SYN sent at 50 µs, established
/// at 90 µs) carrying one request per write time (µs): the backend reads
/// it 100 µs later and answers 100 µs after that, the client reads the
/// answer 100 µs later.
fn new_connection(writes_us: &[u64]) -> Vec<SockEvent> {
    use SockKind::{Recv, Send};
    let c = (CLIENT, 40000);
    let svc = (SERVICE, 80);
    let b = (BACKEND, 8080);
    let mut events = vec![
        state(
            50,
            1,
            (CLIENT, 0),
            svc,
            tcp_state::CLOSE,
            tcp_state::SYN_SENT,
        ),
        state(90, 1, c, svc, tcp_state::SYN_SENT, tcp_state::ESTABLISHED),
        state(70, 2, b, c, tcp_state::SYN_RECV, tcp_state::ESTABLISHED),
    ];
    for &w in writes_us {
        events.extend([
            ev(Send, w, 1, c, svc, 7, "hoptrace-netns"),
            ev(Recv, w + 100, 2, b, c, 9, "hoptrace"),
            ev(Send, w + 200, 2, b, c, 9, "hoptrace"),
            ev(Recv, w + 300, 1, c, svc, 7, "hoptrace-netns"),
        ]);
    }
    events
}

/// A request on a new connection starts when the client's connect began:
/// the SYN's and SYN-ACK's datapath (kube-proxy's walk of a new
/// connection) is in the request's categories, the rest of the connect is
/// `client.connect`, and the handshake packets stay out of the request's
/// own legs (the SYN starts within the legs' slack of the write).
#[test]
fn a_new_connections_handshake_is_part_of_its_first_request() {
    let (c, svc, b) = ((CLIENT, 40000), (SERVICE, 80), (BACKEND, 8080));
    let events = new_connection(&[100, 500]);
    let syn = LegJourney {
        src: c,
        dst: svc,
        start_ns: 52_000,
        end_ns: 62_000,
        arrival_ns: None,
        categories: vec![(Category::KubeProxy, 8_000), (Category::Cni, 2_000)],
        handshake: true,
        seq: 0,
        dropped: false,
    };
    let syn_ack = LegJourney {
        src: b,
        dst: c,
        start_ns: 70_000,
        end_ns: 85_000,
        categories: vec![(Category::KubeProxy, 5_000), (Category::Cni, 3_000)],
        ..syn.clone()
    };
    let joined = join(&events, &[syn, syn_ack], &opts());
    assert_eq!(joined.requests.len(), 2);
    let r = &joined.requests[0];
    assert_eq!(r.start_ns, 50_000, "the request starts at the connect");
    let cats = r.category_ns();
    assert_eq!(cats[&Category::KubeProxy], 13_000);
    assert_eq!(cats[&Category::Cni], 5_000);
    assert_eq!(
        r.segment_ns(segment::CLIENT_CONNECT, Category::Client),
        50_000 - 18_000
    );
    // The request's own legs (no journey of their own) are all stack.
    assert_eq!(cats[&Category::KernelOther], 200_000);
    let sum: u64 = r.segments.iter().map(|s| s.duration_ns).sum();
    assert_eq!(sum, r.end_ns - r.start_ns);
    // The second request on the same connection has no connect.
    let second = &joined.requests[1];
    assert_eq!(second.start_ns, 500_000);
    assert!(!second.category_ns().contains_key(&Category::KubeProxy));
    assert_eq!(
        second.segment_ns(segment::CLIENT_CONNECT, Category::Client),
        0
    );
}

/// A keep-alive connection the client opened before its first request was
/// due: the connect is not part of that request's latency, so with the
/// client's own record the request starts at its write again.
#[test]
fn a_connect_ahead_of_the_schedule_is_dropped_with_the_clients_record() {
    let events = new_connection(&[1000]);
    let mut joined = join(&events, &[], &opts());
    assert_eq!(joined.requests[0].start_ns, 50_000);
    // Intended at 900 µs, after the connect (50-90 µs); complete at 1,310.
    assert_eq!(
        add_client_times(&mut joined.requests, &[(900_000, 1_310_000)]),
        1
    );
    let r = &joined.requests[0];
    assert_eq!(r.start_ns, 900_000);
    assert_eq!(r.segment_ns(segment::CLIENT_CONNECT, Category::Client), 0);
    assert_eq!(
        r.segment_ns(segment::CLIENT_WAIT, Category::Client),
        100_000
    );
    let sum: u64 = r.segments.iter().map(|s| s.duration_ns).sum();
    assert_eq!(sum, r.end_ns - r.start_ns);
    // Intended before the connect (a new connection per request): kept.
    let mut joined = join(&events, &[], &opts());
    assert_eq!(
        add_client_times(&mut joined.requests, &[(40_000, 1_310_000)]),
        1
    );
    let r = &joined.requests[0];
    assert_eq!(r.start_ns, 40_000);
    assert_eq!(
        r.segment_ns(segment::CLIENT_CONNECT, Category::Client),
        950_000
    );
    assert_eq!(r.segment_ns(segment::CLIENT_WAIT, Category::Client), 10_000);
}

/// In a node's view (no client record), a connection idle for longer than
/// `connect_idle_ns` between its handshake and its first write was opened
/// ahead: its connect stays out of the request; one written at once keeps it.
#[test]
fn a_connect_opened_ahead_is_not_part_of_the_request_in_a_nodes_view() {
    let node = JoinOptions {
        connect_idle_ns: Some(1_000_000),
        ..opts()
    };
    // Established at 90 µs; written at 2,000 µs (idle 1.91 ms).
    let joined = join(&new_connection(&[2000]), &[], &node);
    assert_eq!(joined.requests[0].start_ns, 2_000_000);
    assert_eq!(
        joined.requests[0].segment_ns(segment::CLIENT_CONNECT, Category::Client),
        0
    );
    // Written at 100 µs (idle 10 µs): the connect is the request's.
    let joined = join(&new_connection(&[100]), &[], &node);
    assert_eq!(joined.requests[0].start_ns, 50_000);
}

/// A leg whose packets have no delivery hop (read after the correlator's
/// idle timeout, or coalesced into an skb already queued) waits in the
/// socket from its packets' last hop; a dropped packet's end is not an
/// arrival.
#[test]
fn without_a_delivery_hop_the_wait_starts_at_the_last_hop() {
    use SockKind::{Recv, Send};
    let c = (CLIENT, 40000);
    let svc = (SERVICE, 80);
    let b = (BACKEND, 8080);
    let events = vec![
        ev(Send, 100, 1, c, svc, 7, "hoptrace-netns"),
        ev(Recv, 80_000, 2, b, c, 9, "hoptrace"),
        ev(Send, 80_100, 2, b, c, 9, "hoptrace"),
        ev(Recv, 80_200, 1, c, svc, 7, "hoptrace-netns"),
    ];
    let journey = LegJourney {
        src: c,
        dst: svc,
        start_ns: 105_000,
        end_ns: 140_000,
        arrival_ns: None,
        categories: vec![(Category::Cni, 30_000)],
        handshake: false,
        seq: 0,
        dropped: false,
    };
    let joined = join(&events, std::slice::from_ref(&journey), &opts());
    let r = &joined.requests[0];
    // 79.9 ms leg: 30 µs datapath, 10 µs stack, the rest waiting.
    assert_eq!(
        r.segment_ns(segment::SOCKET_QUEUE, Category::Application),
        79_860_000
    );
    let dropped = LegJourney {
        seq: 0,
        dropped: true,
        ..journey
    };
    let joined = join(&events, &[dropped], &opts());
    assert_eq!(
        joined.requests[0].segment_ns(segment::SOCKET_QUEUE, Category::Application),
        0
    );
}

/// One proxied request (the proxy holds it 500 µs) without its client's
/// socket events (the client is another machine), the request's journey
/// on this node (10-25 µs, at the proxy's socket at 20 µs) and the
/// response's (`response_us`, leaving through the uplink), for a node's
/// view (`remote_peers`). `write_returns_us`: when the proxy's downstream
/// write (entered at 1650 µs) returned, if later than it began.
fn without_its_client(
    response_us: (u64, u64),
    write_returns_us: Option<u64>,
) -> (Vec<SockEvent>, Vec<LegJourney>, JoinOptions) {
    let c = (CLIENT, 40000);
    let pd = (PROXY, 8081);
    let mut events: Vec<SockEvent> = proxied(1000, 40000, 50000, 500, 5)
        .into_iter()
        .filter(|e| e.comm_str() != "hoptrace-netns")
        .collect();
    if let Some(ret) = write_returns_us {
        let write = events
            .iter_mut()
            .find(|e| e.kind == SockKind::Send as u8 && e.sport == 8081)
            .unwrap();
        write.entry_ns = write.ts_ns;
        write.ts_ns = ret * 1000;
    }
    let request = LegJourney {
        src: c,
        dst: pd,
        start_ns: 1_010_000,
        end_ns: 1_025_000,
        arrival_ns: Some(1_020_000),
        categories: vec![(Category::Cni, 10_000)],
        handshake: false,
        seq: 0,
        dropped: false,
    };
    let response = LegJourney {
        src: pd,
        dst: c,
        start_ns: response_us.0 * 1000,
        end_ns: response_us.1 * 1000,
        arrival_ns: None,
        ..request.clone()
    };
    let node = JoinOptions {
        remote_peers: true,
        ..opts()
    };
    (with_states(events), vec![request, response], node)
}

/// A node's view of a request whose client is on another machine: the
/// client's socket events are missing, so the proxy's downstream end has
/// no peer. With `remote_peers` a stand-in client writes when the
/// request's packets' first journey here began and reads when the
/// response's last journey here ended; without it nothing is joined.
#[test]
fn a_client_this_kernel_does_not_see_is_stood_in_for() {
    // The response leaves through the uplink 20 µs after the proxy's write.
    let (events, journeys, node) = without_its_client((1655, 1670), None);
    assert_eq!(join(&events, &[], &opts()).requests.len(), 0);
    let joined = join(&events, &journeys, &node);
    assert_eq!(joined.seen, 1);
    assert_eq!(joined.requests.len(), 1);
    let r = &joined.requests[0];
    assert_eq!((r.start_ns, r.end_ns), (1_010_000, 1_670_000));
    assert_eq!(
        r.segment_ns(segment::PROXY_REQUEST, Category::IngressProxy),
        500_000
    );
    assert_eq!(
        r.segment_ns(segment::SOCKET_QUEUE, Category::IngressProxy),
        10_000
    );
    assert_eq!(r.category_ns()[&Category::Cni], 20_000);
    let sum: u64 = r.segments.iter().map(|s| s.duration_ns).sum();
    assert_eq!(sum, r.end_ns - r.start_ns);
}

/// A node's view of a proxy whose backend is on another machine: the
/// backend's socket events are missing, so the proxy's upstream end has no
/// peer. With `remote_peers` the upstream round trip is this node's
/// datapath of both directions, `app.remote`, and the response's wait in
/// the proxy's socket; without it the request is not joined.
#[test]
fn a_backend_this_kernel_does_not_see_is_one_round_trip() {
    let pu = (PROXY, 50000);
    let svc = (SERVICE, 80);
    let events: Vec<SockEvent> = proxied(1000, 40000, 50000, 500, 5)
        .into_iter()
        .filter(|e| e.comm_str() != "hoptrace")
        .collect();
    let events = with_states(events);
    assert_eq!(join(&events, &[], &opts()).requests.len(), 0);
    // Upstream write at 1,530 µs, the proxy's read of the response at
    // 1,640 µs. The request leaves in 10 µs of cni; the response (from the
    // backend's address, after DNAT) arrives with 5 µs of cni and reaches
    // the proxy's socket at 1,620 µs.
    let request = LegJourney {
        src: pu,
        dst: svc,
        start_ns: 1_531_000,
        end_ns: 1_541_000,
        arrival_ns: None,
        categories: vec![(Category::Cni, 10_000)],
        handshake: false,
        seq: 0,
        dropped: false,
    };
    let response = LegJourney {
        src: (BACKEND, 8080),
        dst: pu,
        start_ns: 1_612_000,
        end_ns: 1_625_000,
        arrival_ns: Some(1_620_000),
        categories: vec![(Category::Cni, 5_000)],
        ..request.clone()
    };
    let node = JoinOptions {
        remote_peers: true,
        ..opts()
    };
    let joined = join(&events, &[request, response], &node);
    assert_eq!(joined.requests.len(), 1);
    let r = &joined.requests[0];
    // 110 µs round trip: 15 µs datapath, 20 µs waiting, 75 µs remote.
    assert_eq!(
        r.segment_ns(segment::APP_REMOTE, Category::Application),
        75_000
    );
    assert_eq!(
        r.segment_ns(segment::SOCKET_QUEUE, Category::IngressProxy),
        20_000
    );
    assert_eq!(r.category_ns()[&Category::Cni], 15_000);
    assert_eq!(
        r.segment_ns(segment::PROXY_RESPONSE, Category::IngressProxy),
        10_000
    );
    let sum: u64 = r.segments.iter().map(|s| s.duration_ns).sum();
    assert_eq!(sum, r.end_ns - r.start_ns);
}

#[test]
fn a_proxy_forwarding_out_of_its_read_order_joins_each_to_its_own_exchange() {
    // One proxy thread reads A (3000 µs), then B (3010 µs), but forwards
    // B first (hold 10 µs: upstream write 3020) and A late (hold 200 µs:
    // 3200). B's response is written downstream at 3140, before A's
    // upstream exchange began. Taking upstream writes in read order gave
    // A B's exchange and left B none (1 of 2 joined, A's hold 20 µs).
    let mut events = proxied_read_at(1000, 3000, 40000, 50000, 200, 5);
    events.extend(proxied_read_at(1010, 3010, 40001, 50001, 10, 5));
    let joined = join(&with_states(events), &[], &opts());
    assert_eq!(joined.seen, 2);
    assert_eq!(joined.requests.len(), 2, "every request joined");
    let mut holds: Vec<u64> = joined
        .requests
        .iter()
        .map(|r| r.segment_ns(segment::PROXY_REQUEST, Category::IngressProxy))
        .collect();
    holds.sort_unstable();
    assert_eq!(holds, [10_000, 200_000], "each request's own hold");
    for r in &joined.requests {
        let sum: u64 = r.segments.iter().map(|s| s.duration_ns).sum();
        assert_eq!(sum, r.end_ns - r.start_ns, "contiguous: {r:?}");
    }
}

/// The stand-in client reads when the response's last journey here ended,
/// even before the proxy's write returned: a veth and a tunnel transmit
/// inside `sendmsg`, and the rest of the proxy's call is not the
/// request's. Measured on a lab node's view (`lab --node-view node1`)
/// before: 35 µs per request of the proxy's own `sendmsg` shown as the
/// client waiting to be read.
#[test]
fn a_stand_in_client_reads_when_the_response_left_the_node() {
    // The proxy's downstream write entered at 1650 µs and returned at
    // 1690; the response left through the uplink at 1665 µs, inside it.
    let (events, journeys, node) = without_its_client((1652, 1665), Some(1690));
    let joined = join(&events, &journeys, &node);
    assert_eq!(joined.requests.len(), 1);
    let r = &joined.requests[0];
    assert_eq!((r.start_ns, r.end_ns), (1_010_000, 1_665_000));
    assert_eq!(
        r.segment_ns(segment::SOCKET_QUEUE, Category::Client),
        0,
        "no wait to be read after the response left: {r:?}"
    );
    let sum: u64 = r.segments.iter().map(|s| s.duration_ns).sum();
    assert_eq!(sum, r.end_ns - r.start_ns);
}

/// Two requests on one keep-alive connection whose client this kernel
/// does not see: the second's stand-in write is its own packets' arrival,
/// not the first request's, whose journey began 140 µs before the proxy
/// wrote the first response (within a leg's 200 µs slack). Found on a lab
/// node's view (`lab --node-view node1`, 8 connections at 500/s): 16 ms,
/// one gap of the connection, added to some requests as `stack`.
#[test]
fn a_stand_in_client_on_a_keep_alive_connection_writes_each_request_anew() {
    let c = (CLIENT, 40000);
    let pd = (PROXY, 8081);
    let mut events: Vec<SockEvent> = proxied(1000, 40000, 50000, 0, 5);
    events.extend(proxied(2000, 40000, 50000, 0, 5));
    events.retain(|e| e.comm_str() != "hoptrace-netns");
    let journeys = [
        payload_journey(c, pd, 1010, true),
        payload_journey(pd, c, 1155, false),
        payload_journey(c, pd, 2010, true),
        payload_journey(pd, c, 2155, false),
    ];
    let node = JoinOptions {
        remote_peers: true,
        ..opts()
    };
    let joined = join(&with_states(events), &journeys, &node);
    assert_eq!(joined.requests.len(), 2);
    for r in &joined.requests {
        assert_eq!(r.end_ns - r.start_ns, 160_000, "{r:?}");
    }
}

/// A node's view of a client pod whose service runs on other nodes: the
/// proxy's and the backend's socket events are missing, so the client's
/// end has no peer. With `remote_peers` each request is one round trip:
/// this node's datapath of both directions, the response's wait in the
/// client's socket and `app.remote`; without it nothing is joined.
#[test]
fn a_server_this_kernel_does_not_see_is_one_round_trip() {
    let c = (CLIENT, 40000);
    let pd = (PROXY, 8081);
    let events: Vec<SockEvent> = proxied(1000, 40000, 50000, 500, 5)
        .into_iter()
        .filter(|e| e.comm_str() == "hoptrace-netns")
        .collect();
    let events = with_states(events);
    assert_eq!(join(&events, &[], &opts()).requests.len(), 0);
    // The client writes at 1000 µs and reads at 1680: the request leaves
    // at 1002-1017, the response arrives at 1650 and is in its socket at
    // 1660.
    let journeys = [
        payload_journey(c, pd, 1002, false),
        payload_journey(pd, c, 1650, true),
    ];
    let node = JoinOptions {
        remote_peers: true,
        ..opts()
    };
    let joined = join(&events, &journeys, &node);
    assert_eq!((joined.seen, joined.requests.len()), (1, 1));
    let r = &joined.requests[0];
    assert_eq!((r.start_ns, r.end_ns), (1_000_000, 1_680_000));
    assert_eq!(r.category_ns()[&Category::Cni], 20_000);
    assert_eq!(
        r.segment_ns(segment::SOCKET_QUEUE, Category::Client),
        20_000
    );
    assert_eq!(
        r.segment_ns(segment::APP_REMOTE, Category::Application),
        640_000
    );
    let sum: u64 = r.segments.iter().map(|s| s.duration_ns).sum();
    assert_eq!(sum, r.end_ns - r.start_ns);
}

/// A request served directly (no proxy) whose response the backend sent
/// at 200 µs, lost, and retransmitted at `rtx_us` (its end's
/// `tcp_retransmit_skb`); the retransmitted packet's journey reaches the
/// client's socket 30 µs later and the client reads it 20 µs after that.
/// `extra`: more events (retransmissions elsewhere).
fn lost_response(rtx_us: Option<u64>, extra: Vec<SockEvent>) -> (Vec<SockEvent>, Vec<LegJourney>) {
    use SockKind::{Recv, Retransmit, Send};
    let c = (CLIENT, 40000);
    let svc = (SERVICE, 80);
    let b = (BACKEND, 8080);
    let resent = rtx_us.unwrap_or(200);
    let mut events = vec![
        ev(Send, 100, 1, c, svc, 7, "hoptrace-netns"),
        ev(Recv, 130, 2, b, c, 9, "hoptrace"),
        ev(Send, 200, 2, b, c, 9, "hoptrace"),
        ev(Recv, resent + 50, 1, c, svc, 7, "hoptrace-netns"),
    ];
    if let Some(t) = rtx_us {
        events.push(ev(Retransmit, t, 2, b, c, 0, "swapper/1"));
    }
    events.extend(extra);
    let journeys = vec![LegJourney {
        src: b,
        dst: c,
        start_ns: (resent + 5) * 1000,
        end_ns: (resent + 40) * 1000,
        arrival_ns: Some((resent + 30) * 1000),
        categories: vec![(Category::Cni, 10_000)],
        handshake: false,
        seq: 0,
        dropped: false,
    }];
    (events, journeys)
}

fn sums_to_duration(r: &Request) {
    let sum: u64 = r.segments.iter().map(|s| s.duration_ns).sum();
    assert_eq!(
        sum,
        r.end_ns - r.start_ns,
        "segments sum to the request: {r:?}"
    );
}

#[test]
fn a_retransmission_is_taken_out_of_the_legs_stack() {
    // Lost at 200 µs, retransmitted at 200_200 µs (an RTO of 200 ms).
    let (events, journeys) = lost_response(Some(200_200), Vec::new());
    let joined = join(&events, &journeys, &opts());
    assert_eq!(joined.requests.len(), 1);
    let r = &joined.requests[0];
    sums_to_duration(r);
    assert!(r.retransmitted());
    // The lost packet left no journey: from the write (200 µs) to the
    // retransmission.
    assert_eq!(
        r.segment_ns(segment::TCP_RETRANSMIT, Category::KernelOther),
        200_000_000
    );
    // Response leg 200_050 µs = 10 datapath + 20 queue + 200_000
    // retransmit + 20 stack; the request leg (no journey) is 30 stack.
    assert_eq!(r.segment_ns(segment::STACK, Category::KernelOther), 50_000);
    assert_eq!(
        r.segment_ns(segment::SOCKET_QUEUE, Category::Client),
        20_000
    );
}

#[test]
fn a_lost_packets_journey_starts_the_retransmit_wait() {
    let (events, mut journeys) = lost_response(Some(200_200), Vec::new());
    // The first transmission was seen (then dropped) at 195 µs, before the
    // write's recorded time (a write timed at its end).
    journeys.push(LegJourney {
        src: (BACKEND, 8080),
        dst: (CLIENT, 40000),
        start_ns: 195_000,
        end_ns: 199_000,
        arrival_ns: None,
        categories: vec![(Category::Cni, 5_000)],
        handshake: false,
        seq: 0,
        dropped: true,
    });
    let joined = join(&events, &journeys, &opts());
    let r = &joined.requests[0];
    sums_to_duration(r);
    assert_eq!(
        r.segment_ns(segment::TCP_RETRANSMIT, Category::KernelOther),
        200_005_000
    );
}

#[test]
fn the_receivers_retransmission_marks_the_leg_too() {
    use SockKind::Retransmit;
    // The lost response carried the ACK of the client's request: the
    // client's end retransmits the request at 200_210 µs (its timeout),
    // while the backend's own recovery (a tail loss probe whose packet
    // left at 200_205 µs) is not traced.
    let client_rtx = ev(
        Retransmit,
        200_210,
        1,
        (CLIENT, 40000),
        (SERVICE, 80),
        0,
        "swapper/0",
    );
    let (mut events, journeys) = lost_response(None, vec![client_rtx]);
    // The response arrives after the probe: the client reads at 200_250 µs.
    let read = events.iter_mut().find(|e| e.ts_ns == 250_000).unwrap();
    read.ts_ns = 200_250_000;
    let journeys: Vec<LegJourney> = journeys
        .into_iter()
        .map(|mut j| {
            j.start_ns += 200_000_000;
            j.end_ns += 200_000_000;
            j.arrival_ns = j.arrival_ns.map(|a| a + 200_000_000);
            j
        })
        .collect();
    let joined = join(&events, &journeys, &opts());
    let r = &joined.requests[0];
    sums_to_duration(r);
    assert!(r.retransmitted());
    assert_eq!(
        r.segment_ns(segment::TCP_RETRANSMIT, Category::KernelOther),
        200_010_000
    );
}

/// The lost packet's journey was seen (dropped after the sender's node)
/// and its probe's too, with no `tcp_retransmit_skb` (a tail loss probe):
/// the second journey of the same sequence number is the retransmission.
/// One packet's journeys on two nodes, microseconds apart, are not.
#[test]
fn a_packet_seen_twice_is_a_retransmission_without_the_tracepoint() {
    let (events, mut journeys) = lost_response(Some(200_200), Vec::new());
    // Drop the traced retransmission: only the journeys tell.
    let events: Vec<SockEvent> = events
        .into_iter()
        .filter(|e| e.kind != SockKind::Retransmit as u8)
        .collect();
    journeys[0].seq = 1000;
    let first = |start_us: u64| LegJourney {
        src: (BACKEND, 8080),
        dst: (CLIENT, 40000),
        start_ns: start_us * 1000,
        end_ns: start_us * 1000 + 10_000,
        arrival_ns: None,
        categories: vec![(Category::Cni, 5_000)],
        handshake: false,
        seq: 1000,
        dropped: false,
    };
    // On the sender's node only, then lost.
    let mut lost = journeys.clone();
    lost.push(first(205));
    let joined = join(&events, &lost, &opts());
    let r = &joined.requests[0];
    sums_to_duration(r);
    assert_eq!(
        r.segment_ns(segment::TCP_RETRANSMIT, Category::KernelOther),
        200_005_000
    );
    // The resent packet's journey on the sender's node 5 µs before the
    // one that delivered it: one packet on two nodes, no retransmission.
    let mut two_nodes = journeys.clone();
    two_nodes.push(first(200_185));
    let joined = join(&events, &two_nodes, &opts());
    let r = &joined.requests[0];
    sums_to_duration(r);
    assert!(!r.retransmitted(), "{r:?}");
}

#[test]
fn without_a_retransmission_in_the_leg_there_is_no_retransmit_segment() {
    use SockKind::Retransmit;
    let c = (CLIENT, 40000);
    let svc = (SERVICE, 80);
    let b = (BACKEND, 8080);
    // Retransmissions, but none of the connection within a leg: the
    // client's after its read, the backend's before its write and after
    // the client's read, and another connection's.
    let elsewhere = vec![
        ev(Retransmit, 260, 1, c, svc, 0, "swapper/0"),
        ev(Retransmit, 150, 2, b, c, 0, "swapper/0"),
        ev(Retransmit, 400, 2, b, c, 0, "swapper/0"),
        ev(Retransmit, 230, 3, b, (CLIENT, 40001), 0, "swapper/0"),
    ];
    for extra in [Vec::new(), elsewhere] {
        let (events, journeys) = lost_response(None, extra);
        let joined = join(&events, &journeys, &opts());
        assert_eq!(joined.requests.len(), 1);
        let r = &joined.requests[0];
        sums_to_duration(r);
        assert!(!r.retransmitted(), "{r:?}");
        assert_eq!(r.segment_ns(segment::STACK, Category::KernelOther), 50_000);
    }
}

/// Requests back to back on one keep-alive chain (a queue draining after
/// a stall): the proxy forwards the second 35 µs after the client read
/// the first, within the read slack of the backend's read of the first.
/// That read was answered before the write began: it is not the second's.
#[test]
fn back_to_back_requests_take_the_backends_next_read() {
    let mut events = proxied(1000, 40000, 50000, 0, 5);
    events.extend(proxied(1185, 40000, 50000, 0, 5));
    let joined = join(&events, &[], &opts());
    assert_eq!(joined.requests.len(), 2);
    for r in &joined.requests {
        sums_to_duration(r);
        assert_eq!(r.end_ns - r.start_ns, 180_000, "{r:?}");
        assert_eq!(
            r.segment_ns(segment::APP_SERVICE, Category::Application),
            50_000,
            "{r:?}"
        );
    }
}
