//! [`AgentClient`]: typed calls on the agent's HTTP/2 API, one shared connection per VM.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use http::{Method, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use nexus_lib::agent::{
    self as proto, AGENT_VSOCK_PORT, AgentInfo, DirListing, ErrorBody, ExecEvent, ExecRequest,
    FileStat, Handshake, MAX_EVENT_LINE_BYTES, MAX_REPLY_JSON_BYTES, SUPPORTED_PROTOCOLS,
    ShutdownAccepted,
};
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

use super::{AgentError, NdjsonDecoder, dial_hybrid_vsock};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ReqBody = UnsyncBoxBody<Bytes, BoxError>;

/// A stream of byte chunks (file contents, raw NDJSON lines) coming from the agent.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, AgentError>> + Send>>;

/// Largest error body read from the agent.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on dial, hybrid-vsock `CONNECT`/`OK` and HTTP/2 handshake together: they run under the
/// per-VM connection lock, so a guest that never answers must not hold it for ever.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// First and longest wait for one boot-time handshake attempt. A `CONNECT` sent before the guest's
/// vsock driver is up can stay unanswered, so attempts start short and back off.
const FIRST_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(250);
const MAX_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY_INTERVAL: Duration = Duration::from_millis(10);
const STREAM_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
const MAX_FRAME_BYTES: u32 = 64 * 1024;
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// A client of one VM's agent. Clones share the connection.
#[derive(Clone)]
pub struct AgentClient {
    inner: Arc<Inner>,
}

struct Inner {
    uds: PathBuf,
    port: u32,
    call_timeout: Duration,
    connect_timeout: Duration,
    sender: Mutex<Option<SendRequest<ReqBody>>>,
}

impl AgentClient {
    /// A client that dials lazily on its first call.
    pub fn new(uds: impl Into<PathBuf>) -> Self {
        Self::with_timeouts(uds, DEFAULT_CALL_TIMEOUT, DEFAULT_CONNECT_TIMEOUT)
    }

