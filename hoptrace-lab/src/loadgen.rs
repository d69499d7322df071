//! Builtin load generator: fixed-rate HTTP/1.1 or UDP request/response load.
//!
//! The schedule is open-loop at a constant rate, without coordinated omission:
//! request `n` has the intended send time `start + n / rate`, it is assigned to
//! worker `n % connections`, and its latency is measured from that intended
//! time, not from when a busy connection got round to sending it. A server
//! stall therefore shows up in every request that was due during the stall,
//! as a user arriving at a fixed rate would see it.
//!
//! Every request has a hard deadline `intended + request_timeout`; a request
//! that cannot complete by then counts as a timeout (and a keep-alive
//! connection is then dropped and reopened). The run always ends by itself at
//! the latest `request_timeout` after the last intended send time.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Uri};
use serde::Serialize;
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

use crate::servers::{ClientConnection, MAX_DATAGRAM, closes_after};

/// Highest latency the histogram tracks, in µs (one hour).
const MAX_TRACKED_US: u64 = 3_600_000_000;
/// Time given to the workers to open their keep-alive connections before the
/// first intended send time.
const WARMUP: Duration = Duration::from_millis(50);

/// How each request travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadMode {
    /// HTTP/1.1 `GET` over `connections` persistent connections.
    HttpKeepAlive,
    /// HTTP/1.1 `GET` with `Connection: close` over a new TCP connection per
    /// request (at most `connections` in flight).
    HttpNewConnection,
    /// One UDP datagram out, one echoed back (at most `connections` in flight).
    Udp,
}

impl LoadMode {
    /// Every mode, in the order `--help` lists them.
    pub const ALL: [LoadMode; 3] = [
        LoadMode::HttpKeepAlive,
        LoadMode::HttpNewConnection,
        LoadMode::Udp,
    ];

    /// The name on the command line and in the lab document.
    pub const fn name(self) -> &'static str {
        match self {
            LoadMode::HttpKeepAlive => "http-keep-alive",
            LoadMode::HttpNewConnection => "http-new-connection",
            LoadMode::Udp => "udp",
        }
    }
}

impl std::fmt::Display for LoadMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for LoadMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                format!("unknown load {s:?} (http-keep-alive, http-new-connection, udp)")
            })
    }
}

/// What load to offer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadSpec {
    /// Protocol and connection handling.
    pub mode: LoadMode,
    /// Persistent connections (keep-alive) or concurrent workers (other modes).
    pub connections: usize,
    /// Total requests per second over all connections.
    pub rate: f64,
    /// Length of the send schedule.
    #[serde(serialize_with = "serialize_secs")]
    pub duration: Duration,
    /// Hard limit per request, counted from its intended send time.
    #[serde(serialize_with = "serialize_secs")]
    pub request_timeout: Duration,
    /// Path of the HTTP request.
    pub http_path: String,
    /// Size of each UDP request datagram (at least 8 bytes: the sequence number).
    pub udp_payload_len: usize,
}

impl Default for LoadSpec {
    fn default() -> Self {
        Self {
            mode: LoadMode::HttpKeepAlive,
            connections: 4,
            rate: 1000.0,
            duration: Duration::from_secs(10),
            request_timeout: Duration::from_secs(2),
            http_path: "/".to_owned(),
            udp_payload_len: 64,
        }
    }
}

fn serialize_secs<S: serde::Serializer>(
    value: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(value.as_secs_f64())
}

/// Invalid load specifications.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LoadError {
    /// Rate must be a positive finite number.
    #[error("request rate must be a positive number of requests per second, got {0}")]
    BadRate(f64),
    /// At least one connection is needed.
    #[error("at least one connection is needed")]
    NoConnections,
    /// Duration or timeout of zero.
    #[error("duration and request timeout must be longer than zero")]
    ZeroDuration,
    /// The schedule would not contain a single request.
    #[error("rate × duration gives no request to send")]
    EmptySchedule,
    /// The HTTP path is not an origin-form request target (`/path?query`).
    #[error("HTTP path {0:?} is not a request target of the form /path?query")]
    BadPath(String),
}

pub use hoptrace_core::report::ClientLatency;

