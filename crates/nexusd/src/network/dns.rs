//! The DNS resolver nexusd runs for its VMs on the bridge's gateway address (UDP and TCP). It is
//! what makes domain egress rules possible: a VM's query is answered only under that VM's egress
//! policy, and under an `Allow` policy the IPv4 addresses about to be answered are handed to the
//! firewall ([`EgressHooks::resolved`]) before the VM sees them, so the VM can connect to them as
//! soon as it knows them, and to nothing it did not resolve through us.
//!
//! Decoding and encoding are hickory's (`hickory-server`'s request and response types, its DNS
//! over TCP framing and idle timeout); resolution is `hickory-resolver`, configured with the
//! upstream servers only (no system configuration, search domains or hosts file), whose cache
//! counts TTLs down, so answers carry the remaining TTLs. The receive and accept loops are this
//! module's own because hickory's `Server` caps neither TCP connections nor queries in flight and
//! logs every query at `info`, and the guests are hostile: here queries in flight and TCP
//! connections are capped per client and in total, every wait has a deadline, malformed packets
//! are dropped, and the log lines a guest can trigger are rate limited.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use hickory_resolver::Resolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_server::net::DnsStreamHandle;
use hickory_server::net::runtime::iocompat::AsyncIoTokioAsStd;
use hickory_server::net::tcp::TcpStream as DnsOverTcp;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{
    Edns, LowerQuery, MessageType, Metadata, OpCode, ResponseCode, SerialMessage,
};
use hickory_server::proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, TimeoutStream};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder};
use nexus_lib::api::EgressPolicy;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::sanitize::Escaped;

/// Default for [`DnsConfig::query_timeout`].
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for [`DnsConfig::max_inflight`].
pub const DEFAULT_MAX_INFLIGHT: usize = 512;
/// Default for [`DnsConfig::max_inflight_per_client`].
pub const DEFAULT_MAX_INFLIGHT_PER_CLIENT: usize = 64;
/// Default for [`DnsConfig::max_tcp_connections`].
pub const DEFAULT_MAX_TCP_CONNECTIONS: usize = 128;
/// Default for [`DnsConfig::tcp_idle_timeout`].
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest UDP answer sent, and the EDNS payload size advertised: the size DNS Flag Day 2020
/// settled on, small enough not to be fragmented.
const MAX_UDP_PAYLOAD: u16 = 1232;
/// Largest UDP query read; a longer datagram is cut, fails to decode and is dropped.
const UDP_RECEIVE_BUFFER: usize = 4096;
/// Answers the resolver's cache holds (each at most 64 KiB, the size of a DNS message).
const CACHE_ENTRIES: u64 = 512;
/// Most `nameserver` lines read from a resolv.conf, as glibc (`MAXNS`).
const MAX_RESOLV_CONF_SERVERS: usize = 3;
/// Guest-triggered log lines allowed per second; the rest are not written.
const LOG_LINES_PER_SECOND: u32 = 10;

/// How the resolver listens, where it forwards, and its bounds.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Where to answer, UDP and TCP: the bridge's gateway address, port 53. Port 0 picks a free
    /// port, the same for both (tests).
    pub listen: SocketAddr,
    /// Servers to forward to.
    pub upstream: Vec<SocketAddr>,
    /// Longest wait for the upstream servers to answer one query, retries included; also the
    /// longest wait for [`EgressHooks::resolved`]. Either one running out is a SERVFAIL.
    pub query_timeout: Duration,
    /// Most queries being answered at once, over all clients. Beyond it a UDP query is dropped
    /// and a TCP connection closed; the client retries.
    pub max_inflight: usize,
    /// Most queries one client address has in flight, and most TCP connections it holds, so
    /// that one VM cannot starve the others.
    pub max_inflight_per_client: usize,
    /// Most TCP connections open at once, over all clients; over it a new one is closed at once.
    pub max_tcp_connections: usize,
    /// A TCP connection that sends no complete query for this long is closed.
    pub tcp_idle_timeout: Duration,
}

