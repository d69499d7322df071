//! The request timeline: socket reads and writes ([`SockEvent`]) joined
//! into requests, each a chain of segments from the client's write to its
//! read of the response, through the ingress proxy and the application.
//!
//! How a request is joined (HTTP/1.1, one request at a time per
//! connection, as keep-alive and new-connection loads send them):
//! 1. Consecutive reads (or writes) of one socket end are one *message*.
//! 2. The two ends of a TCP connection are paired by the active end's
//!    address (`ip:port` of the side that connected), which DNAT leaves
//!    alone: the passive end sees it as its remote address.
//! 3. A client's request message is followed, in order, by the first unread
//!    message on the peer end. When that end belongs to a proxy, the
//!    proxy's next write on an upstream connection *by the same thread*,
//!    in order and within [`JoinOptions::window_ns`], is the forwarded
//!    request (downstream read ↔ upstream write joined by thread and
//!    order). The upstream peer (the application) answers on its end, the
//!    proxy reads the answer and writes it downstream, the client reads it.
//!
//! What cannot be joined: HTTP/2 (several requests multiplexed on one
//! connection break the one-message-per-request order), a proxy that hands
//! a request to another thread between read and write (a different thread
//! id), pipelined HTTP/1.1, and connections that were open before tracing
//! began and never carried a full request while traced. Unjoined requests
//! are counted (`seen` minus `joined`).
//!
//! A request on a new connection starts at its client's connect (SYN
//! sent): the journeys of the handshake's SYN and SYN-ACK, on every node,
//! are its datapath by category (kube-proxy walks its nat chains for a
//! new connection there), and the rest of the connect, to the first
//! write, is `client.connect` (a proxy's new upstream connection:
//! `proxy.connect`).
//!
//! Each leg between two processes (a write, then the peer's read) is split
//! with the journeys of its packets ([`LegJourney`], from the journey
//! observer): `socket.queue` is from the moment the packet reached the
//! receiving socket (the last hop before `socket.pod`) to the read, in the
//! category of the process that reads; the journeys' own categories are
//! the datapath; what is left of the leg (the sender's stack, the wire
//! between nodes) is `kernel-other`. When the leg's packet was sent again
//! during the leg, the time from the first transmission to the last
//! retransmission is taken out of that rest as `tcp.retransmit` (the wait
//! for a retransmission timeout, a tail loss probe or a fast retransmit).
//! A retransmission is `tcp:tcp_retransmit_skb` on either end of the
//! connection, or two journeys of the leg with one TCP sequence number
//! (`resent`). Either end, because a lost response is often recovered
//! by its sender's tail loss probe, which this tracepoint does not see
//! (it fires in `tcp_retransmit_skb`, which the probe bypasses), while the
//! receiver, whose request the lost response would have acknowledged,
//! retransmits that request on its own timeout at about the same time;
//! the journeys see the probe itself.

use std::collections::HashMap;

use hoptrace_common::{SockEvent, SockKind, sock::tcp_state};

use crate::attribution::taxonomy::Category;

/// An IPv4 endpoint: address (network order bytes) and port (host order).
pub type Endpoint = ([u8; 4], u16);

/// Segment names of the request timeline (docs/segments.md).
pub mod segment {
    /// Bytes wait in the receiving socket until the process reads them.
    pub const SOCKET_QUEUE: &str = "socket.queue";
    /// The proxy read the request from downstream → wrote it upstream.
    pub const PROXY_REQUEST: &str = "proxy.request";
    /// The proxy read the response from upstream → wrote it downstream.
    pub const PROXY_RESPONSE: &str = "proxy.response";
    /// A new upstream connection's setup (SYN sent → established), within
    /// the proxy's handling of a request, less its handshake packets'
    /// datapath (their journeys' categories).
    pub const PROXY_CONNECT: &str = "proxy.connect";
    /// A client's new connection: its connect began (SYN sent) → its
    /// first write of the request, less the datapath of the handshake's
    /// SYN and SYN-ACK (their journeys' categories, on every node): the
    /// peer's SYN handling, the wire, and the client's own wake-up.
    pub const CLIENT_CONNECT: &str = "client.connect";
    /// The application read the request → wrote the response.
    pub const APP_SERVICE: &str = "app.service";
    /// A backend this kernel does not see (a node's view): the proxy's
    /// upstream write → its read of the response, less this node's
    /// datapath of the request's and response's packets and the
    /// response's wait in the proxy's socket: the network beyond this
    /// node and the backend's own time.
    pub const APP_REMOTE: &str = "app.remote";
    /// Datapath time of a leg, named by its category (the journeys' own
    /// segments are in the node ledger).
    pub const DATAPATH: &str = "datapath";
    /// The rest of a leg: the sender's stack and the wire between nodes.
    pub const STACK: &str = "stack";
    /// A leg whose packet was sent again between the write and the peer's
    /// read (`tcp:tcp_retransmit_skb` on the sender's end, or on the
    /// receiver's: its data the lost segment would have acknowledged; or
    /// two journeys of the leg with one TCP sequence number): the first transmission (the write, or
    /// the leg's first packet journey when it began before the write's
    /// recorded time) → the last retransmission in the leg, taken out of the leg's
    /// [`STACK`] (category `kernel-other`). Present, possibly 0 ns long,
    /// in every leg with a retransmission.
    pub const TCP_RETRANSMIT: &str = "tcp.retransmit";
    /// A client that says when it meant to send (the lab's load
    /// generator): its intended send time → its write began (its timer's
    /// lateness, its own work, waiting for its connection).
    pub const CLIENT_WAIT: &str = "client.wait";
    /// Such a client's last read of the response → it had the whole
    /// response (its own parsing and wake-up).
    pub const CLIENT_PROCESS: &str = "client.process";
}

