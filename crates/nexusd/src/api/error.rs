//! The one place where domain errors become HTTP statuses and the JSON error body
//! `{"error":{"code","message","field"?}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use nexus_lib::api::{ErrorBody, ErrorDetail};

use crate::agent::AgentError;
use crate::assets::AssetError;
use crate::builds::BuildError;
use crate::drives::DriveError;
use crate::hostpath::HostPathError;
use crate::images::ImageError;
use crate::network::NetworkError;
use crate::sanitize::{self, Escaped};
use crate::storage::{CreateDriveError, ImportError, PoolError};
use crate::store::StoreError;
use crate::tokens::TokenError;
use crate::vm::VmError;

/// An error answered to an API client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
        }
    }

    pub fn with_field(self, field: &str) -> Self {
        Self {
            field: Some(field.into()),
            ..self
        }
    }

    fn insufficient_storage(message: String) -> Self {
        Self::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            message,
        )
    }

    fn internal(err: &dyn std::error::Error) -> Self {
        // The full chain goes to the log; the client gets a short message without internals.
        tracing::error!(error = %Escaped(error_chain(err)), "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the nexusd log",
        )
    }
}

pub use nexus_lib::error::error_chain;

impl ApiError {
    /// The JSON body of the error.
    pub fn into_body(self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                field: self.field,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        (status, Json(self.into_body())).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::internal(&e)
    }
}

impl From<VmError> for ApiError {
    fn from(e: VmError) -> Self {
        let message = e.to_string();
        match e {
            VmError::NotFound(_) => Self::not_found(message),
            VmError::NameTaken(_) => Self::conflict(message).with_field("name"),
            VmError::WrongState { .. } => Self::conflict(message),
            VmError::Network(_) => Self::conflict(message).with_field("publish"),
            VmError::NoNatNetwork(_) => Self::conflict(message),
            VmError::Net(e) => e.into(),
            VmError::Invalid { field, .. } => Self::invalid(field, message),
            VmError::Store(e) => Self::internal(&e),
            VmError::Drive(DriveError::ImageNotFound(_)) => {
                Self::not_found(message).with_field("image")
            }
            VmError::Drive(e) => e.into(),
            VmError::NoRootDrive(_) => Self::conflict(message),
            VmError::Assets(e) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                error_chain(&e),
            ),
            VmError::NoFirecrackerKernel => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            VmError::Backend(e) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                error_chain(&e),
            ),
            VmError::BootFailed { .. } => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "boot_failed", message)
            }
            VmError::Adopt { .. } | VmError::Task(_) => Self::internal(&e),
        }
    }
}

impl From<NetworkError> for ApiError {
    fn from(e: NetworkError) -> Self {
        let message = e.to_string();
        match e {
            NetworkError::Invalid { field, .. } => Self::invalid(field, message),
            NetworkError::Conflict(_) | NetworkError::SubnetChanged { .. } => {
                Self::conflict(message)
            }
            NetworkError::Store(e) => Self::internal(&e),
            NetworkError::SubnetCollides { .. }
            | NetworkError::NoFreeSubnet
            | NetworkError::OutsideSubnet { .. }
            | NetworkError::Link(_)
            | NetworkError::Bridge(_)
            | NetworkError::Tap(_)
            | NetworkError::Open(_)
            | NetworkError::Sysctl(_)
            | NetworkError::Nft(_)
            | NetworkError::Dns { .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                error_chain(&e),
            ),
        }
    }
}

impl From<PoolError> for ApiError {
    fn from(e: PoolError) -> Self {
        let message = e.to_string();
        match e {
            _ if e.is_out_of_space() => Self::insufficient_storage(message),
            PoolError::NeedsRoot { .. } | PoolError::NotBtrfs { .. } => {
                tracing::warn!(error = %Escaped(&message), "storage pool unavailable");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "pool_unavailable", message)
            }
            other => Self::internal(&other),
        }
    }
}

impl From<ImportError> for ApiError {
    fn from(e: ImportError) -> Self {
        let message = e.to_string();
        match e {
            _ if e.is_out_of_space() => Self::insufficient_storage(message),
            ImportError::SourceNotFound { .. }
            | ImportError::NotExt4 { .. }
            | ImportError::NotADirectory { .. }
            | ImportError::TooBig { .. }
            | ImportError::TimedOut { .. } => Self::invalid("path", message),
            ImportError::Unreadable { .. } => Self::invalid("path", error_chain(&e)),
            // Nobody is waiting for this answer any more.
            ImportError::Cancelled => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "cancelled", message)
            }
            other => Self::internal(&other),
        }
    }
}

