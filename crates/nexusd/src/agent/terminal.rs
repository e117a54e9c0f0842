//! Terminal sessions on the agent: `POST /v1/terminal` as one full-duplex HTTP/2 stream of
//! frames beside every other call on the VM's connection, plus listing and killing sessions.
//!
//! The guest's frames are decoded with a bound per frame ([`MAX_FRAME_PAYLOAD`]); the response
//! body is read only as fast as the caller takes frames, so HTTP/2 flow control, not host
//! memory, absorbs a guest that writes faster than the client reads.

use futures_util::StreamExt;
use http::Method;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use nexus_lib::terminal::{FrameDecoder, SessionInfo, TermControl, TermFrame, TermOpen};
use tokio::sync::mpsc;

use super::AgentError;
use super::client::{AgentClient, BoxError, check, empty, request};

/// Input frames queued toward the guest before the sender waits.
const INPUT_BACKLOG: usize = 64;

/// One attachment to a guest session: `input` takes frames toward the guest (dropping it
/// detaches), [`next`](Self::next) yields the guest's frames.
pub struct TerminalStream {
    pub input: mpsc::Sender<TermFrame>,
    body: Incoming,
    decoder: FrameDecoder,
    ready: std::collections::VecDeque<TermFrame>,
    ended: bool,
}

impl TerminalStream {
    /// The next frame from the guest; `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<Result<TermFrame, AgentError>> {
        loop {
            if let Some(frame) = self.ready.pop_front() {
                return Some(Ok(frame));
            }
            if self.ended {
                return None;
            }
            match self.body.frame().await {
                None => {
                    self.ended = true;
                    if let Err(e) = self.decoder.finish() {
                        return Some(Err(AgentError::Malformed(e.to_string())));
                    }
                }
                Some(Err(e)) => {
                    self.ended = true;
                    return Some(Err(AgentError::Http(e)));
                }
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        match self.decoder.push(data) {
                            Ok(frames) => self.ready.extend(frames),
                            Err(e) => {
                                self.ended = true;
                                return Some(Err(AgentError::Malformed(e.to_string())));
                            }
                        }
                    }
                }
            }
        }
    }
}

impl AgentClient {
    /// Opens a new session or attaches to one; fails with the agent's refusal (no such session,
    /// too many) before any frame flows.
    pub async fn terminal(&self, open: TermOpen) -> Result<TerminalStream, AgentError> {
        open.validate().map_err(AgentError::InvalidRequest)?;
        let (input, rx) = mpsc::channel::<TermFrame>(INPUT_BACKLOG);
        let first = futures_util::stream::iter([TermFrame::Control(TermControl::Open(open))]);
        let rest =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
            );
        let frames = first
            .chain(rest)
            .map(|f| Ok::<_, BoxError>(Frame::data(f.encode())));
        let body = BodyExt::boxed_unsync(StreamBody::new(frames));
        let resp = self
            .timed(async {
                check(
                    self.send(request(Method::POST, "/v1/terminal", body)?)
                        .await?,
                )
                .await
            })
            .await?;
        Ok(TerminalStream {
            input,
            body: resp.into_body(),
            decoder: FrameDecoder::new(),
            ready: Default::default(),
            ended: false,
        })
    }

    /// The guest's sessions, running and recently exited.
    pub async fn sessions(&self) -> Result<Vec<SessionInfo>, AgentError> {
        let list: Vec<SessionInfo> = self
            .json_call(request(Method::GET, "/v1/sessions", empty())?)
            .await?;
        Ok(list
            .into_iter()
            .take(nexus_lib::terminal::MAX_SESSIONS)
            .collect())
    }

    /// Kills a session's process group.
    pub async fn kill_session(&self, id: &str) -> Result<(), AgentError> {
        nexus_lib::terminal::validate_session_id(id).map_err(AgentError::InvalidRequest)?;
        let uri = format!("/v1/sessions?id={id}");
        let _: serde_json::Value = self
            .json_call(request(Method::DELETE, &uri, empty())?)
            .await?;
        Ok(())
    }
}