/// Extends joined requests with the client's own account of each:
/// `(intended send, complete response)` in bpf ktime ns (the lab's load
/// generator keeps them). Each request, in the order of its write, takes
/// the unused pair intended at or before its write that completed first
/// at or after its read (its own completes a moment after its read;
/// another connection's queued behind a stall, intended earlier, completes
/// long after), and gains `client.wait` and `client.process`
/// segments (category `client`); its start and end become the client's.
/// A connect that began before the intended send time (a keep-alive
/// connection opened ahead of the schedule) is not part of the request's
/// latency: its segments are dropped and `client.wait` runs to the write.
/// Returns how many requests were extended.
pub fn add_client_times(requests: &mut [Request], times: &[(u64, u64)]) -> usize {
    /// Candidates looked at per request (requests of other connections interleave).
    const LOOKBACK: usize = 256;
    let mut times: Vec<(u64, u64)> = times.to_vec();
    times.sort_unstable();
    let mut used = vec![false; times.len()];
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by_key(|&i| requests[i].write_ns);
    let mut extended = 0;
    for i in order {
        let r = &mut requests[i];
        let upto = times.partition_point(|t| t.0 <= r.write_ns);
        // The unused record that fits and completed first: the load
        // generator gives each connection its own queue, so while one
        // connection waits (a retransmission), records of requests queued
        // behind it are intended before the other connections' writes
        // and complete after their reads; taking the oldest gave them to
        // those requests (95 of 400 then found none). A record no request
        // took (a request not joined) soon completes too early to fit.
        let found = (upto.saturating_sub(LOOKBACK)..upto)
            .filter(|&k| !used[k] && times[k].1 >= r.end_ns)
            .min_by_key(|&k| (times[k].1, k));
        let Some(k) = found else { continue };
        used[k] = true;
        let (intended, done) = times[k];
        if intended > r.start_ns {
            // Connected ahead of the schedule: the connect is not this
            // request's (its segments are the ones before the write).
            let write = r.write_ns;
            r.segments.retain(|s| s.start_ns >= write);
            r.start_ns = write;
        }
        push(
            &mut r.segments,
            segment::CLIENT_WAIT,
            Category::Client,
            intended,
            r.start_ns - intended,
        );
        push(
            &mut r.segments,
            segment::CLIENT_PROCESS,
            Category::Client,
            r.end_ns,
            done - r.end_ns,
        );
        r.segments.sort_by_key(|s| s.start_ns);
        r.start_ns = intended;
        r.end_ns = done;
        extended += 1;
    }
    extended
}

/// Which process a socket end belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Connects and sends requests (not a proxy).
    Client,
    /// A process named in [`JoinOptions::proxies`].
    Proxy,
    /// Accepts connections and answers (not a proxy).
    Application,
}

impl Role {
    /// The category of this process's own time.
    pub const fn category(self) -> Category {
        match self {
            Self::Client => Category::Client,
            Self::Proxy => Category::IngressProxy,
            Self::Application => Category::Application,
        }
    }
}

/// Settings of the join.
#[derive(Clone, Debug)]
pub struct JoinOptions {
    /// Thread names (`comm`, at most 15 bytes) of proxies.
    pub proxies: Vec<String>,
    /// Longest a proxy may hold a request between its downstream read and
    /// its upstream write (or a response between its reads and writes), ns.
    pub window_ns: u64,
    /// Longest a new connection may stay idle between its establishment
    /// and its first write for its connect to count in that request, ns.
    /// `None` (the lab, which trims connects by the load generator's own
    /// record): no limit. A node's view has no such record: a pool or a
    /// load generator that opened connections ahead would otherwise put
    /// their idle time in `client.connect`.
    pub connect_idle_ns: Option<u64>,
    /// Join requests whose client, server or backend this kernel does not
    /// see (another machine, a node's view): a server end whose peer is
    /// missing gets a stand-in client ([`remote_client`]), and a client's
    /// or a proxy's upstream connection without a peer is one round trip
    /// ([`segment::APP_REMOTE`], [`remote_server`]). The lab sees every
    /// end.
    pub remote_peers: bool,
}

/// Thread names of the proxies hoptrace knows by default; the lab adds
/// its builtin proxy's ([`BUILTIN_PROXY_COMM`]).
pub const DEFAULT_PROXIES: [&str; 4] = ["envoy", "nginx", "haproxy", "traefik"];

/// The thread name of the lab's builtin proxy.
pub const BUILTIN_PROXY_COMM: &str = "ht-lab-proxy";

impl Default for JoinOptions {
    fn default() -> Self {
        Self {
            proxies: DEFAULT_PROXIES.iter().map(|s| (*s).to_owned()).collect(),
            window_ns: 1_000_000_000,
            connect_idle_ns: None,
            remote_peers: false,
        }
    }
}

impl JoinOptions {
    fn is_proxy(&self, comm: &str) -> bool {
        // comm is truncated to 15 bytes by the kernel.
        self.proxies.iter().any(|p| {
            let p = &p.as_bytes()[..p.len().min(15)];
            comm.as_bytes() == p || (p.len() == 15 && comm.as_bytes().starts_with(p))
        })
    }
}

/// A finished packet journey, as the request timeline needs it: the flow
/// of its first parsed headers and when it started, reached its socket
/// and ended, with its datapath time per category. Only journeys that
/// carry payload are of use.
#[derive(Clone, Debug)]
pub struct LegJourney {
    /// Source of the first parsed headers (innermost layer).
    pub src: Endpoint,
    /// Destination of the first parsed headers (before DNAT).
    pub dst: Endpoint,
    /// First hop, ns (bpf ktime).
    pub start_ns: u64,
    /// Last hop, ns.
    pub end_ns: u64,
    /// When the packet reached the reading socket (the hop before
    /// `socket.pod`/`socket.node`), when the journey ended in a delivery.
    pub arrival_ns: Option<u64>,
    /// Datapath time per category in ns, without `socket.delivery`.
    pub categories: Vec<(Category, u64)>,
    /// A connection's handshake packet (SYN or SYN-ACK, no payload):
    /// part of a connect, never of a leg that carries a message.
    pub handshake: bool,
    /// TCP sequence number of the first parsed headers (host order): a
    /// later journey of a leg with the same one is the packet sent again;
    /// 0: unknown.
    pub seq: u32,
    /// The journey ended in a drop.
    pub dropped: bool,
}

/// One segment of one request.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestSegment {
    /// Segment name ([`segment`]).
    pub name: &'static str,
    /// Its category.
    pub category: Category,
    /// Start, ns (bpf ktime).
    pub start_ns: u64,
    /// Duration, ns.
    pub duration_ns: u64,
}

