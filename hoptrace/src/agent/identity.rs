//! Who a journey belongs to: the pod it left or reached and the Service it
//! was sent to, by Kubernetes name when the API is reachable, else by the
//! name of the pod's network namespace.
//!
//! With the API, the agent watches the pods of its own node (a field
//! selector on `spec.nodeName`) and every Service through kube-rs
//! reflectors, and keeps two maps, rebuilt on each change: pod IP →
//! `namespace/pod`, ClusterIP → `namespace/service`. A lookup is a read
//! lock and a hash-map probe.

use std::{
    collections::HashMap,
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::Path,
    sync::{Arc, PoisonError, RwLock},
};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};

/// A pod, by Kubernetes namespace and name (or, without the API, the
/// network namespace's name for both).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
}

/// A Service, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRef {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
}

/// Names for the agent's labels; called on the drain thread per journey.
pub trait Identity: std::fmt::Debug + Send + Sync {
    /// The pod with network namespace inode `netns` or address `ip`.
    fn pod(&self, netns: Option<u32>, ip: IpAddr) -> Option<PodRef>;
    /// The Service whose ClusterIP is `ip`.
    fn service(&self, ip: IpAddr) -> Option<ServiceRef>;
}

/// Names of the named network namespaces (`/run/netns/*`), by inode: what
/// the agent has without the Kubernetes API (the CNI names pod namespaces
/// there, e.g. `cni-1f0e…`; the lab names them after its pods).
#[derive(Debug, Default)]
pub struct NetnsNames {
    by_inode: RwLock<HashMap<u32, String>>,
}

impl NetnsNames {
    /// Where named network namespaces live (iproute2, containerd, CRI-O).
    pub const DIR: &'static str = "/run/netns";

    /// Re-reads [`Self::DIR`]; a missing folder means no names.
    pub fn refresh(&self) {
        let names = read_netns_dir(Path::new(Self::DIR));
        *self
            .by_inode
            .write()
            .unwrap_or_else(PoisonError::into_inner) = names;
    }

    fn name(&self, inode: u32) -> Option<String> {
        self.by_inode
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&inode)
            .cloned()
    }
}

/// Inode → file name of every namespace file in `dir`.
fn read_netns_dir(dir: &Path) -> HashMap<u32, String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let inode = u32::try_from(std::fs::metadata(entry.path()).ok()?.ino()).ok()?;
            Some((inode, entry.file_name().to_string_lossy().into_owned()))
        })
        .collect()
}

impl Identity for NetnsNames {
    fn pod(&self, netns: Option<u32>, _ip: IpAddr) -> Option<PodRef> {
        let name = self.name(netns?)?;
        Some(PodRef {
            namespace: name.clone(),
            name,
        })
    }

    fn service(&self, _ip: IpAddr) -> Option<ServiceRef> {
        None
    }
}

/// Pod IP and ClusterIP maps built from the API's objects.
#[derive(Debug, Default, PartialEq)]
pub struct ClusterMaps {
    /// Every IP of every pod (`status.podIPs`), to the pod.
    pub pods: HashMap<IpAddr, PodRef>,
    /// Every ClusterIP of every Service (`spec.clusterIPs`, not `None`).
    pub services: HashMap<IpAddr, ServiceRef>,
}

/// IP → pod for `pods` (pods without an IP yet are skipped; host-network
/// pods are skipped too: their IP is the node's and says nothing).
pub fn pods_by_ip<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> HashMap<IpAddr, PodRef> {
    let mut map = HashMap::new();
    for pod in pods {
        if pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false)
        {
            continue;
        }
        let pod_ref = PodRef {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
        };
        let status = pod.status.as_ref();
        let ips = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .map(|ip| ip.ip.as_str())
            .chain(status.and_then(|s| s.pod_ip.as_deref()));
        for ip in ips {
            if let Ok(ip) = ip.parse() {
                map.insert(ip, pod_ref.clone());
            }
        }
    }
    map
}

