//! Unit tests of the parent module: a fake upstream (hickory's in-memory zone `test.` on
//! loopback), the resolver on loopback, and queries sent from 127.0.0.1 (a VM's address for the
//! test hooks) or 127.0.0.2 (no VM's). Nothing leaves the loopback interface.

use std::str::FromStr;

use hickory_server::Server;
use hickory_server::proto::op::{Message, Query};
use std::net::Ipv6Addr;

use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, SOA, TXT};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use nexus_lib::api::DomainPattern;
use tokio::io::AsyncReadExt;

use super::*;

const VM: VmKey = 7;
const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const ALLOWED_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 10);
const OTHER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
const WILD_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 12);
const ALLOWED_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10);
/// TXT records of `big.test.`: about 2.6 KB, more than a UDP answer carries.
const BIG_TXT_RECORDS: usize = 40;
/// Longest a test waits for an answer that should come.
const PATIENCE: Duration = Duration::from_secs(5);

/// The records of the fake upstream's zone `test.`; every other name in it is NXDOMAIN.
fn zone_records() -> Vec<Record> {
    let name = |s: &str| Name::from_ascii(s).unwrap();
    let soa = SOA::new(
        name("ns.test."),
        name("admin.test."),
        1,
        3600,
        600,
        86400,
        60,
    );
    let mut records = vec![
        Record::from_rdata(name("test."), 60, RData::SOA(soa)),
        Record::from_rdata(name("allowed.test."), 300, RData::A(A(ALLOWED_IP))),
        Record::from_rdata(
            name("allowed.test."),
            300,
            RData::TXT(TXT::new(vec!["hello".into()])),
        ),
        Record::from_rdata(name("allowed.test."), 300, RData::AAAA(AAAA(ALLOWED_IP6))),
        Record::from_rdata(
            name("cname.test."),
            300,
            RData::CNAME(CNAME(name("allowed.test."))),
        ),
        Record::from_rdata(name("other.test."), 300, RData::A(A(OTHER_IP))),
        Record::from_rdata(name("www.wild.test."), 300, RData::A(A(WILD_IP))),
    ];
    let big = (0..BIG_TXT_RECORDS).map(|i| {
        let text = format!("{i:03}{}", "x".repeat(60));
        Record::from_rdata(name("big.test."), 300, RData::TXT(TXT::new(vec![text])))
    });
    records.extend(big);
    records
}

/// hickory's own server answering for the zone `test.` on 127.0.0.1 (UDP and TCP, one port).
struct Upstream {
    addr: SocketAddr,
    _server: Server<Catalog>,
}

impl Upstream {
    async fn start() -> Self {
        let origin = Name::from_ascii("test.").unwrap();
        let mut zone: InMemoryZoneHandler =
            InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        for record in zone_records() {
            assert!(zone.upsert_mut(record, 1));
        }
        let mut catalog = Catalog::new();
        let zone: Arc<dyn ZoneHandler> = Arc::new(zone);
        catalog.upsert(LowerName::new(&origin), vec![zone]);
        let (udp, tcp) = bind(SocketAddr::from((CLIENT, 0))).await.unwrap();
        let addr = udp.local_addr().unwrap();
        let mut server = Server::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, PATIENCE, 4);
        Self {
            addr,
            _server: server,
        }
    }
}

/// A resolved call as the hooks saw it, with the time the hook completed.
#[derive(Debug, Clone)]
struct Resolved {
    vm: VmKey,
    addrs: Vec<(Ipv4Addr, Duration)>,
    done: Instant,
}

/// 127.0.0.1 is VM 7 under a policy the test sets; every other address is no VM's.
struct TestHooks {
    policy: Mutex<EgressPolicy>,
    delay: Duration,
    fail: bool,
    calls: Arc<Mutex<Vec<Resolved>>>,
}

impl TestHooks {
    fn new(policy: EgressPolicy) -> Self {
        Self {
            policy: Mutex::new(policy),
            delay: Duration::ZERO,
            fail: false,
            calls: Arc::default(),
        }
    }

    fn calls(&self) -> Vec<Resolved> {
        self.calls.lock().unwrap().clone()
    }
}

