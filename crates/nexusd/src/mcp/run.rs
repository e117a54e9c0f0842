//! `run_command`'s machinery: the agent's exec stream read to its end, progress notifications
//! while it runs, cancellation that kills the command in the guest, and output past the budget
//! cut for the client but saved whole in a file in the VM.
//!
//! Cancellation (a `notifications/cancelled`, or the client closing the request's stream under
//! the stateless revision) drops the exec stream: the HTTP/2 stream to the agent is reset and the
//! agent kills the command's process group, as it does for a REST client that disconnects.
//!
//! Saving: a stream that outgrows what [`Capture`] keeps in memory is streamed, from its first
//! byte, into `/tmp/nexus-output-<call>.<stream>` in the VM through the agent's file upload, as
//! it arrives (so memory stays bounded whatever the command prints); a stream that fits in memory
//! but not in the budget is written there at the end. The upload lands by rename when it is
//! complete, so the file is either whole or absent; a cancelled call aborts it, leaving nothing.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use nexus_lib::agent::{ExecEvent, ExecRequest, FileStat};
use rmcp::model::{ProgressNotificationParam, ProgressToken};
use rmcp::service::RequestContext;
use rmcp::{Peer, RoleServer};
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use super::args::CommandResult;
use super::capture::{Capture, split_budget};
use super::error::ToolError;
use crate::agent::{AgentClient, AgentError};

/// How often a running command reports progress (when the client asked for it).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait for a progress notification to be taken by a slow client.
const PROGRESS_SEND_LIMIT: Duration = Duration::from_millis(200);
/// A spill upload with no byte for this long gets an empty chunk, so the agent client's idle
/// limit on uploads does not end it while the command is merely quiet.
const SPILL_KEEPALIVE: Duration = Duration::from_secs(10);
/// Directory in the guest where whole outputs are saved (a tmpfs, emptied at each boot).
const SPILL_DIR: &str = "/tmp";