/// One joined request: the client's write to its read of the whole
/// response, as contiguous segments.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// The client's connect (SYN sent) on a new connection, else its
    /// first write of the request, ns.
    pub start_ns: u64,
    /// The client's first write of the request, ns.
    pub write_ns: u64,
    /// The client's last read of the response, ns.
    pub end_ns: u64,
    /// Whether it went through a proxy.
    pub proxied: bool,
    /// Segments in time order; durations sum to `end_ns - start_ns`.
    pub segments: Vec<RequestSegment>,
}

impl Request {
    /// Time per category in ns.
    pub fn category_ns(&self) -> HashMap<Category, u64> {
        let mut out = HashMap::new();
        for s in &self.segments {
            *out.entry(s.category).or_insert(0) += s.duration_ns;
        }
        out
    }

    /// Whether a leg of the request waited for a TCP retransmission
    /// (it has a [`segment::TCP_RETRANSMIT`] segment).
    pub fn retransmitted(&self) -> bool {
        self.segments
            .iter()
            .any(|s| s.name == segment::TCP_RETRANSMIT)
    }

    /// Total of the named segment in ns (e.g. `socket.queue` of one category).
    pub fn segment_ns(&self, name: &str, category: Category) -> u64 {
        self.segments
            .iter()
            .filter(|s| s.name == name && s.category == category)
            .map(|s| s.duration_ns)
            .sum()
    }
}

/// The outcome of a join.
#[derive(Clone, Debug, Default)]
pub struct Joined {
    /// Requests the clients sent (request messages on client ends).
    pub seen: u64,
    /// Those joined end to end.
    pub requests: Vec<Request>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    In,
    Out,
}

#[derive(Clone, Debug)]
struct Message {
    dir: Dir,
    first_ns: u64,
    last_ns: u64,
    tid: u32,
}

#[derive(Debug)]
struct End {
    local: Endpoint,
    remote: Endpoint,
    role: Role,
    active: bool,
    connect: Option<(u64, u64)>,
    messages: Vec<Message>,
    /// Next unconsumed In / Out message (index into `messages`).
    next_in: usize,
    next_out: usize,
}

impl End {
    /// The connect of a new connection, `(SYN sent, established)` ns, for
    /// its first request written at `write_ns` (once): within the join's
    /// window of it, and not idle longer than `connect_idle_ns` before it.
    fn take_connect(&mut self, write_ns: u64, opts: &JoinOptions) -> Option<(u64, u64)> {
        self.connect.take().filter(|&(s, e)| {
            e <= write_ns
                && write_ns - s <= opts.window_ns
                && opts.connect_idle_ns.is_none_or(|idle| write_ns - e <= idle)
        })
    }

    fn active_endpoint(&self) -> Endpoint {
        if self.active { self.local } else { self.remote }
    }

    /// The first message in `dir` at or after `after_ns` (with the read
    /// slack of [`End::take`]), without consuming it. A message that only
    /// the slack lets in is not taken when the end answered it (its next
    /// message began) before `after_ns`: that is an earlier exchange's
    /// (requests back to back, as a queue drains after a stall, put the
    /// previous read within the slack).
    fn find(&self, dir: Dir, after_ns: u64) -> Option<Message> {
        let slack = if dir == Dir::In { READ_SLACK_NS } else { 0 };
        // Messages alternate and follow each other in time on one end.
        let first = self
            .messages
            .partition_point(|m| m.first_ns + slack < after_ns);
        let answered = |j: usize| {
            self.messages
                .get(j + 1)
                .is_some_and(|n| n.first_ns < after_ns)
        };
        (first..self.messages.len())
            .find(|&j| {
                let m = &self.messages[j];
                m.dir == dir
                    && m.first_ns + slack >= after_ns
                    && (m.first_ns >= after_ns || !answered(j))
            })
            .map(|j| self.messages[j].clone())
    }

    /// The response read that follows write `k`, if it came at or after
    /// `after_ns` (with the read slack of [`End::take`]).
    fn response(&self, k: usize, after_ns: u64) -> Option<Message> {
        self.messages
            .get(k + 1)
            .filter(|m| m.dir == Dir::In && m.first_ns + READ_SLACK_NS >= after_ns)
            .cloned()
    }

    /// The first message in `dir` at or after `after_ns`, from the cursor on; consumes it.
    fn take(&mut self, dir: Dir, after_ns: u64) -> Option<Message> {
        let cursor = match dir {
            Dir::In => &mut self.next_in,
            Dir::Out => &mut self.next_out,
        };
        while *cursor < self.messages.len() {
            let m = &self.messages[*cursor];
            *cursor += 1;
            // A read may return a little before the write's tracepoint
            // fires when the write's start is not known: allow for it.
            let slack = if dir == Dir::In { READ_SLACK_NS } else { 0 };
            if m.dir == dir && m.first_ns + slack >= after_ns {
                return Some(m.clone());
            }
        }
        None
    }
}

const EPHEMERAL_MIN: u16 = 32768;

/// A socket end: kernel `struct sock` address, local and remote endpoint.
type EndKey = (u64, Endpoint, Endpoint);

/// How much earlier than the write's recorded time a peer's read may
/// return and still be its read (writes timed at their end).
const READ_SLACK_NS: u64 = 200_000;