impl EgressHooks for TestHooks {
    fn policy(&self, client: Ipv4Addr) -> Option<ClientPolicy> {
        (client == CLIENT).then(|| ClientPolicy {
            vm: VM,
            egress: Arc::new(self.policy.lock().unwrap().clone()),
        })
    }

    fn resolved(
        &self,
        client: ClientPolicy,
        addrs: Vec<(Ipv4Addr, Duration)>,
    ) -> BoxFuture<'static, Result<(), String>> {
        let vm = client.vm;
        let (delay, fail, calls) = (self.delay, self.fail, self.calls.clone());
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            calls.lock().unwrap().push(Resolved {
                vm,
                addrs,
                done: Instant::now(),
            });
            if fail {
                Err("nft said no".into())
            } else {
                Ok(())
            }
        })
    }
}

fn allow(domains: &[&str]) -> EgressPolicy {
    EgressPolicy::Allow {
        cidrs: Vec::new(),
        domains: domains
            .iter()
            .map(|d| DomainPattern::from_str(d).unwrap())
            .collect(),
    }
}

fn config(upstream: SocketAddr) -> DnsConfig {
    let mut cfg = DnsConfig::new(SocketAddr::from((CLIENT, 0)), vec![upstream]);
    cfg.query_timeout = Duration::from_secs(2);
    cfg
}

/// The fake upstream, the resolver in front of it, and the hooks it calls.
struct World {
    _upstream: Upstream,
    server: DnsServer,
    hooks: Arc<TestHooks>,
}

impl World {
    async fn start(hooks: TestHooks) -> Self {
        let upstream = Upstream::start().await;
        Self::start_with(upstream, hooks, |_| {}).await
    }

    async fn start_with(
        upstream: Upstream,
        hooks: TestHooks,
        tune: impl FnOnce(&mut DnsConfig),
    ) -> Self {
        let hooks = Arc::new(hooks);
        let mut cfg = config(upstream.addr);
        tune(&mut cfg);
        let server = DnsServer::start(cfg, hooks.clone()).await.unwrap();
        Self {
            _upstream: upstream,
            server,
            hooks,
        }
    }

    /// A world under `policy`, and its answer to the VM's query for `name`'s A records.
    async fn asked(policy: EgressPolicy, name: &str) -> (Self, Message) {
        let world = Self::start(TestHooks::new(policy)).await;
        let answer = world.ask(name).await;
        (world, answer)
    }

    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// `name`'s A records as the VM (127.0.0.1) gets them over UDP.
    async fn ask(&self, name: &str) -> Message {
        self.ask_type(name, RecordType::A).await
    }

    async fn ask_type(&self, name: &str, rtype: RecordType) -> Message {
        answer_to(CLIENT, self.addr(), &query_packet(name, rtype)).await
    }
}

fn query_message(name: &str, rtype: RecordType) -> Message {
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    message
}

fn query_packet(name: &str, rtype: RecordType) -> Vec<u8> {
    query_message(name, rtype).to_vec().unwrap()
}

/// `name`'s A records as `from` gets them from `to` over UDP.
async fn ask_a(from: Ipv4Addr, to: SocketAddr, name: &str) -> Message {
    answer_to(from, to, &query_packet(name, RecordType::A)).await
}

/// Sends `packet` from `from` and returns the answer, which must come.
async fn answer_to(from: Ipv4Addr, to: SocketAddr, packet: &[u8]) -> Message {
    udp_exchange(from, to, packet, PATIENCE)
        .await
        .expect("an answer")
}

