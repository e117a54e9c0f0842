//! The MCP server: tools an AI agent uses to create and drive its VMs, served with the official
//! Rust SDK (rmcp) as Streamable HTTP at `/mcp` on the Unix socket and on the TCP listener
//! (behind the same bearer token as the REST API). The tools call the same services the REST
//! handlers call (`vm/`, `images/`, the life cycle and the guest agent); nothing goes through
//! HTTP to the daemon itself.
//!
//! Protocol revisions, as rmcp serves them: a request carrying the 2026-07-28 per-request
//! `_meta` (or a `server/discover`) is served statelessly, each POST on its own, and closing its
//! response stream cancels it; an `initialize` (2025-11-25 and older) opens a session
//! (`Mcp-Session-Id`, see `sessions.rs`) in which `notifications/cancelled` cancels a request.
//!
//! - `args.rs`: every tool's input and output types (the schemas clients see);
//! - `vms.rs`: life-cycle tools; `guest.rs`: command and file tools; `processes.rs`: background
//!   processes (their types too); `run.rs`: running a
//!   command (progress, cancellation, output cut and saved in the VM); `capture.rs`: what is
//!   kept of an output stream;
//! - `access.rs`: the caller's scope (a managed token sees only its VMs; others look missing);
//! - `error.rs`: tool failures (`isError: true`) worded from the API's one error mapping (rmcp
//!   itself answers arguments that do not deserialize as a tool error naming the field, and an
//!   unknown tool as the JSON-RPC error -32602);
//! - `sessions.rs`: the bounded session manager;
//! - per-VM MCP servers: `guest_servers.rs` connects to the servers running VMs declare (through
//!   their agents) and keeps their tools; `guest_names.rs` decides which reported tools are
//!   exposed and names them `<vm>__<server>__<tool>`; `guest_tools.rs` mixes them into
//!   `tools/list` and forwards their calls.

mod access;
mod args;
mod capture;
mod error;
mod guest;
mod guest_names;
mod guest_servers;
mod guest_tools;
mod processes;
mod run;
mod sessions;
mod vms;

use std::sync::Arc;

use rmcp::ErrorData;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{NotificationContext, RequestContext, RoleServer};
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, tool_handler};
use tokio_util::sync::CancellationToken;

use crate::api::AppState;
pub use guest_servers::GuestServers;
pub use sessions::{BoundedSessions, MAX_SESSIONS};

/// Largest MCP request body (a `write_file` of 8 MiB is about 11 MiB of base64 in JSON).
pub const MAX_REQUEST_BODY_BYTES: usize = 12 * 1024 * 1024;

/// What the operator configures about the MCP server.
#[derive(Debug, Clone, Copy)]
pub struct McpSettings {
    /// Characters of command output a tool result carries before it is cut
    /// (`mcp_output_max_chars`).
    pub output_max_chars: usize,
}

impl Default for McpSettings {
    fn default() -> Self {
        Self {
            output_max_chars: nexus_lib::config::DEFAULT_MCP_OUTPUT_MAX_CHARS,
        }
    }
}

const INSTRUCTIONS: &str = "Nexus gives you Linux microVMs. Create one with vm_create (it boots \
by default), then use run_command to run shell commands in it and read_file, write_file, \
list_dir, stat and remove for its files, and start_process / process_output / process_signal for \
long-running work; every guest tool names the VM in `vm`. vm_stop and \
vm_delete end it. Long command output is cut and saved whole in a file in the VM whose path the \
result gives. Tools named <vm>__<server>__<tool> belong to MCP servers running inside a VM; they \
come and go with their VM.";

/// The server rmcp runs for each session or stateless request: cheap to clone (shared state
/// and one tool router built once).
#[derive(Clone)]
pub struct NexusMcp {
    state: AppState,
    settings: McpSettings,
    tools: Arc<ToolRouter<NexusMcp>>,
}

impl NexusMcp {
    fn new(state: AppState, settings: McpSettings) -> Self {
        Self {
            state,
            settings,
            tools: Arc::new(Self::vm_tools() + Self::guest_tools() + Self::process_tools()),
        }
    }
}

#[tool_handler(router = self.tools)]
impl ServerHandler for NexusMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("nexus", nexus_lib::VERSION))
        .with_instructions(INSTRUCTIONS.to_string())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(self.list_all_tools(&context))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.call_any_tool(request, context).await
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.find_tool(name)
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        // A session: tell it when the per-VM tools change.
        self.state.guest_mcp.add_session(context.peer);
    }
}

/// The `/mcp` endpoint: rmcp's Streamable HTTP service over [`NexusMcp`]. `shutdown` ends every
/// session and open stream when the daemon stops.
pub fn service(
    state: AppState,
    settings: McpSettings,
    shutdown: CancellationToken,
) -> StreamableHttpService<NexusMcp, BoundedSessions> {
    let server = NexusMcp::new(state, settings);
    // Host and Origin checks guard a server that browsers can reach without credentials. This one
    // is a Unix socket (no browser reaches it) or TCP behind a bearer token a web page does not
    // have, and a TLS listener is reached by name: checking `Host` would only refuse real clients.
    let config = StreamableHttpServerConfig::default()
        .disable_allowed_hosts()
        .with_cancellation_token(shutdown)
        .with_max_request_body_bytes(MAX_REQUEST_BODY_BYTES);
    StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(BoundedSessions::new(MAX_SESSIONS)),
        config,
    )
}