/// Joins socket events into requests. `events` need not be sorted.
pub fn join(events: &[SockEvent], journeys: &[LegJourney], opts: &JoinOptions) -> Joined {
    let mut events: Vec<&SockEvent> = events.iter().filter(|e| e.family == 2).collect();
    events.sort_by_key(|e| e.ts_ns);

    // Socket ends by (sk address, local, remote); connect times by sk.
    let mut ends: Vec<End> = Vec::new();
    let mut index: HashMap<EndKey, usize> = HashMap::new();
    let mut syn_sent: HashMap<u64, u64> = HashMap::new();
    // Per socket end: whether it connected, and its connect's (start, end).
    let mut known: HashMap<EndKey, (bool, Option<(u64, u64)>)> = HashMap::new();
    let mut retransmits = Retransmits::new();
    for e in &events {
        let local = (e.saddr, e.sport);
        let remote = (e.daddr, e.dport);
        match SockKind::from_u8(e.kind) {
            SockKind::State => {
                if e.new_state == tcp_state::SYN_SENT {
                    syn_sent.insert(e.sk_addr, e.ts_ns);
                } else if e.new_state == tcp_state::ESTABLISHED {
                    let key = (e.sk_addr, local, remote);
                    if e.old_state == tcp_state::SYN_SENT {
                        let connect = syn_sent.remove(&e.sk_addr).map(|s| (s, e.ts_ns));
                        known.insert(key, (true, connect));
                    } else if e.old_state == tcp_state::SYN_RECV {
                        known.insert(key, (false, None));
                    }
                }
            }
            kind @ (SockKind::Recv | SockKind::Send) => {
                let dir = if kind == SockKind::Recv {
                    Dir::In
                } else {
                    Dir::Out
                };
                let key = (e.sk_addr, local, remote);
                let i = *index.entry(key).or_insert_with(|| {
                    let (active, connect) = known.get(&key).copied().unwrap_or(
                        // Opened before tracing: the side with the
                        // ephemeral port connected.
                        (local.1 >= EPHEMERAL_MIN && remote.1 < EPHEMERAL_MIN, None),
                    );
                    let comm = e.comm_str();
                    let role = if opts.is_proxy(comm) {
                        Role::Proxy
                    } else if active {
                        Role::Client
                    } else {
                        Role::Application
                    };
                    ends.push(End {
                        local,
                        remote,
                        role,
                        active,
                        connect,
                        messages: Vec::new(),
                        next_in: 0,
                        next_out: 0,
                    });
                    ends.len() - 1
                });
                let end = &mut ends[i];
                // A write begins when its syscall did (the packet may
                // reach the peer before the send tracepoint fires); a read
                // counts when it returned.
                match end.messages.last_mut() {
                    Some(m) if m.dir == dir => m.last_ns = e.ts_ns,
                    _ => end.messages.push(Message {
                        dir,
                        first_ns: if dir == Dir::Out {
                            e.begin_ns()
                        } else {
                            e.ts_ns
                        },
                        last_ns: e.ts_ns,
                        tid: e.tid(),
                    }),
                }
            }
            SockKind::Retransmit => retransmits
                .entry((local, remote))
                .or_default()
                .push(e.ts_ns),
            SockKind::Unknown => {}
        }
    }

    // Pair the ends of each connection by the active endpoint; several
    // connections over time may reuse it: each passive end pairs with the
    // active end that was open closest before it.
    let mut passive_by_key: HashMap<Endpoint, Vec<usize>> = HashMap::new();
    let mut passive_by_port: HashMap<u16, Vec<usize>> = HashMap::new();
    for (i, end) in ends.iter().enumerate() {
        if !end.active {
            passive_by_key
                .entry(end.active_endpoint())
                .or_default()
                .push(i);
            passive_by_port.entry(end.remote.1).or_default().push(i);
        }
    }
    let first_ns = |e: &End| e.messages.first().map_or(0, |m| m.first_ns);
    let peer_of = |ends: &[End], i: usize| -> Option<usize> {
        let end = &ends[i];
        let key = end.active_endpoint();
        let candidates = passive_by_key
            .get(&key)
            .or_else(|| passive_by_port.get(&key.1))?;
        let start = first_ns(end);
        // The passive end whose first message is closest after ours.
        candidates
            .iter()
            .copied()
            .filter(|&p| first_ns(&ends[p]) + 1_000_000 >= start)
            .min_by_key(|&p| first_ns(&ends[p]).abs_diff(start))
    };
    let peers: Vec<Option<usize>> = (0..ends.len())
        .map(|i| {
            if ends[i].active {
                peer_of(&ends, i)
            } else {
                None
            }
        })
        .collect();
    let mut peer_of_passive: HashMap<usize, usize> = HashMap::new();
    for (a, p) in peers.iter().enumerate() {
        if let Some(p) = p {
            peer_of_passive.insert(*p, a);
        }
    }

    let mut legs = LegIndex::new(journeys);
    legs.retransmits = retransmits;
    let mut peers = peers;
    if opts.remote_peers {
        for p in 0..ends.len() {
            // A passive end that reads: a server (its first request may
            // have been cut by the start of tracing).
            let server = !ends[p].active && ends[p].messages.iter().any(|m| m.dir == Dir::In);
            if server && !peer_of_passive.contains_key(&p) {
                ends.push(remote_client(&ends[p], &legs, opts.window_ns));
                peers.push(Some(p));
            }
        }
    }
    let mut out = Joined::default();
    let clients: Vec<usize> = (0..ends.len())
        .filter(|&i| ends[i].active && ends[i].role == Role::Client)
        .collect();
    // Requests in time order over all clients, so FIFO joins see them in order.
    let mut starts: Vec<(u64, usize)> = Vec::new();
    for &c in &clients {
        for m in ends[c].messages.iter().filter(|m| m.dir == Dir::Out) {
            starts.push((m.first_ns, c));
        }
    }
    starts.sort_unstable();
    // First the client's write and the server's read of each request:
    // each connection's requests follow each other, so its cursors pair
    // them in order.
    let mut started: Vec<Started> = Vec::new();
    for (_, c) in starts {
        out.seen += 1;
        if opts.remote_peers && peers[c].is_none() {
            out.requests
                .extend(remote_server(&mut ends[c], &legs, opts));
            continue;
        }
        if let Some(s) = start_one(&mut ends, c, &peers, opts) {
            started.push(s);
        }
    }
    // Then the rest in the order the servers read them: a busy proxy
    // thread reads its connections in an order of its own; its upstream
    // exchanges are matched to them by thread ([`assign_upstream`]).
    started.sort_by_key(|s| s.m1.last_ns);
    let upstream = assign_upstream(&ends, &started, opts);
    for (s, upstream) in started.into_iter().zip(upstream) {
        if let Some(r) = finish_one(&mut ends, s, upstream, &peers, &legs, opts) {
            out.requests.push(r);
        }
    }
    out
}

