//! Unit tests of the parent module, kept apart to keep it readable.
use tokio::net::UnixListener;

use super::*;

#[tokio::test]
async fn guest_that_never_answers_connect_times_out_the_dial() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let _silent = tokio::spawn(async move {
        let (_stream, _) = listener.accept().await.unwrap();
        std::future::pending::<()>().await;
    });
    let limits = Limits {
        call: Duration::from_secs(60),
        connect: Duration::from_millis(100),
        ..Limits::default()
    };
    let client = AgentClient::with_limits(&path, limits);

    let result = tokio::time::timeout(Duration::from_secs(5), client.info()).await;

    assert!(matches!(result, Ok(Err(AgentError::Timeout { .. }))));
}

#[tokio::test]
async fn stalled_call_ends_after_idle_limit() {
    let progress = Progress::new();

    let out = until_idle(
        std::future::pending::<()>(),
        &progress,
        Duration::from_millis(50),
    )
    .await;

    assert_eq!(out, None);
}

#[tokio::test]
async fn call_that_keeps_progressing_outlives_idle_limit() {
    let progress = Progress::new();
    let work = {
        let progress = progress.clone();
        async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                progress.touch();
            }
            7
        }
    };

    let out = until_idle(work, &progress, Duration::from_millis(100)).await;

    assert_eq!(out, Some(7));
}

use tokio::sync::mpsc;

use crate::agent::fake::{self, FakeAgent};

fn short_limits() -> Limits {
    Limits {
        call: Duration::from_secs(5),
        connect: Duration::from_secs(5),
        stream_idle: Duration::from_millis(100),
        stream_total: Duration::from_secs(60),
        exec_grace: Duration::from_millis(50),
    }
}

/// Collects `stream` within 5 s (the bound the code under test must beat by far).
async fn collect<T>(stream: impl Stream<Item = T>) -> Vec<T> {
    tokio::time::timeout(Duration::from_secs(5), stream.collect::<Vec<_>>())
        .await
        .expect("the stream was not ended by the client's own bound")
}

#[tokio::test]
async fn exec_stalling_mid_stream_ends_at_its_timeout_and_resets_the_guest_stream() {
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel();
    let agent = FakeAgent::serve(move |_| {
        let line: &'static [u8] = b"{\"type\":\"stdout\",\"data\":\"aGk=\"}\n";
        fake::streaming_reply(vec![line], fake::stall(), dropped_tx.clone())
    });
    let client = AgentClient::with_limits(&agent.path, short_limits());
    let req = ExecRequest {
        timeout_ms: Some(100),
        ..ExecRequest::new(["sleep", "1000"])
    };
    let started = Instant::now();

    let events = collect(client.exec(&req).await.unwrap()).await;

    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        matches!(events.last(), Some(Ok(ExecEvent::Error { .. }))),
        "{events:?}"
    );
    let reset = tokio::time::timeout(Duration::from_secs(1), dropped.recv()).await;
    assert!(reset.is_ok(), "the agent never saw the stream cancelled");
}

#[tokio::test]
async fn raw_exec_stream_ends_with_an_error_line_at_its_timeout() {
    let (dropped_tx, _dropped) = mpsc::unbounded_channel();
    let agent =
        FakeAgent::serve(move |_| fake::streaming_reply(vec![], fake::stall(), dropped_tx.clone()));
    let client = AgentClient::with_limits(&agent.path, short_limits());
    let req = ExecRequest {
        timeout_ms: Some(50),
        ..ExecRequest::new(["true"])
    };

    let lines = collect(client.exec_raw(&req).await.unwrap()).await;

    let last = lines.last().unwrap().as_ref().unwrap();
    let event: ExecEvent = serde_json::from_slice(last).unwrap();
    assert!(matches!(event, ExecEvent::Error { .. }), "{event:?}");
    assert!(last.ends_with(b"\n"));
}

#[tokio::test]
async fn file_read_stalling_mid_body_ends_at_the_idle_limit() {
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel();
    let agent = FakeAgent::serve(move |_| {
        fake::streaming_reply(vec![b"partial"], fake::stall(), dropped_tx.clone())
    });
    let client = AgentClient::with_limits(&agent.path, short_limits());
    let started = Instant::now();

    let chunks = collect(client.read_file("/big").await.unwrap()).await;

    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(chunks[0].as_ref().unwrap().as_ref(), b"partial");
    assert!(
        matches!(chunks.last(), Some(Err(AgentError::Timeout { waited, .. })) if *waited == Duration::from_millis(100)),
        "{chunks:?}"
    );
    let reset = tokio::time::timeout(Duration::from_secs(1), dropped.recv()).await;
    assert!(reset.is_ok(), "the agent never saw the stream cancelled");
}

#[tokio::test]
async fn file_read_trickling_for_ever_ends_at_the_total_limit() {
    let (dropped_tx, _dropped) = mpsc::unbounded_channel();
    let agent = FakeAgent::serve(move |_| {
        let rest = fake::trickle(Duration::from_millis(10));
        fake::streaming_reply(vec![], rest, dropped_tx.clone())
    });
    let limits = Limits {
        stream_total: Duration::from_millis(300),
        ..short_limits()
    };
    let client = AgentClient::with_limits(&agent.path, limits);

    let chunks = collect(client.read_file("/big").await.unwrap()).await;

    assert!(chunks.len() > 3, "{chunks:?}");
    assert!(
        matches!(chunks.last(), Some(Err(AgentError::Timeout { waited, .. })) if *waited == Duration::from_millis(300)),
        "{:?}",
        chunks.last()
    );
}

/// The bytes of a stream that must end cleanly.
async fn concat(stream: ByteStream) -> Vec<u8> {
    let chunks = collect(stream).await;
    chunks
        .into_iter()
        .flat_map(|c| c.unwrap().to_vec())
        .collect()
}

#[tokio::test]
async fn a_range_from_an_agent_without_ranged_reads_is_cut_on_the_host() {
    let (dropped_tx, _dropped) = mpsc::unbounded_channel();
    let agent = FakeAgent::serve(move |_| {
        let rest = futures_util::stream::empty();
        fake::streaming_reply(vec![b"0123", b"456789"], rest, dropped_tx.clone())
    });
    let client = AgentClient::new(&agent.path);

    let range = client.read_range("/f", 2, 5).await.unwrap();

    assert_eq!(range.size, None);
    assert_eq!(concat(range.content).await, b"23456");
}

#[tokio::test]
async fn a_range_never_yields_more_than_asked_whatever_the_agent_sends() {
    let (dropped_tx, _dropped) = mpsc::unbounded_channel();
    let agent = FakeAgent::serve(move |_| {
        let mut resp = fake::streaming_reply(vec![b"abcdefgh"], fake::stall(), dropped_tx.clone());
        let headers = resp.headers_mut();
        headers.insert(proto::FILE_OFFSET_HEADER, http::HeaderValue::from(4));
        headers.insert(proto::FILE_SIZE_HEADER, http::HeaderValue::from(12));
        resp
    });
    let client = AgentClient::new(&agent.path);

    let range = client.read_range("/f", 4, 3).await.unwrap();

    assert_eq!(range.size, Some(12));
    assert_eq!(concat(range.content).await, b"abc");
}
