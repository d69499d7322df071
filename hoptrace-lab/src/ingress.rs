//! Ingress proxies for the lab: a proxy "pod" in front of the backend.
//!
//! [`IngressKind::Builtin`] is an in-process HTTP/1.1 reverse proxy (hyper on
//! tokio) with keep-alive on both sides and a connection pool to the backend.
//! Nginx and HAProxy run as child processes from a config written into a temp dir (pid
//! file and error log there too, nothing else on disk); the caller starts
//! them where it wants, e.g. on a thread inside the pod's network namespace
//! (a forked child inherits the namespace of the thread that forked it).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;

use crate::servers::{ClientConnection, ClientError, error_response, http1_server, read_body};

/// Most idle backend connections the builtin proxy keeps.
const MAX_IDLE_BACKEND: usize = 256;
/// How long the builtin proxy waits to connect to the backend.
const BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Which proxy sits in front of the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IngressKind {
    /// Clients talk to the backend directly.
    None,
    /// The lab's own reverse proxy, in process.
    Builtin,
    /// nginx as a child process ([`ExternalProxy`]).
    Nginx,
    /// HAProxy as a child process ([`ExternalProxy`]).
    Haproxy,
}

impl IngressKind {
    /// Every kind, in the order `--help` lists them.
    pub const ALL: [IngressKind; 4] = [
        IngressKind::None,
        IngressKind::Builtin,
        IngressKind::Nginx,
        IngressKind::Haproxy,
    ];

    /// The name on the command line and in the lab document.
    pub const fn name(self) -> &'static str {
        match self {
            IngressKind::None => "none",
            IngressKind::Builtin => "builtin",
            IngressKind::Nginx => "nginx",
            IngressKind::Haproxy => "haproxy",
        }
    }

    /// Executable and Debian package of an external proxy.
    pub fn external_tool(self) -> Option<(&'static str, &'static str)> {
        match self {
            IngressKind::Nginx => Some(("nginx", "nginx-light")),
            IngressKind::Haproxy => Some(("haproxy", "haproxy")),
            IngressKind::None | IngressKind::Builtin => None,
        }
    }
}

impl std::fmt::Display for IngressKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for IngressKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown ingress {s:?} (none, builtin, nginx, haproxy)"))
    }
}

