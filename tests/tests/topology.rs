//! Root tests of the lab topologies: every datapath forwards pod to pod across
//! nodes, kube-proxy's rules reach the backend through the ClusterIP, and
//! everything the lab made is gone after teardown or a failed build.
//!
//! Each test skips with a printed reason when not run as root or when a
//! needed tool is missing.

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hoptrace_lab::kubeproxy::Protocol;
use hoptrace_lab::netns::{self, ChildGuard, NetnsError, NetnsGuard};
use hoptrace_lab::topology::{Datapath, KubeProxyMode, Lab, LabSpec, TopologyError};

/// Why the tests cannot run here, if they cannot.
fn skip_reason(extra_tools: &[&str]) -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("needs root (network namespaces)".to_string());
    }
    for tool in ["ip", "sysctl", "bridge", "ping"].iter().chain(extra_tools) {
        if let Err(e) = netns::find_tool(tool) {
            return Some(e.to_string());
        }
    }
    None
}

macro_rules! require {
    ($($tool:expr),*) => {
        if let Some(reason) = skip_reason(&[$($tool),*]) {
            eprintln!("skipping: {reason}");
            return;
        }
    };
}

/// A short prefix unique to this process and call (interface names stay short).
fn unique_prefix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("ht-t{}{n}-", std::process::id() % 1000)
}

/// Deletes whatever is left under a prefix even when a test panics.
struct PrefixCleanup(String);

impl Drop for PrefixCleanup {
    fn drop(&mut self) {
        let _ = netns::cleanup_prefix(&self.0);
    }
}

fn spec(prefix: &str, datapath: Datapath, kube_proxy: KubeProxyMode) -> LabSpec {
    LabSpec {
        prefix: prefix.to_string(),
        nodes: 2,
        pods_per_node: 2,
        datapath,
        kube_proxy,
        services: 0,
    }
}

/// `ping -c 1 -W 1` from `ns`, retried a few times (the first packet may
/// wait for ARP under load).
fn ping(ns: &str, target: std::net::Ipv4Addr) -> Result<(), NetnsError> {
    let target = target.to_string();
    let mut last = None;
    for _ in 0..3 {
        match netns::run_in(ns, &["ping", "-c", "1", "-W", "1", &target]) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("at least one attempt"))
}

/// Serves `socket` until `stop` is set or a bounded deadline passes.
fn serve_until<S: Send + 'static>(
    socket: S,
    stop: Arc<AtomicBool>,
    mut step: impl FnMut(&S) -> bool + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            if !step(&socket) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    })
}

/// Listens on every backend (the service may pick any), connects from the
/// client pod to the service address, and checks the reply, for TCP and UDP.
fn check_service(lab: &Lab) {
    let service = lab.service();
    let client = lab.client_pod().netns.clone();
    let datapath = lab.spec().datapath;
    let stop = Arc::new(AtomicBool::new(false));
    let mut servers = Vec::new();
    let tcp = service.port(Protocol::Tcp).unwrap();
    let udp = service.port(Protocol::Udp).unwrap();
    for backend in &service.backends {
        let (listener, socket) = netns::with_netns(&backend.netns, || {
            let listener = TcpListener::bind(SocketAddrV4::new(backend.ip, tcp.target_port))?;
            let socket = UdpSocket::bind(SocketAddrV4::new(backend.ip, udp.target_port))?;
            listener.set_nonblocking(true)?;
            socket.set_nonblocking(true)?;
            std::io::Result::Ok((listener, socket))
        })
        .unwrap()
        .unwrap_or_else(|e| panic!("bind in {}: {e}", backend.netns));
        servers.push(serve_until(
            listener,
            stop.clone(),
            |listener| match listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.write_all(b"hello from backend");
                    true
                }
                Err(_) => false,
            },
        ));
        servers.push(serve_until(socket, stop.clone(), |socket| {
            let mut buf = [0u8; 64];
            match socket.recv_from(&mut buf) {
                Ok((len, from)) => {
                    let _ = socket.send_to(&buf[..len], from);
                    true
                }
                Err(_) => false,
            }
        }));
    }

    let tcp_target = service.connect_addr(Protocol::Tcp).unwrap();
    let udp_target = service.connect_addr(Protocol::Udp).unwrap();
    let (tcp_result, udp_result) = netns::with_netns(&client, move || {
        let tcp = (|| -> std::io::Result<String> {
            let mut stream =
                TcpStream::connect_timeout(&SocketAddr::V4(tcp_target), Duration::from_secs(3))?;
            stream.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut reply = String::new();
            stream.read_to_string(&mut reply)?;
            Ok(reply)
        })();
        let udp = (|| -> std::io::Result<Vec<u8>> {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.set_read_timeout(Some(Duration::from_secs(3)))?;
            socket.connect(udp_target)?;
            socket.send(b"ping")?;
            let mut buf = [0u8; 64];
            let len = socket.recv(&mut buf)?;
            Ok(buf[..len].to_vec())
        })();
        (tcp, udp)
    })
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    for server in servers {
        server.join().unwrap();
    }
    let reply =
        tcp_result.unwrap_or_else(|e| panic!("{datapath}: TCP to {tcp_target} failed: {e}"));
    assert_eq!(reply, "hello from backend");
    let echoed =
        udp_result.unwrap_or_else(|e| panic!("{datapath}: UDP to {udp_target} failed: {e}"));
    assert_eq!(echoed, b"ping");
}

