//! The Kubernetes deployment (`manifests/`, the `Dockerfile`) checked
//! offline: no cluster, no root, no BPF.
//!
//! - every manifest validates in strict mode against Kubernetes 1.28 to 1.33
//!   (kubernetes-validate), kinds without a schema there handled by name;
//! - the kustomize base renders the agent, and the optional PodMonitor
//!   component composes with it;
//! - least privilege, read from the parsed YAML and, for the capability
//!   comments, from the raw text;
//! - the agent's contract (flags, port, probes, RBAC verbs, metric names)
//!   as the other side of the agent sees it;
//! - the Grafana dashboard and the README's PromQL use only the agent's
//!   metrics and labels;
//! - the kubectl plugin (bash -n, shellcheck, --help, a dry run, and a run
//!   against a fake kubectl), the Dockerfile (hadolint), yamllint.
//!
//! The tools come from `cargo xtask setup`; a missing tool fails the test
//! with a message saying so, never a silent pass.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr, LabelModifier};
use serde::Deserialize as _;
use serde_json::{Value, json};

const SETUP_HINT: &str =
    "run `cargo xtask setup` (as root): it installs the tools of the manifest tests";

/// Kubernetes versions every manifest must validate against.
const K8S_VERSIONS: &[&str] = &["1.28.0", "1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0"];

/// Kinds that kubernetes-validate has no schema for, and what checks them
/// instead. Any other kind without a schema fails the validation test.
const SCHEMALESS: &[(&str, &str, &str)] = &[
    (
        "kustomize.config.k8s.io/v1beta1",
        "Kustomization",
        "kustomize's own file: rendered, and the output validated (kustomize_base_renders_the_agent)",
    ),
    (
        "kustomize.config.k8s.io/v1alpha1",
        "Component",
        "kustomize's own file: composed into an overlay and rendered (kustomize_base_renders_the_agent)",
    ),
    (
        "monitoring.coreos.com/v1",
        "PodMonitor",
        "Prometheus operator CRD: checked field by field (podmonitor_and_service_scrape_the_agents)",
    ),
];

/// The only capabilities a container may add.
const ALLOWED_CAPABILITIES: &[&str] = &["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN"];

/// The agent's RBAC contract: (API group, resource), each with exactly these verbs.
const RBAC_RESOURCES: &[(&str, &str)] = &[
    ("", "pods"),
    ("", "services"),
    ("", "nodes"),
    ("discovery.k8s.io", "endpointslices"),
];
const RBAC_VERBS: &[&str] = &["get", "list", "watch"];

