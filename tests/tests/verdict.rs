//! Issue "Lifecycle": hoptrace never changes a verdict. A test fixture on the
//! server's veth drops (or redirects) UDP to one port; the datagrams each
//! socket receives, and the HTTP requests that succeed, are counted without
//! hoptrace and with a hoptrace session on the same devices (tcx first in the
//! chain, and separately clsact at a lower priority number, i.e. before the
//! fixture). The counts must be identical.
//!
//! Topology (one set of namespaces per test):
//! client `eth0` 10.97.0.1 <-> server `hvd0` 10.97.0.2; server `hvd1` <->
//! sink `eth0`, which carries `hvd0`'s MAC and address so that datagrams the
//! redirect fixture sends out of `hvd1` are delivered to a socket in the sink.

use std::{
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        SchedClassifier, TcAttachType,
        links::LinkOrder,
        tc::{NlOptions, TcAttachOptions, qdisc_add_clsact},
    },
};
use hoptrace_common::Counter;
use hoptrace_core::{
    kernel::{loader::TcMode, objects::fixture_object},
    session::{Session, SessionOptions},
};
use hoptrace_lab::netns::{NetnsGuard, run_in, with_netns};
use tests::{http_requests_new_connection, start_backend};

const DATAGRAMS: usize = 200;
/// The port the fixture drops or redirects.
const FIXTURE_PORT: u16 = 7001;
/// A port the fixture leaves alone.
const OTHER_PORT: u16 = 7002;
const HTTP_REQUESTS: usize = 10;
const SERVER_IP: &str = "10.97.0.2";
const SERVER_DEV: &str = "hvd0";
const SINK_SIDE_DEV: &str = "hvd1";

/// Which fixture program, and how it and hoptrace are attached.
#[derive(Clone, Copy, Debug, PartialEq)]
enum FixtureKind {
    DropPort,
    Redirect,
}

impl FixtureKind {
    fn program(self) -> &'static str {
        match self {
            Self::DropPort => "fixture_drop_port",
            Self::Redirect => "fixture_redirect",
        }
    }
}

struct Namespaces {
    client: NetnsGuard,
    server: NetnsGuard,
    sink: NetnsGuard,
}

impl Namespaces {
    fn build(tag: &str) -> Self {
        let base = format!("ht-vd{}{tag}", std::process::id() % 1000);
        let client = NetnsGuard::create(&format!("{base}c")).expect("client namespace");
        let server = NetnsGuard::create(&format!("{base}s")).expect("server namespace");
        let sink = NetnsGuard::create(&format!("{base}k")).expect("sink namespace");
        let s = server.name();
        let ip = |ns: &str, argv: &[&str]| {
            let mut full = vec!["ip"];
            full.extend_from_slice(argv);
            run_in(ns, &full).unwrap_or_else(|e| panic!("{ns}: {e}"));
        };
        ip(
            s,
            &[
                "link",
                "add",
                SERVER_DEV,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                client.name(),
            ],
        );
        ip(
            s,
            &[
                "link",
                "add",
                SINK_SIDE_DEV,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                sink.name(),
            ],
        );
        ip(s, &["addr", "add", "10.97.0.2/24", "dev", SERVER_DEV]);
        ip(s, &["link", "set", SERVER_DEV, "up"]);
        ip(s, &["link", "set", SINK_SIDE_DEV, "up"]);
        ip(
            client.name(),
            &["addr", "add", "10.97.0.1/24", "dev", "eth0"],
        );
        ip(client.name(), &["link", "set", "eth0", "up"]);
        // `ip netns exec` mounts the namespace's own sysfs.
        let server_mac = run_in(s, &["cat", &format!("/sys/class/net/{SERVER_DEV}/address")])
            .expect("server MAC");
        let server_mac = String::from_utf8_lossy(&server_mac.stdout).into_owned();
        ip(
            sink.name(),
            &["link", "set", "eth0", "address", server_mac.trim()],
        );
        ip(sink.name(), &["addr", "add", "10.97.0.2/24", "dev", "eth0"]);
        ip(sink.name(), &["link", "set", "eth0", "up"]);
        Self {
            client,
            server,
            sink,
        }
    }
}

/// The fixture object attached on the server's veth ingress; detached on
/// drop inside the server namespace (clsact filters are deleted by ifindex
/// in the calling thread's namespace).
struct Fixture {
    ebpf: Option<Ebpf>,
    netns: String,
}

