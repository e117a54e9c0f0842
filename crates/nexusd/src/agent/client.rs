//! [`AgentClient`]: typed calls on the agent's HTTP/2 API, one shared connection per VM.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use http::{Method, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use nexus_lib::agent::{
    self as proto, AGENT_VSOCK_PORT, AgentInfo, DirListing, ErrorBody, ExecEvent, ExecRequest,
    FileStat, Handshake, MAX_EVENT_LINE_BYTES, MAX_REPLY_JSON_BYTES, SUPPORTED_PROTOCOLS,
    ShutdownAccepted,
};
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

use super::{AgentError, NdjsonDecoder, dial_hybrid_vsock};
use crate::sanitize;

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(super) type ReqBody = UnsyncBoxBody<Bytes, BoxError>;

/// A stream of byte chunks (file contents, raw NDJSON lines) coming from the agent.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, AgentError>> + Send>>;

/// Part of a guest file ([`AgentClient::read_range`]).
pub struct FileRange {
    /// The whole file's size, when the agent said.
    pub size: Option<u64>,
    /// The bytes of the range, at most the length asked for.
    pub content: ByteStream,
}

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
/// How long a file body (either direction) may stand still before nexusd gives up on it.
const DEFAULT_STREAM_IDLE: Duration = DEFAULT_CALL_TIMEOUT;
/// The longest any guest stream (exec output, file body) may last, however steadily it trickles.
const DEFAULT_STREAM_TOTAL: Duration = Duration::from_secs(60 * 60);
/// How long past an exec's own `timeout_ms` nexusd waits for the guest to report the exit before
/// it ends the stream itself: the guest enforces the timeout, but the guest is not trusted.
const DEFAULT_EXEC_GRACE: Duration = Duration::from_secs(2);
/// HTTP/2 PINGs on the agent connection, so a VM whose vsock went dead fails its calls instead of
/// leaving them waiting (a guest that answers PINGs but stalls a stream is bounded per stream).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Every time bound of an [`AgentClient`].
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Request to response headers (and the whole of a JSON call).
    call: Duration,
    /// Dial, hybrid-vsock `CONNECT`/`OK` and HTTP/2 handshake.
    connect: Duration,
    /// A file body that moves no byte for this long is ended.
    stream_idle: Duration,
    /// No stream outlives this, counted from the request.
    stream_total: Duration,
    /// Added to an exec's `timeout_ms` before nexusd ends its stream.
    exec_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            call: DEFAULT_CALL_TIMEOUT,
            connect: DEFAULT_CONNECT_TIMEOUT,
            stream_idle: DEFAULT_STREAM_IDLE,
            stream_total: DEFAULT_STREAM_TOTAL,
            exec_grace: DEFAULT_EXEC_GRACE,
        }
    }
}

/// A client of one VM's agent. Clones share the connection.
#[derive(Clone)]
pub struct AgentClient {
    inner: Arc<Inner>,
}

struct Inner {
    uds: PathBuf,
    port: u32,
    limits: Limits,
    sender: Mutex<Option<SendRequest<ReqBody>>>,
}

impl AgentClient {
    /// A client that dials lazily on its first call.
    pub fn new(uds: impl Into<PathBuf>) -> Self {
        Self::with_limits(uds, Limits::default())
    }