/// Host paths a pod may mount, and whether the mount may be writable.
const HOST_PATHS: &[(&str, bool)] = &[
    ("/sys/kernel/btf", false),
    ("/sys/kernel/tracing", false),
    ("/run/netns", false),
    // The diagnosis Job's report, kept on the node.
    ("/var/lib/hoptrace/diagnosis", true),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum MetricType {
    Histogram,
    Counter,
    Gauge,
}

/// The agent's metric contract: name, type, labels besides `node` (which
/// every metric has). Optional labels (`pod` with `--pod-labels pod`,
/// `service` where a ClusterIP was DNATed) are listed too.
const METRICS: &[(&str, MetricType, &[&str])] = &[
    (
        "hoptrace_segment_duration_seconds",
        MetricType::Histogram,
        &[
            "segment",
            "category",
            "direction",
            "conn_state",
            "pod_namespace",
            "pod",
            "service",
        ],
    ),
    (
        "hoptrace_category_duration_seconds",
        MetricType::Histogram,
        &["category", "direction", "conn_state", "pod_namespace"],
    ),
    (
        "hoptrace_drops_total",
        MetricType::Counter,
        &["reason", "location"],
    ),
    ("hoptrace_events_lost_total", MetricType::Counter, &[]),
    (
        "hoptrace_journeys_total",
        MetricType::Counter,
        &["direction"],
    ),
    ("hoptrace_unparsed_packets_total", MetricType::Counter, &[]),
    ("hoptrace_hooks_attached", MetricType::Gauge, &["kind"]),
    ("process_resident_memory_bytes", MetricType::Gauge, &[]),
    ("process_cpu_seconds_total", MetricType::Counter, &[]),
];

/// Labels that Prometheus adds to every scraped series.
const TARGET_LABELS: &[&str] = &["instance", "job"];

/// Values a label of the contract can take (labels not listed: any).
const LABEL_VALUES: &[(&str, &[&str])] = &[
    (
        "category",
        &[
            "cni",
            "encapsulation",
            "kube-proxy",
            "conntrack",
            "netfilter-other",
            "ingress-proxy",
            "kernel-other",
        ],
    ),
    ("conn_state", &["new", "established", "untracked"]),
    ("direction", &["egress", "ingress", "local"]),
    ("kind", &["tc", "netfilter", "tracepoint"]),
];

// ---------------------------------------------------------------- helpers

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

fn manifests() -> PathBuf {
    workspace().join("manifests")
}

/// A fresh directory of its own for each call (tests run in parallel).
fn scratch(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "manifests-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn rel(path: &Path) -> String {
    path.strip_prefix(workspace())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The scripts directory of the `python3` on PATH, where `cargo xtask
/// setup` installs the Python tools.
fn python_scripts_dir() -> PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .unwrap_or_else(|e| panic!("python3 not found ({e}): {SETUP_HINT}"));
    assert!(out.status.success(), "python3 failed: {SETUP_HINT}");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A tool installed by pip (kubernetes-validate, kubectl, hadolint, yamllint).
fn python_tool(name: &str) -> PathBuf {
    let path = python_scripts_dir().join(name);
    assert!(
        path.is_file(),
        "{name} is not installed (looked for {}): {SETUP_HINT}",
        path.display()
    );
    path
}

/// A tool on PATH (shellcheck, from Debian).
fn path_tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not on PATH: {SETUP_HINT}"))
}

fn run(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every YAML file under manifests/, sorted.
fn yaml_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read manifests/") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&manifests(), &mut files);
    files.sort();
    assert!(!files.is_empty(), "no YAML under manifests/");
    files
}

/// The documents of a YAML stream, as JSON values (empty documents left out).
fn parse_yaml(text: &str, what: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| {
            Value::deserialize(doc).unwrap_or_else(|e| panic!("{what}: YAML does not parse: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// (file, document) for every manifest.
fn all_docs() -> Vec<(PathBuf, Value)> {
    yaml_files()
        .into_iter()
        .flat_map(|f| {
            let docs = parse_yaml(&read(&f), &rel(&f));
            docs.into_iter().map(move |d| (f.clone(), d))
        })
        .collect()
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or("")
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or("")
}

fn find<'a>(docs: &'a [(PathBuf, Value)], k: &str, n: &str) -> &'a Value {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| kind(d) == k && name(d) == n)
        .unwrap_or_else(|| panic!("no {k} {n} in manifests/"))
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The pod spec of a workload, if it is one.
fn pod_spec(doc: &Value) -> Option<&Value> {
    match kind(doc) {
        "DaemonSet" | "Deployment" | "StatefulSet" | "ReplicaSet" | "Job" => {
            doc.pointer("/spec/template/spec")
        }
        "CronJob" => doc.pointer("/spec/jobTemplate/spec/template/spec"),
        "Pod" => doc.get("spec"),
        _ => None,
    }
}

fn containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .filter_map(|k| spec[*k].as_array())
        .flatten()
        .collect()
}

fn kubectl() -> PathBuf {
    python_tool("kubectl")
}

fn kustomize(dir: &Path) -> String {
    let out = run(Command::new(kubectl()).arg("kustomize").arg(dir));
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        text(&out)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// `to` relative to the directory `from` (kustomize refuses absolute paths).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut path = PathBuf::new();
    for _ in common..from.len() {
        path.push("..");
    }
    for c in &to[common..] {
        path.push(c);
    }
    path
}

// ------------------------------------------------------ kubernetes-validate

struct Validation {
    passed: usize,
    schemaless: BTreeMap<(String, String), usize>,
    problems: Vec<String>,
    output: String,
    success: bool,
}

/// Runs kubernetes-validate in strict mode against every version in
/// [`K8S_VERSIONS`], on files or on `rendered` text (written to a file: the
/// tool reads "-" only once, for the first version).
fn validate(files: &[PathBuf], rendered: Option<&str>) -> Validation {
    let mut files = files.to_vec();
    if let Some(text) = rendered {
        let path = scratch("rendered").join("rendered.yaml");
        std::fs::write(&path, text).expect("write rendered YAML");
        files.push(path);
    }
    let mut command = Command::new(python_tool("kubernetes-validate"));
    command.arg("--strict");
    for v in K8S_VERSIONS {
        command.args(["-k", v]);
    }
    let out = run(command.args(&files));
    let output =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let mut v = Validation {
        passed: 0,
        schemaless: BTreeMap::new(),
        problems: Vec::new(),
        output: output.clone(),
        success: out.status.success(),
    };
    for line in output.lines() {
        if line.starts_with("INFO ") && line.contains(" passed for resource ") {
            v.passed += 1;
        } else if let Some(rest) = line
            .strip_prefix("WARN ")
            .and_then(|l| l.split("Couldn't find schema for kind ").nth(1))
        {
            // "<Kind> with api version <apiVersion> for kubernetes version <v>"
            let mut words = rest.split_whitespace();
            let kind = words.next().unwrap_or("").to_owned();
            let api = rest
                .split(" with api version ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or("")
                .to_owned();
            *v.schemaless.entry((api, kind)).or_default() += 1;
        } else if !line.trim().is_empty() {
            v.problems.push(line.to_owned());
        }
    }
    v
}

fn assert_valid(what: &str, docs: &[Value], v: &Validation) {
    assert!(
        v.success && v.problems.is_empty(),
        "{what}: kubernetes-validate --strict failed:\n{}",
        v.output
    );
    let mut expected_schemaless: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut with_schema = 0;
    for doc in docs {
        let api = doc["apiVersion"].as_str().unwrap_or("").to_owned();
        let kind = kind(doc).to_owned();
        if SCHEMALESS.iter().any(|(a, k, _)| *a == api && *k == kind) {
            *expected_schemaless.entry((api, kind)).or_default() += K8S_VERSIONS.len();
        } else {
            with_schema += 1;
        }
    }
    for (api, kind) in v.schemaless.keys() {
        assert!(
            SCHEMALESS.iter().any(|(a, k, _)| a == api && k == kind),
            "{what}: kubernetes-validate has no schema for {kind} ({api}), and nothing else checks it: \
             add it to SCHEMALESS with the test that checks it instead\n{}",
            v.output
        );
    }
    assert_eq!(
        v.schemaless, expected_schemaless,
        "{what}: schema-less kinds reported\n{}",
        v.output
    );
    assert_eq!(
        v.passed,
        with_schema * K8S_VERSIONS.len(),
        "{what}: every resource with a schema must pass against every version\n{}",
        v.output
    );
}

#[test]
fn every_manifest_validates_strictly_against_kubernetes_1_28_to_1_33() {
    let files = yaml_files();
    let docs: Vec<Value> = all_docs().into_iter().map(|(_, d)| d).collect();
    let v = validate(&files, None);
    assert_valid("manifests/", &docs, &v);
    for (api, kind, instead) in SCHEMALESS {
        println!("no schema for {kind} ({api}): {instead}");
    }

    // Strict mode really is on: a misspelled field fails.
    let all = all_docs();
    let mut daemonset = find(&all, "DaemonSet", "hoptrace-agent").clone();
    daemonset["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privilegd"] =
        json!(false);
    let dir = scratch("strict");
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, serde_json::to_string_pretty(&daemonset).unwrap()).unwrap();
    let v = validate(&[bad], None);
    assert!(
        !v.success && v.output.contains("ERROR") && v.output.contains("privilegd"),
        "kubernetes-validate --strict accepted an unknown field:\n{}",
        v.output
    );
}

// ---------------------------------------------------------------- kustomize

#[test]
fn kustomize_base_renders_the_agent() {
    let rendered = kustomize(&manifests());
    let docs = parse_yaml(&rendered, "kubectl kustomize manifests/");
    let kinds: BTreeSet<(String, String)> = docs
        .iter()
        .map(|d| (kind(d).to_owned(), name(d).to_owned()))
        .collect();
    for (k, n) in [
        ("Namespace", "hoptrace"),
        ("ResourceQuota", "hoptrace-node-critical"),
        ("ServiceAccount", "hoptrace"),
        ("ClusterRole", "hoptrace"),
        ("ClusterRoleBinding", "hoptrace"),
        ("DaemonSet", "hoptrace-agent"),
        ("Service", "hoptrace-agent"),
    ] {
        assert!(
            kinds.contains(&(k.to_owned(), n.to_owned())),
            "the rendered base lacks {k} {n}: {kinds:?}"
        );
    }
    assert_eq!(kinds.len(), 7, "the base holds exactly these: {kinds:?}");
    for doc in &docs {
        if !matches!(
            kind(doc),
            "Namespace" | "ClusterRole" | "ClusterRoleBinding"
        ) {
            assert_eq!(
                doc["metadata"]["namespace"],
                "hoptrace",
                "{} {} outside the hoptrace namespace",
                kind(doc),
                name(doc)
            );
        }
    }
    assert_valid("rendered base", &docs, &validate(&[], Some(&rendered)));

    // The optional PodMonitor component composes with the base in an
    // overlay outside manifests/ (the way a user includes it).
    let overlay = scratch("overlay");
    let base = relative(&overlay, &manifests());
    let component = relative(
        &overlay,
        &manifests().join("components/prometheus-operator"),
    );
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\ncomponents:\n  - {}\n",
            base.display(),
            component.display()
        ),
    )
    .unwrap();
    let rendered = kustomize(&overlay);
    let docs = parse_yaml(&rendered, "overlay with the PodMonitor component");
    assert_eq!(docs.len(), 8, "base + PodMonitor:\n{rendered}");
    let monitor = docs
        .iter()
        .find(|d| kind(d) == "PodMonitor")
        .expect("the component adds the PodMonitor");
    assert_eq!(monitor["metadata"]["namespace"], "hoptrace");
    assert_valid("rendered overlay", &docs, &validate(&[], Some(&rendered)));
}

// ---------------------------------------------------------- least privilege

/// (capability, comment) of every item of every `add:` list in the raw
/// text; panics on a flow-style list, which cannot carry one comment per
/// capability.
fn capability_lines(file: &str, text: &str) -> Vec<(String, String, usize)> {
    let mut found = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut i = 0;
    while i < lines.len() {
        let code = lines[i].split('#').next().unwrap_or("").trim_end();
        if code.trim_start().starts_with("add:") {
            let rest = code.trim_start()["add:".len()..].trim();
            assert!(
                rest.is_empty(),
                "{file}:{}: write `add:` as a block list, one capability per line with a comment",
                i + 1
            );
            let key_indent = indent(lines[i]);
            let mut j = i + 1;
            while j < lines.len() {
                let line = lines[j];
                let trimmed = line.trim_start();
                if trimmed.is_empty() || trimmed.starts_with('#') {
                    j += 1;
                    continue;
                }
                if !trimmed.starts_with("- ") || indent(line) < key_indent {
                    break;
                }
                let (value, comment) = match trimmed[2..].split_once('#') {
                    Some((v, c)) => (v.trim(), c.trim()),
                    None => (trimmed[2..].trim(), ""),
                };
                found.push((
                    value.trim_matches('"').to_owned(),
                    comment.to_owned(),
                    j + 1,
                ));
                j += 1;
            }
            i = j;
        } else {
            i += 1;
        }
    }
    found
}

#[test]
fn containers_are_least_privilege() {
    let mut workloads = 0;
    for file in yaml_files() {
        let raw = read(&file);
        let file_name = rel(&file);
        let mut parsed_caps: Vec<String> = Vec::new();
        for doc in parse_yaml(&raw, &file_name) {
            let Some(spec) = pod_spec(&doc) else { continue };
            workloads += 1;
            let what = format!("{file_name}: {} {}", kind(&doc), name(&doc));
            assert_ne!(spec["hostIPC"], true, "{what}: hostIPC");
            let pod_seccomp = spec.pointer("/securityContext/seccompProfile/type");
            for c in containers(spec) {
                let cname = c["name"].as_str().unwrap_or("?");
                let sc = &c["securityContext"];
                let at = format!("{what}, container {cname}");
                assert_ne!(sc["privileged"], true, "{at}: privileged");
                assert_eq!(
                    sc["allowPrivilegeEscalation"], false,
                    "{at}: allowPrivilegeEscalation must be false"
                );
                assert_eq!(
                    sc["readOnlyRootFilesystem"], true,
                    "{at}: readOnlyRootFilesystem must be true"
                );
                assert_eq!(
                    strs(&sc["capabilities"]["drop"]),
                    ["ALL"],
                    "{at}: capabilities must drop ALL"
                );
                for cap in strs(&sc["capabilities"]["add"]) {
                    assert!(
                        ALLOWED_CAPABILITIES.contains(&cap),
                        "{at}: adds {cap}, outside {ALLOWED_CAPABILITIES:?}"
                    );
                    parsed_caps.push(cap.to_owned());
                }
                let seccomp = sc
                    .pointer("/seccompProfile/type")
                    .or(pod_seccomp)
                    .and_then(Value::as_str);
                assert_eq!(seccomp, Some("RuntimeDefault"), "{at}: seccomp profile");
                // Host mounts: only what the agent reads, read-only but
                // for the diagnosis report.
                for mount in c["volumeMounts"].as_array().into_iter().flatten() {
                    let volume = spec["volumes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|v| v["name"] == mount["name"])
                        .unwrap_or_else(|| panic!("{at}: mount of an undeclared volume {mount}"));
                    let Some(path) = volume.pointer("/hostPath/path").and_then(Value::as_str)
                    else {
                        continue;
                    };
                    let (_, writable) =
                        HOST_PATHS
                            .iter()
                            .find(|(p, _)| *p == path)
                            .unwrap_or_else(|| {
                                panic!("{at}: hostPath {path} is not in {HOST_PATHS:?}")
                            });
                    if !writable {
                        assert_eq!(
                            mount["readOnly"], true,
                            "{at}: hostPath {path} must be read-only"
                        );
                    }
                }
            }
        }
        // Every added capability carries a comment on its own line, and
        // the raw scan saw every `add:` list the parser saw.
        let raw_caps = capability_lines(&file_name, &raw);
        for (cap, comment, line) in &raw_caps {
            assert!(
                comment.len() >= 10,
                "{file_name}:{line}: capability {cap} needs a comment saying what needs it"
            );
        }
        let mut from_text: Vec<String> = raw_caps.into_iter().map(|(c, _, _)| c).collect();
        from_text.sort();
        parsed_caps.sort();
        assert_eq!(
            from_text, parsed_caps,
            "{file_name}: the capabilities in the text and in the parsed YAML differ"
        );
    }
    assert!(workloads >= 2, "the DaemonSet and the Job at least");
}

#[test]
fn rbac_is_read_only_on_the_contract_resources() {
    let docs = all_docs();
    let mut granted: BTreeSet<(String, String, String)> = BTreeSet::new();
    for (file, doc) in &docs {
        match kind(doc) {
            "ClusterRole" | "Role" => {}
            "RoleBinding" => panic!("{}: unexpected RoleBinding", rel(file)),
            _ => continue,
        }
        assert_eq!(
            kind(doc),
            "ClusterRole",
            "{}: one ClusterRole only",
            rel(file)
        );
        for rule in doc["rules"].as_array().expect("rules") {
            assert!(
                rule.get("nonResourceURLs").is_none() && rule.get("resourceNames").is_none(),
                "{}: {rule}",
                rel(file)
            );
            for verb in strs(&rule["verbs"]) {
                assert!(RBAC_VERBS.contains(&verb), "{}: verb {verb}", rel(file));
                for group in strs(&rule["apiGroups"]) {
                    for resource in strs(&rule["resources"]) {
                        assert!(
                            RBAC_RESOURCES.contains(&(group, resource)),
                            "{}: resource {group}/{resource} is not in the contract",
                            rel(file)
                        );
                        granted.insert((group.into(), resource.into(), verb.into()));
                    }
                }
            }
        }
    }
    let expected: BTreeSet<(String, String, String)> = RBAC_RESOURCES
        .iter()
        .flat_map(|(g, r)| {
            RBAC_VERBS
                .iter()
                .map(|v| ((*g).to_owned(), (*r).to_owned(), (*v).to_owned()))
        })
        .collect();
    assert_eq!(
        granted, expected,
        "exactly get/list/watch on the four resources"
    );

    let binding = find(&docs, "ClusterRoleBinding", "hoptrace");
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(binding["roleRef"]["name"], "hoptrace");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "hoptrace", "namespace": "hoptrace"}])
    );
    find(&docs, "ServiceAccount", "hoptrace");
}