/// Builds `datapath` with kube-proxy in iptables mode, checks cross-node pod
/// traffic and the service, tears down and checks nothing is left.
fn check_datapath(datapath: Datapath) {
    require!("iptables-restore");
    let prefix = unique_prefix();
    let _cleanup = PrefixCleanup(prefix.clone());
    let started = Instant::now();
    let lab = match Lab::build(&spec(&prefix, datapath, KubeProxyMode::Iptables)) {
        Ok(lab) => lab,
        Err(TopologyError::Unsupported {
            datapath: d,
            reason,
        }) => {
            assert_eq!(d, datapath);
            assert!(
                netns::list_prefix(&prefix).is_empty(),
                "an unsupported build left {:?}",
                netns::list_prefix(&prefix)
            );
            eprintln!("skipping {datapath}: {reason}");
            return;
        }
        Err(e) => panic!("building {datapath}: {e}"),
    };
    eprintln!("{datapath}: built in {:?}", started.elapsed());

    assert_eq!(lab.nodes().len(), 2);
    assert_eq!(lab.pods().len(), 4);
    for pod in lab.pods() {
        assert!(
            pod.host_veth.starts_with(datapath.host_veth_prefix()) && pod.host_veth.len() <= 15,
            "{}",
            pod.host_veth
        );
    }
    assert_eq!(
        lab.nodes()[0].tunnel_device.as_deref(),
        datapath.tunnel_device()
    );

    let client = lab.client_pod().clone();
    let remote = lab.pods_on(1).next().unwrap().clone();
    ping(&client.netns, remote.ip)
        .unwrap_or_else(|e| panic!("{datapath}: {} -> {}: {e}", client.name, remote.name));
    // Same-node pod to pod, and back across nodes.
    let neighbour = lab.pods_on(0).nth(1).unwrap().clone();
    ping(&client.netns, neighbour.ip).unwrap_or_else(|e| panic!("{datapath}: same node: {e}"));
    ping(&remote.netns, client.ip).unwrap_or_else(|e| panic!("{datapath}: reverse: {e}"));
    // Overlays really carried the cross-node packets.
    if let Some(tunnel) = datapath.tunnel_device() {
        let path = format!("/sys/class/net/{tunnel}/statistics/tx_packets");
        let out = netns::run_in(&lab.nodes()[0].netns, &["cat", &path]).unwrap();
        let tx: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert!(tx > 0, "{datapath}: nothing left through {tunnel}");
    }

    let service = lab.service();
    if datapath == Datapath::HostNetwork {
        assert_eq!(service.backends[0].ip, lab.nodes()[1].underlay_ip);
        assert_eq!(service.backends[0].pod_index, None);
    }
    if datapath == Datapath::CiliumLike {
        assert_eq!(service.kube_proxy, KubeProxyMode::None);
    } else {
        assert_eq!(service.kube_proxy, KubeProxyMode::Iptables);
        let rules = netns::run_in(&lab.nodes()[0].netns, &["iptables-save", "-t", "nat"]).unwrap();
        let rules = String::from_utf8_lossy(&rules.stdout);
        assert!(rules.contains(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
        ));
        assert_eq!(
            rules
                .lines()
                .filter(|l| l.starts_with(":KUBE-SVC-"))
                .count(),
            2
        );
    }
    check_service(&lab);

    let names = lab.netns_names();
    assert_eq!(names.len(), 1 + 2 + 4);
    lab.teardown().unwrap();
    assert!(
        netns::list_prefix(&prefix).is_empty(),
        "left behind: {:?}",
        netns::list_prefix(&prefix)
    );
}