/// ClusterIP → Service for `services` (headless Services have none).
pub fn services_by_ip<'a>(
    services: impl IntoIterator<Item = &'a Service>,
) -> HashMap<IpAddr, ServiceRef> {
    let mut map = HashMap::new();
    for service in services {
        let service_ref = ServiceRef {
            namespace: service.metadata.namespace.clone().unwrap_or_default(),
            name: service.metadata.name.clone().unwrap_or_default(),
        };
        let spec = service.spec.as_ref();
        let ips = spec
            .and_then(|s| s.cluster_ips.as_ref())
            .into_iter()
            .flatten()
            .map(String::as_str)
            .chain(spec.and_then(|s| s.cluster_ip.as_deref()));
        for ip in ips {
            if let Ok(ip) = ip.parse() {
                map.insert(ip, service_ref.clone());
            }
        }
    }
    map
}

/// Names from the Kubernetes API, with network namespace names for what
/// the API does not know (host processes, namespaces of no pod).
#[derive(Debug)]
pub struct KubeIdentity {
    maps: RwLock<ClusterMaps>,
    netns: Arc<NetnsNames>,
}

impl KubeIdentity {
    /// An identity with empty maps until the watchers fill them.
    pub fn new(netns: Arc<NetnsNames>) -> Self {
        Self {
            maps: RwLock::new(ClusterMaps::default()),
            netns,
        }
    }

    fn set_pods(&self, pods: HashMap<IpAddr, PodRef>) {
        self.maps
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .pods = pods;
    }

    fn set_services(&self, services: HashMap<IpAddr, ServiceRef>) {
        self.maps
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .services = services;
    }
}

impl Identity for KubeIdentity {
    fn pod(&self, netns: Option<u32>, ip: IpAddr) -> Option<PodRef> {
        let found = self
            .maps
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .pods
            .get(&ip)
            .cloned();
        found.or_else(|| self.netns.pod(netns, ip))
    }

    fn service(&self, ip: IpAddr) -> Option<ServiceRef> {
        self.maps
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .services
            .get(&ip)
            .cloned()
    }
}