// ------------------------------------------------------- the agent contract

#[test]
fn agent_daemonset_follows_the_agent_contract() {
    let docs = all_docs();
    let ds = find(&docs, "DaemonSet", "hoptrace-agent");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["serviceAccountName"], "hoptrace");
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    assert_eq!(spec["terminationGracePeriodSeconds"], 30);
    assert!(
        spec["tolerations"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == &json!({"operator": "Exists"}))),
        "a toleration for every taint"
    );
    let raw = read(&manifests().join("daemonset.yaml"));
    if spec["hostPID"] == true {
        assert!(
            raw.lines()
                .any(|l| l.trim_start().starts_with("# hostPID:")),
            "hostPID needs a comment saying why"
        );
    }
    let c = &spec["containers"][0];
    assert_eq!(
        strs(&c["args"]),
        [
            "agent",
            "--metrics-addr",
            "0.0.0.0:9435",
            "--node-name",
            "$(NODE_NAME)",
            "--pod-labels",
            "namespace"
        ]
    );
    assert_eq!(
        c["env"],
        json!([{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}])
    );
    assert_eq!(
        c["ports"],
        json!([{"name": "metrics", "containerPort": 9435, "protocol": "TCP"}])
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "metrics"})
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "metrics"})
    );
    for (kind, key) in [
        ("requests", "cpu"),
        ("requests", "memory"),
        ("limits", "cpu"),
        ("limits", "memory"),
    ] {
        assert!(
            c["resources"][kind][key].is_string(),
            "resources.{kind}.{key}"
        );
    }
    assert_eq!(c["securityContext"]["runAsUser"], 0);
    let tmp = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "tmp")
        .expect("an emptyDir for /tmp");
    assert!(tmp["emptyDir"].is_object());
    let netns = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/run/netns")
        .expect("/run/netns mounted");
    assert_eq!(netns["mountPropagation"], "HostToContainer");
}