impl DnsConfig {
    /// The given addresses, the default bounds.
    pub fn new(listen: SocketAddr, upstream: Vec<SocketAddr>) -> Self {
        Self {
            listen,
            upstream,
            query_timeout: DEFAULT_QUERY_TIMEOUT,
            max_inflight: DEFAULT_MAX_INFLIGHT,
            max_inflight_per_client: DEFAULT_MAX_INFLIGHT_PER_CLIENT,
            max_tcp_connections: DEFAULT_MAX_TCP_CONNECTIONS,
            tcp_idle_timeout: DEFAULT_TCP_IDLE_TIMEOUT,
        }
    }

    fn validate(&self) -> io::Result<()> {
        let invalid = |why: String| Err(io::Error::new(io::ErrorKind::InvalidInput, why));
        if self.upstream.is_empty() {
            return invalid("the VMs' DNS resolver has no upstream server".into());
        }
        if self.upstream.contains(&self.listen) {
            return invalid(format!(
                "the VMs' DNS resolver would forward to itself ({})",
                self.listen
            ));
        }
        if self.query_timeout.is_zero() || self.tcp_idle_timeout.is_zero() {
            return invalid("the VMs' DNS resolver's timeouts must be above zero".into());
        }
        if self.max_inflight == 0 || self.max_inflight_per_client == 0 {
            return invalid("the VMs' DNS resolver must allow a query in flight".into());
        }
        if self.max_tcp_connections == 0 {
            return invalid("the VMs' DNS resolver must allow a TCP connection".into());
        }
        Ok(())
    }
}

/// Opaque key of a VM, chosen by the caller.
pub type VmKey = u64;

/// The egress policy of the VM a query came from.
#[derive(Debug, Clone)]
pub struct ClientPolicy {
    pub vm: VmKey,
    pub egress: Arc<EgressPolicy>,
}

/// What the resolver asks of the rest of nexusd: whose a client address is, and letting the
/// firewall admit addresses before a VM learns them.
pub trait EgressHooks: Send + Sync + 'static {
    /// The policy of the VM whose address is `client`, or None when the address is no VM's.
    /// Called once per query, on the reactor: keep it a lookup.
    fn policy(&self, client: Ipv4Addr) -> Option<ClientPolicy>;

    /// Called with the IPv4 addresses (and each record's remaining TTL, which may be zero) the
    /// resolver is about to answer to `client.vm` for a name `client.egress` (an `Allow` policy)
    /// allows, never with an empty list; the answer is sent only after this completes Ok (so
    /// the firewall admits the addresses before the VM can connect). Err, or no completion
    /// within the query timeout, answers SERVFAIL: also what the hook does when the VM's policy
    /// changed since `client` was looked up (the name may no longer be allowed).
    fn resolved(
        &self,
        client: ClientPolicy,
        addrs: Vec<(Ipv4Addr, Duration)>,
    ) -> BoxFuture<'static, Result<(), String>>;
}

