//! hyper answers a request it cannot parse by itself, before any service runs: 400 for a
//! malformed request line or header, 414 for a request target over 64 KiB, 431 for more than
//! 100 headers or a head over its read buffer (about 400 KiB); always with an empty body.
//! [`JsonErrors`] wraps a connection's I/O and replaces exactly that response with the API's JSON
//! error body (see `limits.rs` for the smaller limits the API answers itself). Both listeners use
//! it: the Unix socket through [`JsonErrorsListener`], TCP in `crate::tcp`.
//!
//! Only a write that is exactly hyper's automatic response is replaced: it starts a fresh buffer
//! (it does not continue a write the socket took only part of), its status line is one of the
//! three, its headers are exactly `connection: close`, `content-length: 0` and `date`, and
//! nothing follows them. Every response of the API carries a content type and a request id, so
//! none matches; body bytes match only when a client fetches content forged to be exactly such a
//! response, and then it changes only that client's own response. The wrapper declines vectored
//! writes, so hyper hands it each response head whole in one buffer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::http::StatusCode;
use axum::serve::Listener;
use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::limits;

/// The status lines of hyper's automatic responses.
const AUTOMATIC: [(&str, StatusCode); 3] = [
    ("HTTP/1.1 400 Bad Request", StatusCode::BAD_REQUEST),
    ("HTTP/1.1 414 URI Too Long", StatusCode::URI_TOO_LONG),
    (
        "HTTP/1.1 431 Request Header Fields Too Large",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    ),
];

/// A connection's I/O whose automatic hyper error responses get the JSON error body.
#[derive(Debug)]
pub struct JsonErrors<T> {
    inner: T,
    /// The last write was taken only in part: the next one continues its buffer.
    continuing: bool,
    /// What is left to write of a replacement response.
    pending: Option<Bytes>,
}

impl<T> JsonErrors<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            continuing: false,
            pending: None,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncWrite + Unpin> JsonErrors<T> {
    /// Writes out the rest of a replacement response, if there is one.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(rest) = self.pending.as_mut() {
            if rest.is_empty() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            rest.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrors<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrors<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        let reply = if this.continuing {
            None
        } else {
            replacement(buf)
        };
        if let Some(reply) = reply {
            this.pending = Some(reply);
            // What the socket does not take now goes out at the flush that follows.
            if let Poll::Ready(Err(e)) = this.poll_pending(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.continuing = n < buf.len();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// The response replacing `buf` when `buf` is exactly one of hyper's automatic error responses:
/// the same status line and date, the JSON error body, and `connection: close` as before.
fn replacement(buf: &[u8]) -> Option<Bytes> {
    let head = std::str::from_utf8(buf).ok()?.strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status = AUTOMATIC.iter().find(|(l, _)| *l == status_line)?.1;
    let (mut close, mut empty, mut date) = (false, false, None);
    for line in lines {
        match line.split_once(": ")? {
            ("connection", "close") if !close => close = true,
            ("content-length", "0") if !empty => empty = true,
            ("date", d) if date.is_none() => date = Some(d),
            _ => return None,
        }
    }
    let date = date.filter(|_| close && empty)?;
    let body = serde_json::to_vec(&limits::unparsed(status).into_body()).ok()?;
    let mut reply = format!(
        "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\ndate: {date}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    reply.extend_from_slice(&body);
    Some(reply.into())
}

/// A listener whose connections are [`JsonErrors`].
#[derive(Debug)]
pub struct JsonErrorsListener<L>(pub L);

impl<L: Listener> Listener for JsonErrorsListener<L> {
    type Io = JsonErrors<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.0.accept().await;
        (JsonErrors::new(io), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const DATE: &str = "Wed, 25 Nov 2026 21:27:39 GMT";

    fn automatic(status_line: &str) -> String {
        format!("{status_line}\r\nconnection: close\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n")
    }

    /// Status, headers and body of a response.
    fn parse(reply: &[u8]) -> (String, String, serde_json::Value) {
        let text = std::str::from_utf8(reply).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let (status, headers) = head.split_once("\r\n").unwrap();
        (
            status.to_owned(),
            headers.to_owned(),
            serde_json::from_str(body).unwrap(),
        )
    }

    #[test]
    fn each_automatic_response_gets_the_json_error_body() {
        for (line, code) in [
            (AUTOMATIC[0].0, "bad_request"),
            (AUTOMATIC[1].0, "uri_too_long"),
            (AUTOMATIC[2].0, "headers_too_large"),
        ] {
            let reply = replacement(automatic(line).as_bytes()).unwrap();

            let (status, headers, body) = parse(&reply);
            assert_eq!(status, line);
            assert!(
                headers.contains("content-type: application/json"),
                "{headers}"
            );
            assert!(headers.contains(&format!("date: {DATE}")), "{headers}");
            assert_eq!(body["error"]["code"], code);
        }
    }

    #[test]
    fn a_response_of_the_api_is_left_alone() {
        let ours = "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nx-request-id: r1\r\ncontent-length: 2\r\ndate: D\r\n\r\n{}";

        assert!(replacement(ours.as_bytes()).is_none());
    }

    #[test]
    fn anything_after_the_head_is_left_alone() {
        let more = format!("{}x", automatic(AUTOMATIC[0].0));

        assert!(replacement(more.as_bytes()).is_none());
    }

    /// A writer that takes at most `max` bytes per write.
    struct Narrow {
        out: Vec<u8>,
        max: usize,
    }

    impl AsyncWrite for Narrow {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let n = buf.len().min(this.max);
            this.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn bytes_continuing_a_partial_write_are_left_alone() {
        let forged = automatic(AUTOMATIC[0].0);
        let data = format!("{}{forged}", "a".repeat(10));
        let mut io = JsonErrors::new(Narrow {
            out: Vec::new(),
            max: 10,
        });

        io.write_all(data.as_bytes()).await.unwrap();

        assert_eq!(io.inner.out, data.as_bytes());
    }

    #[tokio::test]
    async fn a_replacement_the_socket_takes_in_pieces_is_written_whole() {
        let mut io = JsonErrors::new(Narrow {
            out: Vec::new(),
            max: 7,
        });

        io.write_all(automatic(AUTOMATIC[1].0).as_bytes())
            .await
            .unwrap();
        io.flush().await.unwrap();

        let (_, _, body) = parse(&io.inner.out);
        assert_eq!(body["error"]["code"], "uri_too_long");
    }

    #[tokio::test]
    async fn hyper_answering_a_garbage_request_line_sends_the_json_body() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let service = hyper::service::service_fn(|_| async {
            Ok::<_, std::convert::Infallible>(hyper::Response::new(String::new()))
        });
        tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
            hyper_util::rt::TokioIo::new(JsonErrors::new(server)),
            service,
        ));
        let mut client = client;

        client.write_all(b"GARBAGE\r\n\r\n").await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();

        let (status, headers, body) = parse(&reply);
        assert_eq!(status, "HTTP/1.1 400 Bad Request");
        assert!(
            headers.contains("content-type: application/json"),
            "{headers}"
        );
        assert_eq!(body["error"]["code"], "bad_request");
    }
}
