//! The Connect protocol (connectrpc.com/docs/protocol) with the JSON codec, as envd speaks it to
//! the E2B SDK: unary calls (`application/json` both ways, errors as `{code, message}` with the
//! matching HTTP status) and streams (`application/connect+json`, each message in an envelope
//! `[flags u8][length u32 BE][JSON]`, the last one flagged end-of-stream carrying `{}` or
//! `{"error": …}`). Messages are the generated prost types with pbjson's JSON mapping.
//!
//! Every request message is bounded ([`MAX_MESSAGE_BYTES`]); compressed envelopes are refused
//! (the SDK never compresses).

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http_body_util::BodyExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

/// Largest request message (one envelope's JSON, or a unary body).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Envelope flag: the payload is compressed.
const FLAG_COMPRESSED: u8 = 0x01;
/// Envelope flag: the end-of-stream message.
const FLAG_END: u8 = 0x02;
/// Longest a stream may be bounded to by `Connect-Timeout-Ms` (the protocol allows ten digits).
const MAX_TIMEOUT_MS: u64 = 9_999_999_999;

pub const STREAM_CONTENT_TYPE: &str = "application/connect+json";

/// A Connect error: a code from the protocol's fixed set and a message.
#[derive(Debug, Clone)]
pub struct ConnectError {
    pub code: Code,
    pub message: String,
}

/// The Connect error codes nexusd uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Canceled,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    ResourceExhausted,
    FailedPrecondition,
    Unimplemented,
    Internal,
    Unavailable,
    Unauthenticated,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Canceled => "canceled",
            Self::InvalidArgument => "invalid_argument",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::ResourceExhausted => "resource_exhausted",
            Self::FailedPrecondition => "failed_precondition",
            Self::Unimplemented => "unimplemented",
            Self::Internal => "internal",
            Self::Unavailable => "unavailable",
            Self::Unauthenticated => "unauthenticated",
        }
    }

    /// The HTTP status of a unary error with this code (the protocol's table).
    pub fn http_status(self) -> StatusCode {
        match self {
            Self::Canceled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Self::InvalidArgument => StatusCode::BAD_REQUEST,
            Self::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::AlreadyExists => StatusCode::CONFLICT,
            Self::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Self::FailedPrecondition => StatusCode::BAD_REQUEST,
            Self::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
        }
    }
}

impl ConnectError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }

    /// The unary answer carrying this error.
    pub fn into_response_unary(self) -> Response {
        self.into_response()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({ "code": self.code.as_str(), "message": self.message })
    }
}

impl IntoResponse for ConnectError {
    /// The unary form: the code's HTTP status and the error as the JSON body.
    fn into_response(self) -> Response {
        let mut resp = (self.code.http_status(), axum::Json(self.json())).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}

/// The deadline a request asks for with `Connect-Timeout-Ms`, if any.
pub fn timeout(headers: &HeaderMap) -> Result<Option<Duration>, ConnectError> {
    let Some(value) = headers.get("connect-timeout-ms") else {
        return Ok(None);
    };
    let ms: u64 = value
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|ms| *ms <= MAX_TIMEOUT_MS)
        .ok_or_else(|| {
            ConnectError::invalid("Connect-Timeout-Ms must be a number of at most ten digits")
        })?;
    Ok((ms > 0).then(|| Duration::from_millis(ms)))
}

/// Parses one JSON message into `T`, naming the message type on failure.
fn parse<T: DeserializeOwned>(json: &[u8]) -> Result<T, ConnectError> {
    if json.iter().all(u8::is_ascii_whitespace) {
        return serde_json::from_slice(b"{}").map_err(|e| ConnectError::invalid(e.to_string()));
    }
    serde_json::from_slice(json)
        .map_err(|e| ConnectError::invalid(format!("malformed request message: {e}")))
}

/// A unary request's message (the whole body, at most [`MAX_MESSAGE_BYTES`]).
pub async fn unary_request<T: DeserializeOwned>(body: Body) -> Result<T, ConnectError> {
    let limited = http_body_util::Limited::new(body, MAX_MESSAGE_BYTES);
    let bytes = limited
        .collect()
        .await
        .map_err(|e| ConnectError::invalid(format!("cannot read the request body: {e}")))?
        .to_bytes();
    parse(&bytes)
}

/// A unary reply.
pub fn unary_response<T: Serialize>(message: &T) -> Response {
    match serde_json::to_vec(message) {
        Ok(json) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            json,
        )
            .into_response(),
        Err(e) => ConnectError::internal(e.to_string()).into_response(),
    }
}

