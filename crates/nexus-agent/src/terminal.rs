//! `POST /v1/terminal` (a PTY session as a bidirectional frame stream), `GET /v1/sessions`,
//! `DELETE /v1/sessions?id=`.
//!
//! The request body is the client's frames: first a `TermControl::Open`, then input data,
//! resizes and signals. The response body is the session's frames: `Session`, the scrollback,
//! live output, and finally `Exit` (or `Closed`). The host ending its body or resetting the
//! stream detaches this client only; the session keeps running.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use nexus_lib::terminal::{
    FrameDecoder, MAX_FRAME_PAYLOAD, TermControl, TermFrame, TermOpen, validate_session_id,
    validate_size,
};
use tokio::sync::{broadcast, mpsc};

use crate::server::{self, ApiError, ApiResult};
use crate::session::{Attachment, ExitInfo, OpenError, Sessions};

/// How long the host has to send the `Open` frame.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn open(req: Request<Incoming>, sessions: &Arc<Sessions>) -> ApiResult {
    let mut body = req.into_body();
    let mut decoder = FrameDecoder::new();
    let (open, rest) = tokio::time::timeout(OPEN_TIMEOUT, first_frame(&mut body, &mut decoder))
        .await
        .map_err(|_| ApiError::bad_request("no open frame within 10 s"))??;
    open.validate().map_err(ApiError::bad_request)?;
    let attachment = sessions.open(&open).map_err(|e| {
        let (status, code) = match e {
            OpenError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            OpenError::TooMany(_) => (StatusCode::CONFLICT, "too_many"),
            OpenError::Spawn(_) => (StatusCode::BAD_REQUEST, "spawn_failed"),
        };
        ApiError::new(status, code, e.message())
    })?;
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(serve(attachment, body, decoder, rest, tx));
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, io::Error>(b), rx))
    });
    Ok(server::streamed("application/octet-stream", chunks))
}

/// Reads until the first frame, which must be `Open`; returns it and any frames after it.
async fn first_frame(
    body: &mut Incoming,
    decoder: &mut FrameDecoder,
) -> Result<(TermOpen, Vec<TermFrame>), ApiError> {
    loop {
        let frame = body
            .frame()
            .await
            .ok_or_else(|| ApiError::bad_request("terminal request ended before its open frame"))?
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let mut frames = decoder
            .push(data)
            .map_err(|e| ApiError::bad_request(e.to_string()))?
            .into_iter();
        if let Some(first) = frames.next() {
            return match first {
                TermFrame::Control(TermControl::Open(open)) => Ok((open, frames.collect())),
                _ => Err(ApiError::bad_request("the first frame must be an open")),
            };
        }
    }
}

/// Pumps one client's attachment both ways until the session ends or the client goes.
async fn serve(
    mut att: Attachment,
    mut body: Incoming,
    mut decoder: FrameDecoder,
    early: Vec<TermFrame>,
    tx: mpsc::Sender<Bytes>,
) {
    let hello = TermControl::Session {
        id: att.session.id.clone(),
        created: att.created,
    };
    if send(&tx, TermFrame::Control(hello)).await.is_err()
        || send_data(&tx, &att.scrollback).await.is_err()
    {
        return;
    }
    for frame in early {
        apply(&att, frame).await;
    }
    let mut input_open = true;
    loop {
        tokio::select! {
            out = att.output.recv() => match out {
                Ok(data) => if send_data(&tx, &data).await.is_err() { return },
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let reason = "this client fell too far behind the output; attach again to see the scrollback";
                    let _ = send(&tx, TermFrame::Control(TermControl::Closed { reason: reason.into() })).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            changed = att.exited.changed() => {
                let exit = *att.exited.borrow();
                if changed.is_err() || exit.is_some() {
                    finish(&mut att, &tx, exit).await;
                    return;
                }
            }
            frame = body.frame(), if input_open => match frame {
                Some(Ok(frame)) => {
                    let Some(data) = frame.data_ref() else { continue };
                    match decoder.push(data) {
                        Ok(frames) => for f in frames { apply(&att, f).await },
                        Err(e) => {
                            let _ = send(&tx, TermFrame::Control(TermControl::Closed { reason: e.to_string() })).await;
                            return;
                        }
                    }
                }
                // The host closed its side: this client detached.
                _ => input_open = false,
            },
            () = tx.closed() => return,
        }
        if !input_open {
            return;
        }
    }
}

/// Sends the output still queued, then the exit.
async fn finish(att: &mut Attachment, tx: &mpsc::Sender<Bytes>, exit: Option<ExitInfo>) {
    while let Ok(data) = att.output.try_recv() {
        if send_data(tx, &data).await.is_err() {
            return;
        }
    }
    let exit = exit.unwrap_or(ExitInfo {
        code: None,
        signal: None,
    });
    let _ = send(
        tx,
        TermFrame::Control(TermControl::Exit {
            code: exit.code,
            signal: exit.signal,
        }),
    )
    .await;
}

async fn apply(att: &Attachment, frame: TermFrame) {
    let session = &att.session;
    let _ = match frame {
        TermFrame::Data(data) => session.write(&data).await,
        TermFrame::Control(TermControl::Resize { cols, rows }) => match validate_size(cols, rows) {
            Ok(()) => session.resize(cols, rows),
            Err(_) => Ok(()),
        },
        TermFrame::Control(TermControl::Signal { signal }) => session.signal(signal),
        TermFrame::Control(_) => Ok(()),
    };
}

async fn send(tx: &mpsc::Sender<Bytes>, frame: TermFrame) -> Result<(), ()> {
    tx.send(frame.encode()).await.map_err(drop)
}

async fn send_data(tx: &mpsc::Sender<Bytes>, data: &[u8]) -> Result<(), ()> {
    for chunk in data.chunks(MAX_FRAME_PAYLOAD) {
        send(tx, TermFrame::Data(Bytes::copy_from_slice(chunk))).await?;
    }
    Ok(())
}

pub fn list(sessions: &Sessions) -> ApiResult {
    server::json(StatusCode::OK, &sessions.list())
}

pub fn kill(req: &Request<Incoming>, sessions: &Sessions) -> ApiResult {
    let query = server::Query::of(req)?;
    let id = query
        .get("id")
        .ok_or_else(|| ApiError::bad_request("missing id parameter"))?;
    validate_session_id(id).map_err(ApiError::bad_request)?;
    if sessions.kill(id) {
        server::json(StatusCode::OK, &serde_json::json!({ "killed": id }))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no session {id}"),
        ))
    }
}