/// Watches the pods of `node` and every Service, keeping `identity`'s maps
/// current, until the watch streams end (they retry with backoff, so in
/// practice until the task is dropped). Watch errors are retried, never
/// fatal: names are best effort.
pub async fn watch_cluster(client: kube::Client, node: String, identity: Arc<KubeIdentity>) {
    let pods: kube::Api<Pod> = kube::Api::all(client.clone());
    let services: kube::Api<Service> = kube::Api::all(client);
    let (pod_store, pod_writer) = reflector::store();
    let (service_store, service_writer) = reflector::store();
    let pod_stream = reflector(
        pod_writer,
        watcher(
            pods,
            watcher::Config::default().fields(&format!("spec.nodeName={node}")),
        ),
    )
    .default_backoff()
    .touched_objects();
    let service_stream = reflector(
        service_writer,
        watcher(services, watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();
    let pods_identity = Arc::clone(&identity);
    let pods_done = pod_stream.for_each(move |_| {
        pods_identity.set_pods(pods_by_ip(pod_store.state().iter().map(AsRef::as_ref)));
        std::future::ready(())
    });
    let services_done = service_stream.for_each(move |_| {
        identity.set_services(services_by_ip(
            service_store.state().iter().map(AsRef::as_ref),
        ));
        std::future::ready(())
    });
    futures_util::future::join(pods_done, services_done).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::watcher::Event;

    /// Pods and Services as the API server returns them (trimmed).
    fn recorded<T: serde::de::DeserializeOwned>(json: &str) -> T {
        serde_json::from_str(json).expect("recorded object")
    }

    const POD_A: &str = r#"{"apiVersion":"v1","kind":"Pod",
        "metadata":{"name":"web-7d9f","namespace":"shop","uid":"a1"},
        "spec":{"nodeName":"node-1","containers":[{"name":"web","image":"nginx"}]},
        "status":{"podIP":"10.244.1.7","podIPs":[{"ip":"10.244.1.7"},{"ip":"fd00:10:244:1::7"}]}}"#;
    const POD_HOSTNET: &str = r#"{"apiVersion":"v1","kind":"Pod",
        "metadata":{"name":"kube-proxy-x","namespace":"kube-system","uid":"a2"},
        "spec":{"nodeName":"node-1","hostNetwork":true,"containers":[{"name":"p","image":"k"}]},
        "status":{"podIP":"192.168.1.10","podIPs":[{"ip":"192.168.1.10"}]}}"#;
    const POD_PENDING: &str = r#"{"apiVersion":"v1","kind":"Pod",
        "metadata":{"name":"job-1","namespace":"batch","uid":"a3"},
        "spec":{"containers":[{"name":"j","image":"busybox"}]},"status":{}}"#;
    const SVC: &str = r#"{"apiVersion":"v1","kind":"Service",
        "metadata":{"name":"web","namespace":"shop","uid":"s1"},
        "spec":{"clusterIP":"10.96.12.34","clusterIPs":["10.96.12.34","fd00:10:96::1234"],
                "ports":[{"port":80,"targetPort":8080}]}}"#;
    const SVC_HEADLESS: &str = r#"{"apiVersion":"v1","kind":"Service",
        "metadata":{"name":"db","namespace":"shop","uid":"s2"},
        "spec":{"clusterIP":"None","clusterIPs":["None"],"ports":[{"port":5432}]}}"#;

    #[test]
    fn pods_and_services_from_a_reflector_store() {
        let (pods, mut pod_writer) = reflector::store::<Pod>();
        for json in [POD_A, POD_HOSTNET, POD_PENDING] {
            pod_writer.apply_watcher_event(&Event::Apply(recorded(json)));
        }
        let (services, mut service_writer) = reflector::store::<Service>();
        for json in [SVC, SVC_HEADLESS] {
            service_writer.apply_watcher_event(&Event::Apply(recorded(json)));
        }
        let identity = KubeIdentity::new(Arc::new(NetnsNames::default()));
        identity.set_pods(pods_by_ip(pods.state().iter().map(AsRef::as_ref)));
        identity.set_services(services_by_ip(services.state().iter().map(AsRef::as_ref)));

        let web = PodRef {
            namespace: "shop".into(),
            name: "web-7d9f".into(),
        };
        assert_eq!(
            identity.pod(None, "10.244.1.7".parse().unwrap()),
            Some(web.clone())
        );
        assert_eq!(
            identity.pod(None, "fd00:10:244:1::7".parse().unwrap()),
            Some(web)
        );
        assert_eq!(
            identity.pod(None, "192.168.1.10".parse().unwrap()),
            None,
            "a host-network pod's IP is the node's"
        );
        let svc = ServiceRef {
            namespace: "shop".into(),
            name: "web".into(),
        };
        assert_eq!(
            identity.service("10.96.12.34".parse().unwrap()),
            Some(svc.clone())
        );
        assert_eq!(
            identity.service("fd00:10:96::1234".parse().unwrap()),
            Some(svc)
        );
        assert_eq!(identity.service("10.244.1.7".parse().unwrap()), None);

        // A deleted pod disappears from the next rebuild.
        pod_writer.apply_watcher_event(&Event::Delete(recorded(POD_A)));
        identity.set_pods(pods_by_ip(pods.state().iter().map(AsRef::as_ref)));
        assert_eq!(identity.pod(None, "10.244.1.7".parse().unwrap()), None);
    }

    #[test]
    fn netns_names_by_inode() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("cni-1234"), b"").expect("file");
        let inode = u32::try_from(
            std::fs::metadata(dir.path().join("cni-1234"))
                .expect("meta")
                .ino(),
        )
        .expect("inode fits");
        let names = read_netns_dir(dir.path());
        assert_eq!(names.get(&inode).map(String::as_str), Some("cni-1234"));
        assert!(read_netns_dir(Path::new("/nonexistent/netns")).is_empty());
    }
}