impl Fixture {
    fn attach(ns: &Namespaces, kind: FixtureKind, mode: TcMode) -> Self {
        let ebpf = with_netns(ns.server.name(), || {
            let redirect_to =
                nix::net::if_::if_nametoindex(SINK_SIDE_DEV).expect("sink-side ifindex");
            let mut ebpf = EbpfLoader::new()
                .override_global("FIXTURE_PORT", &FIXTURE_PORT, true)
                .override_global("FIXTURE_IFINDEX", &redirect_to, true)
                .load(fixture_object().expect("kernel objects built"))
                .expect("load fixture object");
            let prog: &mut SchedClassifier = ebpf
                .program_mut(kind.program())
                .expect("fixture program")
                .try_into()
                .expect("tc program");
            prog.load().expect("verifier accepts the fixture");
            let options = match mode {
                TcMode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::last()),
                TcMode::Clsact => {
                    qdisc_add_clsact(SERVER_DEV).expect("clsact qdisc");
                    TcAttachOptions::Netlink(NlOptions {
                        priority: 20,
                        ..Default::default()
                    })
                }
            };
            prog.attach_with_options(SERVER_DEV, TcAttachType::Ingress, options)
                .expect("attach fixture");
            ebpf
        })
        .expect("enter server namespace");
        Self {
            ebpf: Some(ebpf),
            netns: ns.server.name().to_owned(),
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(ebpf) = self.ebpf.take() {
            let _ = with_netns(&self.netns, move || drop(ebpf));
        }
    }
}

/// What arrived where.
#[derive(Debug, PartialEq)]
struct Delivered {
    server_fixture_port: usize,
    server_other_port: usize,
    sink_fixture_port: usize,
    http_ok: usize,
}

fn udp_socket(ns: &str, port: u16) -> UdpSocket {
    let sock = with_netns(ns, || UdpSocket::bind(("10.97.0.2", port)))
        .expect("enter namespace")
        .unwrap_or_else(|e| panic!("bind {port} in {ns}: {e}"));
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    sock
}

/// Reads until 200 ms pass without a datagram (bounded by `DATAGRAMS` + 10 s).
fn count_received(sock: &UdpSocket) -> usize {
    let mut buf = [0u8; 256];
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && sock.recv(&mut buf).is_ok() {
        n += 1;
    }
    n
}

/// Sends `DATAGRAMS` to each port from the client (paced, so no socket
/// buffer overflows), makes `HTTP_REQUESTS` requests, and counts.
fn measure(ns: &Namespaces) -> Delivered {
    let server_fixture = udp_socket(ns.server.name(), FIXTURE_PORT);
    let server_other = udp_socket(ns.server.name(), OTHER_PORT);
    let sink_fixture = udp_socket(ns.sink.name(), FIXTURE_PORT);
    let client = with_netns(ns.client.name(), || UdpSocket::bind(("10.97.0.1", 0)))
        .expect("enter client")
        .expect("client socket");
    for i in 0..DATAGRAMS {
        let payload = format!("verdict {i:04}");
        for port in [FIXTURE_PORT, OTHER_PORT] {
            client
                .send_to(payload.as_bytes(), (SERVER_IP, port))
                .expect("send");
        }
        if i % 20 == 19 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let delivered = Delivered {
        server_fixture_port: count_received(&server_fixture),
        server_other_port: count_received(&server_other),
        sink_fixture_port: count_received(&sink_fixture),
        http_ok: 0,
    };
    let target: SocketAddr = (SERVER_IP.parse::<std::net::Ipv4Addr>().unwrap(), 8080).into();
    Delivered {
        http_ok: http_requests_new_connection(ns.client.name(), target, HTTP_REQUESTS),
        ..delivered
    }
}

/// The tc programs on the server veth's ingress, in the order they run.
fn ingress_chain(ns: &Namespaces, mode: TcMode) -> Vec<String> {
    match mode {
        TcMode::Tcx => with_netns(ns.server.name(), || {
            let (_, progs) =
                SchedClassifier::query_tcx(SERVER_DEV, TcAttachType::Ingress).expect("query tcx");
            progs
                .iter()
                .map(|p| p.name_as_str().unwrap_or("?").to_owned())
                .collect()
        })
        .expect("enter server"),
        // `tc filter show` lists filters by priority, the order they run in.
        TcMode::Clsact => {
            let out = run_in(
                ns.server.name(),
                &["tc", "filter", "show", "dev", SERVER_DEV, "ingress"],
            )
            .expect("tc");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| {
                    l.split_whitespace()
                        .skip_while(|w| *w != "name")
                        .nth(1)
                        .map(str::to_owned)
                })
                .collect()
        }
    }
}