/// A stand-in for the client of `server` that this kernel does not see:
/// each request the server read was written when its packets' first
/// journey on this node began (else at the read), and each response read
/// when its packets' last journey here ended (else at the write's end).
/// That end can come before the server's write returns (a veth and a
/// tunnel transmit inside the `sendmsg` call): the rest of the server's
/// call is not the request's. Journeys are found by the flow's first
/// headers, so a client behind SNAT or a NodePort (first headers not the
/// server's pair) falls back to the server's own times.
fn remote_client(server: &End, legs: &LegIndex, window_ns: u64) -> End {
    /// How far before a stand-in's first request (after its last
    /// response) its packets' journeys are looked for, ns: no earlier
    /// (later) message bounds them there.
    const STAND_IN_REACH_NS: u64 = 10_000_000;
    let (local, remote) = (server.remote, server.local);
    let mut messages: Vec<Message> = Vec::with_capacity(server.messages.len());
    for (i, m) in server.messages.iter().enumerate() {
        let t = match m.dir {
            Dir::In => {
                let after = i.checked_sub(1).map_or(
                    m.first_ns.saturating_sub(window_ns.min(STAND_IN_REACH_NS)),
                    |j| server.messages[j].last_ns,
                );
                // Not the leg's slack before `after`: on a keep-alive
                // connection that admits the previous request's packets.
                legs.within(local, remote, remote, (after, m.last_ns), false)
                    .iter()
                    .map(|j| j.start_ns)
                    .filter(|&t| t >= after)
                    .min()
                    .map_or(m.first_ns, |t| t.min(m.first_ns))
            }
            Dir::Out => {
                let before = server
                    .messages
                    .get(i + 1)
                    .map_or(m.last_ns + window_ns.min(STAND_IN_REACH_NS), |n| n.first_ns);
                legs.within(remote, local, local, (m.first_ns, before), false)
                    .iter()
                    .map(|j| j.end_ns)
                    .max()
                    .map_or(m.last_ns, |t| t.max(m.first_ns))
            }
        };
        messages.push(Message {
            dir: if m.dir == Dir::In { Dir::Out } else { Dir::In },
            first_ns: t,
            last_ns: t,
            tid: 0,
        });
    }
    End {
        local,
        remote,
        role: Role::Client,
        active: true,
        connect: None,
        messages,
        next_in: 0,
        next_out: 0,
    }
}

/// A proxy's upstream exchange: its write of a request on an upstream
/// connection's end and the read of the response that follows.
struct Exchange {
    /// The upstream end and the index of the write in its messages.
    u: usize,
    k: usize,
    /// The write's start and the response's last read, ns.
    write_ns: u64,
    response_ns: Option<u64>,
}

/// Which upstream exchange (end, message index) each proxied request of
/// `started` went out on: the join by thread and order, made consistent.
///
/// Each downstream request spans its read `R` to the proxy's next write
/// on that connection `D` (its response: HTTP/1.1 is one request at a
/// time per connection); an upstream exchange spans its write `W` to its
/// response's last read `S`. The request's exchange is on the same
/// thread, with `R <= W <= R + window` and `S <= D`. A busy proxy thread
/// can write upstream in another order than it read (a request read
/// first may wait while the next is forwarded), so taking the next write
/// in order would give a request another's exchange and leave that one
/// with none. Requests are taken in the order of `D`, each given the
/// earliest unassigned exchange that fits: an exchange that fits one
/// request has `S` before every later `D`, and a later `R` needs a later
/// `W`, so the earliest is the one the others can best spare (the window
/// aside, this joins the most requests). In a proxy that forwards in
/// order this is the order. A proxy that streams a response (writes
/// downstream before it has read all of it) has `S > D`: not joined.
fn assign_upstream(
    ends: &[End],
    started: &[Started],
    opts: &JoinOptions,
) -> Vec<Option<(usize, usize)>> {
    let mut exchanges: HashMap<u32, Vec<Exchange>> = HashMap::new();
    for (u, end) in ends.iter().enumerate() {
        if end.role == Role::Proxy && end.active {
            for (k, m) in end.messages.iter().enumerate() {
                if m.dir == Dir::Out {
                    let response = end.messages.get(k + 1).filter(|r| r.dir == Dir::In);
                    exchanges.entry(m.tid).or_default().push(Exchange {
                        u,
                        k,
                        write_ns: m.first_ns,
                        response_ns: response.map(|r| r.last_ns),
                    });
                }
            }
        }
    }
    for list in exchanges.values_mut() {
        list.sort_by_key(|x| x.write_ns);
    }
    let mut taken: HashMap<u32, Vec<bool>> = exchanges
        .iter()
        .map(|(tid, list)| (*tid, vec![false; list.len()]))
        .collect();
    // (D, index in started) of each proxied request that has a response.
    let mut by_response: Vec<(u64, usize)> = started
        .iter()
        .enumerate()
        .filter(|(_, s)| ends[s.p].role == Role::Proxy)
        .filter_map(|(i, s)| {
            ends[s.p]
                .find(Dir::Out, s.m1.last_ns)
                .map(|d| (d.first_ns, i))
        })
        .collect();
    by_response.sort_unstable();
    let mut out = vec![None; started.len()];
    for (d, i) in by_response {
        let read = started[i].m1.last_ns;
        let tid = started[i].m1.tid;
        let (Some(list), Some(taken)) = (exchanges.get(&tid), taken.get_mut(&tid)) else {
            continue;
        };
        let latest = d.min(read.saturating_add(opts.window_ns));
        let first = list.partition_point(|x| x.write_ns < read);
        let found = (first..list.len())
            .take_while(|&j| list[j].write_ns <= latest)
            .find(|&j| !taken[j] && list[j].response_ns.is_some_and(|s| s <= d));
        if let Some(j) = found {
            taken[j] = true;
            out[i] = Some((list[j].u, list[j].k));
        }
    }
    out
}

/// The next request of `client`, whose server this kernel does not see
/// (a node's view of a client pod, its service on other nodes): one round
/// trip from its write to its read of the response ([`remote_round_trip`]:
/// this node's datapath of both directions, the response's wait in the
/// client's socket, `app.remote` for the rest), after its connect on a new
/// connection (`client.connect`, whole: its round trip is beyond this
/// node too). An answer later than [`JoinOptions::window_ns`] (a long
/// poll, a watch) is not joined.
fn remote_server(client: &mut End, legs: &LegIndex, opts: &JoinOptions) -> Option<Request> {
    let m0 = client.take(Dir::Out, 0)?;
    let m7 = client.take(Dir::In, m0.first_ns)?;
    let connect = client.take_connect(m0.first_ns, opts);
    // A long poll or a watch (a node daemon's stream) is not a request.
    if m7.last_ns - m0.first_ns > opts.window_ns {
        return None;
    }
    let mut segments = Vec::new();
    if let Some((syn_ns, _)) = connect {
        push(
            &mut segments,
            segment::CLIENT_CONNECT,
            Category::Client,
            syn_ns,
            m0.first_ns - syn_ns,
        );
    }
    remote_round_trip(&mut segments, legs, client, m0.first_ns, m7.last_ns);
    segments.sort_by_key(|s| s.start_ns);
    Some(Request {
        start_ns: connect.map_or(m0.first_ns, |(syn_ns, _)| syn_ns),
        write_ns: m0.first_ns,
        end_ns: m7.last_ns,
        proxied: false,
        segments,
    })
}