/// Errors of the ingress proxies.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// The proxy's executable is not installed.
    #[error("`{tool}` is not installed (install the Debian package `{package}`)")]
    MissingTool {
        /// Executable looked for.
        tool: &'static str,
        /// Debian package that provides it.
        package: &'static str,
    },
    /// The kind runs no external process.
    #[error("ingress kind {0:?} is not an external proxy")]
    NotExternal(IngressKind),
    /// `--proxy-delay` for a proxy that cannot hold requests.
    #[error("--proxy-delay works with --ingress builtin or haproxy, not {0}")]
    NoDelay(IngressKind),
    /// `--proxy-cpus`: more CPUs than this process may run on, or the
    /// kernel refused the affinity.
    #[error("cannot pin the proxy to {wanted} CPU(s): {detail}")]
    Cpus {
        /// CPUs asked for.
        wanted: usize,
        /// Why not.
        detail: String,
    },
    /// `--proxy-cpu-limit` could not be set up.
    #[error("--proxy-cpu-limit: {0}")]
    CpuLimit(#[from] crate::cpulimit::CpuLimitError),
    /// The temp dir or config file could not be written.
    #[error("cannot write the proxy config: {0}")]
    Config(#[source] io::Error),
    /// The std listener could not be handed to tokio.
    #[error("cannot use the listening socket: {0}")]
    Socket(#[source] io::Error),
    /// Starting the process failed.
    #[error("cannot start {tool}: {source}")]
    Spawn {
        /// Executable.
        tool: &'static str,
        /// Underlying error.
        source: io::Error,
    },
    /// The process exited before it listened.
    #[error("{tool} exited during startup ({status}); its log says: {log}")]
    Exited {
        /// Executable.
        tool: &'static str,
        /// Exit status.
        status: std::process::ExitStatus,
        /// Tail of its stderr and error log.
        log: String,
    },
    /// The process did not accept connections in time.
    #[error("{tool} did not accept connections on {addr} within {timeout:?}")]
    NotReady {
        /// Executable.
        tool: &'static str,
        /// Listen address probed.
        addr: SocketAddr,
        /// Time waited.
        timeout: Duration,
    },
}

/// Serves the builtin reverse proxy on `listener`, forwarding to `backend`,
/// until `stop` completes. Must be called inside a tokio runtime; backend
/// connections are opened by the runtime's threads.
///
/// Downstream it is an HTTP/1.1 server (keep-alive, `Connection: close` and
/// HTTP/1.0 honoured); upstream it keeps up to 256 idle keep-alive
/// connections to `backend` (connect timeout 3 s). Bodies are buffered
/// whole (at most 16 MiB each way); hop-by-hop headers are not forwarded.
/// A request that cannot be forwarded (backend refuses, times out, resets
/// or answers nonsense) gets `502 Bad Gateway` with `Connection: close`; a
/// request body that cannot be read gets `400 Bad Request`.
///
/// # Errors
/// [`IngressError::Socket`] when the listener cannot be made non-blocking
/// or registered with the runtime.
pub async fn serve_builtin_proxy(
    listener: std::net::TcpListener,
    backend: SocketAddr,
    stop: impl Future<Output = ()>,
) -> Result<(), IngressError> {
    serve_builtin_proxy_with(listener, backend, stop, Duration::ZERO, Arc::default()).await
}

/// Names the calling thread (`comm`, truncated to 15 bytes), so the
/// request timeline tells the builtin proxy's thread from the lab's others.
pub fn name_this_thread(name: &str) {
    if let Ok(name) = std::ffi::CString::new(&name.as_bytes()[..name.len().min(15)]) {
        let _ = nix::sys::prctl::set_name(&name);
    }
}

/// `--proxy-cpus N`: the first `n` CPUs this process may run on, as an
/// affinity mask for the proxy, and their numbers.
///
/// # Errors
/// [`IngressError::Cpus`] when `n` is 0 or more than the CPUs allowed.
pub fn proxy_cpu_set(n: usize) -> Result<(nix::sched::CpuSet, Vec<usize>), IngressError> {
    use nix::sched::{CpuSet, sched_getaffinity};
    let err = |detail: String| IngressError::Cpus { wanted: n, detail };
    let allowed =
        sched_getaffinity(nix::unistd::Pid::from_raw(0)).map_err(|e| err(e.to_string()))?;
    let mut cpus: Vec<usize> = (0..CpuSet::count())
        .filter(|&c| allowed.is_set(c).unwrap_or(false))
        .collect();
    if n == 0 || cpus.len() < n {
        return Err(err(format!(
            "this process may run on {} CPU(s)",
            cpus.len()
        )));
    }
    cpus.truncate(n);
    let mut set = CpuSet::new();
    for &c in &cpus {
        set.set(c).map_err(|e| err(e.to_string()))?;
    }
    Ok((set, cpus))
}

/// Pins the calling thread to `set` (the builtin proxy's thread).
///
/// # Errors
/// [`IngressError::Cpus`] when the kernel refuses.
pub fn pin_this_thread(set: &nix::sched::CpuSet) -> Result<(), IngressError> {
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), set).map_err(|e| {
        IngressError::Cpus {
            wanted: (0..nix::sched::CpuSet::count())
                .filter(|&c| set.is_set(c).unwrap_or(false))
                .count(),
            detail: e.to_string(),
        }
    })
}

/// What the builtin proxy measured of its own hold (`--proxy-delay`).
#[derive(Debug, Default)]
pub struct ProxyHold {
    /// Requests held.
    pub count: std::sync::atomic::AtomicU64,
    /// Sum of the holds, ns (from before the timer to after it fired).
    pub total_ns: std::sync::atomic::AtomicU64,
}

impl ProxyHold {
    /// Mean hold per request in µs, `None` before any request was held.
    pub fn mean_us(&self) -> Option<f64> {
        use std::sync::atomic::Ordering::Relaxed;
        let count = self.count.load(Relaxed);
        (count > 0).then(|| self.total_ns.load(Relaxed) as f64 / count as f64 / 1000.0)
    }
}

/// [`serve_builtin_proxy`] that holds every request `delay` (a tokio
/// timer: it rounds up to the timer's millisecond tick) after reading it
/// and before forwarding it, and adds each hold it measured to `hold`.
///
/// # Errors
/// As [`serve_builtin_proxy`].
pub async fn serve_builtin_proxy_with(
    listener: std::net::TcpListener,
    backend: SocketAddr,
    stop: impl Future<Output = ()>,
    delay: Duration,
    hold: Arc<ProxyHold>,
) -> Result<(), IngressError> {
    let pool = Arc::new(BackendPool {
        backend,
        idle: Mutex::new(Vec::new()),
        delay,
        hold,
    });
    crate::servers::accept_connections(listener, stop, move |client| {
        let pool = Arc::clone(&pool);
        async move {
            let service = hyper::service::service_fn(move |request| {
                let pool = Arc::clone(&pool);
                async move { Ok::<_, Infallible>(pool.forward(request).await) }
            });
            let _ = http1_server()
                .serve_connection(TokioIo::new(client), service)
                .await;
        }
    })
    .await
    .map_err(IngressError::Socket)
}

