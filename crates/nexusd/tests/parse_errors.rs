//! Every refusal before a handler is the API's JSON error body, over the Unix socket and over TCP:
//! those of the API's own limits (a 20 KB request target, a 100 KB header) and those hyper
//! answers itself before any route runs (a request line it cannot parse, a target over 64 KiB,
//! 1,000 headers, a 500 KB head).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{TCP_TOKEN, TestDaemon, tcp_addr, tcp_daemon};

/// A request refused before any handler, with the status and error code it must get.
struct Refusal {
    what: &'static str,
    request: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn refusals() -> Vec<Refusal> {
    let get = |target: &str, headers: &str| {
        format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TCP_TOKEN}\r\n{headers}Connection: close\r\n\r\n"
        )
        .into_bytes()
    };
    let many: String = (0..1000)
        .map(|i| format!("x-h{i}: {}\r\n", "a".repeat(90)))
        .collect();
    vec![
        Refusal {
            what: "a garbage request line",
            request: b"GARBAGE\r\n\r\n".to_vec(),
            status: 400,
            code: "bad_request",
        },
        Refusal {
            what: "a 20 KB request target",
            request: get(&format!("/v1/vms/{}", "a".repeat(20_000)), ""),
            status: 414,
            code: "uri_too_long",
        },
        Refusal {
            what: "a 70 KB request target (over hyper's 64 KiB)",
            request: get(&format!("/v1/vms/{}", "a".repeat(70_000)), ""),
            status: 414,
            code: "uri_too_long",
        },
        Refusal {
            what: "a 100 KB header",
            request: get("/v1/vms", &format!("x-big: {}\r\n", "b".repeat(100_000))),
            status: 431,
            code: "headers_too_large",
        },
        Refusal {
            what: "100 KB of headers in 1,000 (over hyper's 100)",
            request: get("/v1/vms", &many),
            status: 431,
            code: "headers_too_large",
        },
        Refusal {
            what: "a 500 KB header (over hyper's read buffer)",
            request: get("/v1/vms", &format!("x-big: {}\r\n", "b".repeat(500_000))),
            status: 431,
            code: "headers_too_large",
        },
    ]
}

/// Sends `request` from another thread (the daemon may answer and close before it read it all)
/// and reads the reply until the daemon closes the connection.
fn exchange(
    mut reader: impl Read,
    mut writer: impl Write + Send + 'static,
    request: Vec<u8>,
) -> Vec<u8> {
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&request);
    });
    let mut reply = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A reset after the reply: the daemon closed with our request still unread.
            Err(_) => break,
        }
    }
    let _ = sender.join();
    reply
}

/// `None` when `reply` is a JSON error with `status` and `code`; else what is wrong.
fn mismatch(reply: &[u8], status: u16, code: &str) -> Option<String> {
    let text = String::from_utf8_lossy(reply);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let got_status = head.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok());
    let json = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("content-type: application/json"));
    let got_code = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
    (got_status != Some(status) || !json || got_code.as_deref() != Some(code))
        .then(|| format!("{:.300}", text))
}

/// What went wrong for each refusal sent through `connect`.
fn wrong_answers<R, W>(connect: impl Fn() -> (R, W)) -> Vec<String>
where
    R: Read,
    W: Write + Send + 'static,
{
    refusals()
        .into_iter()
        .filter_map(|r| {
            let (reader, writer) = connect();
            let reply = exchange(reader, writer, r.request);
            mismatch(&reply, r.status, r.code).map(|m| format!("{}: {m:?}", r.what))
        })
        .collect()
}

#[test]
fn every_refusal_over_the_unix_socket_is_a_json_error() {
    let d = TestDaemon::start();
    let connect = || {
        let s = UnixStream::connect(d.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        (s.try_clone().unwrap(), s)
    };

    let wrong = wrong_answers(connect);

    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn every_refusal_over_tcp_is_a_json_error() {
    let d = tcp_daemon(&[]);
    let addr = tcp_addr(&d);
    let connect = || {
        let s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        (s.try_clone().unwrap(), s)
    };

    let wrong = wrong_answers(connect);

    assert!(wrong.is_empty(), "{wrong:#?}");
}
