//! An HTTP/1.1 server on 127.0.0.1 serving fixture files, for the asset pipeline's tests and
//! benchmark: `Range` (with `ETag`/`If-Range`), and misbehaviour on demand: dropping the
//! connection after some bytes, stalling, or always sending a truncated body. It records the
//! path and `Range` header of every request. It runs on its own thread and stops when dropped.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// How a fixture is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Whole, with `Range` support.
    Serve,
    /// The first `times` requests send the full `Content-Length` but only `bytes` bytes, then
    /// the connection is dropped; later requests are served.
    DropAfter { bytes: usize, times: usize },
    /// Every request stops after `bytes` bytes and the connection is dropped.
    TruncateAlways { bytes: usize },
    /// Sends `bytes` bytes, then nothing, keeping the connection open.
    StallAfter { bytes: usize },
}

/// Where a fixture's content is.
#[derive(Debug, Clone)]
pub enum Content {
    Memory(Bytes),
    File { path: PathBuf, len: u64 },
}

impl Content {
    fn len(&self) -> u64 {
        match self {
            Self::Memory(b) => b.len() as u64,
            Self::File { len, .. } => *len,
        }
    }
}

#[derive(Debug, Clone)]
struct Fixture {
    content: Content,
    behaviour: Behaviour,
    served: usize,
}

/// A request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub path: String,
    pub range: Option<String>,
}

#[derive(Default)]
struct Shared {
    fixtures: Mutex<HashMap<String, Fixture>>,
    log: Mutex<Vec<Logged>>,
}

/// The running server; stopped on drop.
pub struct FixtureServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

impl FixtureServer {
    pub fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let state = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("fixture runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind 127.0.0.1");
                ready_tx.send(listener.local_addr().unwrap()).unwrap();
                let accept = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let state = state.clone();
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |req| {
                                let state = state.clone();
                                async move { Ok::<_, Infallible>(respond(&state, req)) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stopped => {}
                }
            });
        });
        let addr = ready_rx.recv().expect("fixture server started");
        Self {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves `content` at `path` (starting with `/`) as `behaviour` says.
    pub fn put(&self, path: &str, content: Content, behaviour: Behaviour) {
        self.shared.fixtures.lock().unwrap().insert(
            path.to_owned(),
            Fixture {
                content,
                behaviour,
                served: 0,
            },
        );
    }

    /// Serves `bytes` at `path`.
    pub fn put_bytes(&self, path: &str, bytes: impl Into<Bytes>, behaviour: Behaviour) {
        self.put(path, Content::Memory(bytes.into()), behaviour);
    }

    /// The requests made so far for `path`.
    pub fn requests(&self, path: &str) -> Vec<Logged> {
        let log = self.shared.log.lock().unwrap();
        log.iter().filter(|l| l.path == path).cloned().collect()
    }
}

impl Drop for FixtureServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn etag(len: u64) -> String {
    format!("\"fixture-{len}\"")
}

fn respond(state: &Shared, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let range = req
        .headers()
        .get(hyper::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let if_range = req
        .headers()
        .get(hyper::header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state.log.lock().unwrap().push(Logged {
        path: path.clone(),
        range: range.clone(),
    });
    let fixture = {
        let mut fixtures = state.fixtures.lock().unwrap();
        let Some(f) = fixtures.get_mut(&path) else {
            return status(StatusCode::NOT_FOUND);
        };
        f.served += 1;
        f.clone()
    };
    let len = fixture.content.len();
    let tag = etag(len);
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|_| if_range.as_deref().is_none_or(|v| v == tag));
    if start.is_some_and(|s| s >= len) {
        let mut resp = status(StatusCode::RANGE_NOT_SATISFIABLE);
        resp.headers_mut().insert(
            hyper::header::CONTENT_RANGE,
            format!("bytes */{len}").parse().unwrap(),
        );
        return resp;
    }
    let from = start.unwrap_or(0);
    let cut = match fixture.behaviour {
        Behaviour::Serve => None,
        Behaviour::DropAfter { bytes, times } if fixture.served <= times => Some((bytes, false)),
        Behaviour::DropAfter { .. } => None,
        Behaviour::TruncateAlways { bytes } => Some((bytes, false)),
        Behaviour::StallAfter { bytes } => Some((bytes, true)),
    };
    let body = body(&fixture.content, from, cut);
    let mut builder = Response::builder()
        .header(hyper::header::CONTENT_LENGTH, len - from)
        .header(hyper::header::ETAG, tag)
        .header(hyper::header::ACCEPT_RANGES, "bytes");
    builder = if from > 0 {
        builder.status(StatusCode::PARTIAL_CONTENT).header(
            hyper::header::CONTENT_RANGE,
            format!("bytes {from}-{}/{len}", len - 1),
        )
    } else {
        builder.status(StatusCode::OK)
    };
    builder.body(body).unwrap()
}

fn status(code: StatusCode) -> Response<Body> {
    let empty = http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = Response::new(empty);
    *resp.status_mut() = code;
    resp
}

/// The bytes from `from`, cut after `cut.0` bytes of this response: then an error (the
/// connection drops) or, when `cut.1`, a stall.
fn body(content: &Content, from: u64, cut: Option<(usize, bool)>) -> Body {
    let chunks: futures_util::stream::BoxStream<'static, std::io::Result<Bytes>> = match content {
        Content::Memory(b) => {
            let rest = b.slice(from as usize..);
            futures_util::stream::iter(
                rest.chunks(64 * 1024)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect::<Vec<_>>(),
            )
            .boxed()
        }
        Content::File { path, .. } => {
            let path = path.clone();
            futures_util::stream::once(async move {
                use tokio::io::AsyncSeekExt;
                let mut f = tokio::fs::File::open(path).await?;
                f.seek(std::io::SeekFrom::Start(from)).await?;
                Ok::<_, std::io::Error>(tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024))
            })
            .map(|opened| match opened {
                Ok(s) => s.boxed(),
                Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
            })
            .flatten()
            .boxed()
        }
    };
    let limited = match cut {
        None => chunks,
        Some((limit, stall)) => {
            let mut left = limit;
            let head = chunks
                .map(move |c| {
                    c.map(|mut bytes| {
                        let keep = bytes.len().min(left);
                        left -= keep;
                        bytes.truncate(keep);
                        bytes
                    })
                })
                .take_while(|c| std::future::ready(c.as_ref().map_or(true, |b| !b.is_empty())));
            let tail: futures_util::stream::BoxStream<'static, std::io::Result<Bytes>> = if stall {
                futures_util::stream::pending().boxed()
            } else {
                // A pause first, so what was sent is flushed before the connection drops.
                futures_util::stream::once(async {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    Err(std::io::Error::other("fixture: connection dropped"))
                })
                .boxed()
            };
            head.chain(tail).boxed()
        }
    };
    BodyExt::boxed_unsync(StreamBody::new(limited.map(|c| c.map(Frame::data))))
}