/// The running resolver: UDP and TCP listeners on [`DnsConfig::listen`]. Dropping it stops the
/// listeners too, without waiting for them.
pub struct DnsServer {
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl DnsServer {
    /// Binds UDP and TCP on `cfg.listen` and serves until [`DnsServer::shutdown`].
    pub async fn start(cfg: DnsConfig, hooks: Arc<dyn EgressHooks>) -> io::Result<Self> {
        cfg.validate()?;
        let resolver = upstream_resolver(&cfg)?;
        let (udp, tcp) = bind(cfg.listen).await?;
        let local_addr = udp.local_addr()?;
        let responder = Arc::new(Responder {
            resolver,
            hooks,
            query_timeout: cfg.query_timeout,
            logs: Logs::default(),
        });
        let queries = Limiter::new(cfg.max_inflight, cfg.max_inflight_per_client);
        let connections = Limiter::new(cfg.max_tcp_connections, cfg.max_inflight_per_client);
        let shutdown = CancellationToken::new();
        let tasks = vec![
            tokio::spawn(serve_udp(
                udp,
                responder.clone(),
                queries.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(serve_tcp(
                tcp,
                TcpServing {
                    responder,
                    queries,
                    connections,
                    idle: cfg.tcp_idle_timeout,
                },
                shutdown.clone(),
            )),
        ];
        tracing::info!(listen = %local_addr, upstream = ?cfg.upstream, "DNS resolver for the VMs started");
        Ok(Self {
            local_addr,
            shutdown,
            tasks,
        })
    }

    /// The address the resolver answers on (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops answering: the sockets are closed and the queries in flight abandoned when this
    /// returns.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Upstream servers from a resolv.conf, for when the config names none: the addresses of its
/// `nameserver` lines, in order, on port 53, at most three (as glibc). Comments (`#` or `;`, at
/// the start of a line or after the address) and every other line (`options`, `search`, …) are
/// ignored, and so are addresses that do not parse. IPv6 servers are kept (the host reaches
/// them; the resolver speaks both), except link-local ones with a zone (`fe80::1%eth0`), which
/// are skipped: a zone names an interface of the host's, rare for a resolver. Empty when the
/// file names no server; glibc would then ask the local host, the caller decides.
pub fn upstream_from_resolv_conf(path: &Path) -> io::Result<Vec<SocketAddr>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot read {}: {e}", Escaped(path.display())),
        )
    })?;
    Ok(parse_resolv_conf(&text))
}

fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split(['#', ';']).next()?.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next()?.parse::<IpAddr>().ok())
                .flatten()
        })
        .take(MAX_RESOLV_CONF_SERVERS)
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// A resolver that asks `cfg.upstream` and nothing else.
fn upstream_resolver(cfg: &DnsConfig) -> io::Result<Resolver<TokioRuntimeProvider>> {
    let servers = cfg
        .upstream
        .iter()
        .map(|addr| {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
        })
        .collect();
    let mut opts = ResolverOpts::default();
    // Two tries (one retry) within the query timeout; `resolve` bounds the whole of it anyway.
    opts.timeout = cfg.query_timeout / 2;
    opts.attempts = 1;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.cache_size = CACHE_ENTRIES;
    // Forwarded answers show the CNAME chain, as the upstream gave it.
    opts.preserve_intermediates = true;
    // Past this the resolver reports itself busy and retries: let the in-flight cap decide.
    opts.max_active_requests = opts.max_active_requests.max(cfg.max_inflight);
    Resolver::builder_with_config(
        ResolverConfig::from_parts(None, Vec::new(), servers),
        TokioRuntimeProvider::default(),
    )
    .with_options(opts)
    .build()
    .map_err(|e| io::Error::other(format!("cannot set up the VMs' DNS resolver: {e}")))
}

/// Binds UDP and TCP on `listen`; on port 0, on one free port for both.
async fn bind(listen: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let context = |proto: &str, e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("cannot bind the VMs' DNS resolver to {listen} ({proto}): {e}"),
        )
    };
    let mut tries = 0;
    loop {
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(|e| context("UDP", e))?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            // The port UDP got may be taken for TCP: pick another.
            Err(e) if listen.port() == 0 && tries < 8 => {
                tracing::debug!(error = %e, "DNS: the free UDP port is taken for TCP; trying another");
                tries += 1;
            }
            Err(e) => return Err(context("TCP", e)),
        }
    }
}

/// What a query is answered: an error code without records, the upstream's records
/// (NOERROR), or its negative answer (NXDOMAIN, or NOERROR without records) with the zone's SOA
/// when the upstream gave one.
struct Reply {
    code: ResponseCode,
    answers: Vec<Record>,
    soa: Option<Record>,
}

impl Reply {
    fn error(code: ResponseCode) -> Self {
        Self {
            code,
            answers: Vec::new(),
            soa: None,
        }
    }
}

/// Answers one query: the policy, the upstream, the hooks. Shared by the UDP and TCP loops.
struct Responder {
    resolver: Resolver<TokioRuntimeProvider>,
    hooks: Arc<dyn EgressHooks>,
    query_timeout: Duration,
    logs: Logs,
}