/// Summarises an HdrHistogram of µs values as the lab document's
/// `client_latency` (percentiles, mean and the recorded buckets).
pub fn client_latency(histogram: &Histogram<u64>) -> ClientLatency {
    {
        let buckets = histogram
            .iter_recorded()
            .map(|bucket| {
                (
                    bucket.value_iterated_to(),
                    bucket.percentile(),
                    bucket.count_since_last_iteration(),
                )
            })
            .collect();
        let empty = histogram.is_empty();
        let at = |quantile: f64| {
            if empty {
                0
            } else {
                histogram.value_at_quantile(quantile)
            }
        };
        ClientLatency {
            p50_us: at(0.5),
            p90_us: at(0.9),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: if empty { 0 } else { histogram.max() },
            mean_us: if empty { 0.0 } else { histogram.mean() },
            histogram: buckets,
        }
    }
}

/// Failed requests by kind: reset, refused, short read, other (they add up
/// to [`LoadResult::errors`]).
pub type ErrorKinds = hoptrace_core::report::ClientErrorKinds;

/// Outcome of one load run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    /// What was asked for.
    pub spec: LoadSpec,
    /// Address the load went to.
    pub target: SocketAddr,
    /// Requests on the schedule (`floor(rate × duration)`).
    pub scheduled: u64,
    /// Requests answered correctly in time.
    pub ok: u64,
    /// Requests that failed (connect error, reset, bad status, bad reply).
    pub errors: u64,
    /// Requests that missed their deadline.
    pub timeouts: u64,
    /// `errors` by kind.
    pub error_kinds: ErrorKinds,
    /// Wall time from the first intended send to the last completion, s.
    pub elapsed_s: f64,
    /// Successful requests per second of the schedule's duration.
    pub achieved_rate: f64,
    /// Latency from intended send time to complete reply, successful requests only.
    pub client_latency: ClientLatency,
    /// The raw histogram (µs), e.g. to merge runs; not serialised.
    #[serde(skip)]
    pub latency_histogram: Histogram<u64>,
    /// Every successful request's intended send time and completion as
    /// CLOCK_MONOTONIC ns (the clock of the kernel programs' timestamps),
    /// so the lab can join them to the request timeline; not serialised.
    #[serde(skip)]
    pub request_times: Vec<(u64, u64)>,
}

/// `instant` as CLOCK_MONOTONIC ns (what `bpf_ktime_get_ns` reads):
/// std's `Instant` is CLOCK_MONOTONIC on Linux, read here beside a raw
/// `clock_gettime` to place it.
fn monotonic_ns(instant: std::time::Instant) -> u64 {
    let now = std::time::Instant::now();
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let raw = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    if instant <= now {
        raw.saturating_sub((now - instant).as_nanos() as u64)
    } else {
        raw + (instant - now).as_nanos() as u64
    }
}