    fn with_timeouts(
        uds: impl Into<PathBuf>,
        call_timeout: Duration,
        connect_timeout: Duration,
    ) -> Self {
        let inner = Inner {
            uds: uds.into(),
            port: AGENT_VSOCK_PORT,
            call_timeout,
            connect_timeout,
            sender: Mutex::new(None),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Dials until the agent completes a handshake or `timeout` passes: this is how a booting VM
    /// is waited for. Returns the client and the handshake.
    pub async fn connect(
        uds: impl Into<PathBuf>,
        timeout: Duration,
    ) -> Result<(Self, Handshake), AgentError> {
        let client = Self::new(uds);
        let deadline = Instant::now() + timeout;
        let mut attempt_timeout = FIRST_ATTEMPT_TIMEOUT;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt =
                tokio::time::timeout(remaining.min(attempt_timeout), client.handshake()).await;
            if attempt.is_err() {
                attempt_timeout = (attempt_timeout * 2).min(MAX_ATTEMPT_TIMEOUT);
            }
            match attempt {
                Ok(Ok(handshake)) => return Ok((client, handshake)),
                Ok(Err(e @ (AgentError::Protocol(_) | AgentError::Remote { .. }))) => {
                    return Err(e);
                }
                Ok(Err(_)) | Err(_) => client.forget_connection().await,
            }
            if Instant::now() >= deadline {
                return Err(AgentError::Timeout {
                    path: client.inner.uds.clone(),
                    waited: timeout,
                });
            }
            tokio::time::sleep(
                RETRY_INTERVAL.min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
        }
    }

    pub fn socket_path(&self) -> &Path {
        &self.inner.uds
    }

    /// Negotiates the protocol version.
    pub async fn handshake(&self) -> Result<Handshake, AgentError> {
        self.handshake_offering(SUPPORTED_PROTOCOLS).await
    }

    /// Negotiates offering only `versions` (for tests and for pinning an older protocol).
    pub async fn handshake_offering(&self, versions: &[u32]) -> Result<Handshake, AgentError> {
        let mut req = request(Method::GET, "/v1/handshake", empty())?;
        let offer = proto::protocol_header_value(versions)
            .parse()
            .map_err(|_| AgentError::InvalidRequest("bad protocol list".into()))?;
        req.headers_mut().insert(proto::PROTOCOL_HEADER, offer);
        let handshake: Handshake = self.json_call(req).await?;
        if !versions.contains(&handshake.protocol) {
            return Err(AgentError::Protocol(format!(
                "agent chose version {} which was not offered",
                handshake.protocol
            )));
        }
        Ok(handshake)
    }

    pub async fn info(&self) -> Result<AgentInfo, AgentError> {
        self.json_call(request(Method::GET, "/v1/info", empty())?)
            .await
    }

    /// Asks the guest to power off; the VMM exits shortly after the reply.
    pub async fn shutdown(&self) -> Result<ShutdownAccepted, AgentError> {
        self.json_call(request(Method::POST, "/v1/shutdown", empty())?)
            .await
    }

    pub async fn stat(&self, path: &str) -> Result<FileStat, AgentError> {
        self.json_call(request(
            Method::GET,
            &path_uri("/v1/stat", path, "")?,
            empty(),
        )?)
        .await
    }

    pub async fn list(&self, path: &str) -> Result<DirListing, AgentError> {
        self.json_call(request(
            Method::GET,
            &path_uri("/v1/list", path, "")?,
            empty(),
        )?)
        .await
    }

    pub async fn remove(&self, path: &str, recursive: bool) -> Result<(), AgentError> {
        let uri = path_uri("/v1/files", path, &format!("&recursive={recursive}"))?;
        let resp = self
            .timed(self.send(request(Method::DELETE, &uri, empty())?))
            .await?;
        check(resp).await.map(drop)
    }

    /// Streams a file's content.
    pub async fn read_file(&self, path: &str) -> Result<ByteStream, AgentError> {
        let uri = path_uri("/v1/files", path, "")?;
        let resp = check(
            self.timed(self.send(request(Method::GET, &uri, empty())?))
                .await?,
        )
        .await?;
        let body = resp
            .into_body()
            .into_data_stream()
            .map_err(AgentError::from);
        Ok(Box::pin(body))
    }

    /// Streams `body` into `path` (written to a temp file, then renamed) with permission `mode`.
    /// An upload may take long, so instead of a total deadline the call fails once neither the
    /// body nor the reply has moved for the call timeout.
    pub async fn write_file<S>(
        &self,
        path: &str,
        mode: u32,
        body: S,
    ) -> Result<FileStat, AgentError>
    where
        S: Stream<Item = io::Result<Bytes>> + Send + 'static,
    {
        let uri = path_uri("/v1/files", path, &format!("&mode={mode:o}"))?;
        let progress = Progress::new();
        let frames = body
            .inspect_ok({
                let progress = progress.clone();
                move |_| progress.touch()
            })
            .map_ok(Frame::data)
            .map_err(|e| Box::new(e) as BoxError);
        let req = request(Method::PUT, &uri, StreamBody::new(frames).boxed_unsync())?;
        let call = async {
            let resp = check(self.send(req).await?).await?;
            read_json(resp).await
        };
        let waited = self.inner.call_timeout;
        until_idle(call, &progress, waited)
            .await
            .ok_or_else(|| AgentError::Timeout {
                path: self.inner.uds.clone(),
                waited,
            })?
    }

    /// Runs a command; events arrive as the process produces output, ending with `Exit` or `Error`.
    pub async fn exec(
        &self,
        req: &ExecRequest,
    ) -> Result<Pin<Box<dyn Stream<Item = Result<ExecEvent, AgentError>> + Send>>, AgentError> {
        let lines = self.exec_lines(req).await?;
        Ok(Box::pin(lines.map_ok(|(_, event)| event)))
    }

    /// Like [`exec`](Self::exec) but yields the raw NDJSON lines (each validated and bounded) for
    /// passing through to an API client unchanged.
    pub async fn exec_raw(&self, req: &ExecRequest) -> Result<ByteStream, AgentError> {
        let lines = self.exec_lines(req).await?;
        Ok(Box::pin(lines.map_ok(|(line, _)| line)))
    }

    async fn exec_lines(
        &self,
        req: &ExecRequest,
    ) -> Result<impl Stream<Item = Result<(Bytes, ExecEvent), AgentError>> + Send + use<>, AgentError>
    {
        req.validate().map_err(AgentError::InvalidRequest)?;
        let body =
            serde_json::to_vec(req).map_err(|e| AgentError::InvalidRequest(e.to_string()))?;
        let resp = self
            .timed(self.send(request(Method::POST, "/v1/exec", full(body))?))
            .await?;
        let resp = check(resp).await?;
        Ok(event_lines(resp.into_body()))
    }

    async fn json_call<T: DeserializeOwned>(&self, req: Request<ReqBody>) -> Result<T, AgentError> {
        self.timed(async {
            let resp = check(self.send(req).await?).await?;
            read_json(resp).await
        })
        .await
    }

    async fn timed<T>(
        &self,
        fut: impl Future<Output = Result<T, AgentError>>,
    ) -> Result<T, AgentError> {
        let waited = self.inner.call_timeout;
        tokio::time::timeout(waited, fut)
            .await
            .map_err(|_| AgentError::Timeout {
                path: self.inner.uds.clone(),
                waited,
            })?
    }

    async fn send(&self, req: Request<ReqBody>) -> Result<Response<Incoming>, AgentError> {
        let mut sender = self.sender().await?;
        let result = match sender.ready().await {
            Ok(()) => sender.send_request(req).await,
            Err(e) => Err(e),
        };
        if result.is_err() && sender.is_closed() {
            self.forget_connection().await;
        }
        result.map_err(AgentError::from)
    }

    /// The shared connection, dialling a new one when there is none or it broke.
    async fn sender(&self) -> Result<SendRequest<ReqBody>, AgentError> {
        let mut guard = self.inner.sender.lock().await;
        if let Some(sender) = guard.as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let dial = async {
            let stream = dial_hybrid_vsock(&self.inner.uds, self.inner.port).await?;
            hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(STREAM_WINDOW_BYTES)
                .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
                .max_frame_size(MAX_FRAME_BYTES)
                .max_header_list_size(MAX_HEADER_LIST_BYTES)
                .handshake(TokioIo::new(stream))
                .await
                .map_err(AgentError::from)
        };
        let waited = self.inner.connect_timeout;
        let (sender, connection) =
            tokio::time::timeout(waited, dial)
                .await
                .map_err(|_| AgentError::Timeout {
                    path: self.inner.uds.clone(),
                    waited,
                })??;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %crate::logsafe::Escaped(&e), "agent connection ended");
            }
        });
        *guard = Some(sender.clone());
        Ok(sender)
    }

    async fn forget_connection(&self) {
        *self.inner.sender.lock().await = None;
    }
}