#[test]
fn podmonitor_and_service_scrape_the_agents() {
    let docs = all_docs();
    let ds = find(&docs, "DaemonSet", "hoptrace-agent");
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&ds["spec"]["selector"]["matchLabels"], pod_labels);

    let service = find(&docs, "Service", "hoptrace-agent");
    assert_eq!(&service["spec"]["selector"], pod_labels);
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "metrics", "port": 9435, "targetPort": "metrics", "protocol": "TCP"}])
    );

    // The PodMonitor has no schema in kubernetes-validate: its fields are
    // checked here against the operator's PodMonitor API (monitoring.coreos.com/v1).
    let pm = find(&docs, "PodMonitor", "hoptrace-agent");
    assert_eq!(pm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pm["metadata"]["namespace"], "hoptrace");
    let spec = pm["spec"].as_object().expect("spec");
    let known_spec: BTreeSet<&str> = [
        "selector",
        "namespaceSelector",
        "podMetricsEndpoints",
        "jobLabel",
        "podTargetLabels",
    ]
    .into();
    for key in spec.keys() {
        assert!(
            known_spec.contains(key.as_str()),
            "PodMonitor spec.{key} is not a field used here"
        );
    }
    assert_eq!(&pm["spec"]["selector"]["matchLabels"], pod_labels);
    assert_eq!(
        pm["spec"]["namespaceSelector"],
        json!({"matchNames": ["hoptrace"]})
    );
    let endpoints = pm["spec"]["podMetricsEndpoints"]
        .as_array()
        .expect("podMetricsEndpoints");
    assert_eq!(endpoints.len(), 1);
    let known_endpoint: BTreeSet<&str> = [
        "port",
        "path",
        "interval",
        "scrapeTimeout",
        "honorLabels",
        "relabelings",
        "metricRelabelings",
        "scheme",
    ]
    .into();
    for (key, value) in endpoints[0].as_object().unwrap() {
        assert!(
            known_endpoint.contains(key.as_str()),
            "podMetricsEndpoints[0].{key} is not a field used here"
        );
        if matches!(key.as_str(), "interval" | "scrapeTimeout") {
            let v = value.as_str().unwrap_or("");
            assert!(
                v.len() > 1
                    && v.ends_with('s')
                    && v[..v.len() - 1].chars().all(|c| c.is_ascii_digit()),
                "{key}: {v} is not a duration such as 30s"
            );
        }
    }
    assert_eq!(
        endpoints[0]["port"],
        ds["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"]
    );
    assert_eq!(endpoints[0]["path"], "/metrics");
    assert_eq!(
        endpoints[0]["honorLabels"], true,
        "the agent's node/pod labels win"
    );
}