/// Sends `packet` from `from` and waits up to `wait` for one answer.
async fn udp_exchange(
    from: Ipv4Addr,
    to: SocketAddr,
    packet: &[u8],
    wait: Duration,
) -> Option<Message> {
    let socket = UdpSocket::bind((from, 0)).await.unwrap();
    socket.send_to(packet, to).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (len, _) = tokio::time::timeout(wait, socket.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    Some(Message::from_vec(&buf[..len]).unwrap())
}

fn a_records(message: &Message) -> Vec<(Ipv4Addr, u32)> {
    message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((a.0, r.ttl)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn allow_all_answers_the_upstream_records_without_calling_resolved() {
    let (world, answer) = World::asked(EgressPolicy::AllowAll, "allowed.test.").await;

    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    let records = a_records(&answer);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].0, ALLOWED_IP);
    assert!((1..=300).contains(&records[0].1), "{records:?}");
    assert!(world.hooks.calls().is_empty());
}

#[tokio::test]
async fn deny_all_is_refused() {
    let (_world, answer) = World::asked(EgressPolicy::DenyAll, "allowed.test.").await;

    assert_eq!(answer.metadata.response_code, ResponseCode::Refused);
    assert!(answer.answers.is_empty());
}

#[tokio::test]
async fn changed_policy_applies_to_the_next_query() {
    let (world, _) = World::asked(EgressPolicy::AllowAll, "allowed.test.").await;
    *world.hooks.policy.lock().unwrap() = EgressPolicy::DenyAll;

    let answer = world.ask("allowed.test.").await;

    assert_eq!(answer.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test]
async fn allowed_name_is_admitted_by_the_hook_before_the_answer_is_sent() {
    let mut hooks = TestHooks::new(allow(&["allowed.test"]));
    hooks.delay = Duration::from_millis(200);
    let world = World::start(hooks).await;
    let asked = Instant::now();

    let answer = world.ask("allowed.test.").await;
    let answered = Instant::now();

    assert_eq!(a_records(&answer)[0].0, ALLOWED_IP);
    let calls = world.hooks.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].vm, VM);
    assert_eq!(calls[0].addrs.len(), 1);
    let (addr, ttl) = calls[0].addrs[0];
    assert_eq!(addr, ALLOWED_IP);
    assert!(ttl <= Duration::from_secs(300) && ttl > Duration::ZERO);
    assert!(calls[0].done <= answered);
    assert!(answered - asked >= Duration::from_millis(200));
}

#[tokio::test]
async fn allow_policy_refuses_a_name_no_rule_matches() {
    let (world, answer) = World::asked(allow(&["allowed.test"]), "other.test.").await;

    assert_eq!(answer.metadata.response_code, ResponseCode::Refused);
    assert!(answer.answers.is_empty());
    assert!(world.hooks.calls().is_empty());
}

#[tokio::test]
async fn wildcard_rule_allows_subdomains_but_not_the_domain_itself() {
    let world = World::start(TestHooks::new(allow(&["*.wild.test"]))).await;

    let sub = world.ask("WWW.Wild.Test.").await;
    let bare = world.ask("wild.test.").await;

    assert_eq!(a_records(&sub)[0].0, WILD_IP);
    assert_eq!(world.hooks.calls()[0].addrs[0].0, WILD_IP);
    assert_eq!(bare.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test]
async fn cname_chain_addresses_are_admitted_for_the_allowed_name() {
    let world = World::start(TestHooks::new(allow(&["cname.test"]))).await;

    let answer = world.ask("cname.test.").await;

    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(
        answer
            .answers
            .iter()
            .any(|r| matches!(&r.data, RData::CNAME(c) if c.0.to_ascii() == "allowed.test."))
    );
    assert_eq!(a_records(&answer)[0].0, ALLOWED_IP);
    let calls = world.hooks.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].addrs[0].0, ALLOWED_IP);
}

#[tokio::test]
async fn nxdomain_passes_through_with_the_zone_soa() {
    let (_world, answer) = World::asked(EgressPolicy::AllowAll, "missing.test.").await;

    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    assert!(answer.answers.is_empty());
    assert!(
        answer
            .authorities
            .iter()
            .any(|r| r.record_type() == RecordType::SOA)
    );
}

#[tokio::test]
async fn txt_records_pass_through() {
    let world = World::start(TestHooks::new(EgressPolicy::AllowAll)).await;

    let answer = world.ask_type("allowed.test.", RecordType::TXT).await;

    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(
        answer
            .answers
            .iter()
            .any(|r| matches!(&r.data, RData::TXT(t) if t.to_string().contains("hello")))
    );
}

#[tokio::test]
async fn aaaa_records_pass_through_without_calling_resolved() {
    let world = World::start(TestHooks::new(allow(&["allowed.test"]))).await;

    let answer = world.ask_type("allowed.test.", RecordType::AAAA).await;

    assert!(
        answer
            .answers
            .iter()
            .any(|r| matches!(&r.data, RData::AAAA(a) if a.0 == ALLOWED_IP6))
    );
    assert!(world.hooks.calls().is_empty());
}