/// Runs `req` in the VM behind `agent`; `budget` characters of output are returned.
pub async fn run(
    agent: &AgentClient,
    req: &ExecRequest,
    budget: usize,
    ctx: &RequestContext<RoleServer>,
) -> Result<CommandResult, ToolError> {
    let started = Instant::now();
    let call = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let mut out = Output::new("stdout", &call, budget);
    let mut err = Output::new("stderr", &call, budget);
    let mut events = agent.exec(req).await?;
    let progress = Progress {
        peer: ctx.peer.clone(),
        token: ctx.meta.get_progress_token(),
        total_secs: req.timeout_ms.map(|ms| ms as f64 / 1000.0),
    };
    let mut ticks = tokio::time::interval_at(
        tokio::time::Instant::now() + PROGRESS_INTERVAL,
        PROGRESS_INTERVAL,
    );
    let (code, signal, timed_out) = loop {
        tokio::select! {
            biased;
            () = ctx.ct.cancelled() => {
                // Dropping `events` resets the agent's stream: it kills the process group.
                return Err(ToolError::new("cancelled: the command was killed in the VM"));
            }
            event = events.next() => match event {
                Some(Ok(ExecEvent::Stdout { data })) => out.push(agent, &data).await,
                Some(Ok(ExecEvent::Stderr { data })) => err.push(agent, &data).await,
                Some(Ok(ExecEvent::Exit { code, signal, timed_out })) => break (code, signal, timed_out),
                Some(Ok(ExecEvent::Error { message })) => {
                    return Err(ToolError::new(format!("the command failed to run: {message}")));
                }
                Some(Err(e)) => return Err(e.into()),
                None => return Err(ToolError::new(
                    "the guest agent ended the command's stream without its exit status",
                )),
            },
            _ = ticks.tick() => {
                out.keep_alive().await;
                err.keep_alive().await;
                progress.report(started, out.capture.total() + err.capture.total()).await;
            }
        }
    };
    drop(events);
    let (out_budget, err_budget) = split_budget(budget, out.capture.chars(), err.capture.chars());
    let (stdout, stdout_file) = out.finish(agent, out_budget).await;
    let (stderr, stderr_file) = err.finish(agent, err_budget).await;
    Ok(CommandResult {
        exit_code: code,
        signal,
        timed_out,
        stdout_bytes: out.capture.total(),
        stderr_bytes: err.capture.total(),
        stdout,
        stderr,
        stdout_file,
        stderr_file,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// Progress notifications of one call, sent only when the client gave a progress token.
struct Progress {
    peer: Peer<RoleServer>,
    token: Option<ProgressToken>,
    total_secs: Option<f64>,
}

impl Progress {
    async fn report(&self, started: Instant, output_bytes: u64) {
        let Some(token) = self.token.clone() else {
            return;
        };
        let elapsed = started.elapsed().as_secs_f64();
        let mut param = ProgressNotificationParam::new(token, (elapsed * 10.0).round() / 10.0)
            .with_message(format!(
                "running for {} s, {output_bytes} bytes of output so far",
                elapsed as u64
            ));
        if let Some(total) = self.total_secs {
            param = param.with_total(total);
        }
        // A client that does not read its stream must not hold the command up.
        let _ = tokio::time::timeout(PROGRESS_SEND_LIMIT, self.peer.notify_progress(param)).await;
    }
}

/// One output stream: what is kept of it, and where all of it goes once it is too big.
struct Output {
    name: &'static str,
    path: String,
    capture: Capture,
    spill: Spill,
}

enum Spill {
    /// Everything is still in memory.
    Idle,
    /// Streaming into the file; the upload ends when `tx` is dropped.
    Writing {
        tx: mpsc::Sender<Bytes>,
        upload: AbortOnDropHandle<Result<FileStat, AgentError>>,
        last_sent: Instant,
    },
    /// Saving failed: why.
    Failed(String),
}

impl Output {
    fn new(name: &'static str, call: &str, budget: usize) -> Self {
        Self {
            name,
            path: format!("{SPILL_DIR}/nexus-output-{call}.{name}"),
            capture: Capture::new(budget),
            spill: Spill::Idle,
        }
    }

    async fn push(&mut self, agent: &AgentClient, data: &[u8]) {
        let before = self.capture.total();
        self.capture.push(data);
        if matches!(self.spill, Spill::Idle) && self.capture.overflowed() {
            // Everything before this chunk, and its start, is in the head; send the rest after.
            let in_head = self.capture.head().len().saturating_sub(before as usize);
            let (tx, rx) = mpsc::channel::<Bytes>(8);
            let body = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
            });
            let upload = {
                let (agent, path) = (agent.clone(), self.path.clone());
                AbortOnDropHandle::new(tokio::spawn(async move {
                    agent.write_file(&path, 0o600, body).await
                }))
            };
            self.spill = Spill::Writing {
                tx,
                upload,
                last_sent: Instant::now(),
            };
            self.send(Bytes::copy_from_slice(self.capture.head())).await;
            self.send(Bytes::copy_from_slice(&data[in_head.min(data.len())..]))
                .await;
        } else if matches!(self.spill, Spill::Writing { .. }) {
            self.send(Bytes::copy_from_slice(data)).await;
        }
    }

    /// Sends an empty chunk when the upload has been idle for a while.
    async fn keep_alive(&mut self) {
        if let Spill::Writing { last_sent, .. } = &self.spill
            && last_sent.elapsed() >= SPILL_KEEPALIVE
        {
            self.send(Bytes::new()).await;
        }
    }

    async fn send(&mut self, chunk: Bytes) {
        let Spill::Writing { tx, last_sent, .. } = &mut self.spill else {
            return;
        };
        *last_sent = Instant::now();
        if tx.send(chunk).await.is_err() {
            // The upload ended early: its result says why.
            let failed = match std::mem::replace(&mut self.spill, Spill::Idle) {
                Spill::Writing { upload, .. } => upload_outcome(upload.await).err(),
                _ => None,
            };
            self.spill = Spill::Failed(failed.unwrap_or_else(|| "the upload ended early".into()));
        }
    }

    /// The text for the client within `budget` characters, and the file holding the whole stream
    /// when the text is cut and saving worked.
    async fn finish(&mut self, agent: &AgentClient, budget: usize) -> (String, Option<String>) {
        let cut = self.capture.chars().is_none_or(|chars| chars > budget);
        let saved = match std::mem::replace(&mut self.spill, Spill::Idle) {
            _ if !cut => Ok(()),
            Spill::Writing { tx, upload, .. } => {
                drop(tx);
                upload_outcome(upload.await).map(drop)
            }
            Spill::Idle => {
                let head = Bytes::copy_from_slice(self.capture.head());
                let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(head) });
                agent
                    .write_file(&self.path, 0o600, body)
                    .await
                    .map(drop)
                    .map_err(|e| crate::api::error::error_chain(&e))
            }
            Spill::Failed(why) => Err(why),
        };
        let (name, path, total) = (self.name, &self.path, self.capture.total());
        let (text, _) = self.capture.render(budget, |omitted| match &saved {
            Ok(()) => format!(
                "\n[... {omitted} bytes of {name} not shown: all {total} bytes are in {path} in the VM; read_file it with offset/length, or search it with run_command and grep ...]\n"
            ),
            Err(why) => format!(
                "\n[... {omitted} bytes of {name} not shown; saving the whole {name} in the VM failed: {why} ...]\n"
            ),
        });
        (text, (cut && saved.is_ok()).then(|| self.path.clone()))
    }
}

fn upload_outcome(
    joined: Result<Result<FileStat, AgentError>, tokio::task::JoinError>,
) -> Result<FileStat, String> {
    match joined {
        Ok(Ok(stat)) => Ok(stat),
        Ok(Err(e)) => Err(crate::api::error::error_chain(&e)),
        Err(e) => Err(e.to_string()),
    }
}