#[test]
fn diagnosis_job_runs_the_one_shot_trace() {
    let path = manifests().join("jobs/node-diagnosis-job.yaml");
    let raw = read(&path);
    let docs = parse_yaml(&raw, "jobs/node-diagnosis-job.yaml");
    assert_eq!(docs.len(), 1);
    let job = &docs[0];
    assert_eq!(kind(job), "Job");
    assert_eq!(job["metadata"]["namespace"], "hoptrace");
    assert_eq!(job["spec"]["backoffLimit"], 0);
    let spec = &job["spec"]["template"]["spec"];
    assert_eq!(spec["nodeName"], "NODE-NAME", "the plugin substitutes this");
    assert_eq!(spec["restartPolicy"], "Never");
    assert_eq!(spec["hostNetwork"], true);
    let c = &spec["containers"][0];
    assert_eq!(
        c["name"], "hoptrace",
        "the plugin addresses the container by name"
    );
    assert_eq!(
        strs(&c["args"]),
        [
            "diagnose",
            "--duration",
            "$(HOPTRACE_DURATION)",
            "--json",
            "/out/diagnosis.json"
        ]
    );
    let duration = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "HOPTRACE_DURATION")
        .expect("HOPTRACE_DURATION");
    assert_eq!(duration["value"], "30s");
    assert!(
        raw.contains("hoptrace.diagnosis.v1") && !raw.contains("Switches to"),
        "the Job says what it writes, and no longer promises a switch"
    );
    // Not in the base.
    let base = parse_yaml(
        &read(&manifests().join("kustomization.yaml")),
        "kustomization.yaml",
    );
    assert!(
        strs(&base[0]["resources"])
            .iter()
            .all(|r| !r.starts_with("jobs")),
        "the Job stays out of the base"
    );
}

// ------------------------------------------------------------------ PromQL

fn metric_contract(name: &str) -> Option<(&'static str, MetricType, &'static [&'static str])> {
    if let Some(m) = METRICS.iter().find(|(n, _, _)| *n == name) {
        return Some(*m);
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && let Some(m) = METRICS
                .iter()
                .find(|(n, t, _)| *n == base && *t == MetricType::Histogram)
        {
            return Some(*m);
        }
    }
    None
}

/// Labels a series of `name` carries: the contract's, `node`, the target
/// labels, and `le` for a bucket.
fn series_labels(name: &str) -> BTreeSet<&'static str> {
    let (_, _, labels) = metric_contract(name).expect("in the contract");
    let mut set: BTreeSet<&str> = labels.iter().copied().collect();
    set.insert("node");
    set.extend(TARGET_LABELS);
    if name.ends_with("_bucket") {
        set.insert("le");
    }
    set
}

/// `hoptrace_[a-z_]+` and `process_[a-z_]+` tokens of a query.
fn metric_tokens(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let mut tokens = Vec::new();
    for prefix in ["hoptrace_", "process_"] {
        let mut from = 0;
        while let Some(pos) = expr[from..].find(prefix) {
            let start = from + pos;
            let boundary = start == 0 || {
                let b = bytes[start - 1];
                !(b.is_ascii_alphanumeric() || b == b'_')
            };
            let mut end = start + prefix.len();
            while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
                end += 1;
            }
            if boundary {
                tokens.push(expr[start..end].to_owned());
            }
            from = end;
        }
    }
    tokens
}

