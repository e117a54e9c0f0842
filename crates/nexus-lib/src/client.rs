//! The typed client of the daemon's API, over its Unix socket (or TCP with a bearer token).
//!
//! One HTTP/1.1 connection per request: the socket is local, connecting costs microseconds, and
//! it keeps concurrent callers independent of each other.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

#[path = "client_builds.rs"]
mod builds;

use crate::agent::{ExecEvent, ExecRequest, FileStat, MAX_EVENT_LINE_BYTES};
use crate::api::{
    Asset, AssetKind, AssetVerification, AttachDrive, BootRecord, CreateDrive, CreateImage,
    CreateProvider, CreateToken, CreateVm, CreatedToken, DownloadEvent, DownloadRequest, Drive,
    ErrorBody, Health, Image, NetworkCleanup, NetworkInfo, Provider, Token, Transition,
    UpdateVmNetwork, Vm, VmState,
};

/// A request body: bytes in memory or a stream.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// A body holding `bytes`.
pub fn full_body(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// A body streaming from `reader` in chunks.
pub fn reader_body<R>(reader: R) -> Body
where
    R: tokio::io::AsyncRead + Send + Sync + 'static,
{
    use futures_util::TryStreamExt;
    let frames = tokio_util::io::ReaderStream::new(reader).map_ok(hyper::body::Frame::data);
    BodyExt::boxed(StreamBody::new(frames))
}

/// Largest response body the client reads into memory (streams are read incrementally).
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Where the daemon is.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp { addr: String, token: String },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "{}", p.display()),
            Self::Tcp { addr, .. } => write!(f, "tcp://{addr}"),
        }
    }
}

/// What can go wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens where the daemon should be.
    #[error("nexusd is not running (nothing listens on {endpoint})")]
    Unreachable {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    /// The daemon answered with an error.
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        field: Option<String>,
    },
    /// The connection broke or HTTP failed.
    #[error("talking to nexusd failed")]
    Http(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The daemon's answer was not what this client understands.
    #[error("unexpected answer from nexusd: {0}")]
    Decode(String),
}

impl ClientError {
    /// The HTTP status, for errors the daemon reported.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The typed client.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
}

impl Client {
    /// A client for the daemon listening on `socket`.
    pub fn unix(socket: impl Into<PathBuf>) -> Self {
        Self {
            endpoint: Endpoint::Unix(socket.into()),
        }
    }