#[tokio::test]
async fn answer_too_big_for_udp_is_truncated_and_whole_over_tcp() {
    let world = World::start(TestHooks::new(EgressPolicy::AllowAll)).await;

    let over_udp = world.ask_type("big.test.", RecordType::TXT).await;
    let over_tcp = tcp_exchange(world.addr(), &query_packet("big.test.", RecordType::TXT)).await;

    assert!(over_udp.metadata.truncation);
    assert!(over_udp.answers.len() < BIG_TXT_RECORDS);
    assert!(!over_tcp.metadata.truncation);
    assert_eq!(over_tcp.answers.len(), BIG_TXT_RECORDS);
}

#[tokio::test]
async fn cached_answers_carry_the_remaining_ttl() {
    let world = World::start(TestHooks::new(EgressPolicy::AllowAll)).await;
    let first = a_records(&world.ask("allowed.test.").await)[0].1;

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let later = a_records(&world.ask("allowed.test.").await)[0].1;

    assert!(later <= first - 2, "first {first}, later {later}");
}

#[tokio::test]
async fn silent_upstream_gives_servfail_within_the_query_timeout() {
    // Bound on both protocols, never read nor accepted: queries go nowhere.
    let (silent_udp, _silent_tcp) = bind(SocketAddr::from((CLIENT, 0))).await.unwrap();
    let hooks = Arc::new(TestHooks::new(EgressPolicy::AllowAll));
    let mut cfg = config(silent_udp.local_addr().unwrap());
    cfg.query_timeout = Duration::from_millis(500);
    let server = DnsServer::start(cfg, hooks).await.unwrap();
    let asked = Instant::now();

    let answer = ask_a(CLIENT, server.local_addr(), "allowed.test.").await;

    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    assert!(asked.elapsed() < Duration::from_millis(1500));
}

#[tokio::test]
async fn failing_hook_gives_servfail() {
    let mut hooks = TestHooks::new(allow(&["allowed.test"]));
    hooks.fail = true;
    let world = World::start(hooks).await;

    let answer = world.ask("allowed.test.").await;

    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    assert!(answer.answers.is_empty());
}