/// Checks one query against the contract: every metric token is a contract
/// metric (with `_bucket`/`_sum`/`_count` only on histograms); it parses as
/// PromQL; every label a selector matches on, and every `by`/`on` label,
/// exists on the series it applies to; label values are the contract's.
/// Returns the metric names it selects.
fn check_query(where_: &str, query: &str) -> BTreeSet<String> {
    for token in metric_tokens(query) {
        assert!(
            metric_contract(&token).is_some(),
            "{where_}: {token} is not one of the agent's metrics ({:?})",
            METRICS.iter().map(|m| m.0).collect::<Vec<_>>()
        );
    }
    // Grafana's variables, as Prometheus would see them after substitution.
    let promql = query
        .replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h");
    let ast =
        parser::parse(&promql).unwrap_or_else(|e| panic!("{where_}: not PromQL: {e}\n{promql}"));
    let mut names = BTreeSet::new();
    walk(where_, &ast, &mut names);
    assert!(!names.is_empty(), "{where_}: selects no metric");
    names
}

/// Walks the AST; returns the labels the subtree's series can carry.
fn walk(where_: &str, expr: &Expr, names: &mut BTreeSet<String>) -> BTreeSet<String> {
    match expr {
        Expr::VectorSelector(vs) => selector(where_, vs, names),
        Expr::MatrixSelector(ms) => selector(where_, &ms.vs, names),
        Expr::Aggregate(agg) => {
            let inner = walk(where_, &agg.expr, names);
            if let Some(param) = &agg.param {
                walk(where_, param, names);
            }
            match &agg.modifier {
                Some(LabelModifier::Include(labels)) => {
                    for l in &labels.labels {
                        assert!(
                            inner.contains(l),
                            "{where_}: `by ({l})` but the aggregated series have no {l} label ({inner:?})"
                        );
                    }
                    labels.labels.iter().cloned().collect()
                }
                Some(LabelModifier::Exclude(labels)) => inner
                    .into_iter()
                    .filter(|l| !labels.labels.contains(l))
                    .collect(),
                None => BTreeSet::new(),
            }
        }
        Expr::Binary(bin) => {
            let lhs = walk(where_, &bin.lhs, names);
            let rhs = walk(where_, &bin.rhs, names);
            if let Some(LabelModifier::Include(labels)) =
                bin.modifier.as_ref().and_then(|m| m.matching.as_ref())
            {
                for l in &labels.labels {
                    assert!(
                        lhs.contains(l) && rhs.contains(l),
                        "{where_}: `on ({l})` but one side has no {l} label"
                    );
                }
            }
            lhs
        }
        Expr::Paren(p) => walk(where_, &p.expr, names),
        Expr::Unary(u) => walk(where_, &u.expr, names),
        Expr::Subquery(s) => walk(where_, &s.expr, names),
        Expr::Call(call) => {
            let mut labels = BTreeSet::new();
            for arg in &call.args.args {
                labels.extend(walk(where_, arg, names));
            }
            if call.func.name == "histogram_quantile" {
                assert!(
                    labels.contains("le"),
                    "{where_}: histogram_quantile over series without `le` (keep `le` in the `by`)"
                );
                labels.remove("le");
            }
            labels
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => BTreeSet::new(),
    }
}

fn selector(
    where_: &str,
    vs: &promql_parser::parser::VectorSelector,
    names: &mut BTreeSet<String>,
) -> BTreeSet<String> {
    let name = vs
        .name
        .clone()
        .unwrap_or_else(|| panic!("{where_}: a selector without a metric name"));
    assert!(
        metric_contract(&name).is_some(),
        "{where_}: {name} is not one of the agent's metrics"
    );
    let labels = series_labels(&name);
    for m in &vs.matchers.matchers {
        if m.name == "__name__" {
            continue;
        }
        assert!(
            labels.contains(m.name.as_str()),
            "{where_}: {name} has no label {} ({labels:?})",
            m.name
        );
        if let (MatchOp::Equal, Some((_, values))) =
            (&m.op, LABEL_VALUES.iter().find(|(l, _)| *l == m.name))
        {
            assert!(
                values.contains(&m.value.as_str()),
                "{where_}: {}=\"{}\" is not one of {values:?}",
                m.name,
                m.value
            );
        }
    }
    names.insert(name);
    labels.iter().map(|l| (*l).to_owned()).collect()
}

fn dashboard_panels(panels: &Value, out: &mut Vec<Value>) {
    for p in panels.as_array().into_iter().flatten() {
        out.push(p.clone());
        dashboard_panels(&p["panels"], out);
    }
}

#[test]
fn grafana_dashboard_uses_only_the_agent_metrics() {
    let path = manifests().join("grafana/hoptrace-dashboard.json");
    let dash: Value =
        serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("dashboard JSON: {e}"));
    let schema = dash["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert_eq!(
        dash["__inputs"][0],
        json!({"name": "DS_PROMETHEUS", "label": "Prometheus",
               "description": dash["__inputs"][0]["description"],
               "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus"})
    );
    let variables = dash["templating"]["list"].as_array().expect("templating");
    let node = variables
        .iter()
        .find(|v| v["name"] == "node")
        .expect("a `node` template variable");
    assert_eq!(node["datasource"]["uid"], "${DS_PROMETHEUS}");
    // Grafana's label_values(METRIC, LABEL): METRIC is PromQL, LABEL one of its labels.
    let query = node["query"]["query"].as_str().unwrap_or("");
    let (metric, label) = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .and_then(|q| q.rsplit_once(','))
        .unwrap_or_else(|| panic!("variable node: {query} is not label_values(METRIC, LABEL)"));
    for n in check_query("variable node", metric.trim()) {
        assert!(
            series_labels(&n).contains(label.trim()),
            "variable node: {n} has no label {label}"
        );
    }

    let mut panels = Vec::new();
    dashboard_panels(&dash["panels"], &mut panels);
    let mut queries = Vec::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or("?").to_owned();
        for t in p["targets"].as_array().into_iter().flatten() {
            assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "panel {title}");
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "panel {title}");
            let expr = t["expr"].as_str().expect("expr");
            assert!(
                expr.contains("node=~\"$node\""),
                "panel {title}: every query follows the node variable"
            );
            let names = check_query(&format!("panel {title}"), expr);
            queries.push((title.clone(), expr.to_owned(), names));
        }
    }
    let uses =
        |pred: &dyn Fn(&str, &BTreeSet<String>) -> bool| queries.iter().any(|(_, e, n)| pred(e, n));
    assert!(
        uses(&|e, n| e.contains("histogram_quantile(0.99")
            && n.contains("hoptrace_category_duration_seconds_bucket")
            && e.contains("node, category")),
        "p99 per category per node"
    );
    assert!(
        uses(&|e, _| e.contains("histogram_quantile(0.5") && e.contains("category")),
        "p50 per category"
    );
    assert!(
        uses(&|e, _| e.contains("category=\"kube-proxy\"") && e.contains("conn_state=\"new\"")),
        "kube-proxy cost per new connection"
    );
    assert!(
        uses(&|e, _| e.contains("category=\"encapsulation\"")
            && e.contains("histogram_quantile(0.99")),
        "p99 of encapsulation"
    );
    assert!(
        uses(&|e, n| n.contains("hoptrace_drops_total") && e.contains("reason, location")),
        "drops by reason and location"
    );
    for metric in ["hoptrace_events_lost_total", "hoptrace_hooks_attached"] {
        assert!(uses(&|_, n| n.contains(metric)), "a panel for {metric}");
    }
}