/// Why a request could not be forwarded (answered with 502).
#[derive(Debug, thiserror::Error)]
enum UpstreamError {
    /// The backend did not accept a connection within the connect timeout.
    #[error("connecting to the backend timed out")]
    ConnectTimeout,
    /// Connecting to the backend failed.
    #[error("cannot connect to the backend: {0}")]
    Connect(#[source] io::Error),
    /// The exchange with the backend failed.
    #[error("backend exchange failed: {0}")]
    Exchange(#[source] ClientError),
}

/// The parts of a request to replay on a second backend connection.
struct Forward {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Forward {
    fn request(&self) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// Idle keep-alive connections to the backend.
struct BackendPool {
    backend: SocketAddr,
    idle: Mutex<Vec<ClientConnection>>,
    /// Hold before forwarding (`--proxy-delay`); zero: none.
    delay: Duration,
    hold: Arc<ProxyHold>,
}

impl BackendPool {
    /// Forwards one downstream request and turns the backend's reply (or
    /// the failure to get one) into the downstream response.
    async fn forward(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        let Ok(body) = read_body(body).await else {
            return error_response(StatusCode::BAD_REQUEST);
        };
        let mut headers = parts.headers;
        remove_hop_by_hop(&mut headers);
        if !headers.contains_key(header::HOST) {
            // HTTP/1.0 clients may leave it out; HTTP/1.1 needs it.
            if let Ok(host) = HeaderValue::from_str(&self.backend.to_string()) {
                headers.insert(header::HOST, host);
            }
        }
        let forward = Forward {
            method: parts.method,
            uri: parts.uri,
            headers,
            body,
        };
        if !self.delay.is_zero() {
            use std::sync::atomic::Ordering::Relaxed;
            let started = std::time::Instant::now();
            tokio::time::sleep(self.delay).await;
            self.hold.count.fetch_add(1, Relaxed);
            self.hold
                .total_ns
                .fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
        }
        match self.exchange(&forward).await {
            Ok(reply) => {
                let (mut parts, body) = reply.into_parts();
                remove_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, Full::new(body))
            }
            Err(_) => error_response(StatusCode::BAD_GATEWAY),
        }
    }

    /// Sends the request on a pooled connection when there is one, else on a
    /// new one; a pooled connection that fails (the backend may have closed
    /// it meanwhile) is dropped and the request retried once on a new one.
    async fn exchange(&self, forward: &Forward) -> Result<Response<Bytes>, UpstreamError> {
        if let Some(mut connection) = self.take_idle()
            && let Ok(reply) = connection.exchange(forward.request()).await
        {
            self.put_idle(connection);
            return Ok(reply);
        }
        let mut connection = self.connect().await?;
        let reply = connection
            .exchange(forward.request())
            .await
            .map_err(UpstreamError::Exchange)?;
        self.put_idle(connection);
        Ok(reply)
    }

    /// The most recently used idle connection that is still open.
    fn take_idle(&self) -> Option<ClientConnection> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(connection) = idle.pop() {
            if !connection.sender.is_closed() {
                return Some(connection);
            }
        }
        None
    }

    /// Keeps `connection` for later unless it is closing or the pool is full.
    /// One whose reply ended it (`Connection: close`) is found closed later.
    fn put_idle(&self, connection: ClientConnection) {
        if connection.sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE_BACKEND
        {
            idle.push(connection);
        }
    }

    async fn connect(&self) -> Result<ClientConnection, UpstreamError> {
        let stream =
            tokio::time::timeout(BACKEND_CONNECT_TIMEOUT, TcpStream::connect(self.backend))
                .await
                .map_err(|_| UpstreamError::ConnectTimeout)?
                .map_err(UpstreamError::Connect)?;
        ClientConnection::start(stream)
            .await
            .map_err(UpstreamError::Exchange)
    }
}

/// Removes the headers that describe one hop (RFC 9110 §7.6.1): the
/// `Connection` header and every header it names, `Keep-Alive`,
/// `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding` and `Upgrade`.
/// Each hop frames bodies and decides about keep-alive on its own.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// Finds an executable named `tool` in `PATH`, `/usr/sbin` or `/sbin`.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(tool))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// An nginx or HAProxy set up to run in front of a backend: its temp dir
/// (removed on drop) with the config, and the command line to start it.
#[derive(Debug)]
pub struct ExternalProxy {
    /// nginx or haproxy.
    pub kind: IngressKind,
    /// Address it listens on.
    pub listen: SocketAddr,
    /// Backend it forwards to.
    pub backend: SocketAddr,
    /// Config file inside the temp dir.
    pub config_path: PathBuf,
    /// Full command line, executable first (foreground mode).
    pub argv: Vec<String>,
    dir: tempfile::TempDir,
    /// `--proxy-cpus`: the affinity the process starts with.
    cpus: Option<nix::sched::CpuSet>,
    /// `--proxy-cpu-limit`: the `cgroup.procs` the process moves itself
    /// into before `exec` (its workers inherit it).
    cgroup_procs: Option<std::ffi::CString>,
}

impl ExternalProxy {
    /// Writes the config for `kind` and resolves its executable. Fails with
    /// [`IngressError::MissingTool`] when the executable is not installed.
    pub fn prepare(
        kind: IngressKind,
        listen: SocketAddr,
        backend: SocketAddr,
    ) -> Result<Self, IngressError> {
        Self::prepare_with_delay(kind, listen, backend, Duration::ZERO)
    }

    /// [`ExternalProxy::prepare`] with a hold per request (`--proxy-delay`):
    /// HAProxy runs a Lua `http-request` action that calls
    /// `core.msleep(ms)` (whole milliseconds, at least 1); nginx has no
    /// delay (its Debian build has no sleep without an extra module) and
    /// fails with [`IngressError::NoDelay`].
    ///
    /// # Errors
    /// As [`ExternalProxy::prepare`]; [`IngressError::NoDelay`] for nginx
    /// with a delay.
    pub fn prepare_with_delay(
        kind: IngressKind,
        listen: SocketAddr,
        backend: SocketAddr,
        delay: Duration,
    ) -> Result<Self, IngressError> {
        if !delay.is_zero() && kind != IngressKind::Haproxy {
            return Err(IngressError::NoDelay(kind));
        }
        let (tool, package) = kind
            .external_tool()
            .ok_or(IngressError::NotExternal(kind))?;
        let executable = find_tool(tool).ok_or(IngressError::MissingTool { tool, package })?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("hoptrace-{tool}-"))
            .tempdir()
            .map_err(IngressError::Config)?;
        let dir_path = dir.path();
        let executable = executable.display().to_string();
        let (config_path, config, argv) = match kind {
            IngressKind::Nginx => {
                let config_path = dir_path.join("nginx.conf");
                let argv = vec![
                    executable,
                    "-p".to_owned(),
                    format!("{}/", dir_path.display()),
                    "-e".to_owned(),
                    dir_path.join("error.log").display().to_string(),
                    "-c".to_owned(),
                    config_path.display().to_string(),
                    "-g".to_owned(),
                    "daemon off;".to_owned(),
                ];
                (config_path, nginx_config(listen, backend, dir_path), argv)
            }
            _ => {
                let config_path = dir_path.join("haproxy.cfg");
                let argv = vec![
                    executable,
                    "-f".to_owned(),
                    config_path.display().to_string(),
                    "-db".to_owned(),
                ];
                let mut config = haproxy_config(listen, backend, dir_path);
                if !delay.is_zero() {
                    let lua = dir_path.join("delay.lua");
                    std::fs::write(&lua, haproxy_delay_lua(delay)).map_err(IngressError::Config)?;
                    config = config
                        .replace(
                            "    nbthread 1\n",
                            &format!("    nbthread 1\n    lua-load {}\n", lua.display()),
                        )
                        .replace(
                            "    default_backend hoptrace_backend\n",
                            "    http-request lua.hoptrace_delay\n    default_backend hoptrace_backend\n",
                        );
                }
                (config_path, config, argv)
            }
        };
        std::fs::write(&config_path, config).map_err(IngressError::Config)?;
        Ok(Self {
            kind,
            listen,
            backend,
            config_path,
            argv,
            dir,
            cpus: None,
            cgroup_procs: None,
        })
    }

    /// The temp dir holding config, pid file and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `--proxy-cpus`: runs `workers` nginx worker processes or HAProxy
    /// threads (one per CPU it is pinned to) instead of one, and pins the
    /// process and everything it starts to `cpus` (set before `exec`, so
    /// every worker and thread inherits it).
    ///
    /// # Errors
    /// [`IngressError::Config`] when the config cannot be rewritten.
    pub fn pin(&mut self, cpus: nix::sched::CpuSet, workers: usize) -> Result<(), IngressError> {
        let config = std::fs::read_to_string(&self.config_path).map_err(IngressError::Config)?;
        let config = config
            .replace(
                "worker_processes 1;",
                &format!("worker_processes {workers};"),
            )
            .replace("    nbthread 1\n", &format!("    nbthread {workers}\n"));
        std::fs::write(&self.config_path, config).map_err(IngressError::Config)?;
        self.cpus = Some(cpus);
        Ok(())
    }

    /// `--proxy-cpu-limit`: the process starts inside `limit` (it moves
    /// itself there before `exec`, so every worker it forks is limited too).
    pub fn limit(&mut self, limit: &crate::cpulimit::CpuLimit) {
        use std::os::unix::ffi::OsStrExt as _;
        self.cgroup_procs = std::ffi::CString::new(limit.procs_file().as_os_str().as_bytes()).ok();
    }

    /// Starts the proxy (stdout/stderr to files in the temp dir). The process
    /// is killed when the returned guard drops.
    pub fn spawn(self) -> Result<ProxyProcess, IngressError> {
        let tool = self.tool();
        let stdout =
            std::fs::File::create(self.dir().join("stdout.log")).map_err(IngressError::Config)?;
        let stderr =
            std::fs::File::create(self.dir().join("stderr.log")).map_err(IngressError::Config)?;
        let mut command = Command::new(&self.argv[0]);
        command
            .args(&self.argv[1..])
            // Its own process group, so the guard can stop the workers too.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        if let Some(procs) = self.cgroup_procs.clone() {
            // SAFETY: the closure runs in the forked child before exec and
            // makes only open(2), write(2) and close(2) on memory prepared
            // before the fork; it allocates nothing and touches no lock.
            unsafe {
                command.pre_exec(move || {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // "0": the writing process itself (cgroup-v1.rst, cgroup-v2.rst).
                    let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                    let error = std::io::Error::last_os_error();
                    libc::close(fd);
                    if written == 1 { Ok(()) } else { Err(error) }
                });
            }
        }
        if let Some(cpus) = self.cpus {
            // SAFETY: the closure runs in the forked child before exec and
            // only makes one syscall (sched_setaffinity on itself), which is
            // async-signal-safe; it allocates nothing and touches no lock.
            unsafe {
                command.pre_exec(move || {
                    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus)
                        .map_err(std::io::Error::from)
                });
            }
        }
        let child = command
            .spawn()
            .map_err(|source| IngressError::Spawn { tool, source })?;
        Ok(ProxyProcess { child, proxy: self })
    }

    fn tool(&self) -> &'static str {
        self.kind.external_tool().map_or("proxy", |(tool, _)| tool)
    }
}

