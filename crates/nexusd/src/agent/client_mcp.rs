//! [`AgentClient`]'s calls on the guest's MCP servers (`/v1/mcp-servers`): which servers run,
//! and a byte stream to one of them.

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::Method;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use nexus_lib::agent::{McpServerSet, McpServerSpec, McpServerStatus};
use tokio::sync::mpsc;

use super::{AgentClient, AgentError, BoxError, ByteStream, check, full, request};

impl AgentClient {
    /// Makes the agent run exactly `servers` (restarting those that changed).
    pub async fn set_mcp_servers(
        &self,
        servers: &[McpServerSpec],
    ) -> Result<Vec<McpServerStatus>, AgentError> {
        let set = McpServerSet {
            servers: servers.to_vec(),
        };
        let body =
            serde_json::to_vec(&set).map_err(|e| AgentError::InvalidRequest(e.to_string()))?;
        self.json_call(request(Method::PUT, "/v1/mcp-servers", full(body))?)
            .await
    }

    /// A connection to the MCP server `name`: what is sent on the returned sender goes to its
    /// stdin, and the stream yields its stdout. It lasts until either side ends (the agent then
    /// restarts the server, so the next connection is a fresh session); it has no time bound, as
    /// a server may stay quiet for as long as the VM runs, and the connection's keep-alive PINGs
    /// notice a guest that is gone. Bounding what is read is the caller's job.
    pub async fn mcp_connect(
        &self,
        name: &str,
    ) -> Result<(mpsc::Sender<Bytes>, ByteStream), AgentError> {
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|bytes| (Ok::<_, BoxError>(Frame::data(bytes)), rx))
        });
        let uri = format!(
            "/v1/mcp-servers/connect?name={}",
            nexus_lib::agent::encode_query_value(name)
        );
        let req = request(Method::POST, &uri, StreamBody::new(frames).boxed_unsync())?;
        let resp = check(self.timed(self.send(req)).await?).await?;
        let output = resp
            .into_body()
            .into_data_stream()
            .map_err(AgentError::from);
        Ok((tx, Box::pin(output)))
    }
}
