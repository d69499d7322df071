//! Builtin lab backends: a keep-alive HTTP/1.1 server and a UDP echo server.
//!
//! Both take an already-bound std socket, so the caller decides which network
//! namespace they live in: a socket created on a thread that has `setns`'d into
//! a namespace belongs to that namespace, whatever thread serves it later.
//! HTTP/1.1 is spoken by hyper; the connection settings and the client-side
//! connection helper here are shared with the load generator and the builtin
//! ingress proxy, so all three agree on limits and header style.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Body of every response of the builtin HTTP backend.
pub const HTTP_BODY: &[u8] = b"hoptrace backend ok\n";

/// Largest request or response head (start line plus headers) we accept, bytes.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest body we accept in either direction, bytes.
pub(crate) const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Largest UDP datagram we handle, bytes.
pub(crate) const MAX_DATAGRAM: usize = 65_536;

/// Errors of the lab servers.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The std socket could not be handed to tokio.
    #[error("cannot use the listening socket: {0}")]
    Socket(#[source] io::Error),
    /// Binding a listen address failed.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// Address that was asked for.
        addr: SocketAddr,
        /// Underlying error.
        source: io::Error,
    },
    /// The tokio runtime could not be built.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] io::Error),
    /// [`start_backend`] was called with nothing to serve.
    #[error("nothing to serve: give an HTTP and/or a UDP listen address")]
    NothingToServe,
    /// A server thread inside a namespace did not start.
    #[error("{0}")]
    Start(String),
}

/// Counters a server updates while it runs; share them with a test or report.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// TCP connections accepted.
    pub accepted: AtomicU64,
    /// Requests (HTTP: counted when the response is handed to the connection
    /// for writing) or datagrams (UDP: counted once sent) answered.
    pub requests: AtomicU64,
}

/// Tuning of the builtin HTTP backend.
#[derive(Debug, Clone, Default)]
pub struct HttpServerConfig {
    /// Counters to update; `None` keeps none.
    pub stats: Option<Arc<ServerStats>>,
    /// Delay the answer to the request with this 0-based index (counted over
    /// all connections) by the given time, once. Used to inject a server stall.
    pub stall_once: Option<(u64, Duration)>,
}

/// Serves the builtin HTTP/1.1 backend on `listener` until `stop` completes.
///
/// Keep-alive by default; honours `Connection: close` and HTTP/1.0. Every path
/// gets `200 OK` with [`HTTP_BODY`]; request bodies (`Content-Length` or
/// chunked, at most 16 MiB) are read and discarded. Must be called inside a
/// tokio runtime; open connections are dropped when `stop` completes.
///
/// # Errors
/// [`ServeError::Socket`] when the listener cannot be made non-blocking or
/// registered with the runtime.
pub async fn serve_http(
    listener: std::net::TcpListener,
    stop: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    serve_http_with(listener, HttpServerConfig::default(), stop).await
}

/// [`serve_http`] with counters and fault injection.
///
/// # Errors
/// As [`serve_http`].
pub async fn serve_http_with(
    listener: std::net::TcpListener,
    config: HttpServerConfig,
    stop: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let backend = Arc::new(HttpBackend {
        config,
        next_request: AtomicU64::new(0),
    });
    accept_connections(listener, stop, move |stream| {
        if let Some(stats) = &backend.config.stats {
            stats.accepted.fetch_add(1, Ordering::Relaxed);
        }
        let backend = Arc::clone(&backend);
        async move {
            let service = hyper::service::service_fn(move |request| {
                let backend = Arc::clone(&backend);
                async move { Ok::<_, Infallible>(backend.answer(request).await) }
            });
            // A connection error (peer reset, malformed request: hyper has
            // already answered 400 where it could) ends this connection only.
            let _ = http1_server()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    })
    .await
    .map_err(ServeError::Socket)
}

/// State of one running builtin backend, shared by its connections.
struct HttpBackend {
    config: HttpServerConfig,
    /// Index of the next request over all connections (for `stall_once`).
    next_request: AtomicU64,
}

impl HttpBackend {
    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if read_body(request.into_body()).await.is_err() {
            // Cut short or too large: say so and end the connection.
            return error_response(StatusCode::BAD_REQUEST);
        }
        let index = self.next_request.fetch_add(1, Ordering::Relaxed);
        if let Some((stall_index, stall)) = self.config.stall_once
            && stall_index == index
        {
            tokio::time::sleep(stall).await;
        }
        let mut response = Response::new(Full::new(Bytes::from_static(HTTP_BODY)));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        if let Some(stats) = &self.config.stats {
            stats.requests.fetch_add(1, Ordering::Relaxed);
        }
        response
    }
}