/// Offers `spec`'s load to `target` and returns what the client saw.
///
/// Must be called inside a tokio runtime; a multi-threaded one spreads the
/// workers over its threads. Sockets are created by the calling runtime's
/// threads, so run it on a runtime whose threads are in the wanted network
/// namespace (or address a target reachable from there). Ends at the latest
/// `spec.request_timeout` after the last intended send time.
///
/// # Errors
/// [`LoadError`] when `spec` is invalid (nothing is sent then); failed or
/// late requests are counted in the result, not returned as errors.
pub async fn run_load(
    spec: &LoadSpec,
    target: SocketAddr,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<LoadResult, LoadError> {
    if !(spec.rate.is_finite() && spec.rate > 0.0) {
        return Err(LoadError::BadRate(spec.rate));
    }
    if spec.connections == 0 {
        return Err(LoadError::NoConnections);
    }
    if spec.duration.is_zero() || spec.request_timeout.is_zero() {
        return Err(LoadError::ZeroDuration);
    }
    let scheduled = (spec.rate * spec.duration.as_secs_f64()).floor() as u64;
    if scheduled == 0 {
        return Err(LoadError::EmptySchedule);
    }
    let http = HttpTarget::new(&spec.http_path, target)?;
    if let Some(bar) = progress {
        bar.set_length(scheduled);
        bar.set_position(0);
    }
    let shared = Arc::new(Shared {
        spec: spec.clone(),
        target,
        http,
        scheduled,
        start: Instant::now() + WARMUP,
        completed: AtomicU64::new(0),
    });
    let workers = spec.connections.min(scheduled as usize);
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..workers {
        tasks.spawn(worker(Arc::clone(&shared), index as u64, workers as u64));
    }
    let mut total = Tally::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(Ok(tally)) => total.merge(&tally),
                // A worker panicked: its requests count as errors.
                Some(Err(_)) => {
                    total.errors += 1;
                    total.kinds.other += 1;
                }
                None => break,
            },
            _ = ticker.tick() => {
                if let Some(bar) = progress {
                    bar.set_position(shared.completed.load(Ordering::Relaxed));
                }
            }
        }
    }
    let elapsed_s = shared.start.elapsed().as_secs_f64();
    if let Some(bar) = progress {
        bar.set_position(scheduled);
    }
    // Requests of a panicked worker were never counted; account them as errors.
    let accounted = total.ok + total.errors + total.timeouts;
    let unaccounted = scheduled.saturating_sub(accounted);
    total.errors += unaccounted;
    total.kinds.other += unaccounted;
    Ok(LoadResult {
        spec: spec.clone(),
        target,
        scheduled,
        ok: total.ok,
        errors: total.errors,
        timeouts: total.timeouts,
        error_kinds: total.kinds,
        elapsed_s,
        achieved_rate: total.ok as f64 / spec.duration.as_secs_f64(),
        client_latency: client_latency(&total.histogram),
        latency_histogram: total.histogram,
        request_times: total.times,
    })
}

struct Shared {
    spec: LoadSpec,
    target: SocketAddr,
    http: HttpTarget,
    scheduled: u64,
    start: Instant,
    completed: AtomicU64,
}

struct Tally {
    histogram: Histogram<u64>,
    /// (intended, completed) of each successful request, CLOCK_MONOTONIC ns.
    times: Vec<(u64, u64)>,
    ok: u64,
    errors: u64,
    timeouts: u64,
    kinds: ErrorKinds,
}

impl Tally {
    fn new() -> Self {
        Self {
            histogram: Histogram::new_with_bounds(1, MAX_TRACKED_US, 3)
                .expect("constant histogram bounds are valid"),
            times: Vec::new(),
            ok: 0,
            errors: 0,
            timeouts: 0,
            kinds: ErrorKinds::default(),
        }
    }

    fn merge(&mut self, other: &Tally) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.histogram.add(&other.histogram);
        self.times.extend_from_slice(&other.times);
        self.ok += other.ok;
        self.errors += other.errors;
        self.timeouts += other.timeouts;
        self.kinds.reset += other.kinds.reset;
        self.kinds.refused += other.kinds.refused;
        self.kinds.short_read += other.kinds.short_read;
        self.kinds.bad_status += other.kinds.bad_status;
        self.kinds.other += other.kinds.other;
    }
}

/// What every HTTP request of a run carries: its target and `Host` header.
struct HttpTarget {
    uri: Uri,
    host: HeaderValue,
}

impl HttpTarget {
    fn new(path: &str, target: SocketAddr) -> Result<Self, LoadError> {
        let bad_path = || LoadError::BadPath(path.to_owned());
        let uri: Uri = path.parse().map_err(|_| bad_path())?;
        if !path.starts_with('/') || uri.scheme().is_some() {
            return Err(bad_path());
        }
        let host = HeaderValue::from_str(&target.to_string())
            .expect("a socket address is a valid header value");
        Ok(Self { uri, host })
    }

    /// A `GET` with `Connection: keep-alive` or `close`.
    fn request(&self, close: bool) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::default());
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(header::HOST, self.host.clone());
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static("hoptrace-loadgen"),
        );
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static(if close { "close" } else { "keep-alive" }),
        );
        request
    }
}

/// A worker's open connection or socket.
enum Channel {
    Http(ClientConnection),
    Udp(UdpSocket),
}

/// A request that failed before its deadline (connect error, reset, bad
/// status, bad reply); the details do not matter to the count.
struct RequestFailed(FailKind);

