//! The client side of `GET /v1/vms/{vm}/terminal`: a WebSocket over the daemon's Unix socket
//! (or its plain TCP listener with the bearer token), with refusals decoded like every other
//! API error.

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use crate::client::{Client, ClientError, Endpoint, api_error, segment};
use crate::terminal::{MAX_FRAME_PAYLOAD, TermControl, TermOpen, terminal_query};

/// Anything a WebSocket can run over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What arrives on a terminal.
#[derive(Debug)]
pub enum TermEvent {
    /// Terminal output.
    Output(bytes::Bytes),
    /// A control message (`session`, `exit`, `closed`).
    Control(TermControl),
}

/// An open terminal.
pub struct Terminal {
    ws: WebSocketStream<Box<dyn Io>>,
}

impl Client {
    /// Opens (or, with `open.session`, attaches to) a terminal session of `vm`.
    pub async fn open_terminal(&self, vm: &str, open: &TermOpen) -> Result<Terminal, ClientError> {
        open.validate().map_err(|m| ClientError::Api {
            status: 400,
            code: "usage".into(),
            message: m,
            field: None,
        })?;
        let path = format!("/v1/vms/{}/terminal?{}", segment(vm), terminal_query(open));
        let unreachable = |source| ClientError::Unreachable {
            endpoint: self.endpoint().to_string(),
            source,
        };
        let (io, host, token): (Box<dyn Io>, &str, Option<&str>) = match self.endpoint() {
            Endpoint::Unix(p) => (
                Box::new(
                    tokio::net::UnixStream::connect(p)
                        .await
                        .map_err(unreachable)?,
                ),
                "nexusd",
                None,
            ),
            Endpoint::Tcp { addr, token } => (
                Box::new(
                    tokio::net::TcpStream::connect(addr.as_str())
                        .await
                        .map_err(unreachable)?,
                ),
                addr.as_str(),
                Some(token.as_str()),
            ),
        };
        let mut req = format!("ws://{host}{path}")
            .into_client_request()
            .map_err(|e| ClientError::Http(e.into()))?;
        if let Some(token) = token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| ClientError::Decode("the token is not a valid header value".into()))?;
            req.headers_mut().insert(http::header::AUTHORIZATION, value);
        }
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME_PAYLOAD + 1024))
            .max_frame_size(Some(MAX_FRAME_PAYLOAD + 1024));
        match client_async_with_config(req, io, Some(config)).await {
            Ok((ws, _)) => Ok(Terminal { ws }),
            Err(WsError::Http(resp)) => {
                let body = resp.body().clone().unwrap_or_default();
                Err(api_error(resp.status(), &body))
            }
            Err(e) => Err(ClientError::Http(e.into())),
        }
    }
}

impl Terminal {
    /// Sends typed bytes.
    pub async fn send_input(&mut self, data: &[u8]) -> Result<(), ClientError> {
        for chunk in data.chunks(MAX_FRAME_PAYLOAD) {
            self.send(Message::Binary(bytes::Bytes::copy_from_slice(chunk)))
                .await?;
        }
        Ok(())
    }

    /// Sends a control message (resize, signal).
    pub async fn send_control(&mut self, control: &TermControl) -> Result<(), ClientError> {
        let json =
            serde_json::to_string(control).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.send(Message::Text(json.into())).await
    }

    /// Closes the WebSocket: detaches, the session keeps running. The server's half of the
    /// closing handshake is waited for at most a second.
    pub async fn detach(mut self) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.ws.close(None)).await;
    }

    async fn send(&mut self, msg: Message) -> Result<(), ClientError> {
        self.ws
            .send(msg)
            .await
            .map_err(|e| ClientError::Http(e.into()))
    }

    /// The next output or control message; `None` once the server closed the terminal.
    pub async fn next(&mut self) -> Result<Option<TermEvent>, ClientError> {
        loop {
            let Some(msg) = self.ws.next().await else {
                return Ok(None);
            };
            match msg.map_err(|e| ClientError::Http(e.into()))? {
                Message::Binary(data) => return Ok(Some(TermEvent::Output(data))),
                Message::Text(text) => {
                    let control = serde_json::from_str(text.as_str())
                        .map_err(|e| ClientError::Decode(format!("terminal control: {e}")))?;
                    return Ok(Some(TermEvent::Control(control)));
                }
                Message::Close(_) => return Ok(None),
                _ => {}
            }
        }
    }
}
