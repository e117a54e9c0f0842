//! `/mcp`'s tool list and tool calls with the per-VM servers' tools mixed in: the host's own tools
//! first (rmcp's router), then the per-VM tools the caller's scope sees (`guest_servers.rs`). A
//! per-VM tool outside the scope is answered exactly like a tool that does not exist.

use rmcp::ErrorData;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
    ProtocolVersion, ResultType, Tool,
};
use rmcp::service::{RequestContext, RoleServer};

use super::NexusMcp;
use super::guest_servers::GuestServers;
use crate::tokens::Scope;

/// The scope the HTTP request came with (see `access.rs`); none means none of the per-VM tools.
fn scope_of(extensions: &rmcp::model::Extensions) -> Option<Scope> {
    extensions
        .get::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Scope>())
        .cloned()
}

impl NexusMcp {
    pub(super) fn list_all_tools(&self, context: &RequestContext<RoleServer>) -> ListToolsResult {
        let mut tools = self.tools.list_all();
        if let Some(scope) = scope_of(&context.extensions) {
            tools.extend(self.state.guest_mcp.tools(&scope));
        }
        // The list depends on the caller and changes as VMs come and go: not cacheable.
        let cache_hints = context
            .protocol_version()
            .is_some_and(|v| v >= ProtocolVersion::V_2026_07_28);
        ListToolsResult {
            result_type: Some(ResultType::COMPLETE),
            tools,
            meta: None,
            next_cursor: None,
            ttl_ms: cache_hints.then_some(0),
            cache_scope: cache_hints.then_some(rmcp::model::CacheScope::Private),
        }
    }

    pub(super) async fn call_any_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if self.tools.has_route(&request.name) {
            let call = ToolCallContext::new(self, request, context);
            return self.tools.call(call).await;
        }
        let unknown =
            || ErrorData::invalid_params(format!("tool {} not found", request.name), None);
        let scope = scope_of(&context.extensions).ok_or_else(unknown)?;
        let route = self
            .state
            .guest_mcp
            .route(&request.name)
            .filter(|r| scope.sees(r.vm))
            .ok_or_else(unknown)?;
        let result = match GuestServers::call(route, request.arguments).await {
            // The guest's server may speak an older revision, without the result type that
            // 2026-07-28 clients require.
            Ok(mut result) => {
                result.result_type = Some(ResultType::COMPLETE);
                result
            }
            Err(e) => CallToolResult::error(vec![ContentBlock::text(format!(
                "{e}. The server may have crashed (it is restarted, and its tools come back when it is up: tools/list shows them)."
            ))]),
        };
        Ok(CallToolResponse::Complete(result))
    }

    pub(super) fn find_tool(&self, name: &str) -> Option<Tool> {
        self.tools.get(name).cloned().or_else(|| {
            self.state
                .guest_mcp
                .tools(&Scope::All)
                .into_iter()
                .find(|t| t.name == name)
        })
    }
}