/// A running external proxy; killed (and reaped) on drop.
#[derive(Debug)]
pub struct ProxyProcess {
    child: Child,
    proxy: ExternalProxy,
}

impl ProxyProcess {
    /// Process id of the proxy's main process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The prepared proxy (config, dir).
    pub fn proxy(&self) -> &ExternalProxy {
        &self.proxy
    }

    /// Waits until the proxy accepts TCP connections on its listen address.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), IngressError> {
        let tool = self.proxy.tool();
        let addr = self.proxy.listen;
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(IngressError::Exited {
                    tool,
                    status,
                    log: self.log_tail(),
                });
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                return Err(IngressError::NotReady {
                    tool,
                    addr,
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Last lines of the proxy's stderr and error log.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        for name in ["stderr.log", "error.log"] {
            if let Ok(content) = std::fs::read_to_string(self.proxy.dir().join(name)) {
                text.push_str(&content);
            }
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl ProxyProcess {
    /// Sends `signal` to the proxy's process group (master and workers).
    fn signal_group(&self, signal: nix::sys::signal::Signal) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), signal);
        }
    }
}

impl Drop for ProxyProcess {
    /// SIGTERM to the group (nginx's master then stops its workers before it
    /// exits); if the main process is not gone within 2 s, SIGKILL the group.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        self.signal_group(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Still running, so not reaped: its pid still names our group.
        self.signal_group(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// nginx config: one worker, `listen` → upstream `backend` with keepalive,
/// access log off, error log / pid / temp files in `dir`. Started with
/// `-g 'daemon off;'`, so `daemon` is not set here.
pub fn nginx_config(listen: SocketAddr, backend: SocketAddr, dir: &Path) -> String {
    let dir = dir.display();
    format!(
        "# Written by hoptrace for a lab ingress; removed with its temp dir.
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream hoptrace_backend {{
        server {backend};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {listen} reuseport;
        location / {{
            proxy_pass http://hoptrace_backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffering off;
        }}
    }}
}}
"
    )
}