    /// A client for a TCP listener with a bearer token.
    pub fn tcp(addr: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            endpoint: Endpoint::Tcp {
                addr: addr.into(),
                token: token.into(),
            },
        }
    }

    /// Where this client connects.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The socket path, for a Unix-socket client.
    pub fn socket(&self) -> Option<&Path> {
        match &self.endpoint {
            Endpoint::Unix(p) => Some(p),
            Endpoint::Tcp { .. } => None,
        }
    }

    /// Sends a request and returns the response head and streaming body, whatever the status.
    pub async fn send_raw(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Bytes>,
        content_type: Option<&str>,
    ) -> Result<http::Response<Incoming>, ClientError> {
        let body = full_body(body.unwrap_or_default());
        self.send_body(method, path_and_query, body, content_type)
            .await
    }

    /// Sends a request with any body and returns the response head and streaming body.
    pub async fn send_body(
        &self,
        method: Method,
        path_and_query: &str,
        body: Body,
        content_type: Option<&str>,
    ) -> Result<http::Response<Incoming>, ClientError> {
        let unreachable = |source| ClientError::Unreachable {
            endpoint: self.endpoint.to_string(),
            source,
        };
        let mut builder = Request::builder().method(method).uri(path_and_query);
        let mut sender = match &self.endpoint {
            Endpoint::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(unreachable)?;
                builder = builder.header(http::header::HOST, "nexusd");
                handshake(stream).await?
            }
            Endpoint::Tcp { addr, token } => {
                let stream = tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map_err(unreachable)?;
                builder = builder
                    .header(http::header::HOST, addr.as_str())
                    .header(http::header::AUTHORIZATION, format!("Bearer {token}"));
                handshake(stream).await?
            }
        };
        if let Some(ct) = content_type {
            builder = builder.header(http::header::CONTENT_TYPE, ct);
        }
        let req = builder
            .body(body)
            .map_err(|e| ClientError::Http(e.into()))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http(e.into()))
    }

    /// Sends a JSON request and decodes a JSON answer; error statuses become [`ClientError::Api`].
    pub async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, ClientError> {
        let bytes = self.request_bytes(method, path_and_query, body).await?;
        let bytes = if bytes.is_empty() {
            Bytes::from_static(b"null")
        } else {
            bytes
        };
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    async fn request_bytes(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<Bytes, ClientError> {
        let body = body
            .map(|b| serde_json::to_vec(b).map(Bytes::from))
            .transpose()
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        let ct = body.as_ref().map(|_| "application/json");
        let resp = self.send_raw(method, path_and_query, body, ct).await?;
        let status = resp.status();
        let bytes = read_body(resp.into_body(), MAX_RESPONSE_BYTES).await?;
        if status.is_success() {
            Ok(bytes)
        } else {
            Err(api_error(status, &bytes))
        }
    }

    /// `GET /v1/health`. A 503 still carries a report, returned as an error.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.request(Method::GET, "/v1/health", None::<&()>).await
    }

    /// `POST /v1/vms`.
    pub async fn create_vm(&self, req: &CreateVm) -> Result<Vm, ClientError> {
        self.request(Method::POST, "/v1/vms", Some(req)).await
    }

    /// `GET /v1/vms`, optionally only those in `state`.
    pub async fn list_vms(&self, state: Option<VmState>) -> Result<Vec<Vm>, ClientError> {
        let path = match state {
            Some(s) => format!("/v1/vms?state={s}"),
            None => "/v1/vms".to_owned(),
        };
        self.request(Method::GET, &path, None::<&()>).await
    }

    /// `GET /v1/vms/{id-or-name}`.
    pub async fn get_vm(&self, vm: &str) -> Result<Vm, ClientError> {
        self.request(
            Method::GET,
            &format!("/v1/vms/{}", segment(vm)),
            None::<&()>,
        )
        .await
    }

    /// `GET /v1/vms/{vm}/sessions`: the VM's terminal sessions.
    pub async fn terminal_sessions(
        &self,
        vm: &str,
    ) -> Result<Vec<crate::terminal::SessionInfo>, ClientError> {
        self.request(
            Method::GET,
            &format!("/v1/vms/{}/sessions", segment(vm)),
            None::<&()>,
        )
        .await
    }

    /// `DELETE /v1/vms/{vm}/sessions/{id}`: kills a terminal session.
    pub async fn kill_terminal_session(&self, vm: &str, id: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/vms/{}/sessions/{}", segment(vm), segment(id)))
            .await
    }

    /// `DELETE /v1/vms/{id-or-name}`; the drives made with the VM go too unless `keep_drives`.
    pub async fn delete_vm(&self, vm: &str, keep_drives: bool) -> Result<(), ClientError> {
        let query = if keep_drives { "?keep_drives=true" } else { "" };
        self.delete(&format!("/v1/vms/{}{query}", segment(vm)))
            .await
    }

    /// A `DELETE` whose success has no body.
    async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.request_bytes(Method::DELETE, path, None::<&()>)
            .await
            .map(drop)
    }

    /// `POST /v1/images`: imports an ext4 file or a directory on the daemon's host.
    pub async fn import_image(&self, req: &CreateImage) -> Result<Image, ClientError> {
        self.request(Method::POST, "/v1/images", Some(req)).await
    }

    /// `GET /v1/images`.
    pub async fn list_images(&self) -> Result<Vec<Image>, ClientError> {
        self.request(Method::GET, "/v1/images", None::<&()>).await
    }

    /// `GET /v1/images/{id-or-name}`.
    pub async fn get_image(&self, image: &str) -> Result<Image, ClientError> {
        let path = format!("/v1/images/{}", segment(image));
        self.request(Method::GET, &path, None::<&()>).await
    }

    /// `DELETE /v1/images/{id-or-name}`.
    pub async fn delete_image(&self, image: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/images/{}", segment(image))).await
    }

    /// `POST /v1/tokens`: the reply holds the secret, shown this once.
    pub async fn create_token(&self, req: &CreateToken) -> Result<CreatedToken, ClientError> {
        self.request(Method::POST, "/v1/tokens", Some(req)).await
    }

    /// `GET /v1/tokens`.
    pub async fn list_tokens(&self) -> Result<Vec<Token>, ClientError> {
        self.request(Method::GET, "/v1/tokens", None::<&()>).await
    }

    /// `DELETE /v1/tokens/{id}`.
    pub async fn revoke_token(&self, id: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/tokens/{}", segment(id))).await
    }

    /// `POST /v1/drives`.
    pub async fn create_drive(&self, req: &CreateDrive) -> Result<Drive, ClientError> {
        self.request(Method::POST, "/v1/drives", Some(req)).await
    }

    /// `GET /v1/drives`.
    pub async fn list_drives(&self) -> Result<Vec<Drive>, ClientError> {
        self.request(Method::GET, "/v1/drives", None::<&()>).await
    }

    /// `GET /v1/drives/{id-or-name}`.
    pub async fn get_drive(&self, drive: &str) -> Result<Drive, ClientError> {
        let path = format!("/v1/drives/{}", segment(drive));
        self.request(Method::GET, &path, None::<&()>).await
    }

    /// `DELETE /v1/drives/{id-or-name}`.
    pub async fn delete_drive(&self, drive: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/drives/{}", segment(drive))).await
    }

    /// `POST /v1/drives/{id-or-name}/attach`.
    pub async fn attach_drive(&self, drive: &str, req: &AttachDrive) -> Result<Drive, ClientError> {
        let path = format!("/v1/drives/{}/attach", segment(drive));
        self.request(Method::POST, &path, Some(req)).await
    }

    /// `POST /v1/drives/{id-or-name}/detach`.
    pub async fn detach_drive(&self, drive: &str) -> Result<Drive, ClientError> {
        let path = format!("/v1/drives/{}/detach", segment(drive));
        self.request(Method::POST, &path, None::<&()>).await
    }

    /// `GET /v1/vms/{id-or-name}/history`.
    pub async fn vm_history(&self, vm: &str) -> Result<Vec<Transition>, ClientError> {
        let path = format!("/v1/vms/{}/history", segment(vm));
        self.request(Method::GET, &path, None::<&()>).await
    }
}