    fn with_limits(uds: impl Into<PathBuf>, limits: Limits) -> Self {
        let inner = Inner {
            uds: uds.into(),
            port: AGENT_VSOCK_PORT,
            limits,
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

    /// Streams a file's content. The stream ends with [`AgentError::Timeout`] once the guest sends
    /// nothing for the idle limit, or at the total limit however steadily it trickles.
    pub async fn read_file(&self, path: &str) -> Result<ByteStream, AgentError> {
        let deadline = tokio::time::Instant::now() + self.inner.limits.stream_total;
        let resp = self.get_file(path_uri("/v1/files", path, "")?).await?;
        Ok(self.file_body(resp, deadline))
    }

    /// Streams at most `length` bytes of `path` from byte `offset`, with the file's size. The guest
    /// is asked for that range only; from an agent that predates ranged reads (it ignores the
    /// range and says nothing about it) the whole file comes and is cut here. Either way no more
    /// than `length` bytes come out, and the time bounds of [`read_file`](Self::read_file) apply.
    pub async fn read_range(
        &self,
        path: &str,
        offset: u64,
        length: u64,
    ) -> Result<FileRange, AgentError> {
        let deadline = tokio::time::Instant::now() + self.inner.limits.stream_total;
        let range = format!("&offset={offset}&length={length}");
        let resp = self.get_file(path_uri("/v1/files", path, &range)?).await?;
        let header = |name: &str| -> Result<Option<u64>, AgentError> {
            resp.headers()
                .get(name)
                .map(|v| {
                    v.to_str()
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| AgentError::Malformed(format!("bad {name} header")))
                })
                .transpose()
        };
        let size = header(proto::FILE_SIZE_HEADER)?;
        let skip = match header(proto::FILE_OFFSET_HEADER)? {
            Some(start) if start == offset => 0,
            None => offset,
            Some(start) => {
                return Err(AgentError::Malformed(format!(
                    "asked for bytes from {offset}, the agent sent them from {start}"
                )));
            }
        };
        let body = self.file_body(resp, deadline);
        Ok(FileRange {
            size,
            content: Box::pin(skip_then_take(body, skip, length)),
        })
    }

    async fn get_file(&self, uri: String) -> Result<Response<Incoming>, AgentError> {
        check(
            self.timed(self.send(request(Method::GET, &uri, empty())?))
                .await?,
        )
        .await
    }

    /// A file reply's body, bounded by the idle and total stream limits.
    fn file_body(&self, resp: Response<Incoming>, deadline: tokio::time::Instant) -> ByteStream {
        let body = resp
            .into_body()
            .into_data_stream()
            .map_err(AgentError::from);
        let bound = StreamBound {
            idle: Some(self.inner.limits.stream_idle),
            deadline,
            total: self.inner.limits.stream_total,
        };
        Box::pin(bounded(body, bound, self.inner.uds.clone()))
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
        let Limits {
            stream_idle,
            stream_total,
            ..
        } = self.inner.limits;
        let timeout = |waited| AgentError::Timeout {
            path: self.inner.uds.clone(),
            waited,
        };
        tokio::time::timeout(stream_total, until_idle(call, &progress, stream_idle))
            .await
            .map_err(|_| timeout(stream_total))?
            .ok_or_else(|| timeout(stream_idle))?
    }

    /// Runs a command; events arrive as the process produces output, ending with `Exit` or `Error`.
    ///
    /// The guest enforces `timeout_ms`, but nexusd does not rely on it: when the guest has not
    /// reported the exit by `timeout_ms` plus a grace, the stream ends with an `Error` event and
    /// the HTTP/2 stream is reset, which makes the agent kill the process group. Without
    /// `timeout_ms` the stream is still bounded by the total stream limit. A silent command is
    /// legitimate, so exec output has no idle limit.
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
        let limits = self.inner.limits;
        let total = req
            .timeout_ms
            .map(|ms| Duration::from_millis(ms).saturating_add(limits.exec_grace))
            .map_or(limits.stream_total, |t| t.min(limits.stream_total));
        let bound = StreamBound {
            idle: None,
            deadline: tokio::time::Instant::now() + total,
            total,
        };
        let body =
            serde_json::to_vec(req).map_err(|e| AgentError::InvalidRequest(e.to_string()))?;
        let call = async {
            let resp = self
                .send(request(Method::POST, "/v1/exec", full(body))?)
                .await?;
            check(resp).await
        };
        let resp = self.timed(async {
            tokio::time::timeout_at(bound.deadline, call)
                .await
                .unwrap_or_else(|_| {
                    Err(AgentError::Timeout {
                        path: self.inner.uds.clone(),
                        waited: total,
                    })
                })
        });
        let lines = bounded(
            event_lines(resp.await?.into_body()),
            bound,
            self.inner.uds.clone(),
        );
        Ok(lines.map(|item| match item {
            Err(AgentError::Timeout { waited, .. }) => {
                let event = ExecEvent::Error {
                    message: format!(
                        "the guest did not report the command's exit within {waited:?}; nexusd ended the stream and asked the agent to kill it"
                    ),
                };
                let mut line = serde_json::to_vec(&event).unwrap_or_default();
                line.push(b'\n');
                Ok((Bytes::from(line), event))
            }
            other => other,
        }))
    }

    pub(super) async fn json_call<T: DeserializeOwned>(
        &self,
        req: Request<ReqBody>,
    ) -> Result<T, AgentError> {
        self.timed(async {
            let resp = check(self.send(req).await?).await?;
            read_json(resp).await
        })
        .await
    }

    pub(super) async fn timed<T>(
        &self,
        fut: impl Future<Output = Result<T, AgentError>>,
    ) -> Result<T, AgentError> {
        let waited = self.inner.limits.call;
        tokio::time::timeout(waited, fut)
            .await
            .map_err(|_| AgentError::Timeout {
                path: self.inner.uds.clone(),
                waited,
            })?
    }