#[test]
fn flannel_vxlan() {
    check_datapath(Datapath::FlannelVxlan);
}

#[test]
fn flannel_host_gw() {
    check_datapath(Datapath::FlannelHostGw);
}

#[test]
fn calico_bgp() {
    check_datapath(Datapath::CalicoBgp);
}

#[test]
fn calico_vxlan() {
    check_datapath(Datapath::CalicoVxlan);
}

#[test]
fn calico_ipip() {
    check_datapath(Datapath::CalicoIpip);
}

#[test]
fn cilium_like() {
    check_datapath(Datapath::CiliumLike);
}

#[test]
fn host_network() {
    check_datapath(Datapath::HostNetwork);
}

#[test]
fn nftables_kube_proxy_reaches_backend() {
    require!("nft");
    let prefix = unique_prefix();
    let _cleanup = PrefixCleanup(prefix.clone());
    let mut lab_spec = spec(&prefix, Datapath::CalicoBgp, KubeProxyMode::Nftables);
    lab_spec.services = 100;
    lab_spec.nodes = 3;
    let lab = Lab::build(&lab_spec).unwrap();
    assert_eq!(
        lab.service().backends.len(),
        2,
        "one backend on each non-client node"
    );
    let table = netns::run_in(
        &lab.nodes()[0].netns,
        &["nft", "list", "table", "ip", "kube-proxy"],
    )
    .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("map service-ips"));
    // 2 lab ports + 100 filler services.
    assert_eq!(
        table
            .lines()
            .filter(|l| l.trim_start().starts_with("chain service-"))
            .count(),
        102
    );
    check_service(&lab);
    lab.teardown().unwrap();
    assert!(netns::list_prefix(&prefix).is_empty());
}