impl Client {
    /// `PATCH /v1/vms/{vm}/network`: replaces the VM's egress policy, at once if it runs.
    pub async fn update_vm_network(
        &self,
        vm: &str,
        req: &UpdateVmNetwork,
    ) -> Result<Vm, ClientError> {
        let path = format!("/v1/vms/{}/network", segment(vm));
        self.request(Method::PATCH, &path, Some(req)).await
    }

    /// `GET /v1/network`.
    pub async fn network(&self) -> Result<NetworkInfo, ClientError> {
        self.request(Method::GET, "/v1/network", None::<&()>).await
    }

    /// `POST /v1/network/gc` or `POST /v1/network/down`.
    pub async fn network_action(&self, action: &str) -> Result<NetworkCleanup, ClientError> {
        let path = format!("/v1/network/{}", segment(action));
        self.request(Method::POST, &path, None::<&()>).await
    }

    /// `POST /v1/vms/{vm}/start|stop|restart`.
    pub async fn vm_action(&self, vm: &str, action: &str) -> Result<Vm, ClientError> {
        let path = format!("/v1/vms/{}/{}", segment(vm), segment(action));
        self.request(Method::POST, &path, None::<&()>).await
    }

    /// `GET /v1/vms/{vm}/boots`.
    pub async fn vm_boots(&self, vm: &str) -> Result<Vec<BootRecord>, ClientError> {
        let path = format!("/v1/vms/{}/boots", segment(vm));
        self.request(Method::GET, &path, None::<&()>).await
    }