/// When a request last made progress, shared between its body stream and the caller waiting.
#[derive(Clone)]
struct Progress {
    start: tokio::time::Instant,
    last_ms: Arc<AtomicU64>,
}

impl Progress {
    fn new() -> Self {
        Self {
            start: tokio::time::Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> tokio::time::Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// Runs `fut` to completion unless `progress` stands still for `idle`; `None` then.
async fn until_idle<T>(
    fut: impl Future<Output = T>,
    progress: &Progress,
    idle: Duration,
) -> Option<T> {
    let mut fut = std::pin::pin!(fut);
    loop {
        let last = progress.last();
        match tokio::time::timeout_at(last + idle, &mut fut).await {
            Ok(out) => return Some(out),
            Err(_) if progress.last() > last => {}
            Err(_) => return None,
        }
    }
}

fn empty() -> ReqBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

fn full(bytes: Vec<u8>) -> ReqBody {
    Full::new(Bytes::from(bytes))
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn request(
    method: Method,
    path_and_query: &str,
    body: ReqBody,
) -> Result<Request<ReqBody>, AgentError> {
    Request::builder()
        .method(method)
        .uri(format!("http://nexus-agent{path_and_query}"))
        .header(
            proto::PROTOCOL_HEADER,
            proto::protocol_header_value(SUPPORTED_PROTOCOLS),
        )
        .body(body)
        .map_err(|e| AgentError::InvalidRequest(e.to_string()))
}

fn path_uri(endpoint: &str, path: &str, extra: &str) -> Result<String, AgentError> {
    proto::validate_path(path).map_err(AgentError::InvalidRequest)?;
    Ok(format!(
        "{endpoint}?path={}{extra}",
        proto::encode_query_value(path)
    ))
}

/// Turns a non-2xx reply into [`AgentError::Remote`] (or `Protocol` for a version mismatch).
async fn check(resp: Response<Incoming>) -> Result<Response<Incoming>, AgentError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = Limited::new(resp.into_body(), MAX_ERROR_BODY_BYTES)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(ErrorBody { error }) => (error.code, error.message),
        Err(_) => (
            "unknown".to_string(),
            String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
        ),
    };
    if code == "unsupported_protocol" {
        return Err(AgentError::Protocol(message));
    }
    Err(AgentError::Remote {
        status: status.as_u16(),
        code,
        message,
    })
}

async fn read_json<T: DeserializeOwned>(resp: Response<Incoming>) -> Result<T, AgentError> {
    let limit = MAX_REPLY_JSON_BYTES;
    let bytes = Limited::new(resp.into_body(), limit)
        .collect()
        .await
        .map_err(|e| match e.downcast::<hyper::Error>() {
            Ok(e) => AgentError::Http(*e),
            Err(_) => AgentError::TooLarge { limit },
        })?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| AgentError::Malformed(e.to_string()))
}

struct Lines {
    body: Incoming,
    decoder: NdjsonDecoder,
    ready: VecDeque<Bytes>,
    ended: bool,
}

/// Validated `(line, event)` pairs of an exec reply.
fn event_lines(
    body: Incoming,
) -> impl Stream<Item = Result<(Bytes, ExecEvent), AgentError>> + Send {
    let state = Lines {
        body,
        decoder: NdjsonDecoder::new(MAX_EVENT_LINE_BYTES),
        ready: VecDeque::new(),
        ended: false,
    };
    futures_util::stream::unfold(Some(state), |state| async move {
        let mut st = state?;
        loop {
            if let Some(line) = st.ready.pop_front() {
                let parsed = serde_json::from_slice::<ExecEvent>(&line);
                return Some(match parsed {
                    Ok(event) => (Ok((line, event)), Some(st)),
                    Err(e) => (Err(AgentError::Malformed(format!("exec event: {e}"))), None),
                });
            }
            if st.ended {
                return None;
            }
            match st.body.frame().await {
                None => {
                    st.ended = true;
                    if let Err(e) = st.decoder.finish() {
                        return Some((Err(e), None));
                    }
                }
                Some(Err(e)) => return Some((Err(AgentError::Http(e)), None)),
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        match st.decoder.push(data) {
                            Ok(lines) => st.ready.extend(lines),
                            Err(e) => return Some((Err(e), None)),
                        }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
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
        let client =
            AgentClient::with_timeouts(&path, Duration::from_secs(60), Duration::from_millis(100));

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
}