impl Responder {
    /// The encoded answer to the message `raw` from `src`, or None when it is dropped (not a
    /// decodable query).
    async fn respond(&self, raw: Vec<u8>, src: SocketAddr, protocol: Protocol) -> Option<Vec<u8>> {
        let request = Request::from_bytes(raw, src, protocol).ok()?;
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let reply = self.reply(&request).await;
        Some(encode(&request, &reply, protocol))
    }

    async fn reply(&self, request: &Request) -> Reply {
        let IpAddr::V4(client) = request.src().ip() else {
            return Reply::error(ResponseCode::Refused);
        };
        let Some(policy) = self.hooks.policy(client) else {
            return Reply::error(ResponseCode::Refused);
        };
        if request.metadata.op_code != OpCode::Query {
            return Reply::error(ResponseCode::NotImp);
        }
        let [query] = request.queries.queries() else {
            return Reply::error(ResponseCode::FormErr);
        };
        if query.query_class() != DNSClass::IN {
            return Reply::error(ResponseCode::Refused);
        }
        if is_meta_type(query.query_type()) {
            return Reply::error(ResponseCode::NotImp);
        }
        match &*policy.egress {
            EgressPolicy::DenyAll => Reply::error(ResponseCode::Refused),
            EgressPolicy::AllowAll => self.resolve(query).await,
            EgressPolicy::Allow { .. } => {
                let allowed =
                    plain_name(query.name()).is_some_and(|name| policy.egress.allows_name(&name));
                if !allowed {
                    if self.logs.debug.allow() {
                        tracing::debug!(vm = policy.vm, name = %Escaped(query.name()),
                            "DNS: refused, no egress rule of the VM allows this name");
                    }
                    return Reply::error(ResponseCode::Refused);
                }
                let reply = self.resolve(query).await;
                self.admit(policy, reply).await
            }
        }
    }

    /// The upstream's answer, through the cache.
    async fn resolve(&self, query: &LowerQuery) -> Reply {
        let lookup = self
            .resolver
            .lookup(Name::from(query.name()), query.query_type());
        let failure = match tokio::time::timeout(self.query_timeout, lookup).await {
            Ok(Ok(lookup)) => {
                return Reply {
                    code: ResponseCode::NoError,
                    answers: lookup.answers().to_vec(),
                    soa: None,
                };
            }
            Ok(Err(NetError::Dns(DnsError::NoRecordsFound(NoRecords {
                response_code,
                soa,
                ..
            })))) => {
                return Reply {
                    code: response_code,
                    answers: Vec::new(),
                    soa: soa.map(|soa| soa.into_record_of_rdata()),
                };
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.query_timeout),
        };
        if self.logs.debug.allow() {
            tracing::debug!(name = %Escaped(query.name()), error = %Escaped(failure),
                "DNS: the upstream servers failed; answering SERVFAIL");
        }
        Reply::error(ResponseCode::ServFail)
    }

    /// `reply`, once the firewall admitted its IPv4 addresses for `vm`; SERVFAIL when it could not.
    async fn admit(&self, client: ClientPolicy, reply: Reply) -> Reply {
        let vm = client.vm;
        let addrs = ipv4_answers(&reply);
        if addrs.is_empty() {
            return reply;
        }
        let failure = match tokio::time::timeout(
            self.query_timeout,
            self.hooks.resolved(client, addrs),
        )
        .await
        {
            Ok(Ok(())) => return reply,
            Ok(Err(e)) => e,
            Err(_) => format!("not done within {:?}", self.query_timeout),
        };
        if self.logs.warn.allow() {
            tracing::warn!(vm, error = %Escaped(failure),
                "DNS: the firewall did not admit the addresses resolved for a VM; answering SERVFAIL");
        }
        Reply::error(ResponseCode::ServFail)
    }
}