/// Decodes the envelopes of a streamed request body, bounded per message.
pub struct EnvelopeReader {
    body: axum::body::BodyDataStream,
    buf: BytesMut,
    ended: bool,
}

impl EnvelopeReader {
    pub fn new(body: Body) -> Self {
        Self {
            body: body.into_data_stream(),
            buf: BytesMut::new(),
            ended: false,
        }
    }

    /// The next message; `Ok(None)` after the last one (or an end-of-stream envelope).
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ConnectError> {
        loop {
            if self.buf.len() >= 5 {
                let flags = self.buf[0];
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if len > MAX_MESSAGE_BYTES {
                    return Err(ConnectError::new(
                        Code::ResourceExhausted,
                        format!("request message larger than {MAX_MESSAGE_BYTES} bytes"),
                    ));
                }
                if flags & FLAG_COMPRESSED != 0 {
                    return Err(ConnectError::new(
                        Code::Unimplemented,
                        "compressed messages are not supported",
                    ));
                }
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    let payload = self.buf.split_to(len);
                    if flags & FLAG_END != 0 {
                        self.ended = true;
                        return Ok(None);
                    }
                    return parse(&payload).map(Some);
                }
            }
            if self.ended {
                return Ok(None);
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Err(ConnectError::new(
                        Code::Canceled,
                        format!("request stream broke: {e}"),
                    ));
                }
                None => {
                    self.ended = true;
                    if !self.buf.is_empty() {
                        return Err(ConnectError::invalid("request stream ended mid-message"));
                    }
                    return Ok(None);
                }
            }
        }
    }
}

/// One envelope.
pub fn envelope(flags: u8, json: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + json.len());
    out.extend_from_slice(&[flags]);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(json);
    out.freeze()
}

/// The end-of-stream envelope: `{}` or the error.
pub fn end_envelope(error: Option<&ConnectError>) -> Bytes {
    let json = match error {
        Some(e) => serde_json::json!({ "error": e.json() }),
        None => serde_json::json!({}),
    };
    envelope(FLAG_END, json.to_string().as_bytes())
}

/// The sending half of a server stream: messages, then the end.
pub struct StreamSender {
    tx: mpsc::Sender<Bytes>,
}

impl StreamSender {
    /// Sends one message; `false` once the client is gone.
    pub async fn send<T: Serialize>(&self, message: &T) -> bool {
        match serde_json::to_vec(message) {
            Ok(json) => self.tx.send(envelope(0, &json)).await.is_ok(),
            Err(_) => false,
        }
    }

    /// Ends the stream, with an error or without.
    pub async fn end(self, error: Option<ConnectError>) {
        let _ = self.tx.send(end_envelope(error.as_ref())).await;
    }

    /// Resolves when the client went away.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }
}

/// A streaming response whose body is fed by the returned sender (each envelope is its own
/// chunk, so hyper flushes it at once).
pub fn stream_response() -> (StreamSender, Response) {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    (StreamSender { tx }, streamed(body))
}

/// A stream that failed before it began: HTTP 200 with only the end envelope.
pub fn stream_error(error: ConnectError) -> Response {
    let body =
        futures_util::stream::once(
            async move { Ok::<_, std::io::Error>(end_envelope(Some(&error))) },
        );
    streamed(body)
}

fn streamed<S>(body: S) -> Response
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, STREAM_CONTENT_TYPE)],
        Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn envelopes_split_across_chunks_are_reassembled() {
        let mut wire = envelope(0, br#"{"a":1}"#).to_vec();
        wire.extend_from_slice(&end_envelope(None));
        let chunks: Vec<Result<Bytes, std::io::Error>> = wire
            .chunks(3)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let mut reader = EnvelopeReader::new(Body::from_stream(futures_util::stream::iter(chunks)));
        let first: serde_json::Value = reader.next().await.unwrap().unwrap();
        assert_eq!(first["a"], 1);
        assert!(reader.next::<serde_json::Value>().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_oversized_envelope_is_refused_before_it_is_buffered() {
        let mut wire = vec![0u8];
        wire.extend_from_slice(&u32::MAX.to_be_bytes());
        let mut reader = EnvelopeReader::new(Body::from(wire));
        let err = reader.next::<serde_json::Value>().await.unwrap_err();
        assert_eq!(err.code, Code::ResourceExhausted);
    }

    #[test]
    fn the_end_envelope_carries_the_error() {
        let end = end_envelope(Some(&ConnectError::not_found("no such pid")));
        assert_eq!(end[0], FLAG_END);
        let json: serde_json::Value = serde_json::from_slice(&end[5..]).unwrap();
        assert_eq!(json["error"]["code"], "not_found");
    }
}
