//! [`AgentClient`]'s calls on the guest's background processes (`/v1/processes`): JSON calls,
//! bounded like every other reply.

use http::Method;
use nexus_lib::agent::{
    ExecRequest, OutputStream, ProcessInfo, ProcessOutput, ProcessSignal, SignalRequest,
};

use super::{AgentClient, AgentError, empty, full, request};

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
}
