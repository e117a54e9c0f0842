//! What the MCP client may reach: the [`Scope`] the request came with (the HTTP request's
//! extensions, set by the TCP listener's token check or by the route guard for the Unix socket).
//! VMs outside a token's scope are answered as if they did not exist.

use rmcp::ErrorData;
use rmcp::handler::server::common::{AsRequestContext, FromContextPart};
use uuid::Uuid;

use super::NexusMcp;
use super::error::ToolError;
use crate::tokens::Scope;
use crate::vm::VmError;

/// A tool's caller, extracted from the request.
pub struct Access(pub Scope);

impl<C: AsRequestContext> FromContextPart<C> for Access {
    fn from_context_part(context: &mut C) -> Result<Self, ErrorData> {
        // Every request reaching /mcp went through the route guard, which sets a scope; one
        // without is refused rather than given everything.
        context
            .as_request_context()
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Scope>())
            .cloned()
            .map(Self)
            .ok_or_else(|| ErrorData::internal_error("the request carries no access scope", None))
    }
}

impl Access {
    /// Refuses unless VMs may be created and deleted.
    pub fn lifecycle(&self, action: &str) -> Result<(), ToolError> {
        if self.0.lifecycle() {
            Ok(())
        } else {
            Err(ToolError::new(format!(
                "forbidden: this token may not {action} VMs (it was made without --lifecycle)."
            )))
        }
    }
}

impl NexusMcp {
    /// The id of the VM named `key`, if the caller may see it (else: no such VM).
    pub(super) async fn visible_vm(&self, access: &Access, key: &str) -> Result<Uuid, ToolError> {
        let vm = self.state.vms.get(key).await?;
        if access.0.sees(vm.id) {
            Ok(vm.id)
        } else {
            Err(VmError::NotFound(key.to_owned()).into())
        }
    }
}