#[test]
fn name_clash_is_already_exists_and_keeps_the_existing_namespace() {
    require!();
    let prefix = unique_prefix();
    let _cleanup = PrefixCleanup(prefix.clone());
    let lab_spec = spec(&prefix, Datapath::FlannelHostGw, KubeProxyMode::None);
    let existing = NetnsGuard::create(&lab_spec.node_netns(1)).unwrap();
    let existing_inode = netns::netns_inode(existing.path()).unwrap();

    let err = Lab::build(&lab_spec).unwrap_err();
    match &err {
        TopologyError::Netns(NetnsError::AlreadyExists { name }) => {
            assert_eq!(name, existing.name());
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("ip netns del") && message.contains("--prefix"),
        "{message}"
    );
    // The clash happened after the switch and node 0 existed: both are gone,
    // the foreign namespace is untouched.
    assert_eq!(
        netns::list_prefix(&prefix),
        vec![existing.name().to_string()]
    );
    assert_eq!(netns::netns_inode(existing.path()).unwrap(), existing_inode);

    let err = NetnsGuard::create(existing.name()).unwrap_err();
    assert!(matches!(err, NetnsError::AlreadyExists { .. }), "{err}");
    assert!(existing.path().exists());
    existing.delete().unwrap();
}

#[test]
fn build_failing_midway_leaves_nothing_behind() {
    require!("iptables-restore");
    let prefix = unique_prefix();
    let _cleanup = PrefixCleanup(prefix.clone());
    let lab_spec = spec(&prefix, Datapath::FlannelVxlan, KubeProxyMode::Iptables);
    // The last pod of the last node clashes: switch, both nodes, their
    // devices and three pods exist when the build fails.
    let blocker = NetnsGuard::create(&lab_spec.pod_netns(1, 1)).unwrap();
    let err = Lab::build(&lab_spec).unwrap_err();
    assert!(
        matches!(err, TopologyError::Netns(NetnsError::AlreadyExists { .. })),
        "{err}"
    );
    assert_eq!(
        netns::list_prefix(&prefix),
        vec![blocker.name().to_string()]
    );
    blocker.delete().unwrap();
    assert!(netns::list_prefix(&prefix).is_empty());
}

#[test]
fn five_thousand_iptables_services_apply_in_one_transaction() {
    require!("iptables-restore", "iptables-save");
    let prefix = unique_prefix();
    let _cleanup = PrefixCleanup(prefix.clone());
    let mut lab_spec = spec(&prefix, Datapath::FlannelHostGw, KubeProxyMode::Iptables);
    lab_spec.services = 5_000;
    let started = Instant::now();
    let lab = Lab::build(&lab_spec).unwrap();
    eprintln!("5,000 services: lab built in {:?}", started.elapsed());
    let expected_svc = lab.service_set().port_count();
    let expected_sep = lab.service_set().endpoint_count();
    for node in lab.nodes() {
        let rules = netns::run_in(&node.netns, &["iptables-save", "-t", "nat"]).unwrap();
        let rules = String::from_utf8_lossy(&rules.stdout);
        let svc = rules
            .lines()
            .filter(|l| l.starts_with(":KUBE-SVC-"))
            .count();
        let sep = rules
            .lines()
            .filter(|l| l.starts_with(":KUBE-SEP-"))
            .count();
        assert_eq!((svc, sep), (expected_svc, expected_sep), "on {}", node.name);
        assert!(svc >= 5_000);
        // Applied once: a single jump from PREROUTING.
        let jumps = rules
            .lines()
            .filter(|l| l.starts_with("-A PREROUTING") && l.ends_with("-j KUBE-SERVICES"))
            .count();
        assert_eq!(jumps, 1);
    }
    check_service(&lab);
    lab.teardown().unwrap();
    assert!(netns::list_prefix(&prefix).is_empty());
}

#[test]
fn with_netns_enters_and_processes_are_killed() {
    require!();
    let prefix = unique_prefix();
    let _cleanup = PrefixCleanup(prefix.clone());
    let ns = NetnsGuard::create(&format!("{prefix}a")).unwrap();
    let ns_inode = netns::netns_inode(ns.path()).unwrap();
    let host_inode = netns::current_netns_inode().unwrap();
    assert_ne!(ns_inode, host_inode);
    let inside = netns::with_netns(ns.name(), netns::current_netns_inode)
        .unwrap()
        .unwrap();
    assert_eq!(inside, ns_inode);
    let by_path = netns::with_netns(&ns.path().to_string_lossy(), netns::current_netns_inode)
        .unwrap()
        .unwrap();
    assert_eq!(by_path, ns_inode);
    // The caller's namespace is unchanged.
    assert_eq!(netns::current_netns_inode().unwrap(), host_inode);

    // A ChildGuard kills its process on drop.
    let guard = ChildGuard::new(netns::spawn_in(ns.name(), &["sleep", "30"]).unwrap());
    let pid = guard.id();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(guard);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());

    // Deleting the namespace kills what still runs inside.
    let mut orphan = netns::spawn_in(ns.name(), &["sleep", "30"]).unwrap();
    let started = Instant::now();
    ns.delete().unwrap();
    let status = orphan.wait().unwrap();
    assert!(!status.success());
    assert!(started.elapsed() < Duration::from_secs(5));

    // A missing tool inside a namespace is a typed error.
    let other = NetnsGuard::create(&format!("{prefix}b")).unwrap();
    let err = netns::run_in(other.name(), &["hoptrace-no-such-tool"]).unwrap_err();
    assert!(matches!(err, NetnsError::MissingTool { .. }), "{err}");
    let err = netns::run_in(other.name(), &["ip", "link", "show", "nope0"]).unwrap_err();
    match err {
        NetnsError::CommandFailed {
            command, stderr, ..
        } => {
            assert!(command.contains("ip link show nope0"), "{command}");
            assert!(stderr.contains("nope0"), "{stderr}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn cleanup_prefix_only_removes_its_own_names() {
    require!();
    let prefix = unique_prefix();
    let _cleanup = PrefixCleanup(prefix.clone());
    let ours = [
        format!("{prefix}sw"),
        format!("{prefix}n0"),
        format!("{prefix}n0p0"),
    ];
    for name in &ours {
        // Simulate a crash: create and forget the guards.
        std::mem::forget(NetnsGuard::create(name).unwrap());
    }
    // Same start, different prefix: must survive.
    let sibling_prefix = format!("{}x-", prefix.trim_end_matches('-'));
    let _sibling_cleanup = PrefixCleanup(sibling_prefix.clone());
    let sibling = NetnsGuard::create(&format!("{sibling_prefix}sw")).unwrap();
    let mut removed = netns::cleanup_prefix(&prefix).unwrap();
    removed.sort();
    let mut expected = ours.to_vec();
    expected.sort();
    assert_eq!(removed, expected);
    assert!(netns::list_prefix(&prefix).is_empty());
    assert!(sibling.path().exists());
    sibling.delete().unwrap();
}
