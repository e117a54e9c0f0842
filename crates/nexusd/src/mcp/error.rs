//! Tool failures: answered as a tool result with `isError: true` whose text says what went wrong
//! and what the model can do about it. Domain errors go through the API's one mapping
//! ([`ApiError`]), so a tool and the REST API describe the same failure with the same code and
//! words, and internals stay in the log.

use rmcp::model::{ContentBlock, IntoContents};

use crate::api::error::ApiError;

/// A tool that failed, with the message the model reads.
#[derive(Debug)]
pub struct ToolError(String);

impl ToolError {
    /// Invalid arguments: `message` names the argument.
    pub fn invalid(message: impl std::fmt::Display) -> Self {
        Self(format!("invalid arguments: {message}"))
    }

    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl IntoContents for ToolError {
    fn into_contents(self) -> Vec<ContentBlock> {
        vec![ContentBlock::text(self.0)]
    }
}

impl From<ApiError> for ToolError {
    fn from(e: ApiError) -> Self {
        let hint = match e.code {
            "not_found" => " Use vm_list (or image_list) to see what exists.",
            "guest_not_found" => " Check the path with list_dir or stat.",
            "guest_unreachable" => {
                " The VM's agent did not answer: check its state with vm_show, or restart it with vm_stop and vm_start."
            }
            "conflict" if e.message.contains("state") => {
                " vm_show gives its state; vm_start boots a VM, and guest tools need it running."
            }
            _ => "",
        };
        let field = e
            .field
            .as_deref()
            .map(|f| format!(" (argument `{f}`)"))
            .unwrap_or_default();
        Self(format!("{}: {}{field}.{hint}", e.code, e.message))
    }
}

macro_rules! via_api_error {
    ($($ty:ty),*) => {
        $(impl From<$ty> for ToolError {
            fn from(e: $ty) -> Self {
                ApiError::from(e).into()
            }
        })*
    };
}

via_api_error!(
    crate::vm::VmError,
    crate::agent::AgentError,
    crate::images::ImageError
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_vm_says_how_to_find_one() {
        let e = ToolError::from(crate::vm::VmError::NotFound("web".into()));
        assert!(e.0.starts_with("not_found: "), "{}", e.0);
        assert!(e.0.contains("vm_list"), "{}", e.0);
    }
}