/// Why a request failed (timeouts are counted apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FailKind {
    Reset,
    Refused,
    ShortRead,
    BadStatus,
    Other,
}

impl FailKind {
    fn of_io(error: &io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::ConnectionRefused => Self::Refused,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Self::Reset,
            io::ErrorKind::UnexpectedEof => Self::ShortRead,
            _ => Self::Other,
        }
    }
}

impl From<io::Error> for RequestFailed {
    fn from(error: io::Error) -> Self {
        RequestFailed(FailKind::of_io(&error))
    }
}

impl From<crate::servers::ClientError> for RequestFailed {
    fn from(error: crate::servers::ClientError) -> Self {
        use crate::servers::ClientError;
        let kind = match &error {
            ClientError::Io(e) => FailKind::of_io(e),
            ClientError::Http(e) if e.is_incomplete_message() => FailKind::ShortRead,
            ClientError::Http(e) => {
                // hyper wraps the socket error: classify that.
                let mut source = std::error::Error::source(e);
                let mut kind = FailKind::Other;
                while let Some(s) = source {
                    if let Some(io) = s.downcast_ref::<io::Error>() {
                        kind = FailKind::of_io(io);
                        break;
                    }
                    source = s.source();
                }
                kind
            }
            ClientError::Body(_) => FailKind::ShortRead,
        };
        RequestFailed(kind)
    }
}

/// A timerfd on CLOCK_MONOTONIC, as the reactor needs it (`AsRawFd`).
struct TimerFdSource(nix::sys::timerfd::TimerFd);

impl std::os::fd::AsRawFd for TimerFdSource {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd as _;
        self.0.as_fd().as_raw_fd()
    }
}

/// Waits for a request's intended send time with the precision of the
/// kernel's high-resolution timers (a timerfd: about 50 µs of timer slack)
/// instead of tokio's timer wheel, which rounds every deadline up to its
/// next 1 ms tick: an idle worker's every request went out late by about a
/// millisecond, and that lateness is in the request's latency (measured
/// from the intended time). Falls back to tokio's timer when no timerfd
/// can be made or set.
struct SendTimer(Option<tokio::io::unix::AsyncFd<TimerFdSource>>);

impl SendTimer {
    fn new() -> Self {
        use nix::sys::timerfd::{ClockId, TimerFd, TimerFlags};
        let fd = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .ok()
        .and_then(|fd| {
            // SAFETY: the descriptor is the TimerFd's own OwnedFd, open for
            // as long as the AsyncFd owns the TimerFd, and `as_raw_fd`
            // always returns that one descriptor.
            unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    TimerFdSource(fd),
                    tokio::io::Interest::READABLE,
                )
            }
            .ok()
        });
        Self(fd)
    }

    async fn sleep_until(&self, at: Instant) {
        use nix::sys::{
            time::TimeSpec,
            timerfd::{Expiration, TimerSetTimeFlags},
        };
        if at <= Instant::now() {
            return;
        }
        let Some(fd) = &self.0 else {
            return tokio::time::sleep_until(at).await;
        };
        let when = TimeSpec::from(Duration::from_nanos(monotonic_ns(at.into_std())));
        if fd
            .get_ref()
            .0
            .set(
                Expiration::OneShot(when),
                TimerSetTimeFlags::TFD_TIMER_ABSTIME,
            )
            .is_err()
        {
            return tokio::time::sleep_until(at).await;
        }
        loop {
            let Ok(mut ready) = fd.readable().await else {
                return tokio::time::sleep_until(at).await;
            };
            // Expired: the read succeeds; not yet: EAGAIN (WouldBlock)
            // clears readiness and the loop waits again.
            match ready.try_io(|inner| inner.get_ref().0.wait().map_err(io::Error::from)) {
                Ok(Ok(())) => return,
                Ok(Err(_)) => return tokio::time::sleep_until(at).await,
                Err(_would_block) => {}
            }
        }
    }
}

