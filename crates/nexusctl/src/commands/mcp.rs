//! `nexusctl mcp serve` and `nexusctl mcp tools`: MCP through nexusd's `/mcp` endpoint on the
//! Unix socket, with the official Rust SDK (rmcp) on both sides.
//!
//! `serve` is a bridge, not a server: it moves typed JSON-RPC messages between rmcp's stdio
//! transport (the client that spawned us) and rmcp's Streamable HTTP client transport (nexusd),
//! unchanged, so whatever revision the client speaks reaches nexusd as it is. The HTTP transport
//! does the per-revision work: it keeps the session an `initialize` opens, forwards
//! `notifications/cancelled` to it, and under the stateless 2026-07-28 revision turns a
//! cancellation into closing that request's stream, which is how that revision cancels.

use std::path::Path;

use nexus_lib::client::{Client, ClientError};
use rmcp::model::{
    ClientJsonRpcMessage, ClientRequest, DiscoverRequest, DiscoverRequestParams, ErrorData,
    GetMeta, Implementation, RequestId, RequestMetaObject, ServerJsonRpcMessage,
};
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, Transport, UnixSocketHttpClient};
use rmcp::{RoleServer, ServiceExt};
use tokio::sync::mpsc;

use crate::cli::McpCommand;
use crate::output::{Printer, table};

/// The endpoint's URL; over a Unix socket only its path matters.
const MCP_URI: &str = "http://localhost/mcp";
/// Largest JSON answer or SSE event taken from nexusd: well above what its tools send (a
/// `read_file` result is at most about 700 KB), and the bound of the stdio line the client reads.
const MAX_JSON_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

pub async fn run(
    client: &Client,
    socket: &Path,
    out: Printer,
    cmd: McpCommand,
) -> Result<(), ClientError> {
    // A daemon that is down gets the usual message (and exit code) before any MCP is spoken.
    client.health().await?;
    match cmd {
        McpCommand::Serve => serve(socket).await,
        McpCommand::Tools => tools(socket, out).await,
    }
}

fn to_nexusd(socket: &Path) -> StreamableHttpClientTransport<UnixSocketHttpClient> {
    let mut config = StreamableHttpClientTransportConfig::with_uri(MCP_URI);
    config.max_json_response_size = MAX_JSON_RESPONSE_BYTES;
    config.max_sse_event_size = MAX_JSON_RESPONSE_BYTES;
    StreamableHttpClientTransport::from_unix_socket_with_config(&socket.to_string_lossy(), config)
}

fn failed(what: &str, detail: impl std::fmt::Display) -> ClientError {
    ClientError::Http(format!("{what}: {detail}").into())
}

/// Moves messages between stdin/stdout and nexusd until either side ends.
async fn serve(socket: &Path) -> Result<(), ClientError> {
    let mut nexusd = to_nexusd(socket);
    let mut stdio =
        AsyncRwTransport::<RoleServer, _, _>::new_server(tokio::io::stdin(), tokio::io::stdout());
    // A request nexusd could not be sent gets an error answer, so the client does not wait for
    // ever; sends run concurrently, so their answers come back through here.
    let (answers, mut unsent) = mpsc::unbounded_channel::<ServerJsonRpcMessage>();
    let mut first = true;
    let ended = loop {
        tokio::select! {
            from_client = stdio.receive() => {
                let Some(message) = from_client else { break Ok(()) };
                if std::mem::take(&mut first)
                    && let Some(discover) = discover_ahead_of(&message)
                    && let Err(e) = nexusd.send(discover).await
                {
                    break Err(failed("MCP", e));
                }
                let request = match &message {
                    ClientJsonRpcMessage::Request(r) => Some(r.id.clone()),
                    _ => None,
                };
                let sending = nexusd.send(message);
                let answers = answers.clone();
                tokio::spawn(async move {
                    let Err(e) = sending.await else { return };
                    match request {
                        Some(id) => {
                            let error = ErrorData::internal_error(format!("nexusd: {e}"), None);
                            let _ = answers.send(ServerJsonRpcMessage::error(error, Some(id)));
                        }
                        None => eprintln!("nexusctl: forwarding a notification to nexusd failed: {e}"),
                    }
                });
            }
            from_daemon = nexusd.receive() => {
                let Some(message) = from_daemon else {
                    break Err(failed("MCP", "nexusd closed the connection"));
                };
                if answers_discover_ahead(&message) {
                    continue;
                }
                if let Err(e) = stdio.send(message).await {
                    break Err(failed("writing to stdout", e));
                }
            }
            Some(answer) = unsent.recv() => {
                if let Err(e) = stdio.send(answer).await {
                    break Err(failed("writing to stdout", e));
                }
            }
        }
    };
    // Ends the session (if the client opened one) before exiting.
    let _ = nexusd.close().await;
    ended
}

/// Id of the `server/discover` the bridge sends for a client (see [`discover_ahead_of`]).
const DISCOVER_AHEAD_ID: &str = "nexusctl-mcp-serve-discover";

/// rmcp's HTTP transport handles the first request it is given as the connection's start-up: it
/// waits for the whole answer and passes nothing else on meanwhile (no progress, no cancellation).
/// That suits `initialize` and `server/discover`, but a 2026-07-28 client may open with a long
/// tool call. For such a first request, a `server/discover` carrying the client's own `_meta` is
/// sent ahead (its answer is not passed on), so the client's request is an ordinary one.
fn discover_ahead_of(first: &ClientJsonRpcMessage) -> Option<ClientJsonRpcMessage> {
    let ClientJsonRpcMessage::Request(request) = first else {
        return None;
    };
    if matches!(
        request.request,
        ClientRequest::InitializeRequest(_) | ClientRequest::DiscoverRequest(_)
    ) {
        return None;
    }
    let meta = request.request.get_meta();
    let context = RequestMetaObject::with_client_context(
        meta.protocol_version()?,
        meta.client_info()
            .unwrap_or_else(|| Implementation::new("nexusctl", env!("CARGO_PKG_VERSION"))),
        meta.client_capabilities().unwrap_or_default(),
    );
    let mut discover = DiscoverRequest::new(DiscoverRequestParams {});
    discover.extensions.insert(context);
    Some(ClientJsonRpcMessage::request(
        ClientRequest::DiscoverRequest(discover),
        RequestId::String(DISCOVER_AHEAD_ID.into()),
    ))
}

fn answers_discover_ahead(message: &ServerJsonRpcMessage) -> bool {
    let id = match message {
        ServerJsonRpcMessage::Response(r) => Some(&r.id),
        ServerJsonRpcMessage::Error(e) => e.id.as_ref(),
        _ => None,
    };
    matches!(id, Some(RequestId::String(s)) if &**s == DISCOVER_AHEAD_ID)
}

/// Lists the tools as a client sees them after the handshake.
async fn tools(socket: &Path, out: Printer) -> Result<(), ClientError> {
    let session =
        ().serve(to_nexusd(socket))
            .await
            .map_err(|e| failed("MCP handshake with nexusd", e))?;
    let listed = session.list_all_tools().await;
    let _ = session.cancel().await;
    let tools = listed.map_err(|e| failed("tools/list", e))?;
    out.print(&tools, || {
        let rows: Vec<Vec<String>> = tools
            .iter()
            .map(|t| {
                let description = t.description.as_deref().unwrap_or("");
                let first = description.split(". ").next().unwrap_or(description);
                vec![t.name.to_string(), first.trim_end_matches('.').to_string()]
            })
            .collect();
        table(&["NAME", "DESCRIPTION"], &rows)
    });
    Ok(())
}