/// The server side of every lab HTTP/1.1 connection: keep-alive, 64 KiB
/// heads, header names written in title case (`Content-Length`), as the
/// lab's peers (and its tests) read them on the wire. No header read
/// timeout: that needs a timer, and the lab's clients idle between requests.
pub(crate) fn http1_server() -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        // A client that shuts down its write side after the request still
        // gets the answer (hyper closes at read EOF otherwise, a race).
        .half_close(true)
        .title_case_headers(true)
        .max_header_size(MAX_HEAD_BYTES);
    builder
}

/// Reads a whole message body (at most [`MAX_BODY_BYTES`]).
pub(crate) async fn read_body<B>(body: B) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Ok(Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(BodyError)?
        .to_bytes())
}

/// A body that could not be read whole: cut short, malformed or larger than
/// [`MAX_BODY_BYTES`].
#[derive(Debug, thiserror::Error)]
#[error("cannot read the message body: {0}")]
pub(crate) struct BodyError(#[source] Box<dyn std::error::Error + Send + Sync>);

/// An answer without body that ends the connection (`Connection: close`).
pub(crate) fn error_response(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::default());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Whether the `Connection` header lists `token` (case-insensitive).
pub(crate) fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|part| part.trim().eq_ignore_ascii_case(token))
}

/// Whether the connection ends after a message with this version and these
/// headers: `Connection: close`, or HTTP/1.0 without `Connection: keep-alive`.
pub(crate) fn closes_after(version: Version, headers: &HeaderMap) -> bool {
    connection_has(headers, "close")
        || (version <= Version::HTTP_10 && !connection_has(headers, "keep-alive"))
}

/// One client HTTP/1.1 connection: the request sender, and the task that
/// drives the connection, aborted (closing the socket) when this drops.
pub(crate) struct ClientConnection {
    /// Sends requests on this connection, one at a time.
    pub sender: SendRequest<Full<Bytes>>,
    /// Whether a request was sent on it yet.
    used: bool,
    task: tokio::task::JoinHandle<()>,
}

