//! Helpers shared by the unit tests of several modules.

/// A two-worker tokio runtime for tests of the async servers and clients.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The builtin HTTP server on a loopback port, for tests.
pub struct LoopbackHttp {
    pub addr: std::net::SocketAddr,
    pub stats: std::sync::Arc<crate::servers::ServerStats>,
    /// Send to stop the server.
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub task: tokio::task::JoinHandle<Result<(), crate::servers::ServeError>>,
}

/// Starts the builtin HTTP server on loopback (`stall_once`: see
/// [`crate::servers::HttpServerConfig`]).
pub fn start_http(
    rt: &tokio::runtime::Runtime,
    stall_once: Option<(u64, std::time::Duration)>,
) -> LoopbackHttp {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stats = std::sync::Arc::new(crate::servers::ServerStats::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = crate::servers::HttpServerConfig {
        stats: Some(std::sync::Arc::clone(&stats)),
        stall_once,
    };
    let task = rt.spawn(crate::servers::serve_http_with(listener, config, async {
        let _ = stopped.await;
    }));
    LoopbackHttp {
        addr,
        stats,
        stop,
        task,
    }
}