/// A request up to the server's (proxy's or application's) read.
struct Started {
    /// The client's end and its write.
    c: usize,
    m0: Message,
    /// The server's end and its read.
    p: usize,
    m1: Message,
    /// The client's connect (SYN sent, established), ns, on a new connection.
    connect: Option<(u64, u64)>,
}

fn start_one(
    ends: &mut [End],
    c: usize,
    peers: &[Option<usize>],
    opts: &JoinOptions,
) -> Option<Started> {
    let m0 = ends[c].take(Dir::Out, 0)?;
    let p = peers[c]?;
    let m1 = ends[p].take(Dir::In, m0.first_ns)?;
    // A new connection's connect belongs to its first request (once).
    let connect = ends[c].take_connect(m0.first_ns, opts);
    Some(Started {
        c,
        m0,
        p,
        m1,
        connect,
    })
}

fn finish_one(
    ends: &mut [End],
    Started {
        c,
        m0,
        p,
        m1,
        connect,
    }: Started,
    upstream: Option<(usize, usize)>,
    peers: &[Option<usize>],
    legs: &LegIndex,
    opts: &JoinOptions,
) -> Option<Request> {
    let mut segments = Vec::new();
    if let Some((syn_ns, established_ns)) = connect {
        connect_segments(
            &mut segments,
            legs,
            (&ends[c], &ends[p]),
            (syn_ns, established_ns),
            (syn_ns, m0.first_ns),
            (segment::CLIENT_CONNECT, Category::Client),
        );
    }
    leg(
        &mut segments,
        legs,
        &ends[c],
        &ends[p],
        m0.first_ns,
        m1.last_ns,
    );
    let proxied = ends[p].role == Role::Proxy;
    let m_resp_out = if proxied {
        // Downstream read ↔ upstream write: same thread, in order
        // ([`assign_upstream`]).
        let (u, k) = upstream?;
        let m2 = ends[u].messages[k].clone();
        let upstream_connect = ends[u]
            .connect
            .filter(|&(s, e)| s >= m1.last_ns && e <= m2.first_ns);
        let connect = upstream_connect.map_or(0, |(s, e)| e.saturating_sub(s));
        let hold = m2.first_ns.saturating_sub(m1.last_ns);
        push(
            &mut segments,
            segment::PROXY_REQUEST,
            Category::IngressProxy,
            m1.last_ns,
            hold.saturating_sub(connect),
        );
        let b = peers[u];
        if let Some(times) = upstream_connect.filter(|_| connect > 0) {
            let at = m1.last_ns + hold.saturating_sub(connect);
            match b {
                Some(b) => connect_segments(
                    &mut segments,
                    legs,
                    (&ends[u], &ends[b]),
                    times,
                    (at, at + connect),
                    (segment::PROXY_CONNECT, Category::IngressProxy),
                ),
                None => push(
                    &mut segments,
                    segment::PROXY_CONNECT,
                    Category::IngressProxy,
                    at,
                    connect,
                ),
            }
        }
        let m5 = match b {
            Some(b) => {
                // The backend's end is looked up by time, not by cursor:
                // its exchanges come in the order of the downstream
                // responses, not necessarily its own.
                let m3 = ends[b].find(Dir::In, m2.first_ns)?;
                leg(
                    &mut segments,
                    legs,
                    &ends[u],
                    &ends[b],
                    m2.first_ns,
                    m3.last_ns,
                );
                let m4 = ends[b].find(Dir::Out, m3.last_ns)?;
                push(
                    &mut segments,
                    segment::APP_SERVICE,
                    ends[b].role.category(),
                    m3.last_ns,
                    m4.first_ns.saturating_sub(m3.last_ns),
                );
                let m5 = ends[u].response(k, m4.first_ns)?;
                leg(
                    &mut segments,
                    legs,
                    &ends[b],
                    &ends[u],
                    m4.first_ns,
                    m5.last_ns,
                );
                m5
            }
            None if opts.remote_peers => {
                let m5 = ends[u].response(k, m2.first_ns)?;
                remote_round_trip(&mut segments, legs, &ends[u], m2.first_ns, m5.last_ns);
                m5
            }
            None => return None,
        };
        let m6 = ends[p].take(Dir::Out, m5.last_ns)?;
        if m6.first_ns.saturating_sub(m5.last_ns) > opts.window_ns {
            return None;
        }
        push(
            &mut segments,
            segment::PROXY_RESPONSE,
            Category::IngressProxy,
            m5.last_ns,
            m6.first_ns.saturating_sub(m5.last_ns),
        );
        m6
    } else {
        let m4 = ends[p].take(Dir::Out, m1.last_ns)?;
        push(
            &mut segments,
            segment::APP_SERVICE,
            ends[p].role.category(),
            m1.last_ns,
            m4.first_ns.saturating_sub(m1.last_ns),
        );
        m4
    };
    let m7 = ends[c].take(Dir::In, m_resp_out.first_ns)?;
    leg(
        &mut segments,
        legs,
        &ends[p],
        &ends[c],
        m_resp_out.first_ns,
        m7.last_ns,
    );
    segments.sort_by_key(|s| s.start_ns);
    Some(Request {
        start_ns: connect.map_or(m0.first_ns, |(syn_ns, _)| syn_ns),
        write_ns: m0.first_ns,
        end_ns: m7.last_ns,
        proxied,
        segments,
    })
}

fn push(
    out: &mut Vec<RequestSegment>,
    name: &'static str,
    category: Category,
    start_ns: u64,
    duration_ns: u64,
) {
    out.push(RequestSegment {
        name,
        category,
        start_ns,
        duration_ns,
    });
}

/// Retransmission times (ns, ascending) per socket end `(local, remote)`.
type Retransmits = HashMap<(Endpoint, Endpoint), Vec<u64>>;