#[tokio::test]
async fn unknown_client_is_refused() {
    let world = World::start(TestHooks::new(EgressPolicy::AllowAll)).await;

    let answer = ask_a(STRANGER, world.addr(), "allowed.test.").await;

    assert_eq!(answer.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test]
async fn zone_transfer_is_not_implemented() {
    let world = World::start(TestHooks::new(EgressPolicy::AllowAll)).await;

    let answer = world.ask_type("test.", RecordType::AXFR).await;

    assert_eq!(answer.metadata.response_code, ResponseCode::NotImp);
}

#[tokio::test]
async fn two_questions_are_a_format_error() {
    let world = World::start(TestHooks::new(EgressPolicy::AllowAll)).await;
    let mut message = query_message("allowed.test.", RecordType::A);
    message.add_query(Query::query(
        Name::from_ascii("other.test.").unwrap(),
        RecordType::A,
    ));

    let answer = answer_to(CLIENT, world.addr(), &message.to_vec().unwrap()).await;

    assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
}

#[tokio::test]
async fn chaos_class_is_refused() {
    let world = World::start(TestHooks::new(EgressPolicy::AllowAll)).await;
    let mut message = Message::query();
    let mut query = Query::query(Name::from_ascii("version.bind.").unwrap(), RecordType::TXT);
    query.set_query_class(DNSClass::CH);
    message.add_query(query);

    let answer = answer_to(CLIENT, world.addr(), &message.to_vec().unwrap()).await;

    assert_eq!(answer.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test]
async fn garbage_packets_get_no_answer_and_the_server_keeps_answering() {
    let world = World::start(TestHooks::new(EgressPolicy::AllowAll)).await;
    let valid = query_packet("allowed.test.", RecordType::A);
    let mut huge_counts = valid.clone();
    huge_counts[4..12].copy_from_slice(&[0xff; 8]);
    let mut as_response = valid.clone();
    as_response[2] |= 0x80;
    let mut cut = valid.clone();
    cut.truncate(valid.len() - 3);
    let mut pointer_loop = valid[..12].to_vec();
    pointer_loop.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    let noise: Vec<u8> = (0..4000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let garbage: [&[u8]; 8] = [
        &[],
        &[0],
        &valid[..11],
        &huge_counts,
        &as_response,
        &cut,
        &pointer_loop,
        &noise,
    ];

    for packet in garbage {
        let answer = udp_exchange(CLIENT, world.addr(), packet, Duration::from_millis(100)).await;
        assert!(answer.is_none(), "{packet:?} got {answer:?}");
    }
    let answer = world.ask("allowed.test.").await;

    assert_eq!(a_records(&answer)[0].0, ALLOWED_IP);
}

#[tokio::test]
async fn queries_past_the_in_flight_cap_are_dropped() {
    let mut hooks = TestHooks::new(allow(&["allowed.test", "other.test"]));
    hooks.delay = Duration::from_millis(600);
    let upstream = Upstream::start().await;
    let world = World::start_with(upstream, hooks, |cfg| cfg.max_inflight = 1).await;
    let addr = world.addr();
    let slow = tokio::spawn(async move {
        udp_exchange(
            CLIENT,
            addr,
            &query_packet("allowed.test.", RecordType::A),
            PATIENCE,
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let dropped = udp_exchange(
        CLIENT,
        addr,
        &query_packet("other.test.", RecordType::A),
        Duration::from_millis(200),
    )
    .await;
    let first = slow.await.unwrap().expect("the first query's answer");
    let after = world.ask("other.test.").await;

    assert!(dropped.is_none(), "{dropped:?}");
    assert_eq!(a_records(&first)[0].0, ALLOWED_IP);
    assert_eq!(a_records(&after)[0].0, OTHER_IP);
}

/// Sends `packet` on a fresh TCP connection to `to` (hickory's DNS-over-TCP framing) and returns
/// the answer, which must come.
async fn tcp_exchange(to: SocketAddr, packet: &[u8]) -> Message {
    let stream = TcpStream::connect(to).await.unwrap();
    let (mut stream, mut sender) = DnsOverTcp::from_stream(AsyncIoTokioAsStd(stream), to);
    sender
        .send(SerialMessage::new(packet.to_vec(), to))
        .unwrap();
    let reply = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("an answer in time")
        .expect("an answer before the connection closed")
        .unwrap();
    Message::from_vec(reply.bytes()).unwrap()
}

#[tokio::test]
async fn tcp_query_is_answered() {
    let world = World::start(TestHooks::new(EgressPolicy::AllowAll)).await;

    let answer = tcp_exchange(world.addr(), &query_packet("allowed.test.", RecordType::A)).await;

    assert_eq!(a_records(&answer)[0].0, ALLOWED_IP);
}

#[tokio::test]
async fn idle_tcp_connection_is_closed() {
    let upstream = Upstream::start().await;
    let world = World::start_with(upstream, TestHooks::new(EgressPolicy::AllowAll), |cfg| {
        cfg.tcp_idle_timeout = Duration::from_millis(200);
    })
    .await;
    let mut stream = TcpStream::connect(world.addr()).await.unwrap();

    let read = tokio::time::timeout(PATIENCE, stream.read(&mut [0u8; 16])).await;

    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
}

#[tokio::test]
async fn tcp_connection_past_the_cap_is_closed_at_once() {
    let upstream = Upstream::start().await;
    let world = World::start_with(upstream, TestHooks::new(EgressPolicy::AllowAll), |cfg| {
        cfg.max_tcp_connections = 1;
    })
    .await;
    let _held = TcpStream::connect(world.addr()).await.unwrap();
    let mut refused = TcpStream::connect(world.addr()).await.unwrap();

    let read = tokio::time::timeout(Duration::from_secs(2), refused.read(&mut [0u8; 16])).await;

    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
}

#[tokio::test]
async fn shutdown_closes_the_sockets() {
    let world = World::start(TestHooks::new(EgressPolicy::AllowAll)).await;
    let addr = world.addr();

    world.server.shutdown().await;

    assert!(UdpSocket::bind(addr).await.is_ok());
    assert!(TcpListener::bind(addr).await.is_ok());
}

#[tokio::test]
async fn start_refuses_a_config_without_upstream() {
    let cfg = DnsConfig::new(SocketAddr::from((CLIENT, 0)), Vec::new());

    let err = DnsServer::start(cfg, Arc::new(TestHooks::new(EgressPolicy::AllowAll)))
        .await
        .err()
        .unwrap();

    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn label_holding_a_dot_is_not_a_plain_name() {
    let dotted = Name::from_labels(vec![b"evil.allowed".as_slice(), b"test"]).unwrap();
    let plain = Name::from_ascii("A.allowed.test.").unwrap();

    assert_eq!(plain_name(&LowerName::new(&dotted)), None);
    assert_eq!(
        plain_name(&LowerName::new(&plain)).as_deref(),
        Some("a.allowed.test")
    );
}

#[test]
fn limiter_caps_each_client_and_the_total_and_gives_back_on_drop() {
    let limiter = Limiter::new(3, 2);
    let a = IpAddr::V4(CLIENT);
    let b = IpAddr::V4(STRANGER);
    let c = IpAddr::V4(OTHER_IP);

    let a1 = limiter.try_take(a).unwrap();
    let _a2 = limiter.try_take(a).unwrap();
    assert!(limiter.try_take(a).is_none());
    let _b1 = limiter.try_take(b).unwrap();
    assert!(limiter.try_take(c).is_none());
    drop(a1);

    assert!(limiter.try_take(c).is_some());
}

#[test]
fn resolv_conf_nameservers_are_read_in_order_on_port_53() {
    let text = "\
# generated by something
; another comment
search example.com
options edns0 trust-ad ndots:2
nameserver 192.0.2.1 # trailing comment
nameserver\t2001:db8::53
nameserver fe80::1%eth0
nameserver not-an-address
#nameserver 192.0.2.99
nameserver 192.0.2.2
nameserver 192.0.2.3
";

    let servers = parse_resolv_conf(text);

    let expected: Vec<SocketAddr> = ["192.0.2.1:53", "[2001:db8::53]:53", "192.0.2.2:53"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(servers, expected);
}

#[test]
fn resolv_conf_without_nameserver_gives_none() {
    assert!(parse_resolv_conf("options rotate\nsearch a.test\n").is_empty());
}

#[test]
fn unreadable_resolv_conf_error_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resolv.conf");

    let err = upstream_from_resolv_conf(&path).unwrap_err();

    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    assert!(err.to_string().contains("resolv.conf"), "{err}");
}

#[test]
fn resolv_conf_file_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resolv.conf");
    std::fs::write(&path, "nameserver 127.0.0.53\noptions edns0\n").unwrap();

    let servers = upstream_from_resolv_conf(&path).unwrap();

    assert_eq!(servers, vec![SocketAddr::from(([127, 0, 0, 53], 53))]);
}

#[test]
fn ipv4_answers_keep_each_address_once_with_its_longest_ttl() {
    let name = Name::from_ascii("allowed.test.").unwrap();
    let reply = Reply {
        code: ResponseCode::NoError,
        answers: vec![
            Record::from_rdata(name.clone(), 30, RData::A(A(ALLOWED_IP))),
            Record::from_rdata(name.clone(), 90, RData::A(A(ALLOWED_IP))),
            Record::from_rdata(name.clone(), 60, RData::CNAME(CNAME(name.clone()))),
            Record::from_rdata(name, 10, RData::A(A(OTHER_IP))),
        ],
        soa: None,
    };

    let addrs = ipv4_answers(&reply);

    assert_eq!(
        addrs,
        vec![
            (ALLOWED_IP, Duration::from_secs(90)),
            (OTHER_IP, Duration::from_secs(10)),
        ]
    );
}

#[test]
fn log_budget_stops_after_its_lines_of_the_second() {
    let budget = LogBudget::default();

    let allowed = (0..LOG_LINES_PER_SECOND).filter(|_| budget.allow()).count();

    assert_eq!(allowed, LOG_LINES_PER_SECOND as usize);
    assert!(!budget.allow());
}