async fn worker(shared: Arc<Shared>, first: u64, stride: u64) -> Tally {
    let spec = &shared.spec;
    let mut tally = Tally::new();
    let timer = SendTimer::new();
    let mut channel: Option<Channel> = None;
    if spec.mode != LoadMode::HttpNewConnection {
        // Open before the schedule starts; a failure is retried per request.
        if let Ok(Ok(opened)) =
            tokio::time::timeout_at(shared.start, open(spec.mode, shared.target)).await
        {
            channel = Some(opened);
        }
    }
    let mut sequence = first;
    while sequence < shared.scheduled {
        let intended = shared.start + Duration::from_secs_f64(sequence as f64 / spec.rate);
        let deadline = intended + spec.request_timeout;
        timer.sleep_until(intended).await;
        let outcome = if Instant::now() >= deadline {
            None
        } else {
            tokio::time::timeout_at(deadline, request(&shared, &mut channel, sequence))
                .await
                .ok()
        };
        match outcome {
            Some(Ok(())) => {
                let done = Instant::now();
                let latency_us = (done - intended).as_micros().max(1) as u64;
                let done_ns = monotonic_ns(done.into_std());
                let latency_ns = (done - intended).as_nanos() as u64;
                tally
                    .times
                    .push((done_ns.saturating_sub(latency_ns), done_ns));
                tally
                    .histogram
                    .saturating_record(latency_us.min(MAX_TRACKED_US));
                tally.ok += 1;
            }
            Some(Err(RequestFailed(kind))) => {
                channel = None;
                tally.errors += 1;
                match kind {
                    FailKind::Reset => tally.kinds.reset += 1,
                    FailKind::Refused => tally.kinds.refused += 1,
                    FailKind::ShortRead => tally.kinds.short_read += 1,
                    FailKind::BadStatus => tally.kinds.bad_status += 1,
                    FailKind::Other => tally.kinds.other += 1,
                }
            }
            None => {
                // A late reply would desynchronise the connection: reopen it.
                channel = None;
                tally.timeouts += 1;
            }
        }
        shared.completed.fetch_add(1, Ordering::Relaxed);
        sequence += stride;
    }
    tally
}

async fn open(mode: LoadMode, target: SocketAddr) -> Result<Channel, RequestFailed> {
    match mode {
        LoadMode::HttpKeepAlive | LoadMode::HttpNewConnection => {
            let stream = TcpStream::connect(target).await?;
            Ok(Channel::Http(ClientConnection::start(stream).await?))
        }
        LoadMode::Udp => {
            let local: SocketAddr = if target.is_ipv4() {
                "0.0.0.0:0".parse().expect("constant address")
            } else {
                "[::]:0".parse().expect("constant address")
            };
            let socket = UdpSocket::bind(local).await?;
            socket.connect(target).await?;
            Ok(Channel::Udp(socket))
        }
    }
}