#[test]
fn readme_promql_examples_use_only_the_agent_metrics() {
    let readme = read(&workspace().join("README.md"));
    let mut examples = Vec::new();
    let mut block: Option<String> = None;
    for line in readme.lines() {
        match (&mut block, line.trim()) {
            (None, "```promql") => block = Some(String::new()),
            (Some(b), "```") => {
                examples.push(b.clone());
                block = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    assert!(examples.len() >= 2, "the README's ```promql examples");
    for (i, e) in examples.iter().enumerate() {
        check_query(&format!("README promql example {}", i + 1), e);
    }
}

// ----------------------------------------------------------- kubectl plugin

fn plugin() -> PathBuf {
    manifests().join("kubectl-hoptrace")
}

#[test]
fn kubectl_plugin_is_sound_and_helps() {
    let path = plugin();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&path)
            .expect("manifests/kubectl-hoptrace")
            .permissions(),
    );
    assert!(mode & 0o111 != 0, "kubectl-hoptrace must be executable");
    let out = run(Command::new("bash").arg("-n").arg(&path));
    assert!(out.status.success(), "bash -n:\n{}", text(&out));
    let out = run(Command::new(path_tool("shellcheck")).arg(&path));
    assert!(out.status.success(), "shellcheck:\n{}", text(&out));

    let out = run(Command::new(&path).arg("--help"));
    assert!(out.status.success(), "--help:\n{}", text(&out));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("diagnose NODE") && help.contains("--duration"),
        "{help}"
    );
    let out = run(Command::new(&path).args(["diagnose", "--help"]));
    assert!(out.status.success(), "diagnose --help:\n{}", text(&out));

    let out = run(Command::new(&path).arg("diagnose"));
    assert_eq!(
        out.status.code(),
        Some(2),
        "no node is a usage error:\n{}",
        text(&out)
    );
    let out = run(Command::new(&path).args(["diagnose", "n1", "--duration", "5 minutes"]));
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad duration:\n{}",
        text(&out)
    );
}

/// A PATH whose `kubectl` is the pinned one (the plugin's --local steps).
fn path_with_kubectl(first: Option<&Path>) -> String {
    let kubectl_dir = kubectl().parent().unwrap().to_path_buf();
    let mut dirs: Vec<PathBuf> = first.into_iter().map(Path::to_path_buf).collect();
    dirs.push(kubectl_dir);
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap().into_string().unwrap()
}

#[test]
fn kubectl_plugin_dry_run_renders_a_valid_job() {
    let out = run(Command::new(plugin())
        .args([
            "diagnose",
            "worker-1.example",
            "--duration",
            "2m",
            "--image",
            "registry.example/hoptrace:0.1.0",
            "--dry-run",
        ])
        .env("PATH", path_with_kubectl(None))
        .env("KUBECONFIG", "/nonexistent"));
    assert!(out.status.success(), "dry run:\n{}", text(&out));
    let rendered = String::from_utf8(out.stdout).unwrap();
    let docs = parse_yaml(&rendered, "dry run");
    assert_eq!(docs.len(), 1);
    let job = &docs[0];
    assert!(name(job).starts_with("hoptrace-diagnose-"), "{}", name(job));
    assert!(name(job).len() <= 63);
    let spec = &job["spec"]["template"]["spec"];
    assert_eq!(spec["nodeName"], "worker-1.example");
    let c = &spec["containers"][0];
    assert_eq!(c["image"], "registry.example/hoptrace:0.1.0");
    assert_eq!(
        c["args"][0], "diagnose",
        "the rendered Job runs the diagnosis"
    );
    assert!(
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == &json!({"name": "HOPTRACE_DURATION", "value": "2m"})),
        "{c}"
    );
    // The patch changed only what it names: the rest is the manifest's.
    let original = parse_yaml(
        &read(&manifests().join("jobs/node-diagnosis-job.yaml")),
        "Job manifest",
    );
    let original_spec = &original[0]["spec"]["template"]["spec"];
    let original_c = &original_spec["containers"][0];
    assert_eq!(
        c["env"].as_array().unwrap().len(),
        original_c["env"].as_array().unwrap().len()
    );
    for key in ["args", "securityContext", "volumeMounts", "resources"] {
        assert_eq!(c[key], original_c[key], "containers[0].{key}");
    }
    assert_eq!(spec["volumes"], original_spec["volumes"]);
    assert_eq!(spec["containers"].as_array().unwrap().len(), 1);
    // 120 s trace + 300 s default start allowance + 30 s to detach.
    assert_eq!(job["spec"]["activeDeadlineSeconds"], 450);
    assert_valid("dry-run Job", &docs, &validate(&[], Some(&rendered)));
}

