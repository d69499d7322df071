//! Builtin lab backends: a keep-alive HTTP/1.1 server and a UDP echo server.
//!
//! Both take an already-bound std socket, so the caller decides which network
//! namespace they live in: a socket created on a thread that has `setns`'d into
//! a namespace belongs to that namespace, whatever thread serves it later.
//! The small HTTP/1.1 message reader used here is shared with the load
//! generator and the builtin ingress proxy (`Content-Length` bodies only; no
//! chunked transfer coding).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Body of every response of the builtin HTTP backend.
pub const HTTP_BODY: &[u8] = b"hoptrace backend ok\n";

/// Largest request or response head (start line plus headers) we accept.
const MAX_HEAD_BYTES: u64 = 64 * 1024;
/// Largest body we accept in either direction.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Largest UDP datagram we handle.
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
    /// Requests (HTTP) or datagrams (UDP) answered.
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
/// gets `200 OK` with [`HTTP_BODY`]. Must be called inside a tokio runtime.
pub async fn serve_http(
    listener: std::net::TcpListener,
    stop: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    serve_http_with(listener, HttpServerConfig::default(), stop).await
}

/// [`serve_http`] with counters and fault injection.
pub async fn serve_http_with(
    listener: std::net::TcpListener,
    config: HttpServerConfig,
    stop: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let request_counter = Arc::new(AtomicU64::new(0));
    let config = Arc::new(config);
    accept_connections(listener, stop, move |stream| {
        if let Some(stats) = &config.stats {
            stats.accepted.fetch_add(1, Ordering::Relaxed);
        }
        let config = Arc::clone(&config);
        let counter = Arc::clone(&request_counter);
        async move {
            let _ = serve_http_connection(stream, &config, &counter).await;
        }
    })
    .await
    .map_err(ServeError::Socket)
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

async fn serve_http_connection(
    stream: TcpStream,
    config: &HttpServerConfig,
    counter: &AtomicU64,
) -> io::Result<()> {
    let mut stream = BufReader::new(stream);
    while let Some(head) = read_head(&mut stream).await? {
        discard_body(&mut stream, head.content_length()?).await?;
        let index = counter.fetch_add(1, Ordering::Relaxed);
        if let Some((stall_index, stall)) = config.stall_once
            && stall_index == index
        {
            tokio::time::sleep(stall).await;
        }
        let close = head.wants_close();
        let mut response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
            HTTP_BODY.len()
        )
        .into_bytes();
        if close {
            response.extend_from_slice(b"Connection: close\r\n");
        }
        response.extend_from_slice(b"\r\n");
        response.extend_from_slice(HTTP_BODY);
        stream.get_mut().write_all(&response).await?;
        if let Some(stats) = &config.stats {
            stats.requests.fetch_add(1, Ordering::Relaxed);
        }
        if close {
            stream.get_mut().shutdown().await?;
            return Ok(());
        }
    }
    Ok(())
}

/// Answers every datagram on `socket` with the same bytes, until `stop`.
/// Must be called inside a tokio runtime.
pub async fn serve_udp(
    socket: std::net::UdpSocket,
    stop: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    serve_udp_with(socket, None, stop).await
}

/// [`serve_udp`] that counts answered datagrams in `stats`.
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

/// Start line and headers of one HTTP/1.x message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    /// Request line or status line, without CRLF.
    pub start_line: String,
    /// Header fields in order, names as received.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Body length from `Content-Length`; 0 when absent. Chunked bodies are
    /// refused (none of our peers send them).
    pub fn content_length(&self) -> io::Result<usize> {
        if self
            .header("transfer-encoding")
            .is_some_and(|value| !value.eq_ignore_ascii_case("identity"))
        {
            return Err(invalid("chunked transfer coding is not supported"));
        }
        match self.header("content-length") {
            None => Ok(0),
            Some(value) => {
                let len: usize = value
                    .trim()
                    .parse()
                    .map_err(|_| invalid("bad Content-Length"))?;
                if len > MAX_BODY_BYTES {
                    return Err(invalid("body too large"));
                }
                Ok(len)
            }
        }
    }

    /// Whether the connection closes after this message: `Connection: close`,
    /// or HTTP/1.0 without `Connection: keep-alive`.
    pub fn wants_close(&self) -> bool {
        let connection = self.header("connection").unwrap_or("");
        let has = |token: &str| {
            connection
                .split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        };
        if has("close") {
            return true;
        }
        self.start_line.contains("HTTP/1.0") && !has("keep-alive")
    }

    /// Status code of a response head.
    pub fn status(&self) -> Option<u16> {
        let mut parts = self.start_line.split_ascii_whitespace();
        let version = parts.next()?;
        if !version.starts_with("HTTP/") {
            return None;
        }
        parts.next()?.parse().ok()
    }
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