fn run(tag: &str, kind: FixtureKind, mode: TcMode) {
    let ns = Namespaces::build(tag);
    let _backend = start_backend(ns.server.name());
    // Neighbours resolved and the backend answering before anything counts.
    assert_eq!(
        http_requests_new_connection(
            ns.client.name(),
            (SERVER_IP.parse::<std::net::Ipv4Addr>().unwrap(), 8080).into(),
            2
        ),
        2,
        "warm-up"
    );
    let _fixture = Fixture::attach(&ns, kind, mode);
    let without = measure(&ns);

    let mut opts = SessionOptions::new();
    opts.netns = Some(PathBuf::from(ns.server.path()));
    opts.ifaces = vec![SERVER_DEV.to_owned(), SINK_SIDE_DEV.to_owned()];
    opts.tc_mode = Some(mode);
    let session = Session::start(&opts).unwrap_or_else(|e| panic!("session: {e}"));
    let chain = ingress_chain(&ns, mode);
    // The kernel keeps 15 characters of a program name.
    let fixture_name = &kind.program()[..kind.program().len().min(15)];
    assert_eq!(
        chain,
        ["hoptrace_tc_ing", fixture_name],
        "hoptrace runs first ({mode:?})"
    );
    let emitted_before = session.counters().expect("counters").get(Counter::Emitted);
    let with = measure(&ns);
    let emitted = session.counters().expect("counters").get(Counter::Emitted) - emitted_before;
    let (ledger, _) = session.stop().expect("stop session");
    eprintln!(
        "{kind:?} {mode:?}: without {without:?}, with {with:?}; {emitted} events, drops {:?}",
        ledger.drops
    );

    // hoptrace really watched: at least one tc event per datagram on hvd0.
    assert!(
        emitted >= 2 * DATAGRAMS as u64,
        "hoptrace saw the traffic: {emitted} events"
    );
    let expected = match kind {
        FixtureKind::DropPort => Delivered {
            server_fixture_port: 0,
            server_other_port: DATAGRAMS,
            sink_fixture_port: 0,
            http_ok: HTTP_REQUESTS,
        },
        FixtureKind::Redirect => Delivered {
            server_fixture_port: 0,
            server_other_port: DATAGRAMS,
            sink_fixture_port: DATAGRAMS,
            http_ok: HTTP_REQUESTS,
        },
    };
    assert_eq!(without, expected, "the fixture alone does what it should");
    assert_eq!(
        with, without,
        "hoptrace changed what was delivered ({kind:?}, {mode:?})"
    );
    // A link whose last reference someone else (e.g. `bpftool link list` in
    // another test) held a moment ago is released by a kernel worker: poll.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut chain = ingress_chain(&ns, mode);
    while chain != [fixture_name] && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        chain = ingress_chain(&ns, mode);
    }
    assert_eq!(
        chain,
        [fixture_name],
        "hoptrace detached, the fixture stays"
    );
}

#[test]
fn drop_fixture_verdicts_unchanged_with_tcx() {
    if !tests::can_run_with_kernel_programs("drop_fixture_verdicts_unchanged_with_tcx") {
        return;
    }
    run("dx", FixtureKind::DropPort, TcMode::Tcx);
}

#[test]
fn drop_fixture_verdicts_unchanged_with_clsact() {
    if !tests::can_run_with_kernel_programs("drop_fixture_verdicts_unchanged_with_clsact") {
        return;
    }
    run("dc", FixtureKind::DropPort, TcMode::Clsact);
}

#[test]
fn redirect_fixture_unchanged_with_tcx() {
    if !tests::can_run_with_kernel_programs("redirect_fixture_unchanged_with_tcx") {
        return;
    }
    run("rx", FixtureKind::Redirect, TcMode::Tcx);
}

#[test]
fn redirect_fixture_unchanged_with_clsact() {
    if !tests::can_run_with_kernel_programs("redirect_fixture_unchanged_with_clsact") {
        return;
    }
    run("rc", FixtureKind::Redirect, TcMode::Clsact);
}