/// A kubectl that plays a cluster: --local steps go to the real kubectl,
/// the rest answers as a Job whose container exited with $FAKE_EXIT_CODE.
const FAKE_KUBECTL: &str = r#"#!/usr/bin/env bash
echo "$*" >> "$FAKE_DIR/calls"
for arg in "$@"; do
    [ "$arg" = --local ] && exec "$REAL_KUBECTL" "$@"
done
case "$1 $2" in
    "get namespace") exit 0 ;;
    "create -f") cat > "$FAKE_DIR/created.yaml"; echo "job.batch created"; exit 0 ;;
    wait*) [ "$FAKE_EXIT_CODE" = 0 ] && exit 0; sleep 0.2; exit 1 ;;
    "get job/"*) [ "$FAKE_EXIT_CODE" = 0 ] || printf True; exit 0 ;;
    "get pods") printf hoptrace-diagnose-pod; exit 0 ;;
    "get pod") printf '%s' "$FAKE_EXIT_CODE"; exit 0 ;;
    logs*) echo "FAKE LEDGER OUTPUT"; exit 0 ;;
    delete*) exit 0 ;;
esac
echo "fake kubectl: unexpected $*" >&2
exit 99
"#;

#[test]
fn kubectl_plugin_passes_on_the_exit_status_and_cleans_up() {
    for code in [0, 3] {
        let dir = scratch(&format!("fake-{code}"));
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let fake = bin.join("kubectl");
        std::fs::write(&fake, FAKE_KUBECTL).unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let out = run(Command::new(plugin())
            .args([
                "diagnose",
                "node-a",
                "--duration",
                "1s",
                "--image",
                "registry.example/hoptrace:1",
                "--timeout",
                "20",
            ])
            .env("PATH", path_with_kubectl(Some(&bin)))
            .env("KUBECONFIG", "/nonexistent")
            .env("REAL_KUBECTL", kubectl())
            .env("FAKE_DIR", &dir)
            .env("FAKE_EXIT_CODE", code.to_string()));
        assert_eq!(
            out.status.code(),
            Some(code),
            "exit status of the diagnosis:\n{}",
            text(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("FAKE LEDGER OUTPUT"),
            "prints the Job's log:\n{}",
            text(&out)
        );
        let calls = read(&dir.join("calls"));
        let created = parse_yaml(&read(&dir.join("created.yaml")), "created Job");
        let job_name = name(&created[0]).to_owned();
        assert_eq!(created[0]["spec"]["template"]["spec"]["nodeName"], "node-a");
        assert!(
            calls
                .lines()
                .any(|l| l.starts_with(&format!("wait job/{job_name} "))),
            "waits with kubectl wait:\n{calls}"
        );
        assert!(
            calls
                .lines()
                .any(|l| l.starts_with(&format!("delete job {job_name} "))),
            "deletes the Job:\n{calls}"
        );
    }
}

// ------------------------------------------------------- Dockerfile, YAML

#[test]
fn dockerfile_passes_hadolint_and_matches_setup() {
    let dockerfile = workspace().join("Dockerfile");
    let out = run(Command::new(python_tool("hadolint"))
        .arg("--no-color")
        .arg(&dockerfile));
    assert!(out.status.success(), "hadolint:\n{}", text(&out));

    let text = read(&dockerfile);
    let setup = read(&workspace().join("xtask/src/setup.rs"));
    let linker = setup
        .lines()
        .find_map(|l| l.strip_prefix("const BPF_LINKER_VERSION: &str = \""))
        .and_then(|l| l.strip_suffix("\";"))
        .expect("BPF_LINKER_VERSION in setup.rs");
    assert!(
        text.contains(&format!("--version {linker}")),
        "the Dockerfile installs bpf-linker {linker}, as setup.rs does"
    );
    for needle in [
        "bookworm AS builder",
        "--component rust-src",
        "--features llvm-22",
        "LLVM_PREFIX=/usr/lib/llvm-22",
        "cargo build --release --locked -p hoptrace",
        "FROM debian:bookworm-slim",
        "iproute2 iptables nftables ca-certificates",
        "USER 0",
        "ENTRYPOINT [\"/usr/local/bin/hoptrace\"]",
    ] {
        assert!(text.contains(needle), "the Dockerfile lacks `{needle}`");
    }
    assert!(
        !text.contains("AYA_BUILD_SKIP=1"),
        "the image carries the kernel programs"
    );
    let ignore = read(&workspace().join(".dockerignore"));
    assert!(
        ignore.lines().any(|l| l.trim() == "target"),
        ".dockerignore leaves out target/"
    );
}

#[test]
fn manifests_pass_yamllint() {
    // comments-indentation is off: a comment that closes a block (what is
    // left out, and why) sits at the block's indentation, not its last key's.
    let config = "{extends: default, rules: {line-length: {max: 150}, document-start: disable, \
                  comments-indentation: disable}}";
    let out = run(Command::new(python_tool("yamllint"))
        .args(["--strict", "--format", "parsable", "-d", config])
        .args(yaml_files()));
    assert!(out.status.success(), "yamllint:\n{}", text(&out));
}