/// Every A record's address in the answer, once, with the longest TTL it came with.
fn ipv4_answers(reply: &Reply) -> Vec<(Ipv4Addr, Duration)> {
    let mut addrs: BTreeMap<Ipv4Addr, Duration> = BTreeMap::new();
    for record in &reply.answers {
        let RData::A(a) = &record.data else { continue };
        let ttl = addrs.entry(a.0).or_default();
        *ttl = (*ttl).max(Duration::from_secs(record.ttl.into()));
    }
    addrs.into_iter().collect()
}

/// Query types that ask for a transfer or several types at once, or are no data at all: not
/// forwarded (ANY would also make the cache hold whole names).
fn is_meta_type(qtype: RecordType) -> bool {
    matches!(
        qtype,
        RecordType::ANY
            | RecordType::AXFR
            | RecordType::IXFR
            | RecordType::OPT
            | RecordType::TSIG
            | RecordType::ZERO
    )
}

/// The name as dotted text when every label is letters, digits, `-` or `_` (the only names an
/// egress rule can name), so that a label holding a dot cannot pass for two labels.
fn plain_name(name: &LowerName) -> Option<String> {
    let mut text = String::with_capacity(name.len());
    for label in name.iter() {
        let plain = !label.is_empty()
            && label
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
        if !plain {
            return None;
        }
        if !text.is_empty() {
            text.push('.');
        }
        text.push_str(std::str::from_utf8(label).ok()?);
    }
    Some(text)
}

/// The wire form of `reply` to `request`: the question echoed, EDNS answered with EDNS, and over
/// UDP at most what the client can take (hickory sets TC when records had to be left out).
fn encode(request: &Request, reply: &Reply, protocol: Protocol) -> Vec<u8> {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.recursion_available = true;
    let edns = request.edns.as_ref().map(|_| {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD);
        edns
    });
    let max_size = match protocol {
        Protocol::Udp => request.max_payload().min(MAX_UDP_PAYLOAD),
        _ => u16::MAX,
    };
    let builder = || MessageResponseBuilder::new(&request.queries, edns.as_ref());
    metadata.response_code = reply.code;
    let response = builder().build(
        metadata,
        reply.answers.iter(),
        std::iter::empty(),
        reply.soa.iter(),
        std::iter::empty(),
    );
    emit(response, max_size).unwrap_or_else(|| {
        // Records hickory cannot encode (in the limit): SERVFAIL, as a recursor would.
        metadata.response_code = ResponseCode::ServFail;
        emit(builder().build_no_records(metadata), max_size).unwrap_or_default()
    })
}

fn emit<'a>(
    response: MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    max_size: u16,
) -> Option<Vec<u8>> {
    let mut bytes = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(max_size);
    response.destructive_emit(&mut encoder).ok()?;
    Some(bytes)
}