impl From<CreateDriveError> for ApiError {
    fn from(e: CreateDriveError) -> Self {
        let message = e.to_string();
        match e {
            _ if e.is_out_of_space() => Self::insufficient_storage(message),
            CreateDriveError::Size(_) => Self::invalid("size", message),
            other => Self::internal(&other),
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        let message = e.to_string();
        match e {
            TokenError::Invalid { field, .. } => Self::invalid(field, message),
            TokenError::VmNotFound(_) => Self::not_found(message).with_field("vms"),
            TokenError::NotFound(_) => Self::not_found(message),
            TokenError::Random(_) => Self::internal(&e),
            TokenError::Store(e) => Self::internal(&e),
        }
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        let message = e.to_string();
        match e {
            ImageError::NotFound(_) => Self::not_found(message),
            ImageError::NameTaken(_) => Self::conflict(message).with_field("name"),
            ImageError::InUse { .. } => Self::conflict(message),
            ImageError::Invalid { field, .. } => Self::invalid(field, message),
            ImageError::Path(e) => e.into(),
            ImageError::Pool(e) => e.into(),
            ImageError::Import(e) => e.into(),
            ImageError::Scratch { .. } => Self::internal(&e),
            ImageError::Store(e) => Self::internal(&e),
            ImageError::Worker(e) => Self::internal(&e),
        }
    }
}

impl From<HostPathError> for ApiError {
    fn from(e: HostPathError) -> Self {
        match e {
            HostPathError::NotFound { .. } | HostPathError::Unsupported { .. } => {
                Self::invalid("path", e.to_string())
            }
            // The path cannot be looked up or read (too long, a loop, an I/O error): the
            // client named something unusable, with the cause in the message; never a 500.
            HostPathError::Io { .. } => Self::invalid("path", error_chain(&e)),
            refused => Self::forbidden(refused.to_string()).with_field("path"),
        }
    }
}

impl From<DriveError> for ApiError {
    fn from(e: DriveError) -> Self {
        let message = e.to_string();
        match e {
            DriveError::NotFound(_) | DriveError::VmNotFound(_) => Self::not_found(message),
            DriveError::ImageNotFound(_) => Self::not_found(message).with_field("image"),
            DriveError::NameTaken(_) => Self::conflict(message).with_field("name"),
            DriveError::Conflict(_) => Self::conflict(message),
            DriveError::Invalid { field, .. } => Self::invalid(field, message),
            DriveError::Pool(e) => e.into(),
            DriveError::Snapshot(e) => e.into(),
            DriveError::Store(e) => Self::internal(&e),
            DriveError::Worker(e) => Self::internal(&e),
        }
    }
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        let message = error_chain(&e);
        match e {
            // The guest's own answer: its 4xx statuses are passed on, anything else is the
            // guest failing (a guest is untrusted: never let it choose a 5xx of ours).
            AgentError::Remote {
                status,
                code: guest_code,
                message,
            } => {
                let status = match status {
                    404 => StatusCode::NOT_FOUND,
                    400 | 403 | 409 | 413 | 422 => StatusCode::UNPROCESSABLE_ENTITY,
                    _ => StatusCode::BAD_GATEWAY,
                };
                let code = if status == StatusCode::NOT_FOUND {
                    "guest_not_found"
                } else {
                    "guest_error"
                };
                let text = format!("guest: {}: {message}", code_prefix(&guest_code));
                Self::new(status, code, sanitize::clean(text, 1024))
            }
            AgentError::InvalidRequest(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
            }
            _ => Self::new(StatusCode::BAD_GATEWAY, "guest_unreachable", message),
        }
    }
}

/// A guest-chosen error code, bounded and printable.
fn code_prefix(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect()
}

impl From<AssetError> for ApiError {
    fn from(e: AssetError) -> Self {
        let message = e.to_string();
        match e {
            AssetError::ProviderNotFound(_) | AssetError::NotFound(_) => Self::not_found(message),
            AssetError::NameTaken(_) => Self::conflict(message).with_field("name"),
            AssetError::Builtin(_) | AssetError::Ambiguous { .. } => Self::conflict(message),
            AssetError::Invalid { field, .. } => Self::invalid(field, message),
            AssetError::Install(e) => Self::internal(&e),
            AssetError::Store(e) => Self::internal(&e),
            AssetError::Worker(e) => Self::internal(&e),
        }
    }
}

impl From<BuildError> for ApiError {
    fn from(e: BuildError) -> Self {
        let message = e.to_string();
        match e {
            BuildError::TemplateNotFound(_) | BuildError::NotFound(_) => Self::not_found(message),
            BuildError::Template(t) => Self::invalid(&t.key, message),
            BuildError::Input { field, .. } => Self::invalid(&field, message),
            BuildError::Finished { .. } => Self::conflict(message),
            BuildError::Base(ImageError::NotFound(_)) => {
                Self::not_found(message).with_field("base")
            }
            BuildError::Base(e) => e.into(),
            BuildError::BaseAsset(e) => {
                let mut err = ApiError::from(e).with_field("base");
                err.message = format!("base: {}", err.message);
                err
            }
            BuildError::Path { field, source } => {
                let mut err = ApiError::from(source).with_field(&field);
                err.message = format!("{field}: {}", err.message);
                err
            }
            BuildError::Io { .. } | BuildError::Store(_) | BuildError::Worker(_) => {
                Self::internal(&e)
            }
        }
    }
}