/// Reads one message head. `Ok(None)` on a clean end of stream before the
/// first byte (the peer closed an idle keep-alive connection).
pub(crate) async fn read_head<R: AsyncBufRead + Unpin>(reader: &mut R) -> io::Result<Option<Head>> {
    let mut limited = reader.take(MAX_HEAD_BYTES);
    let mut line = Vec::new();
    let mut start_line = None;
    let mut headers = Vec::new();
    loop {
        line.clear();
        let read = limited.read_until(b'\n', &mut line).await?;
        if read == 0 {
            if start_line.is_none() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside a message head",
            ));
        }
        if !line.ends_with(b"\n") {
            return Err(invalid("message head too large"));
        }
        let text = std::str::from_utf8(&line)
            .map_err(|_| invalid("message head is not UTF-8"))?
            .trim_end_matches(['\r', '\n']);
        match &start_line {
            None if text.is_empty() => continue, // tolerate stray CRLF between messages
            None => start_line = Some(text.to_owned()),
            Some(_) if text.is_empty() => break,
            Some(_) => {
                let (name, value) = text
                    .split_once(':')
                    .ok_or_else(|| invalid("header line without ':'"))?;
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
        }
    }
    Ok(Some(Head {
        start_line: start_line.unwrap_or_default(),
        headers,
    }))
}

/// Reads exactly `len` body bytes.
pub(crate) async fn read_body<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    len: usize,
) -> io::Result<Vec<u8>> {
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    Ok(body)
}

async fn discard_body<R: AsyncBufRead + Unpin>(reader: &mut R, len: usize) -> io::Result<()> {
    let copied = tokio::io::copy(&mut reader.take(len as u64), &mut tokio::io::sink()).await?;
    if copied as usize == len {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "body cut short",
        ))
    }
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

    #[tokio::test]
    async fn head_parsing_reads_headers_and_close() {
        let raw =
            b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: Close\r\n\r\nabcGET";
        let mut reader = BufReader::new(&raw[..]);
        let head = read_head(&mut reader).await.expect("parse").expect("head");
        assert_eq!(head.start_line, "GET /x HTTP/1.1");
        assert_eq!(head.header("HOST"), Some("a"));
        assert_eq!(head.content_length().expect("len"), 3);
        assert!(head.wants_close());
        assert_eq!(read_body(&mut reader, 3).await.expect("body"), b"abc");
        // The rest is a truncated head: an error, not a panic or a hang.
        assert!(read_head(&mut reader).await.is_err());
    }

    #[tokio::test]
    async fn head_parsing_edge_cases() {
        let mut empty = BufReader::new(&b""[..]);
        assert!(read_head(&mut empty).await.expect("eof").is_none());
        let mut http10 = BufReader::new(&b"GET / HTTP/1.0\r\n\r\n"[..]);
        assert!(read_head(&mut http10).await.unwrap().unwrap().wants_close());
        let mut chunked =
            BufReader::new(&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..]);
        let head = read_head(&mut chunked).await.unwrap().unwrap();
        assert_eq!(head.status(), Some(200));
        assert!(head.content_length().is_err());
        let mut garbage = BufReader::new(&b"GET / HTTP/1.1\r\nno colon here\r\n\r\n"[..]);
        assert!(read_head(&mut garbage).await.is_err());
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