    pub(super) async fn send(
        &self,
        req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, AgentError> {
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
                .timer(TokioTimer::new())
                .keep_alive_interval(KEEP_ALIVE_INTERVAL)
                .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
                .initial_stream_window_size(STREAM_WINDOW_BYTES)
                .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
                .max_frame_size(MAX_FRAME_BYTES)
                .max_header_list_size(MAX_HEADER_LIST_BYTES)
                .handshake(TokioIo::new(stream))
                .await
                .map_err(AgentError::from)
        };
        let waited = self.inner.limits.connect;
        let (sender, connection) =
            tokio::time::timeout(waited, dial)
                .await
                .map_err(|_| AgentError::Timeout {
                    path: self.inner.uds.clone(),
                    waited,
                })??;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %crate::sanitize::Escaped(&e), "agent connection ended");
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

/// Time bounds on one guest stream.
#[derive(Debug, Clone, Copy)]
struct StreamBound {
    /// Longest wait for the next item, if any.
    idle: Option<Duration>,
    /// When the stream ends regardless ...
    deadline: tokio::time::Instant,
    /// ... which is this long after the request.
    total: Duration,
}

/// `stream`, ended with one [`AgentError::Timeout`] when it stalls past `bound.idle` or runs past
/// `bound.deadline`. Ending drops the inner stream, which resets the HTTP/2 stream: the agent
/// sees the cancellation and stops (an exec's process group is killed).
fn bounded<T, S>(
    stream: S,
    bound: StreamBound,
    path: PathBuf,
) -> impl Stream<Item = Result<T, AgentError>> + Send + use<T, S>
where
    S: Stream<Item = Result<T, AgentError>> + Send + 'static,
    T: Send + 'static,
{
    let state = Some((Box::pin(stream), path));
    futures_util::stream::unfold(state, move |state| async move {
        let (mut stream, path) = state?;
        let start = tokio::time::Instant::now();
        let until = bound
            .idle
            .map_or(bound.deadline, |idle| (start + idle).min(bound.deadline));
        match tokio::time::timeout_at(until, stream.next()).await {
            Ok(Some(item)) => Some((item, Some((stream, path)))),
            Ok(None) => None,
            Err(_) => {
                let waited = match bound.idle {
                    Some(idle) if until < bound.deadline => idle,
                    _ => bound.total,
                };
                drop(stream);
                tracing::warn!(socket = %path.display(), ?waited, "guest stream timed out; ending it");
                Some((Err(AgentError::Timeout { path, waited }), None))
            }
        }
    })
}

/// `stream` without its first `skip` bytes and ended after `take` more.
fn skip_then_take(
    stream: ByteStream,
    skip: u64,
    take: u64,
) -> impl Stream<Item = Result<Bytes, AgentError>> + Send {
    futures_util::stream::unfold(
        (stream, skip, take),
        |(mut stream, mut skip, take)| async move {
            if take == 0 {
                return None;
            }
            loop {
                let mut chunk = match stream.next().await? {
                    Ok(chunk) => chunk,
                    Err(e) => return Some((Err(e), (stream, skip, 0))),
                };
                let dropped = usize::try_from(skip).unwrap_or(usize::MAX).min(chunk.len());
                skip -= dropped as u64;
                let _ = chunk.split_to(dropped);
                if chunk.is_empty() {
                    continue;
                }
                chunk.truncate(usize::try_from(take).unwrap_or(usize::MAX));
                let left = take - chunk.len() as u64;
                return Some((Ok(chunk), (stream, skip, left)));
            }
        },
    )
}

pub(super) fn empty() -> ReqBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

fn full(bytes: Vec<u8>) -> ReqBody {
    Full::new(Bytes::from(bytes))
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(super) fn request(
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
pub(super) async fn check(resp: Response<Incoming>) -> Result<Response<Incoming>, AgentError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = Limited::new(resp.into_body(), MAX_ERROR_BODY_BYTES)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    // The guest's words, cleaned where they enter: they end up in API answers and logs.
    let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(ErrorBody { error }) => (
            sanitize::clean(error.code, 64),
            sanitize::clean(error.message, 1024),
        ),
        Err(_) => ("unknown".to_string(), sanitize::clean(&body, 512)),
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

#[path = "client_mcp.rs"]
mod mcp;
#[path = "client_processes.rs"]
mod processes;

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