impl ClientConnection {
    /// Starts HTTP/1.1 on a connected `stream` (TCP_NODELAY set here). The
    /// connection is driven by a task on the current runtime.
    pub async fn start(stream: TcpStream) -> Result<Self, ClientError> {
        stream.set_nodelay(true).map_err(ClientError::Io)?;
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .title_case_headers(true)
            .max_header_size(MAX_HEAD_BYTES)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ClientError::Http)?;
        let task = tokio::spawn(async move {
            // The outcome reaches the sender as the error of a request.
            let _ = connection.await;
        });
        Ok(Self {
            sender,
            used: false,
            task,
        })
    }

    /// Sends `request` once the connection is free and reads the whole
    /// response (body at most [`MAX_BODY_BYTES`]).
    pub async fn exchange(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Bytes>, ClientError> {
        // hyper takes the first request before the connection task has run
        // (saving a task switch per new connection); later ones wait until
        // the previous exchange is finished on the wire.
        if self.used {
            self.sender.ready().await.map_err(ClientError::Http)?;
        }
        self.used = true;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(ClientError::Http)?;
        let (parts, body) = response.into_parts();
        let body = read_body(body).await.map_err(ClientError::Body)?;
        Ok(Response::from_parts(parts, body))
    }
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Failures of a [`ClientConnection`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// Connecting or configuring the socket failed.
    #[error("connection: {0}")]
    Io(#[source] io::Error),
    /// The connection failed or closed before a complete response head.
    #[error("HTTP: {0}")]
    Http(#[source] hyper::Error),
    /// The response body could not be read whole.
    #[error(transparent)]
    Body(BodyError),
}

/// Accepts TCP connections on `listener` (a bound std listener, so it stays
/// in the namespace it was created in) until `stop` completes, running
/// `handle` for each on its own task (TCP_NODELAY set). Transient accept
/// failures (EMFILE, aborted handshakes) back off briefly instead of
/// spinning; the connection tasks are aborted when `stop` completes.
pub(crate) async fn accept_connections<F, Fut>(
    listener: std::net::TcpListener,
    stop: impl Future<Output = ()>,
    mut handle: F,
) -> io::Result<()>
where
    F: FnMut(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return Ok(()),
            accepted = listener.accept() => {
                let Ok((stream, _peer)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                connections.spawn(handle(stream));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Answers every datagram on `socket` with the same bytes, until `stop`.
/// Must be called inside a tokio runtime.
///
/// # Errors
/// [`ServeError::Socket`] when the socket cannot be made non-blocking or
/// registered with the runtime.
pub async fn serve_udp(
    socket: std::net::UdpSocket,
    stop: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    serve_udp_with(socket, None, stop).await
}

/// [`serve_udp`] that counts answered datagrams in `stats`.
///
/// # Errors
/// As [`serve_udp`].
pub async fn serve_udp_with(
    socket: std::net::UdpSocket,
    stats: Option<Arc<ServerStats>>,
    stop: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    socket.set_nonblocking(true).map_err(ServeError::Socket)?;
    let socket = UdpSocket::from_std(socket).map_err(ServeError::Socket)?;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return Ok(()),
            received = socket.recv_from(&mut buf) => {
                let Ok((len, peer)) = received else { continue };
                if socket.send_to(&buf[..len], peer).await.is_ok()
                    && let Some(stats) = &stats
                {
                    stats.requests.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// A server task running on its own thread inside a namespace, stopped by
/// dropping (or signalling) its handle.
pub struct NetnsTask {
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NetnsTask {
    /// Binds with `bind` (a TCP listener or a UDP socket) inside `ns`, so
    /// the socket belongs there, and runs
    /// `serve` on a current-thread runtime on that same thread.
    ///
    /// # Errors
    /// [`ServeError::Start`] when binding, the runtime or the thread fails.
    pub fn spawn<Socket, B, S, F>(ns: String, bind: B, serve: S) -> Result<Self, ServeError>
    where
        Socket: 'static,
        B: FnOnce() -> std::io::Result<Socket> + Send + 'static,
        S: FnOnce(Socket, watch::Receiver<bool>) -> F + Send + 'static,
        F: std::future::Future<Output = ()>,
    {
        let (stop, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let thread = std::thread::spawn(move || {
            let ns_name = ns.clone();
            let result = crate::netns::with_netns(&ns, move || {
                let listener = match bind() {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("bind in {ns_name}: {e}")));
                        return;
                    }
                };
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("runtime: {e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                runtime.block_on(serve(listener, stop_rx));
            });
            if let Err(e) = result {
                eprintln!("hoptrace lab: server thread: {e}");
            }
        });
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(Self {
                stop,
                thread: Some(thread),
            }),
            Ok(Err(msg)) => Err(ServeError::Start(msg)),
            Err(_) => Err(ServeError::Start("server thread did not start".into())),
        }
    }
}

impl Drop for NetnsTask {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Resolves once `rx` says stop (or its sender is gone).
pub async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// The lab's backend inside namespace `ns`: the HTTP server on `http` and
/// the UDP echo server on `udp`, each on its own thread; dropping the
/// returned tasks stops them.
///
/// # Errors
/// [`ServeError::NothingToServe`] with neither address; [`ServeError::Start`]
/// when a socket cannot be bound there.
pub fn start_backend(
    ns: &str,
    http: Option<SocketAddr>,
    udp: Option<SocketAddr>,
) -> Result<Vec<NetnsTask>, ServeError> {
    if http.is_none() && udp.is_none() {
        return Err(ServeError::NothingToServe);
    }
    let mut tasks = Vec::new();
    if let Some(addr) = http {
        tasks.push(NetnsTask::spawn(
            ns.to_owned(),
            move || std::net::TcpListener::bind(addr),
            |listener, stop| async move {
                let _ = serve_http(listener, stopped(stop)).await;
            },
        )?);
    }
    if let Some(addr) = udp {
        tasks.push(NetnsTask::spawn(
            ns.to_owned(),
            move || std::net::UdpSocket::bind(addr),
            |socket, stop| async move {
                let _ = serve_udp(socket, stopped(stop)).await;
            },
        )?);
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    use crate::test_support::{LoopbackHttp, runtime, start_http};

    fn read_response(stream: &mut std::net::TcpStream) -> String {
        // Read until the body is complete (head + fixed body length).
        let mut data = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = stream.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            data.extend_from_slice(&buf[..n]);
            if let Some(pos) = data.windows(4).position(|w| w == b"\r\n\r\n")
                && data.len() >= pos + 4 + HTTP_BODY.len()
            {
                break;
            }
        }
        String::from_utf8(data).expect("utf8")
    }

    /// Writes `raw` to a new connection to `addr` and reads until the
    /// server closes it (at most 5 s).
    fn exchange_until_close(addr: SocketAddr, raw: &[u8]) -> String {
        let mut client = std::net::TcpStream::connect(addr).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        client.write_all(raw).expect("write");
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).expect("read until close");
        String::from_utf8(reply).expect("utf8")
    }

    #[test]
    fn body_is_read_close_is_honoured_and_a_truncated_request_is_not_answered() {
        let rt = runtime();
        let LoopbackHttp {
            addr, stats, stop, ..
        } = start_http(&rt, None);
        // A 3-byte body, `Connection: Close` in another case, then the start
        // of a second request that never completes.
        let reply = exchange_until_close(
            addr,
            b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: Close\r\n\r\nabcGET",
        );
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.contains("Connection: close\r\n"), "{reply}");
        assert!(reply.ends_with(std::str::from_utf8(HTTP_BODY).unwrap()));
        assert_eq!(reply.matches("HTTP/1.1").count(), 1, "{reply}");
        assert_eq!(stats.requests.load(Ordering::Relaxed), 1);
        let _ = stop.send(());
    }

    #[test]
    fn http10_chunked_and_malformed_requests() {
        let rt = runtime();
        let LoopbackHttp {
            addr, stats, stop, ..
        } = start_http(&rt, None);
        // HTTP/1.0 without keep-alive: answered, then closed.
        let reply = exchange_until_close(addr, b"GET / HTTP/1.0\r\n\r\n");
        assert!(reply.starts_with("HTTP/1.0 200 OK\r\n"), "{reply}");
        // A chunked body is read, not refused; `close` then ends it.
        let reply = exchange_until_close(
            addr,
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        );
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        // A header line without ':' is a bad request, and the end of it.
        let reply = exchange_until_close(addr, b"GET / HTTP/1.1\r\nno colon here\r\n\r\n");
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
        // An oversized head too, with no hang.
        let mut huge = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES + 1));
        huge.extend_from_slice(b"\r\n\r\n");
        let reply = exchange_until_close(addr, &huge);
        assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
        assert_eq!(stats.requests.load(Ordering::Relaxed), 2);
        let _ = stop.send(());
    }

    #[test]
    fn a_client_that_half_closes_still_gets_its_answer() {
        let rt = runtime();
        let LoopbackHttp {
            addr, stats, stop, ..
        } = start_http(&rt, None);
        let mut client = std::net::TcpStream::connect(addr).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .expect("write");
        client
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
        let mut reply = String::new();
        client.read_to_string(&mut reply).expect("read until close");
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply:?}");
        assert_eq!(stats.requests.load(Ordering::Relaxed), 1);
        let _ = stop.send(());
    }

    /// A request for the lab's HTTP client helpers.
    fn get(addr: SocketAddr, close: bool) -> Request<Full<Bytes>> {
        let mut builder = Request::get("/").header(header::HOST, addr.to_string());
        if close {
            builder = builder.header(header::CONNECTION, "close");
        }
        builder.body(Full::default()).expect("request")
    }

    #[test]
    fn client_connection_reuses_one_keep_alive_connection() {
        let rt = runtime();
        let LoopbackHttp {
            addr, stats, stop, ..
        } = start_http(&rt, None);
        rt.block_on(async {
            let stream = TcpStream::connect(addr).await.expect("connect");
            let mut connection = ClientConnection::start(stream).await.expect("start");
            for _ in 0..10 {
                let response = connection
                    .exchange(get(addr, false))
                    .await
                    .expect("exchange");
                assert_eq!(response.status(), StatusCode::OK);
                assert_eq!(response.body().as_ref(), HTTP_BODY);
                assert!(!closes_after(response.version(), response.headers()));
            }
        });
        assert_eq!(stats.accepted.load(Ordering::Relaxed), 1, "one connection");
        assert_eq!(stats.requests.load(Ordering::Relaxed), 10);
        let _ = stop.send(());
    }

    #[test]
    fn client_connection_close_ends_the_connection() {
        let rt = runtime();
        let LoopbackHttp {
            addr, stats, stop, ..
        } = start_http(&rt, None);
        rt.block_on(async {
            let stream = TcpStream::connect(addr).await.expect("connect");
            let mut connection = ClientConnection::start(stream).await.expect("start");
            let response = connection
                .exchange(get(addr, true))
                .await
                .expect("exchange");
            assert_eq!(response.status(), StatusCode::OK);
            assert!(closes_after(response.version(), response.headers()));
            // The connection is gone: no second request on it.
            let second = tokio::time::timeout(
                Duration::from_secs(5),
                connection.exchange(get(addr, false)),
            )
            .await
            .expect("no hang");
            assert!(matches!(second, Err(ClientError::Http(_))), "{second:?}");
        });
        assert_eq!(stats.accepted.load(Ordering::Relaxed), 1);
        assert_eq!(stats.requests.load(Ordering::Relaxed), 1);
        let _ = stop.send(());
    }

    #[test]
    fn connection_tokens_and_versions() {
        let mut headers = HeaderMap::new();
        assert!(!closes_after(Version::HTTP_11, &headers));
        assert!(closes_after(Version::HTTP_10, &headers));
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("Keep-Alive, Upgrade"),
        );
        assert!(!closes_after(Version::HTTP_10, &headers));
        assert!(connection_has(&headers, "upgrade"));
        headers.append(header::CONNECTION, HeaderValue::from_static(" CLOSE "));
        assert!(closes_after(Version::HTTP_11, &headers));
    }

    #[test]
    fn http_keep_alive_then_close() {
        let rt = runtime();
        let LoopbackHttp {
            addr,
            stats,
            stop: stop_tx,
            task: server,
        } = start_http(&rt, None);
        let mut client = std::net::TcpStream::connect(addr).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        for _ in 0..3 {
            client
                .write_all(b"GET /anything HTTP/1.1\r\nHost: t\r\n\r\n")
                .expect("write");
            let response = read_response(&mut client);
            assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
            assert!(response.contains(&format!("Content-Length: {}", HTTP_BODY.len())));
            assert!(response.ends_with(std::str::from_utf8(HTTP_BODY).unwrap()));
        }
        client
            .write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .expect("write");
        let response = read_response(&mut client);
        assert!(response.contains("Connection: close"), "{response}");
        // The server closes: the next read sees end of stream.
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).expect("eof");
        assert!(rest.is_empty());
        assert_eq!(stats.accepted.load(Ordering::Relaxed), 1);
        assert_eq!(stats.requests.load(Ordering::Relaxed), 4);
        stop_tx.send(()).expect("stop");
        rt.block_on(server).expect("join").expect("serve");
    }

    #[test]
    fn udp_echo_answers_each_datagram() {
        let rt = runtime();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = socket.local_addr().expect("addr");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = rt.spawn(serve_udp(socket, async {
            let _ = stop_rx.await;
        }));
        let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        for i in 0..5u8 {
            client.send_to(&[i, 1, 2, 3], addr).expect("send");
            let mut buf = [0u8; 16];
            let (n, from) = client.recv_from(&mut buf).expect("recv");
            assert_eq!(from, addr);
            assert_eq!(&buf[..n], &[i, 1, 2, 3]);
        }
        stop_tx.send(()).expect("stop");
        rt.block_on(server).expect("join").expect("serve");
    }

    #[test]
    fn start_backend_rejects_nothing_to_serve() {
        assert!(matches!(
            start_backend("unused", None, None),
            Err(ServeError::NothingToServe)
        ));
    }
}
