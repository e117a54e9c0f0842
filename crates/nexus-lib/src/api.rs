//! Wire types of the daemon's HTTP API (`/v1/...`), shared by the server, the client and the
//! OpenAPI document.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::size::ByteSize;

mod assets;
mod builds;
mod integer;
mod network;
pub mod pipeline;
mod storage;
pub mod template;
pub use assets::*;
pub use builds::*;
mod tokens;
pub use integer::integral as integral_json_number;
pub use network::*;
pub use storage::*;
pub use tokens::*;

/// Default number of vCPUs of a new VM.
pub const DEFAULT_VCPUS: u32 = 1;
/// Default memory of a new VM, MiB.
pub const DEFAULT_MEMORY_MIB: u32 = 256;
/// Accepted vCPU counts.
pub const VCPUS_RANGE: std::ops::RangeInclusive<u32> = 1..=32;
/// Accepted memory sizes, MiB.
pub const MEMORY_MIB_RANGE: std::ops::RangeInclusive<u32> = 64..=65536;

/// The life-cycle state of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Recorded, never started (or reset).
    Created,
    /// The VMM is being spawned and the guest is booting.
    Starting,
    /// The guest agent answered its handshake.
    Running,
    /// Shutdown was asked for.
    Stopping,
    /// Shut down cleanly.
    Stopped,
    /// The VMM exited without being asked.
    Crashed,
    /// The VM could not start.
    Failed,
}

impl VmState {
    /// Every state, in life-cycle order.
    pub const ALL: [VmState; 7] = [
        Self::Created,
        Self::Starting,
        Self::Running,
        Self::Stopping,
        Self::Stopped,
        Self::Crashed,
        Self::Failed,
    ];

    /// The lowercase name used on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Crashed => "crashed",
            Self::Failed => "failed",
        }
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for VmState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown VM state {s:?}"))
    }
}

/// A VM record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Vm {
    pub id: Uuid,
    pub name: String,
    pub state: VmState,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// vsock context id, unique among existing VMs, >= 3.
    pub vsock_cid: u32,
    /// RFC 3339, millisecond precision.
    pub created_at: String,
    /// RFC 3339 time of the last state change.
    pub state_changed_at: String,
    /// The VM's network: absent on records of VMs created before networking existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<VmNetwork>,
    /// Names of the MCP servers the VM runs (their tools are on nexusd's `/mcp`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mcp_servers: Vec<String>,
}

/// Body of `POST /v1/vms`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVm {
    /// `[a-z0-9][a-z0-9-]{0,62}`, unique, not of the form of a UUID.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub name: String,
    /// 1..=32, default 1.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer::option_u32"
    )]
    #[schema(minimum = 1, maximum = 32)]
    pub vcpus: Option<u32>,
    /// 64..=65536, default 256.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer::option_u32"
    )]
    #[schema(minimum = 64, maximum = 65536)]
    pub memory_mib: Option<u32>,
    /// Boot the VM right away (the response comes once its agent answers).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub start: bool,
    /// Image id or name: creates the VM's root drive from it in the same request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Size of that root drive (not smaller than the image); needs `image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_size: Option<ByteSize>,
    /// `none` or `nat`; default from the daemon's config (`nat` unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkMode>,
    /// Host ports forwarded to the VM (`nat` only), at most 32.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 32)]
    pub publish: Vec<Publish>,
    /// Where the VM may connect (`nat` only); default from the daemon's config (`allow-all`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressPolicy>,
    /// Stdio MCP servers the guest agent runs and supervises while the VM runs; nexusd
    /// exposes their tools on `/mcp` as `<vm>__<server>__<tool>`. At most 8.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 8)]
    pub mcp_servers: Vec<crate::agent::McpServerSpec>,
}

/// Query of `GET /v1/vms`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VmListQuery {
    /// Only VMs in this state.
    pub state: Option<VmState>,
}

/// One state transition of a VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Transition {
    /// State before; `null` for the creation.
    pub from: Option<VmState>,
    pub to: VmState,
    pub reason: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The same instant, RFC 3339.
    pub at: String,
}

/// The database part of the health report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DatabaseHealth {
    pub path: String,
    /// Migration version the schema is at.
    pub schema_version: u32,
    pub ok: bool,
}

/// Body of `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, or `degraded` with a 503.
    pub status: String,
    pub version: String,
    pub uptime_ms: u64,
    pub database: DatabaseHealth,
    /// The storage pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolHealth>,
}

/// Every error the API returns: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The inside of an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code: `bad_request`, `invalid`, `not_found`, `conflict`,
    /// `payload_too_large`, `unauthorized`, `unavailable`, `internal`, ...
    pub code: String,
    pub message: String,
    /// The request field at fault, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// One boot of a VM: when, on what, how long each phase took, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BootRecord {
    pub id: i64,
    pub started_at: String,
    /// `qemu` or `firecracker`.
    pub backend: String,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// Spawning the VMM until it was up (ms).
    pub vmm_ready_ms: Option<u64>,
    /// Guest clock: kernel start until the agent ran as init (ms).
    pub guest_init_ms: Option<u64>,
    /// Guest clock: kernel start until the agent listened on vsock (ms).
    pub guest_ready_ms: Option<u64>,
    /// Spawning the VMM until the agent answered its handshake (ms): the start latency.
    pub agent_ready_ms: Option<u64>,
    /// `booting`, `running`, or `failed: ...`.
    pub outcome: String,
    pub ended_at: Option<String>,
    /// How the VMM ended: exit code, signal, or unknown for a re-adopted process.
    pub exit: Option<String>,
}

/// Query of `GET/PUT /v1/vms/{vm}/files`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FileQuery {
    /// Absolute path in the guest.
    pub path: String,
    /// Octal permission bits for a written file (default 644).
    pub mode: Option<String>,
}

/// Most lines `GET /v1/vms/{vm}/console` returns (`tail`).
pub const MAX_CONSOLE_TAIL: usize = 10_000;
/// Largest console `offset` accepted (2^53: exact in every JSON number implementation).
pub const MAX_CONSOLE_OFFSET: u64 = 1 << 53;

/// Query of `GET /v1/vms/{vm}/console`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConsoleQuery {
    /// The last N lines (default 100, at most 10000).
    #[param(minimum = 0, maximum = 10000)]
    pub tail: Option<usize>,
    /// Everything after this byte offset (for following); overrides `tail`. At most 2^53.
    #[param(minimum = 0, maximum = 9007199254740992_u64)]
    pub offset: Option<u64>,
}
