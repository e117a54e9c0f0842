//! Wire types of templates (`/v1/templates`) and builds (`/v1/builds`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// `POST /v1/templates`: a new version of a template, as TOML text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTemplate {
    /// The template's TOML text (see the README's template section); at most 256 KiB.
    pub source: String,
}

/// One stored version of a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Template {
    pub id: Uuid,
    pub name: String,
    /// 1 for the first version, one more for each `template create` of the same name.
    pub version: u32,
    /// The base it names (`default`, `asset:NAME`, `oci:PATH`).
    pub base: String,
    /// The exact TOML text.
    pub source: String,
    /// RFC 3339, millisecond precision.
    pub created_at: String,
}

/// `POST /v1/templates/{template}/build`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartBuild {
    /// Build even when a build of the same inputs succeeded before.
    #[serde(default)]
    pub no_cache: bool,
}

/// Where a build is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BuildState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl BuildState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the build is over (its record no longer changes).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

impl std::fmt::Display for BuildState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BuildState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            other => return Err(format!("unknown build state {other:?}")),
        })
    }
}

/// One timed phase of a build: `create`, `boot`, `files`, `run[N]`, `config`, `export`, `import`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BuildStep {
    pub name: String,
    pub duration_ms: u64,
    /// Whether it completed (the last step of a failed build did not).
    pub ok: bool,
}

/// A build: an immutable record once final.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Build {
    pub id: Uuid,
    pub template: String,
    pub template_version: u32,
    /// The exact template text this build used.
    pub template_source: String,
    /// sha256 over the canonical template, the base image's id and every file's content.
    pub cache_key: String,
    pub state: BuildState,
    /// The build whose image this cache hit returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_from: Option<Uuid>,
    /// The image it made (or, for a cache hit, found); absent until it succeeds, and once the
    /// image is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub steps: Vec<BuildStep>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// Wall time from queued to the end, when over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// `GET /v1/builds/{build}/logs` query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BuildLogQuery {
    /// Keep the response open and stream the log until the build is over.
    #[serde(default)]
    pub follow: bool,
}

/// `GET /v1/builds` query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BuildListQuery {
    /// Only the builds of this template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

/// Longest build log kept (bytes); beyond it the middle is dropped and marked.
pub const MAX_BUILD_LOG_BYTES: usize = 1 << 20;