    /// `POST /v1/vms/{vm}/exec`: the events as they arrive.
    pub async fn exec(&self, vm: &str, req: &ExecRequest) -> Result<ExecEvents, ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Decode(e.to_string()))?;
        let path = format!("/v1/vms/{}/exec", segment(vm));
        let resp = self
            .send_raw(
                Method::POST,
                &path,
                Some(body.into()),
                Some("application/json"),
            )
            .await?;
        let resp = check(resp).await?;
        Ok(Events::new(resp.into_body()))
    }

    /// `GET /v1/vms/{vm}/files?path=`: the file's content as a stream of chunks.
    pub async fn read_file(&self, vm: &str, path: &str) -> Result<Incoming, ClientError> {
        let uri = format!("/v1/vms/{}/files?path={}", segment(vm), segment(path));
        let resp = self.send_raw(Method::GET, &uri, None, None).await?;
        Ok(check(resp).await?.into_body())
    }

    /// `PUT /v1/vms/{vm}/files?path=&mode=` streaming `body`.
    pub async fn write_file(
        &self,
        vm: &str,
        path: &str,
        mode: u32,
        body: Body,
    ) -> Result<FileStat, ClientError> {
        let uri = format!(
            "/v1/vms/{}/files?path={}&mode={mode:o}",
            segment(vm),
            segment(path)
        );
        let resp = self
            .send_body(Method::PUT, &uri, body, Some("application/octet-stream"))
            .await?;
        let resp = check(resp).await?;
        let bytes = read_body(resp.into_body(), MAX_RESPONSE_BYTES).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// `GET /v1/vms/{vm}/console`: text and the offset to continue from.
    pub async fn console(
        &self,
        vm: &str,
        tail: Option<usize>,
        offset: Option<u64>,
    ) -> Result<(Bytes, u64), ClientError> {
        let mut uri = format!("/v1/vms/{}/console", segment(vm));
        match (tail, offset) {
            (_, Some(o)) => uri.push_str(&format!("?offset={o}")),
            (Some(t), None) => uri.push_str(&format!("?tail={t}")),
            (None, None) => {}
        }
        let resp = check(self.send_raw(Method::GET, &uri, None, None).await?).await?;
        let end = resp
            .headers()
            .get("x-console-offset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok((read_body(resp.into_body(), MAX_RESPONSE_BYTES).await?, end))
    }
}

impl Client {
    /// `GET /v1/providers`.
    pub async fn list_providers(&self) -> Result<Vec<Provider>, ClientError> {
        self.request(Method::GET, "/v1/providers", None::<&()>)
            .await
    }

    /// `GET /v1/providers/{name}`.
    pub async fn get_provider(&self, name: &str) -> Result<Provider, ClientError> {
        let path = format!("/v1/providers/{}", segment(name));
        self.request(Method::GET, &path, None::<&()>).await
    }

    /// `POST /v1/providers`.
    pub async fn add_provider(&self, req: &CreateProvider) -> Result<Provider, ClientError> {
        self.request(Method::POST, "/v1/providers", Some(req)).await
    }

    /// `DELETE /v1/providers/{name}`.
    pub async fn remove_provider(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/providers/{}", segment(name)))
            .await
    }

    /// `GET /v1/assets`, optionally of one kind.
    pub async fn list_assets(&self, kind: Option<AssetKind>) -> Result<Vec<Asset>, ClientError> {
        let path = match kind {
            Some(k) => format!("/v1/assets?kind={k}"),
            None => "/v1/assets".to_owned(),
        };
        self.request(Method::GET, &path, None::<&()>).await
    }

    fn asset_path(asset: &str, action: &str, kind: Option<AssetKind>) -> String {
        let query = kind.map(|k| format!("?kind={k}")).unwrap_or_default();
        format!("/v1/assets/{}{action}{query}", segment(asset))
    }

    /// `GET /v1/assets/{asset}` (id, name or NAME@VERSION).
    pub async fn get_asset(
        &self,
        asset: &str,
        kind: Option<AssetKind>,
    ) -> Result<Asset, ClientError> {
        let path = Self::asset_path(asset, "", kind);
        self.request(Method::GET, &path, None::<&()>).await
    }

    /// `DELETE /v1/assets/{asset}`.
    pub async fn remove_asset(
        &self,
        asset: &str,
        kind: Option<AssetKind>,
    ) -> Result<(), ClientError> {
        self.delete(&Self::asset_path(asset, "", kind)).await
    }

    /// `POST /v1/assets/{asset}/verify`.
    pub async fn verify_asset(
        &self,
        asset: &str,
        kind: Option<AssetKind>,
    ) -> Result<AssetVerification, ClientError> {
        let path = Self::asset_path(asset, "/verify", kind);
        self.request(Method::POST, &path, None::<&()>).await
    }

    /// `POST /v1/assets/download`: the run's events as they arrive.
    pub async fn download(&self, req: &DownloadRequest) -> Result<DownloadEvents, ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Decode(e.to_string()))?;
        let resp = self
            .send_raw(
                Method::POST,
                "/v1/assets/download",
                Some(body.into()),
                Some("application/json"),
            )
            .await?;
        Ok(Events::new(check(resp).await?.into_body()))
    }
}

