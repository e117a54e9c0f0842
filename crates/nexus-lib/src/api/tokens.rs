//! Wire types of API tokens (`/v1/tokens`): secrets for the TCP listener, each scoped to some VMs.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Most VMs one token names at creation.
pub const MAX_TOKEN_VMS: usize = 256;
/// Longest token label.
pub const MAX_TOKEN_NAME_CHARS: usize = 64;

/// Body of `POST /v1/tokens`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// VMs (names or ids) the token may see and use; they must exist. At most 256.
    #[serde(default)]
    #[schema(max_items = 256)]
    pub vms: Vec<String>,
    /// Whether the token may create VMs (which join its scope) and delete its VMs.
    #[serde(default)]
    pub lifecycle: bool,
    /// A label to recognise it by (at most 64 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 64)]
    pub name: Option<String>,
}

/// A token as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Token {
    pub id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Names of the VMs in its scope.
    pub vms: Vec<String>,
    pub lifecycle: bool,
    /// RFC 3339.
    pub created_at: String,
}

/// Reply to `POST /v1/tokens`: the token and its secret, shown this once (only a digest is
/// stored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// The secret to send as `Authorization: Bearer <token>` on the TCP listener.
    pub token: String,
    #[serde(flatten)]
    pub info: Token,
}