/// Journeys by the flow's source and destination endpoint, and the
/// retransmissions of each socket end.
struct LegIndex<'a> {
    by_src: HashMap<Endpoint, Vec<&'a LegJourney>>,
    by_dst: HashMap<Endpoint, Vec<&'a LegJourney>>,
    retransmits: Retransmits,
}

impl<'a> LegIndex<'a> {
    fn new(journeys: &'a [LegJourney]) -> Self {
        let mut by_src: HashMap<Endpoint, Vec<&LegJourney>> = HashMap::new();
        let mut by_dst: HashMap<Endpoint, Vec<&LegJourney>> = HashMap::new();
        for j in journeys {
            by_src.entry(j.src).or_default().push(j);
            by_dst.entry(j.dst).or_default().push(j);
        }
        for v in by_src.values_mut().chain(by_dst.values_mut()) {
            v.sort_by_key(|j| j.start_ns);
        }
        Self {
            by_src,
            by_dst,
            retransmits: Retransmits::new(),
        }
    }

    /// The last retransmission of `end` within `[from_ns, to_ns]`, ns.
    fn last_retransmit(&self, end: &End, (from_ns, to_ns): (u64, u64)) -> Option<u64> {
        let list = self.retransmits.get(&(end.local, end.remote))?;
        let upto = list.partition_point(|&t| t <= to_ns);
        list[..upto].last().copied().filter(|&t| t >= from_ns)
    }

    /// Journeys of packets with payload to `to`, from anywhere, that
    /// started and ended within `[from_ns, to_ns]`.
    fn arriving(&self, to: Endpoint, (from_ns, to_ns): (u64, u64)) -> Vec<&'a LegJourney> {
        let Some(list) = self.by_dst.get(&to) else {
            return Vec::new();
        };
        let first = list.partition_point(|j| j.start_ns < from_ns);
        list[first..]
            .iter()
            .take_while(|j| j.start_ns <= to_ns)
            .filter(|j| !j.handshake && j.end_ns <= to_ns)
            .copied()
            .collect()
    }

    /// Journeys of packets from `from` to `to` (or `to_alt`, the address
    /// before DNAT) that started and ended within `[from_ns - slack, to_ns]`:
    /// handshake packets (`handshake`) or packets with payload.
    fn within(
        &self,
        from: Endpoint,
        to: Endpoint,
        to_alt: Endpoint,
        (from_ns, to_ns): (u64, u64),
        handshake: bool,
    ) -> Vec<&'a LegJourney> {
        const SLACK_NS: u64 = 200_000;
        let Some(list) = self.by_src.get(&from) else {
            return Vec::new();
        };
        let lo = from_ns.saturating_sub(SLACK_NS);
        let first = list.partition_point(|j| j.start_ns < lo);
        list[first..]
            .iter()
            .take_while(|j| j.start_ns <= to_ns)
            .filter(|j| {
                j.handshake == handshake && j.end_ns <= to_ns && (j.dst == to || j.dst == to_alt)
            })
            .copied()
            .collect()
    }
}

/// Splits the leg from `sender`'s write at `from_ns` to `receiver`'s read
/// at `to_ns` into datapath, `tcp.retransmit` (when the sender
/// retransmitted meanwhile), stack and `socket.queue` segments.
fn leg(
    out: &mut Vec<RequestSegment>,
    legs: &LegIndex,
    sender: &End,
    receiver: &End,
    from_ns: u64,
    to_ns: u64,
) {
    let total = to_ns.saturating_sub(from_ns);
    let journeys = legs.within(
        sender.local,
        receiver.local,
        sender.remote,
        (from_ns, to_ns),
        false,
    );
    let arrival = arrival(&journeys);
    let queue = arrival.map_or(0, |a| to_ns.saturating_sub(a.max(from_ns)).min(total));
    let room = total - queue;
    let used = push_datapath(out, &journeys, from_ns, room);
    let mut t = from_ns + used;
    let mut stack = room - used;
    let last = legs
        .last_retransmit(sender, (from_ns, to_ns))
        .max(legs.last_retransmit(receiver, (from_ns, to_ns)))
        .max(resent(&journeys));
    if let Some(last) = last {
        // The write, or the leg's first packet when it left before the
        // write's recorded time (a write timed at its end). Not a later
        // journey: the lost packet's may be missing (dropped before a
        // hook), and the first one seen can be an untraced probe's.
        let first = journeys.iter().map(|j| j.start_ns).fold(from_ns, u64::min);
        let wait = last.saturating_sub(first).min(stack);
        push(out, segment::TCP_RETRANSMIT, Category::KernelOther, t, wait);
        t += wait;
        stack -= wait;
    }
    if stack > 0 {
        push(out, segment::STACK, Category::KernelOther, t, stack);
        t += stack;
    }
    if queue > 0 || arrival.is_some() {
        push(
            out,
            segment::SOCKET_QUEUE,
            receiver.role.category(),
            t,
            queue,
        );
    }
}

/// A journey that starts this long after an earlier one with the same TCP
/// sequence number ended is the packet sent again, ns: a tail loss probe
/// or a retransmission timeout comes 10 ms or more later (Linux's
/// minimum probe timeout; 200 ms for a timeout), while one packet's
/// journeys on two lab nodes (one per node's session) follow each other
/// within microseconds. A fast retransmit within this is left to the
/// tracepoint.
const RESEND_GAP_NS: u64 = 1_000_000;

/// When the latest of a leg's packets was sent again, ns: the start of
/// the latest journey that an earlier journey with the same TCP sequence
/// number ended [`RESEND_GAP_NS`] or more before (0 is taken for
/// unknown). Sees what
/// `tcp:tcp_retransmit_skb` does not (a tail loss probe, which bypasses
/// it) wherever the lost packet's first journey was seen (a drop after
/// the sender's node: the wire, the receiver).
fn resent(journeys: &[&LegJourney]) -> Option<u64> {
    journeys
        .iter()
        .filter(|j| {
            journeys
                .iter()
                .any(|k| j.seq != 0 && k.seq == j.seq && k.end_ns + RESEND_GAP_NS <= j.start_ns)
        })
        .map(|j| j.start_ns)
        .max()
}