/// Turns an error status into [`ClientError::Api`], passing success through.
async fn check(resp: http::Response<Incoming>) -> Result<http::Response<Incoming>, ClientError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let bytes = read_body(resp.into_body(), 1 << 20).await?;
    Err(api_error(status, &bytes))
}

/// A stream of newline-delimited JSON events (an exec's output, a download's progress), read
/// line by line with a bound on each line.
#[derive(Debug)]
pub struct Events<T> {
    body: Incoming,
    buf: bytes::BytesMut,
    done: bool,
    _event: std::marker::PhantomData<fn() -> T>,
}

/// The events of a running exec.
pub type ExecEvents = Events<ExecEvent>;

/// The events of a running download.
pub type DownloadEvents = Events<DownloadEvent>;

impl<T: DeserializeOwned> Events<T> {
    fn new(body: Incoming) -> Self {
        Self {
            body,
            buf: bytes::BytesMut::new(),
            done: false,
            _event: std::marker::PhantomData,
        }
    }

    /// The next event; `None` at the end of the stream.
    pub async fn next(&mut self) -> Result<Option<T>, ClientError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(pos + 1);
                let event = serde_json::from_slice(&line[..pos])
                    .map_err(|e| ClientError::Decode(format!("event: {e}")))?;
                return Ok(Some(event));
            }
            if self.buf.len() > MAX_EVENT_LINE_BYTES {
                return Err(ClientError::Decode("event line too long".into()));
            }
            if self.done {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ClientError::Decode("stream ended inside a line".into()))
                };
            }
            match self.body.frame().await {
                Some(frame) => {
                    let frame = frame.map_err(|e| ClientError::Http(e.into()))?;
                    if let Some(data) = frame.data_ref() {
                        self.buf.extend_from_slice(data);
                    }
                }
                None => self.done = true,
            }
        }
    }
}

async fn handshake<S>(
    stream: S,
) -> Result<hyper::client::conn::http1::SendRequest<Body>, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::Http(e.into()))?;
    tokio::spawn(async move {
        // The connection ends with the request; its error, if any, reaches the caller through
        // the response future.
        let _ = conn.await;
    });
    Ok(sender)
}

/// Reads a whole body, refusing more than `limit` bytes.
pub async fn read_body(mut body: Incoming, limit: usize) -> Result<Bytes, ClientError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ClientError::Http(e.into()))?;
        if let Some(data) = frame.data_ref() {
            if buf.len() + data.len() > limit {
                return Err(ClientError::Decode(format!(
                    "response larger than {limit} bytes"
                )));
            }
            buf.extend_from_slice(data);
        }
    }
    Ok(buf.freeze())
}

/// Turns an error response into [`ClientError::Api`].
pub fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => ClientError::Api {
            status: status.as_u16(),
            code: error.code,
            message: error.message,
            field: error.field,
        },
        Err(_) => ClientError::Api {
            status: status.as_u16(),
            code: "http".into(),
            message: format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
            field: None,
        },
    }
}

/// Every byte but RFC 3986's unreserved characters is escaped in a path segment.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes one path segment.
pub fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_escapes_reserved_bytes() {
        assert_eq!(segment("web-1"), "web-1");
        assert_eq!(segment("a b/c?"), "a%20b%2Fc%3F");
    }

    #[test]
    fn error_body_is_decoded() {
        let e = api_error(
            StatusCode::CONFLICT,
            br#"{"error":{"code":"conflict","message":"taken"}}"#,
        );
        assert!(matches!(e, ClientError::Api { status: 409, ref code, .. } if code == "conflict"));
    }
}
