//! [`AgentClient`]'s calls on the guest's background processes (`/v1/processes`): JSON calls,
//! bounded like every other reply.

use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, TryStreamExt};
use http::Method;
use nexus_lib::agent::{
    ExecEvent, ExecRequest, FOLLOW_KEEPALIVE_MS, OutputStream, ProcessInfo, ProcessOutput,
    ProcessSignal, ProcessStdin, SignalRequest,
};

use super::{
    AgentClient, AgentError, StreamBound, bounded, check, empty, event_lines, full, request,
};

/// Longest a followed process's output stream may last before nexusd ends it (the caller
/// follows again from where it stopped).
const FOLLOW_TOTAL: Duration = Duration::from_secs(7 * 24 * 3600);

impl AgentClient {
    /// Starts `req` in the background; it keeps running after this call.
    pub async fn start_process(&self, req: &ExecRequest) -> Result<ProcessInfo, AgentError> {
        req.validate().map_err(AgentError::InvalidRequest)?;
        let body =
            serde_json::to_vec(req).map_err(|e| AgentError::InvalidRequest(e.to_string()))?;
        self.json_call(request(Method::POST, "/v1/processes", full(body))?)
            .await
    }

    /// The background processes the agent knows, running or finished.
    pub async fn processes(&self) -> Result<Vec<ProcessInfo>, AgentError> {
        self.json_call(request(Method::GET, "/v1/processes", empty())?)
            .await
    }

    /// Up to `length` bytes of a process's `stream` from `offset`.
    pub async fn process_output(
        &self,
        id: u64,
        stream: OutputStream,
        offset: u64,
        length: u64,
    ) -> Result<ProcessOutput, AgentError> {
        let uri = format!(
            "/v1/processes/output?id={id}&stream={}&offset={offset}&length={length}",
            stream.as_str()
        );
        let output: ProcessOutput = self.json_call(request(Method::GET, &uri, empty())?).await?;
        if output.data.len() as u64 > length || output.id != id || output.stream != stream {
            return Err(AgentError::Malformed(format!(
                "asked for {length} bytes of process {id}'s {}, got another answer",
                stream.as_str()
            )));
        }
        Ok(output)
    }

    /// Sends `signal` to the process's whole process group.
    pub async fn signal_process(
        &self,
        id: u64,
        signal: ProcessSignal,
    ) -> Result<ProcessInfo, AgentError> {
        let body = serde_json::to_vec(&SignalRequest { id, signal })
            .map_err(|e| AgentError::InvalidRequest(e.to_string()))?;
        self.json_call(request(Method::POST, "/v1/processes/signal", full(body))?)
            .await
    }

    /// Writes `data` to a background process's kept stdin, then closes it when `close`.
    pub async fn process_stdin(
        &self,
        id: u64,
        data: Vec<u8>,
        close: bool,
    ) -> Result<(), AgentError> {
        let body = serde_json::to_vec(&ProcessStdin { id, data, close })
            .map_err(|e| AgentError::InvalidRequest(e.to_string()))?;
        let _: serde_json::Value = self
            .json_call(request(Method::POST, "/v1/processes/stdin", full(body))?)
            .await?;
        Ok(())
    }

    /// A background process's output from the given (stdout, stderr) offsets on, as exec events
    /// ending with its `Exit`; empty stdout chunks are the agent's keep-alives. A guest silent
    /// for twice the keep-alive period ends the stream with a timeout.
    pub async fn follow_process(
        &self,
        id: u64,
        offsets: (u64, u64),
    ) -> Result<Pin<Box<dyn Stream<Item = Result<ExecEvent, AgentError>> + Send>>, AgentError> {
        let uri = format!(
            "/v1/processes/follow?id={id}&stdout={}&stderr={}",
            offsets.0, offsets.1
        );
        let resp = self
            .timed(async { check(self.send(request(Method::GET, &uri, empty())?).await?).await })
            .await?;
        let bound = StreamBound {
            idle: Some(Duration::from_millis(FOLLOW_KEEPALIVE_MS * 2 + 5_000)),
            deadline: tokio::time::Instant::now() + FOLLOW_TOTAL,
            total: FOLLOW_TOTAL,
        };
        let events = bounded(
            event_lines(resp.into_body()),
            bound,
            self.socket_path().to_path_buf(),
        );
        Ok(Box::pin(events.map_ok(|(_, event)| event)))
    }
}