/// Pushes the datapath of `journeys` (their categories summed) as
/// `datapath` segments from `from_ns` on, fitted into `room` ns: part of
/// a leg's datapath can run inside the sender's write (before the send
/// tracepoint fires), so a sum larger than the room is scaled into it.
/// Returns the ns used (at most `room`).
fn push_datapath(
    out: &mut Vec<RequestSegment>,
    journeys: &[&LegJourney],
    from_ns: u64,
    room: u64,
) -> u64 {
    let mut by_cat: Vec<(Category, u64)> = Vec::new();
    for j in journeys {
        for &(c, ns) in &j.categories {
            match by_cat.iter_mut().find(|x| x.0 == c) {
                Some(x) => x.1 += ns,
                None => by_cat.push((c, ns)),
            }
        }
    }
    let datapath: u64 = by_cat.iter().map(|x| x.1).sum();
    let scale = if datapath > room && datapath > 0 {
        room as f64 / datapath as f64
    } else {
        1.0
    };
    let mut used = 0;
    by_cat.sort_by_key(|x| x.0.index());
    for (c, ns) in by_cat {
        let d = (((ns as f64) * scale) as u64).min(room - used);
        push(out, segment::DATAPATH, c, from_ns + used, d);
        used += d;
    }
    used
}

/// When the bytes of a leg's packets reached the reading socket, ns: the
/// latest delivery hop, else (the reader came after the correlator's idle
/// timeout closed the journey, or TCP coalesced the bytes into an skb
/// already queued) the last hop of the latest journey that did not end
/// in a drop. `None` without such a journey.
fn arrival(journeys: &[&LegJourney]) -> Option<u64> {
    journeys
        .iter()
        .filter_map(|j| j.arrival_ns)
        .max()
        .or_else(|| {
            journeys
                .iter()
                .filter(|j| !j.dropped)
                .map(|j| j.end_ns)
                .max()
        })
}

/// Splits the round trip of `upstream` (a proxy's connection to a backend
/// this kernel does not see) from the proxy's write at `from_ns` to its
/// read of the response at `to_ns` into this node's datapath of both
/// directions' packets, [`segment::APP_REMOTE`] and the response's
/// `socket.queue`. The response's packets are found by their destination
/// (their source is the backend's address after DNAT, which this side does
/// not know).
fn remote_round_trip(
    out: &mut Vec<RequestSegment>,
    legs: &LegIndex,
    upstream: &End,
    from_ns: u64,
    to_ns: u64,
) {
    let total = to_ns.saturating_sub(from_ns);
    let mut journeys = legs.within(
        upstream.local,
        upstream.remote,
        upstream.remote,
        (from_ns, to_ns),
        false,
    );
    let responses = legs.arriving(upstream.local, (from_ns, to_ns));
    let arrival = arrival(&responses);
    journeys.extend(responses);
    let queue = arrival.map_or(0, |a| to_ns.saturating_sub(a.max(from_ns)).min(total));
    let room = total - queue;
    let used = push_datapath(out, &journeys, from_ns, room);
    push(
        out,
        segment::APP_REMOTE,
        Category::Application,
        from_ns + used,
        room - used,
    );
    if arrival.is_some() {
        push(
            out,
            segment::SOCKET_QUEUE,
            upstream.role.category(),
            from_ns + room,
            queue,
        );
    }
}

/// Splits a connect into the datapath of its handshake and a named rest.
/// `active` connected to `passive`; `handshake` is its SYN sent →
/// established (the window in which the SYN and SYN-ACK journeys, on
/// every node, are looked for); `span` is the time the connect takes in
/// the request, `(start, end)` ns, which the datapath and then `rest`
/// (name, category) fill.
fn connect_segments(
    out: &mut Vec<RequestSegment>,
    legs: &LegIndex,
    (active, passive): (&End, &End),
    handshake: (u64, u64),
    (start_ns, end_ns): (u64, u64),
    (rest, category): (&'static str, Category),
) {
    let mut journeys = legs.within(active.local, passive.local, active.remote, handshake, true);
    journeys.extend(legs.within(passive.local, active.local, passive.remote, handshake, true));
    let room = end_ns.saturating_sub(start_ns);
    let used = push_datapath(out, &journeys, start_ns, room);
    if room > used {
        push(out, rest, category, start_ns + used, room - used);
    }
}

/// A journey observer that keeps the journeys of TCP packets with payload,
/// and of handshake packets (SYN, SYN-ACK), as [`LegJourney`]s, for [`join`]. Shared by every session of a lab run.
#[derive(Debug, Default)]
pub struct LegRecorder {
    journeys: std::sync::Mutex<Vec<LegJourney>>,
}

impl LegRecorder {
    /// Every journey recorded so far (taken out).
    pub fn take(&self) -> Vec<LegJourney> {
        std::mem::take(
            &mut *self
                .journeys
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// The kernel's delivery to a reading socket (docs/segments.md).
const SOCKET_DELIVERY: &str = "socket.delivery";

impl crate::correlate::JourneyObserver for LegRecorder {
    fn journey(&self, j: &crate::correlate::JourneySummary<'_>) {
        let f = j.first_flow;
        /// TCP SYN flag (SYN and SYN-ACK).
        const SYN: u8 = 0x02;
        let handshake = f.payload_len == 0 && f.tcp_flags & SYN != 0;
        if f.version != 4 || f.l4_proto != 6 || (f.payload_len == 0 && !handshake) {
            return;
        }
        let end_ns = j.start_ns + j.end_to_end_ns;
        let mut categories: Vec<(Category, u64)> = Vec::new();
        let mut arrival_ns = None;
        let last = j.segments.len().saturating_sub(1);
        for (i, (name, ns)) in j.named_segments().enumerate() {
            if i == last && name.name == SOCKET_DELIVERY {
                arrival_ns = Some(end_ns - ns);
                continue;
            }
            match categories.iter_mut().find(|x| x.0 == name.category) {
                Some(x) => x.1 += ns,
                None => categories.push((name.category, ns)),
            }
        }
        let endpoint = |addr: &[u8; 16], port: u16| ([addr[0], addr[1], addr[2], addr[3]], port);
        let leg = LegJourney {
            src: endpoint(&f.saddr, f.sport),
            dst: endpoint(&f.daddr, f.dport),
            start_ns: j.start_ns,
            end_ns,
            arrival_ns,
            categories,
            handshake,
            seq: f.tcp_seq,
            dropped: j.drop.is_some(),
        };
        self.journeys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(leg);
    }
}

#[cfg(test)]
mod tests;
