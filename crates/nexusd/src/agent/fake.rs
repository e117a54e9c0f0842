//! A fake guest agent on a Unix socket, for unit tests of the host side in milliseconds: it
//! answers the hybrid-vsock `CONNECT <port>` with `OK`, then serves HTTP/2 with a handler the test
//! gives, so a test can script a guest that stalls, trickles or misbehaves.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{Request, Response};
use http_body_util::StreamBody;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

pub(crate) type FakeBody = UnsyncBoxBody<Bytes, Infallible>;
type Handler = Arc<dyn Fn(Request<Incoming>) -> Response<FakeBody> + Send + Sync>;

/// A running fake agent; stops when dropped (with its socket's directory).
pub(crate) struct FakeAgent {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeAgent {
    /// Serves every request with `handler`.
    pub(crate) fn serve(
        handler: impl Fn(Request<Incoming>) -> Response<FakeBody> + Send + Sync + 'static,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(serve_on(listener, handler));
        Self {
            _dir: dir,
            path,
            server,
        }
    }
}

/// Serves the hybrid-vsock handshake and then the agent protocol, with `handler`, on every
/// connection to `listener` (a fake VMM's vsock socket, for one).
pub(crate) async fn serve_on(
    listener: UnixListener,
    handler: impl Fn(Request<Incoming>) -> Response<FakeBody> + Send + Sync + 'static,
) {
    let handler: Handler = Arc::new(handler);
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(serve_connection(stream, handler.clone()));
    }
}

async fn serve_connection(mut stream: UnixStream, handler: Handler) {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read_exact(&mut byte).await.is_ok() && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    if !line.starts_with(b"CONNECT ") || stream.write_all(b"OK 1073741824\n").await.is_err() {
        return;
    }
    let service = hyper::service::service_fn(move |req| {
        let resp = handler(req);
        async move { Ok::<_, Infallible>(resp) }
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// A `200` whose body sends `chunks`, then whatever `rest` yields; `dropped` gets a message once
/// the server drops the body, which is what happens when the host resets the stream.
pub(crate) fn streaming_reply(
    chunks: Vec<&'static [u8]>,
    rest: impl Stream<Item = Bytes> + Send + 'static,
    dropped: mpsc::UnboundedSender<()>,
) -> Response<FakeBody> {
    let guard = DropSignal(dropped);
    let frames = futures_util::stream::iter(chunks.into_iter().map(Bytes::from_static))
        .chain(rest)
        .map(move |b| {
            let _keep = &guard;
            Ok::<_, Infallible>(Frame::data(b))
        });
    Response::new(UnsyncBoxBody::new(StreamBody::new(frames)))
}

/// A reply with status `status` and `body` as JSON.
pub(crate) fn json_reply(
    status: http::StatusCode,
    body: &impl serde::Serialize,
) -> Response<FakeBody> {
    let bytes = Bytes::from(serde_json::to_vec(body).unwrap());
    let mut resp = Response::new(UnsyncBoxBody::new(http_body_util::Full::new(bytes)));
    *resp.status_mut() = status;
    resp
}

/// A stream that never yields: a guest that stalls.
pub(crate) fn stall() -> impl Stream<Item = Bytes> + Send {
    futures_util::stream::pending()
}

/// A stream that yields one byte every `every`, for ever: a guest that trickles.
pub(crate) fn trickle(every: std::time::Duration) -> impl Stream<Item = Bytes> + Send {
    futures_util::stream::unfold((), move |()| async move {
        tokio::time::sleep(every).await;
        Some((Bytes::from_static(b"x"), ()))
    })
}

struct DropSignal(mpsc::UnboundedSender<()>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}