/// HAProxy address syntax (`ipv6@` prefix for IPv6).
fn haproxy_addr(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(v4) => v4.to_string(),
        SocketAddr::V6(v6) => format!("ipv6@{}:{}", v6.ip(), v6.port()),
    }
}

/// HAProxy config: HTTP mode, `listen` → `backend` with keep-alive and
/// connection reuse, no logging, pid file in `dir`. Started with `-db`
/// (foreground).
/// The Lua action that holds every request `delay` (rounded up to whole
/// milliseconds, at least 1) in HAProxy: `core.msleep` yields the task,
/// so other requests go on meanwhile.
pub fn haproxy_delay_lua(delay: Duration) -> String {
    let ms = delay.as_micros().div_ceil(1000).max(1);
    format!(
        "-- Written by hoptrace for a lab ingress: hold every request {ms} ms.
core.register_action(\"hoptrace_delay\", {{ \"http-req\" }}, function(txn)
    core.msleep({ms})
end)
"
    )
}

pub fn haproxy_config(listen: SocketAddr, backend: SocketAddr, dir: &Path) -> String {
    format!(
        "# Written by hoptrace for a lab ingress; removed with its temp dir.
global
    pidfile {dir}/haproxy.pid
    maxconn 8192
    nbthread 1

defaults
    mode http
    no log
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend hoptrace_in
    bind {listen}
    default_backend hoptrace_backend

backend hoptrace_backend
    http-reuse always
    server backend0 {backend}
",
        dir = dir.display(),
        listen = haproxy_addr(listen),
        backend = haproxy_addr(backend),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::{LoadMode, LoadSpec, run_load};
    use std::sync::atomic::Ordering;

    use crate::test_support::{LoopbackHttp, runtime, start_http};

    fn free_port_addr() -> SocketAddr {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("addr")
    }

    fn load_through(
        rt: &tokio::runtime::Runtime,
        proxy: SocketAddr,
        requests: u64,
    ) -> crate::loadgen::LoadResult {
        let spec = LoadSpec {
            mode: LoadMode::HttpKeepAlive,
            connections: 2,
            rate: requests as f64 * 2.0,
            duration: Duration::from_millis(500),
            ..LoadSpec::default()
        };
        rt.block_on(run_load(&spec, proxy, None)).expect("load")
    }

    #[test]
    fn nginx_config_has_listen_upstream_keepalive_and_temp_paths() {
        let dir = Path::new("/tmp/ht-x");
        let config = nginx_config(
            "127.0.0.1:8080".parse().unwrap(),
            "10.0.0.5:80".parse().unwrap(),
            dir,
        );
        assert!(config.contains("listen 127.0.0.1:8080 reuseport;"));
        assert!(config.contains("server 10.0.0.5:80;"));
        assert!(config.contains("keepalive 64;"));
        assert!(config.contains("proxy_http_version 1.1;"));
        assert!(config.contains("pid /tmp/ht-x/nginx.pid;"));
        assert!(config.contains("error_log /tmp/ht-x/error.log"));
        assert!(config.contains("access_log off;"));
        assert!(!config.contains("daemon"), "daemon off comes from -g");
        // Braces balance (format! escaping mistakes would break the file).
        assert_eq!(config.matches('{').count(), config.matches('}').count());
        let v6 = nginx_config(
            "[::1]:81".parse().unwrap(),
            "[fd00::2]:80".parse().unwrap(),
            dir,
        );
        assert!(v6.contains("listen [::1]:81 reuseport;"));
        assert!(v6.contains("server [fd00::2]:80;"));
    }

    #[test]
    fn haproxy_delay_is_a_lua_action_in_whole_milliseconds() {
        let lua = haproxy_delay_lua(Duration::from_micros(2500));
        assert!(lua.contains("core.msleep(3)"), "{lua}");
        assert!(lua.contains("register_action(\"hoptrace_delay\""));
        let proxy = ExternalProxy::prepare_with_delay(
            IngressKind::Haproxy,
            free_port_addr(),
            free_port_addr(),
            Duration::from_millis(2),
        );
        if let Ok(proxy) = proxy {
            let config = std::fs::read_to_string(&proxy.config_path).unwrap();
            assert!(config.contains("lua-load"), "{config}");
            assert!(
                config.contains("http-request lua.hoptrace_delay"),
                "{config}"
            );
        }
        assert!(matches!(
            ExternalProxy::prepare_with_delay(
                IngressKind::Nginx,
                free_port_addr(),
                free_port_addr(),
                Duration::from_millis(2)
            ),
            Err(IngressError::NoDelay(IngressKind::Nginx))
        ));
    }

    #[test]
    fn haproxy_config_has_bind_server_and_reuse() {
        let dir = Path::new("/tmp/ht-y");
        let config = haproxy_config(
            "127.0.0.1:8081".parse().unwrap(),
            "10.0.0.5:80".parse().unwrap(),
            dir,
        );
        assert!(config.contains("bind 127.0.0.1:8081\n"));
        assert!(config.contains("server backend0 10.0.0.5:80\n"));
        assert!(config.contains("pidfile /tmp/ht-y/haproxy.pid"));
        assert!(config.contains("mode http"));
        assert!(config.contains("http-reuse always"));
        let v6 = haproxy_config(
            "[::1]:81".parse().unwrap(),
            "[fd00::2]:80".parse().unwrap(),
            dir,
        );
        assert!(v6.contains("bind ipv6@::1:81\n"));
        assert!(v6.contains("server backend0 ipv6@fd00::2:80\n"));
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("x"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("close, X-Hop"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        remove_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-length", "host"]);
        assert_eq!(headers[header::HOST], "x");
    }

    #[test]
    fn kinds_and_missing_tools() {
        assert!(matches!(
            ExternalProxy::prepare(IngressKind::Builtin, free_port_addr(), free_port_addr()),
            Err(IngressError::NotExternal(IngressKind::Builtin))
        ));
        assert_eq!(
            IngressKind::Nginx.external_tool(),
            Some(("nginx", "nginx-light"))
        );
        assert!(find_tool("hoptrace-no-such-tool").is_none());
        assert!(find_tool("sh").is_some());
        let error = IngressError::MissingTool {
            tool: "haproxy",
            package: "haproxy",
        };
        assert!(error.to_string().contains("Debian package `haproxy`"));
    }

    #[test]
    fn builtin_proxy_pools_backend_connections() {
        let rt = runtime();
        let LoopbackHttp {
            addr: backend,
            stats,
            stop: stop_backend,
            ..
        } = start_http(&rt, None);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let proxy = listener.local_addr().expect("addr");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = rt.spawn(serve_builtin_proxy(listener, backend, async {
            let _ = stop_rx.await;
        }));
        let result = load_through(&rt, proxy, 100);
        assert_eq!(result.ok, 100, "{result:?}");
        assert_eq!(stats.requests.load(Ordering::Relaxed), 100);
        // Two client connections never need more than two backend ones.
        let accepted = stats.accepted.load(Ordering::Relaxed);
        assert!((1..=2).contains(&accepted), "backend accepted {accepted}");
        stop_tx.send(()).expect("stop");
        rt.block_on(server).expect("join").expect("proxy");
        let _ = stop_backend.send(());
    }

    #[test]
    fn builtin_proxy_answers_502_when_backend_is_down() {
        use std::io::{Read, Write};
        let rt = runtime();
        let dead_backend = free_port_addr();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let proxy = listener.local_addr().expect("addr");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(serve_builtin_proxy(listener, dead_backend, async {
            let _ = stop_rx.await;
        }));
        let mut client = std::net::TcpStream::connect(proxy).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let mut reply = String::new();
        client.read_to_string(&mut reply).expect("read");
        assert!(reply.starts_with("HTTP/1.1 502"), "{reply}");
        let _ = stop_tx.send(());
    }

    /// Sends `raw` on a new connection to `addr` and reads until it closes
    /// (at most 5 s).
    fn exchange_until_close(addr: SocketAddr, raw: &[u8]) -> String {
        use std::io::{Read, Write};
        let mut client = std::net::TcpStream::connect(addr).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        client.write_all(raw).expect("write");
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).expect("read until close");
        String::from_utf8(reply).expect("utf8")
    }

    /// The builtin proxy on a loopback port in front of `backend`.
    fn start_proxy(
        rt: &tokio::runtime::Runtime,
        backend: SocketAddr,
    ) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let proxy = listener.local_addr().expect("addr");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(serve_builtin_proxy(listener, backend, async {
            let _ = stop_rx.await;
        }));
        (proxy, stop_tx)
    }

    #[test]
    fn builtin_proxy_reuses_backend_connections_across_client_connections() {
        let rt = runtime();
        let LoopbackHttp {
            addr: backend,
            stats,
            stop: stop_backend,
            ..
        } = start_http(&rt, None);
        let (proxy, stop_proxy) = start_proxy(&rt, backend);
        // Five clients one after another, each closing its connection: the
        // `close` is the client's hop only, the backend connection stays.
        for _ in 0..5 {
            let reply = exchange_until_close(
                proxy,
                b"GET /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            );
            assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
            assert!(reply.contains("Connection: close\r\n"), "{reply}");
            assert!(reply.ends_with(std::str::from_utf8(crate::servers::HTTP_BODY).unwrap()));
        }
        assert_eq!(stats.requests.load(Ordering::Relaxed), 5);
        assert_eq!(
            stats.accepted.load(Ordering::Relaxed),
            1,
            "one pooled backend connection"
        );
        let _ = stop_proxy.send(());
        let _ = stop_backend.send(());
    }

    /// A backend on loopback that, for each of up to `connections`
    /// connections, reads one request head and answers it with `reply` (or
    /// nothing when empty), then closes. It stops accepting after 10 s.
    /// Returns its address and the accept count.
    fn scripted_backend(
        connections: usize,
        reply: &'static [u8],
    ) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        listener.set_nonblocking(true).expect("nonblocking");
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut served = 0;
            while served < connections && Instant::now() < deadline {
                let Ok((mut stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                served += 1;
                count.fetch_add(1, Ordering::Relaxed);
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(reply);
            }
        });
        (addr, accepted)
    }

    #[test]
    fn builtin_proxy_answers_502_when_the_backend_fails_the_exchange() {
        let rt = runtime();
        for reply in [&b""[..], b"this is not HTTP\r\n\r\n"] {
            // Accepts, then closes without an answer / answers garbage.
            let (backend, accepted) = scripted_backend(1, reply);
            let (proxy, stop_proxy) = start_proxy(&rt, backend);
            let reply_text = exchange_until_close(proxy, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            assert!(reply_text.starts_with("HTTP/1.1 502"), "{reply_text}");
            assert!(reply_text.contains("Connection: close\r\n"), "{reply_text}");
            assert_eq!(accepted.load(Ordering::Relaxed), 1);
            let _ = stop_proxy.send(());
        }
    }

    #[test]
    fn builtin_proxy_replaces_connections_the_backend_closed() {
        let rt = runtime();
        // Answers as if keeping the connection alive, but closes it after
        // every reply: each pooled connection goes stale.
        let (backend, accepted) =
            scripted_backend(3, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let (proxy, stop_proxy) = start_proxy(&rt, backend);
        let spec = LoadSpec {
            mode: LoadMode::HttpKeepAlive,
            connections: 1,
            rate: 10.0,
            duration: Duration::from_millis(300),
            ..LoadSpec::default()
        };
        let result = rt.block_on(run_load(&spec, proxy, None)).expect("load");
        assert_eq!(result.ok, 3, "{result:?}");
        assert_eq!(accepted.load(Ordering::Relaxed), 3);
        let _ = stop_proxy.send(());
    }

    #[test]
    fn builtin_proxy_forwards_backend_statuses_and_bodies() {
        let rt = runtime();
        let (backend, _) = scripted_backend(
            1,
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nX-From: backend\r\n\r\nbusy",
        );
        let (proxy, stop_proxy) = start_proxy(&rt, backend);
        let reply = exchange_until_close(
            proxy,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert!(
            reply.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{reply}"
        );
        assert!(reply.contains("X-From: backend\r\n"), "{reply}");
        assert!(reply.ends_with("\r\n\r\nbusy"), "{reply}");
        let _ = stop_proxy.send(());
    }

    /// Runs nginx or haproxy on loopback in front of the builtin backend, if installed.
    fn external_proxy_serves(kind: IngressKind) {
        let (tool, package) = kind.external_tool().expect("external");
        if find_tool(tool).is_none() {
            println!("skipping: {tool} not installed (apt-get install -y {package})");
            return;
        }
        let rt = runtime();
        let LoopbackHttp {
            addr: backend,
            stats,
            stop: stop_backend,
            ..
        } = start_http(&rt, None);
        let listen = free_port_addr();
        let prepared = ExternalProxy::prepare(kind, listen, backend).expect("prepare");
        let dir = prepared.dir().to_path_buf();
        let mut process = prepared.spawn().expect("spawn");
        process
            .wait_ready(Duration::from_secs(10))
            .unwrap_or_else(|error| panic!("{error}"));
        let result = load_through(&rt, listen, 100);
        assert_eq!(result.ok, 100, "{result:?}; log: {}", process.log_tail());
        assert_eq!(stats.requests.load(Ordering::Relaxed), 100);
        // Upstream keep-alive: far fewer backend connections than requests.
        let accepted = stats.accepted.load(Ordering::Relaxed);
        assert!(accepted < 20, "backend accepted {accepted} connections");
        drop(process);
        assert!(
            std::net::TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_err(),
            "proxy still listening after drop"
        );
        drop(stop_backend);
        // The temp dir goes with the guard.
        assert!(!dir.exists());
    }

    #[test]
    fn nginx_in_front_of_backend() {
        external_proxy_serves(IngressKind::Nginx);
    }

    #[test]
    fn haproxy_in_front_of_backend() {
        external_proxy_serves(IngressKind::Haproxy);
    }
}

/// Removes the temp directories (`$TMPDIR/hoptrace-nginx-*`,
/// `hoptrace-haproxy-*`: config, logs, pid file) of external proxies whose
/// lab is gone (killed before it could clean up), for `lab --cleanup`: a
/// directory no live process names in its command line (nginx's `-p DIR`,
/// HAProxy's `-f DIR/haproxy.cfg`). Returns the directories removed.
pub fn remove_stale_dirs() -> Vec<PathBuf> {
    remove_stale_dirs_in(&std::env::temp_dir(), &live_command_lines())
}

/// The command lines of live processes (zombies have none), NUL-joined.
fn live_command_lines() -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|line| !line.is_empty())
        .map(|line| String::from_utf8_lossy(&line).into_owned())
        .collect()
}

fn remove_stale_dirs_in(tmp: &Path, command_lines: &[String]) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(tmp)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("hoptrace-nginx-") || name.starts_with("hoptrace-haproxy-")) {
            continue;
        }
        let path = entry.path();
        let text = path.to_string_lossy().into_owned();
        if command_lines.iter().any(|line| line.contains(&text)) {
            continue;
        }
        if std::fs::remove_dir_all(&path).is_ok() {
            removed.push(path);
        }
    }
    removed.sort();
    removed
}

#[cfg(test)]
mod stale_dir_tests {
    use super::remove_stale_dirs_in;

    #[test]
    fn only_proxy_dirs_no_process_names_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        for name in [
            "hoptrace-nginx-aaa",
            "hoptrace-haproxy-bbb",
            "hoptrace-nginx-live",
            "other",
        ] {
            std::fs::create_dir(tmp.path().join(name)).unwrap();
        }
        let live = tmp.path().join("hoptrace-nginx-live");
        let lines = vec![format!("nginx\0-p\0{}\0", live.display())];
        let removed = remove_stale_dirs_in(tmp.path(), &lines);
        assert_eq!(
            removed,
            vec![
                tmp.path().join("hoptrace-haproxy-bbb"),
                tmp.path().join("hoptrace-nginx-aaa")
            ]
        );
        assert!(live.exists() && tmp.path().join("other").exists());
    }
}