async fn request(
    shared: &Shared,
    channel: &mut Option<Channel>,
    sequence: u64,
) -> Result<(), RequestFailed> {
    let spec = &shared.spec;
    let new_connection = spec.mode == LoadMode::HttpNewConnection;
    // A keep-alive connection the server has closed since is replaced first.
    if let Some(Channel::Http(connection)) = channel.as_ref()
        && connection.sender.is_closed()
    {
        *channel = None;
    }
    if new_connection || channel.is_none() {
        *channel = Some(open(spec.mode, shared.target).await?);
    }
    let Some(open_channel) = channel.as_mut() else {
        return Err(RequestFailed(FailKind::Other));
    };
    match open_channel {
        Channel::Http(connection) => {
            let response = connection
                .exchange(shared.http.request(new_connection))
                .await?;
            if new_connection || closes_after(response.version(), response.headers()) {
                *channel = None;
            }
            if response.status().is_success() {
                Ok(())
            } else {
                Err(RequestFailed(FailKind::BadStatus))
            }
        }
        Channel::Udp(socket) => {
            let len = spec.udp_payload_len.clamp(8, MAX_DATAGRAM);
            let mut payload = vec![0u8; len];
            payload[..8].copy_from_slice(&sequence.to_be_bytes());
            socket.send(&payload).await?;
            let mut reply = vec![0u8; MAX_DATAGRAM];
            loop {
                let received = socket.recv(&mut reply).await?;
                // Late replies to earlier (timed-out) requests are skipped.
                if received >= 8 && reply[..8] == payload[..8] {
                    return if received == len {
                        Ok(())
                    } else {
                        Err(RequestFailed(FailKind::ShortRead))
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::servers::{ServerStats, serve_udp_with};
    use crate::test_support::{LoopbackHttp, runtime, start_http};

    /// Failed requests are counted by kind: a closed port refuses.
    #[test]
    fn errors_are_counted_by_kind() {
        let rt = runtime();
        // A port nothing listens on (bound, then closed).
        let target = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let spec = LoadSpec {
            mode: LoadMode::HttpNewConnection,
            connections: 1,
            rate: 50.0,
            duration: Duration::from_millis(200),
            ..LoadSpec::default()
        };
        let result = rt.block_on(run_load(&spec, target, None)).expect("load");
        assert_eq!(result.ok, 0);
        assert!(result.errors > 0, "{result:?}");
        assert_eq!(result.error_kinds.refused, result.errors, "{result:?}");
        let kinds = result.error_kinds;
        assert_eq!(kinds.reset + kinds.short_read + kinds.other, 0);
    }

    #[test]
    fn rejects_bad_specs() {
        let rt = runtime();
        let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let check = |spec: LoadSpec| rt.block_on(run_load(&spec, target, None)).err();
        let base = LoadSpec::default();
        assert_eq!(
            check(LoadSpec {
                rate: 0.0,
                ..base.clone()
            }),
            Some(LoadError::BadRate(0.0))
        );
        assert!(matches!(
            check(LoadSpec {
                rate: f64::NAN,
                ..base.clone()
            }),
            Some(LoadError::BadRate(_))
        ));
        assert_eq!(
            check(LoadSpec {
                connections: 0,
                ..base.clone()
            }),
            Some(LoadError::NoConnections)
        );
        assert_eq!(
            check(LoadSpec {
                duration: Duration::ZERO,
                ..base.clone()
            }),
            Some(LoadError::ZeroDuration)
        );
        assert_eq!(
            check(LoadSpec {
                rate: 0.5,
                duration: Duration::from_secs(1),
                ..base
            }),
            Some(LoadError::EmptySchedule)
        );
    }

    #[test]
    fn keep_alive_counts_and_rate() {
        let rt = runtime();
        let LoopbackHttp {
            addr, stats, stop, ..
        } = start_http(&rt, None);
        let spec = LoadSpec {
            mode: LoadMode::HttpKeepAlive,
            connections: 4,
            rate: 300.0,
            duration: Duration::from_millis(1000),
            ..LoadSpec::default()
        };
        let bar = indicatif::ProgressBar::hidden();
        let result = rt
            .block_on(run_load(&spec, addr, Some(&bar)))
            .expect("load");
        assert_eq!(result.scheduled, 300);
        assert_eq!(result.ok, 300, "{result:?}");
        assert_eq!(result.errors + result.timeouts, 0);
        assert_eq!(stats.requests.load(Ordering::Relaxed), 300);
        assert_eq!(
            stats.accepted.load(Ordering::Relaxed),
            4,
            "persistent connections"
        );
        assert_eq!(bar.position(), 300);
        // The schedule spreads the requests over the duration, not a burst.
        assert!(
            (0.7..1.3).contains(&(result.elapsed_s / 1.0)),
            "elapsed {}",
            result.elapsed_s
        );
        assert!((210.0..390.0).contains(&result.achieved_rate));
        let latency = &result.client_latency;
        assert_eq!(latency.histogram.iter().map(|b| b.2).sum::<u64>(), 300);
        assert!(latency.p50_us <= latency.p99_us && latency.p99_us <= latency.max_us);
        assert!((latency.histogram.last().unwrap().1 - 100.0).abs() < 1e-9);
        let _ = stop.send(());
    }

    #[test]
    fn new_connection_mode_opens_one_connection_per_request() {
        let rt = runtime();
        let LoopbackHttp {
            addr, stats, stop, ..
        } = start_http(&rt, None);
        let spec = LoadSpec {
            mode: LoadMode::HttpNewConnection,
            connections: 2,
            rate: 100.0,
            duration: Duration::from_millis(500),
            ..LoadSpec::default()
        };
        let result = rt.block_on(run_load(&spec, addr, None)).expect("load");
        assert_eq!(result.ok, 50, "{result:?}");
        assert_eq!(stats.accepted.load(Ordering::Relaxed), 50);
        assert_eq!(stats.requests.load(Ordering::Relaxed), 50);
        let _ = stop.send(());
    }

    #[test]
    fn a_server_stall_is_not_omitted() {
        // One 200 ms stall at request 20 of a 100 req/s run: the ~20 requests
        // due during the stall wait too, so > 1 % of samples exceed 100 ms.
        // A closed-loop generator that timed from the actual send would record
        // one slow sample of 200 and report a p99 of well under 100 ms.
        let rt = runtime();
        let LoopbackHttp { addr, stop, .. } =
            start_http(&rt, Some((20, Duration::from_millis(200))));
        let spec = LoadSpec {
            mode: LoadMode::HttpKeepAlive,
            connections: 1,
            rate: 100.0,
            duration: Duration::from_secs(2),
            ..LoadSpec::default()
        };
        let result = rt.block_on(run_load(&spec, addr, None)).expect("load");
        assert_eq!(result.ok, 200, "{result:?}");
        assert!(
            result.client_latency.p99_us > 100_000,
            "p99 {} µs hides the stall",
            result.client_latency.p99_us
        );
        assert!(result.client_latency.max_us >= 190_000);
        // The median stays unaffected.
        assert!(result.client_latency.p50_us < 50_000);
        let _ = stop.send(());
    }

    #[test]
    fn udp_request_response_counts() {
        let rt = runtime();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = socket.local_addr().expect("addr");
        let stats = Arc::new(ServerStats::default());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(serve_udp_with(socket, Some(Arc::clone(&stats)), async {
            let _ = stop_rx.await;
        }));
        let spec = LoadSpec {
            mode: LoadMode::Udp,
            connections: 3,
            rate: 200.0,
            duration: Duration::from_millis(500),
            udp_payload_len: 100,
            ..LoadSpec::default()
        };
        let result = rt.block_on(run_load(&spec, addr, None)).expect("load");
        assert_eq!(result.ok, 100, "{result:?}");
        assert_eq!(stats.requests.load(Ordering::Relaxed), 100);
        let _ = stop_tx.send(());
    }

    #[test]
    fn a_silent_server_gives_timeouts_and_the_run_still_ends() {
        let rt = runtime();
        // Bound and listening, never accepting nor answering: connects succeed
        // through the backlog, replies never come.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let spec = LoadSpec {
            mode: LoadMode::HttpKeepAlive,
            connections: 2,
            rate: 20.0,
            duration: Duration::from_millis(500),
            request_timeout: Duration::from_millis(100),
            ..LoadSpec::default()
        };
        let started = std::time::Instant::now();
        let result = rt.block_on(run_load(&spec, addr, None)).expect("load");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(result.ok, 0);
        assert_eq!(result.timeouts + result.errors, 10);
        assert!(result.timeouts > 0);
        assert!(result.client_latency.histogram.is_empty());
        drop(listener);
    }

    #[test]
    fn rejects_a_bad_http_path() {
        let rt = runtime();
        let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for path in ["no-slash", "/with space", "http://elsewhere/", ""] {
            let spec = LoadSpec {
                http_path: path.to_owned(),
                ..LoadSpec::default()
            };
            assert_eq!(
                rt.block_on(run_load(&spec, target, None)).err(),
                Some(LoadError::BadPath(path.to_owned())),
                "{path:?}"
            );
        }
    }

    #[test]
    fn error_statuses_count_as_errors_and_keep_alive_reconnects() {
        // The builtin proxy in front of a closed port answers every request
        // 502 with `Connection: close`.
        let rt = runtime();
        let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let dead_backend = dead.local_addr().expect("addr");
        drop(dead);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let proxy = listener.local_addr().expect("addr");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(crate::ingress::serve_builtin_proxy(
            listener,
            dead_backend,
            async {
                let _ = stop_rx.await;
            },
        ));
        let spec = LoadSpec {
            mode: LoadMode::HttpKeepAlive,
            connections: 2,
            rate: 100.0,
            duration: Duration::from_millis(300),
            ..LoadSpec::default()
        };
        let result = rt.block_on(run_load(&spec, proxy, None)).expect("load");
        assert_eq!(result.ok, 0, "{result:?}");
        assert_eq!(result.errors, 30, "{result:?}");
        assert_eq!(result.timeouts, 0, "{result:?}");
        assert!(result.client_latency.histogram.is_empty());
        let _ = stop_tx.send(());
    }

    #[test]
    fn timeouts_run_from_the_intended_send_time() {
        // One worker, 50 requests 10 ms apart, 100 ms timeout, a server that
        // never answers. Counted from the intended time, every request has
        // expired 100 ms after it was due and the run ends ~0.6 s in; counted
        // from each actual send, the requests would queue 100 ms each (5 s).
        let rt = runtime();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let spec = LoadSpec {
            mode: LoadMode::HttpKeepAlive,
            connections: 1,
            rate: 100.0,
            duration: Duration::from_millis(500),
            request_timeout: Duration::from_millis(100),
            ..LoadSpec::default()
        };
        let result = rt.block_on(run_load(&spec, addr, None)).expect("load");
        assert_eq!(result.timeouts + result.errors, 50, "{result:?}");
        assert!(result.timeouts > 0);
        assert!(result.elapsed_s < 1.5, "elapsed {} s", result.elapsed_s);
        drop(listener);
    }

    /// Loopback measurement of the load generator against the builtin backend
    /// (both on the test's two-worker runtime): prints the achieved rate and
    /// latency. Run with `cargo test [--release] -p hoptrace-lab --lib --
    /// --ignored --nocapture --test-threads=1 loopback_rate`; the lab's
    /// binary is a release build, so `--release` gives its figures.
    fn measure(mode: LoadMode, connections: usize, rate: f64) -> LoadResult {
        let rt = runtime();
        let LoopbackHttp { addr, stop, .. } = start_http(&rt, None);
        let spec = LoadSpec {
            mode,
            connections,
            rate,
            duration: Duration::from_secs(2),
            ..LoadSpec::default()
        };
        let result = rt.block_on(run_load(&spec, addr, None)).expect("load");
        let latency = &result.client_latency;
        println!(
            "{mode} x{connections} @ {rate} req/s: scheduled {} ok {} errors {} timeouts {} achieved {:.1} req/s, p50 {} µs, p90 {} µs, p99 {} µs, max {} µs",
            result.scheduled,
            result.ok,
            result.errors,
            result.timeouts,
            result.achieved_rate,
            latency.p50_us,
            latency.p90_us,
            latency.p99_us,
            latency.max_us
        );
        let _ = stop.send(());
        result
    }

    #[test]
    #[ignore = "measurement on loopback; prints figures"]
    fn loopback_rate_keep_alive_2000() {
        let result = measure(LoadMode::HttpKeepAlive, 4, 2000.0);
        assert_eq!(result.ok, result.scheduled, "{result:?}");
        assert!(result.achieved_rate >= 1900.0, "{}", result.achieved_rate);
    }

    #[test]
    #[ignore = "measurement on loopback; prints figures"]
    fn loopback_rate_new_connection_1000() {
        let result = measure(LoadMode::HttpNewConnection, 4, 1000.0);
        assert_eq!(result.ok, result.scheduled, "{result:?}");
        assert!(result.achieved_rate >= 950.0, "{}", result.achieved_rate);
    }

    #[test]
    fn client_latency_summarises_the_histogram() {
        let mut histogram = Histogram::<u64>::new(3).unwrap();
        for us in [120, 180, 180, 950, 4000] {
            histogram.record(us).unwrap();
        }
        let latency = client_latency(&histogram);
        assert_eq!(latency.p50_us, 180);
        assert_eq!(latency.max_us, 4001, "HDR rounds up within 3 digits");
        assert!(
            (latency.mean_us - 1086.0).abs() < 2.0,
            "{}",
            latency.mean_us
        );
        assert_eq!(latency.histogram.iter().map(|b| b.2).sum::<u64>(), 5);
        assert_eq!(latency.histogram.last().map(|b| b.1), Some(100.0));
        let empty = client_latency(&Histogram::<u64>::new(3).unwrap());
        assert_eq!((empty.p99_us, empty.max_us, empty.mean_us), (0, 0, 0.0));
    }
}
