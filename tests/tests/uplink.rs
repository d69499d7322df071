//! Issue 9, uplink detection without a default route: a node namespace
//! whose only link to the network is a veth to a switch namespace (as in
//! the lab), with a VXLAN device on it and a route to another node's pod
//! CIDR, but no default route. Before, the uplink was found only from the
//! default route: this veth was taken for a pod's, and the switch for a pod.

use hoptrace_core::node::{self, DeviceRole};
use hoptrace_lab::netns::NetnsGuard;
use tests::{can_run_as_root, sh};

#[test]
fn a_node_without_a_default_route_finds_its_uplink() {
    if !can_run_as_root("a_node_without_a_default_route_finds_its_uplink") {
        return;
    }
    let tag = std::process::id() % 10_000;
    let node = NetnsGuard::create(&format!("ht-upl{tag}-node")).expect("node netns");
    let switch = NetnsGuard::create(&format!("ht-upl{tag}-sw")).expect("switch netns");
    let pod = NetnsGuard::create(&format!("ht-upl{tag}-pod")).expect("pod netns");
    let (n, s, p) = (node.name(), switch.name(), pod.name());
    for argv in [
        vec![
            "ip", "-n", n, "link", "add", "ul0", "type", "veth", "peer", "name", "sw0", "netns", s,
        ],
        vec![
            "ip",
            "-n",
            n,
            "addr",
            "add",
            "192.168.77.1/24",
            "dev",
            "ul0",
        ],
        vec!["ip", "-n", n, "link", "set", "ul0", "up"],
        vec![
            "ip",
            "-n",
            n,
            "link",
            "add",
            "vx0",
            "type",
            "vxlan",
            "id",
            "7",
            "local",
            "192.168.77.1",
            "dstport",
            "8472",
            "nolearning",
        ],
        vec!["ip", "-n", n, "link", "set", "vx0", "up"],
        vec![
            "ip", "-n", n, "link", "add", "vethp0", "type", "veth", "peer", "name", "eth0",
            "netns", p,
        ],
        vec!["ip", "-n", n, "link", "set", "vethp0", "up"],
        vec![
            "ip",
            "-n",
            n,
            "route",
            "add",
            "10.244.9.0/24",
            "via",
            "192.168.77.2",
            "dev",
            "ul0",
        ],
    ] {
        sh(&argv);
    }
    let routes = sh(&["ip", "-n", n, "route", "show", "default"]);
    assert!(routes.trim().is_empty(), "no default route: {routes}");
    let devices = node::in_netns(Some(node.path()), node::devices::discover)
        .expect("enter the node")
        .expect("discover");
    let get = |name: &str| {
        devices
            .devices
            .iter()
            .find(|d| d.name == name)
            .unwrap_or_else(|| panic!("{name} in {:?}", devices.devices))
    };
    assert!(
        get("ul0").uplink,
        "the veth under the VXLAN and the pod route is the uplink"
    );
    assert!(!get("vethp0").uplink, "the pod's veth is not");
    let pods: Vec<&str> = devices.pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(pods, [p], "the switch is not a pod");
    let ctx = node::node_context(&devices, &Default::default());
    let role = |name: &str| {
        let dev = get(name);
        ctx.devices
            .iter()
            .find(|d| d.ifindex == dev.ifindex && d.netns_ino == devices.netns_inode)
            .map(|d| d.role)
            .expect("in the context")
    };
    assert_eq!(role("ul0"), DeviceRole::Uplink);
    assert_eq!(role("vethp0"), DeviceRole::PodVethHost);
}