/// Receives UDP queries until `shutdown`, each answered on a task of its own.
async fn serve_udp(
    socket: UdpSocket,
    responder: Arc<Responder>,
    queries: Arc<Limiter>,
    shutdown: CancellationToken,
) {
    let socket = Arc::new(socket);
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; UDP_RECEIVE_BUFFER];
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => break,
            received = socket.recv_from(&mut buf) => received,
        };
        while tasks.try_join_next().is_some() {}
        let (len, src) = match received {
            Ok(received) => received,
            Err(e) => {
                if responder.logs.warn.allow() {
                    tracing::warn!(error = %e, "DNS: receiving a UDP query failed");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if src.port() == 0 {
            continue;
        }
        let Some(slot) = queries.try_take(src.ip()) else {
            if responder.logs.debug.allow() {
                tracing::debug!(client = %src.ip(), "DNS: too many queries in flight; dropping one");
            }
            continue;
        };
        let raw = buf[..len].to_vec();
        let (socket, responder) = (socket.clone(), responder.clone());
        tasks.spawn(async move {
            let _slot = slot;
            if let Some(answer) = responder.respond(raw, src, Protocol::Udp).await {
                let _ = socket.send_to(&answer, src).await;
            }
        });
    }
    tasks.shutdown().await;
}

/// What the TCP connections share.
#[derive(Clone)]
struct TcpServing {
    responder: Arc<Responder>,
    queries: Arc<Limiter>,
    connections: Arc<Limiter>,
    idle: Duration,
}

/// Accepts TCP connections until `shutdown`, each served on a task of its own.
async fn serve_tcp(listener: TcpListener, serving: TcpServing, shutdown: CancellationToken) {
    let mut tasks = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        while tasks.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, or a connection reset before accept: not fatal.
                if serving.responder.logs.warn.allow() {
                    tracing::warn!(error = %e, "DNS: accepting a TCP connection failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = serving.connections.try_take(peer.ip()) else {
            if serving.responder.logs.debug.allow() {
                tracing::debug!(client = %peer.ip(), "DNS: too many TCP connections; closing one");
            }
            continue;
        };
        tasks.spawn(serve_tcp_connection(stream, peer, serving.clone(), slot));
    }
    tasks.shutdown().await;
}

/// Answers the queries of one TCP connection, one at a time (a client wanting more in flight
/// opens more connections, within its cap), until the client closes it, stays idle too long,
/// or goes past its cap of queries in flight.
async fn serve_tcp_connection(
    stream: TcpStream,
    peer: SocketAddr,
    serving: TcpServing,
    _slot: Slot,
) {
    let (stream, mut sender) =
        DnsOverTcp::from_stream_with_buffer_size(AsyncIoTokioAsStd(stream), peer, 1);
    // Polling the stream also writes out the answer queued last.
    let mut messages = TimeoutStream::new(stream, serving.idle);
    while let Some(Ok(message)) = messages.next().await {
        let Some(_query) = serving.queries.try_take(peer.ip()) else {
            return;
        };
        let raw = message.into_parts().0;
        let Some(answer) = serving.responder.respond(raw, peer, Protocol::Tcp).await else {
            continue;
        };
        if sender.send(SerialMessage::new(answer, peer)).is_err() {
            return;
        }
    }
}

/// Counts what clients hold (queries in flight, TCP connections), capped in total and per
/// client address.
struct Limiter {
    total: usize,
    per_client: usize,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    total: usize,
    by_client: HashMap<IpAddr, usize>,
}

impl Limiter {
    fn new(total: usize, per_client: usize) -> Arc<Self> {
        Arc::new(Self {
            total,
            per_client,
            held: Mutex::default(),
        })
    }

    /// One more for `client`, given back when the slot is dropped; None when at a cap.
    fn try_take(self: &Arc<Self>, client: IpAddr) -> Option<Slot> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = held.by_client.get(&client).copied().unwrap_or(0);
        if held.total >= self.total || mine >= self.per_client {
            return None;
        }
        held.total += 1;
        held.by_client.insert(client, mine + 1);
        Some(Slot {
            limiter: self.clone(),
            client,
        })
    }
}

/// One unit of a [`Limiter`], held while a query is answered or a connection open.
struct Slot {
    limiter: Arc<Limiter>,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self
            .limiter
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        held.total = held.total.saturating_sub(1);
        if let Entry::Occupied(mut mine) = held.by_client.entry(self.client) {
            *mine.get_mut() = mine.get().saturating_sub(1);
            if *mine.get() == 0 {
                mine.remove();
            }
        }
    }
}

/// The budgets of the log lines guests can trigger, one per level, so that lines at `debug`
/// (written or not) never use up the budget of those at `warn`.
#[derive(Default)]
struct Logs {
    debug: LogBudget,
    warn: LogBudget,
}

/// A budget of log lines: [`LOG_LINES_PER_SECOND`], the rest dropped.
#[derive(Default)]
struct LogBudget {
    window: Mutex<Option<(Instant, u32)>>,
}

impl LogBudget {
    fn allow(&self) -> bool {
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match &mut *window {
            Some((start, lines)) if now.duration_since(*start) < Duration::from_secs(1) => {
                *lines = lines.saturating_add(1);
                *lines <= LOG_LINES_PER_SECOND
            }
            _ => {
                *window = Some((now, 1));
                true
            }
        }
    }
}

#[cfg(test)]
#[path = "dns_tests.rs"]
mod tests;
