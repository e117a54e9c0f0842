//! The template format: a TOML document describing an image (a base, files, `run` steps, an
//! optional `start` service and `ready` check), parsed strictly (unknown keys refused) and
//! validated field by field with bounds, so a template the daemon stores can always be built.
//! The daemon parses the text a client sends; the same rules run here for anyone else.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::EgressPolicy;
use crate::names::validate_name;
use crate::size::ByteSize;

/// Largest template text accepted (bytes).
pub const MAX_TEMPLATE_BYTES: usize = 256 * 1024;
/// At most this many `[[files]]`.
pub const MAX_FILES: usize = 256;
/// At most this many `[[run]]` steps.
pub const MAX_RUN_STEPS: usize = 128;
/// Longest command (bytes) of a `run` step, `start` or `ready`.
pub const MAX_COMMAND_BYTES: usize = 16 * 1024;
/// Largest inline `content` of one file, and of all of them together.
pub const MAX_INLINE_BYTES: usize = 64 * 1024;
pub const MAX_INLINE_TOTAL: usize = 160 * 1024;
/// Largest host file a template may copy in (`src`), and all of them together.
pub const MAX_SRC_FILE_BYTES: u64 = 1 << 30;
pub const MAX_SRC_TOTAL_BYTES: u64 = 4 << 30;
/// At most this many environment variables per step, each name and value bounded.
pub const MAX_ENV: usize = 64;
pub const MAX_ENV_VALUE_BYTES: usize = 4096;
/// Longest guest or host path (bytes).
pub const MAX_PATH_BYTES: usize = 1024;
/// Bounds of a step's timeout and of the `ready` timeout (seconds).
pub const MAX_STEP_TIMEOUT_SECS: u64 = 6 * 3600;
pub const DEFAULT_STEP_TIMEOUT_SECS: u64 = 1800;
pub const MAX_READY_TIMEOUT_SECS: u64 = 600;
pub const DEFAULT_READY_TIMEOUT_SECS: u64 = 30;
/// Bounds of the image size a template may ask for.
pub const MIN_SIZE: u64 = 16 << 20;
pub const MAX_SIZE: u64 = 256 << 30;

/// A parsed and validated template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// The template's name (the naming rule of every resource).
    pub name: String,
    /// An image name or id, `asset:NAME` (a rootfs asset), or `oci:PATH`.
    pub base: String,
    /// The built image's minimum size (`"2G"`); the base's size when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub run: Vec<RunStep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<StartSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<ReadySpec>,
}

/// A file put into the image before the `run` steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// A file on the daemon's host (absolute), read under the caller's import rights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    /// Inline text, instead of `src`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Where it goes in the guest (absolute, no `..`).
    pub dest: String,
    /// Octal permission bits, `"0644"` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// `user` or `user:group` (names or numbers), applied in the guest; root when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// A shell command run in the build VM (`/bin/sh -c`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunStep {
    pub command: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory (absolute); `/` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Seconds before the step is killed and the build fails (default 1800).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Where the step may connect, as a VM's egress policy (`{ mode = "allow-all" }`,
    /// `{ mode = "allow", domains = [...], cidrs = [...] }`, `{ mode = "deny-all" }`); no
    /// network at all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<EgressPolicy>,
}

impl RunStep {
    /// The egress policy the step runs under: deny-all when it asks for none.
    pub fn egress(&self) -> EgressPolicy {
        self.network.clone().unwrap_or(EgressPolicy::DenyAll)
    }
}

/// The service the agent starts in every VM made from the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartSpec {
    pub command: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
}

/// What must pass before a VM made from the image counts as running: exactly one of a command
/// (exit 0), a TCP port listening in the guest, or a file existing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Seconds to wait for it (default 30, at most 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// Why a template was refused: the key at fault and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct TemplateError {
    pub key: String,
    pub message: String,
}

fn bad(key: impl Into<String>, message: impl Into<String>) -> TemplateError {
    TemplateError {
        key: key.into(),
        message: message.into(),
    }
}

/// Where the base of a template comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseRef {
    /// An image by name or id.
    Image(String),
    /// A rootfs asset.
    Asset(String),
    /// An OCI image layout directory or archive on the daemon's host.
    Oci(String),
}

impl TemplateSpec {
    /// Parses and validates template text.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        if text.len() > MAX_TEMPLATE_BYTES {
            return Err(bad(
                "template",
                format!(
                    "{} bytes; at most {MAX_TEMPLATE_BYTES} are accepted",
                    text.len()
                ),
            ));
        }
        let spec: Self = toml::from_str(text).map_err(|e| {
            let message = e.message().to_owned();
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            bad("template", format!("{message}{at}"))
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks every field against its rules and bounds.
    pub fn validate(&self) -> Result<(), TemplateError> {
        validate_name(&self.name).map_err(|e| bad("name", e.to_string()))?;
        self.base_ref()?;
        self.size_bytes()?;
        if self.files.len() > MAX_FILES {
            return Err(bad("files", format!("at most {MAX_FILES} files")));
        }
        let mut inline = 0usize;
        for (i, f) in self.files.iter().enumerate() {
            let key = |k: &str| format!("files[{i}].{k}");
            match (&f.src, &f.content) {
                (Some(_), Some(_)) => {
                    return Err(bad(key("src"), "give `src` or `content`, not both"));
                }
                (None, None) => {
                    return Err(bad(key("src"), "give `src` (a host file) or `content`"));
                }
                (Some(src), None) => check_abs_path(&key("src"), src)?,
                (None, Some(content)) => {
                    if content.len() > MAX_INLINE_BYTES {
                        return Err(bad(
                            key("content"),
                            format!("{} bytes; at most {MAX_INLINE_BYTES} inline", content.len()),
                        ));
                    }
                    inline += content.len();
                }
            }
            check_abs_path(&key("dest"), &f.dest)?;
            if f.dest == "/" || f.dest.ends_with('/') {
                return Err(bad(key("dest"), "must name a file, not a directory"));
            }
            f.mode_bits().map_err(|m| bad(key("mode"), m))?;
            if let Some(owner) = &f.owner {
                check_owner(owner).map_err(|m| bad(key("owner"), m))?;
            }
        }
        if inline > MAX_INLINE_TOTAL {
            return Err(bad(
                "files",
                format!("{inline} bytes of inline content; at most {MAX_INLINE_TOTAL} in all"),
            ));
        }
        if self.run.len() > MAX_RUN_STEPS {
            return Err(bad("run", format!("at most {MAX_RUN_STEPS} steps")));
        }
        for (i, step) in self.run.iter().enumerate() {
            let key = |k: &str| format!("run[{i}].{k}");
            check_command(&key("command"), &step.command)?;
            check_env(&key("env"), &step.env)?;
            if let Some(w) = &step.workdir {
                check_abs_path(&key("workdir"), w)?;
            }
            if let Some(t) = step.timeout_secs
                && !(1..=MAX_STEP_TIMEOUT_SECS).contains(&t)
            {
                return Err(bad(
                    key("timeout_secs"),
                    format!("{t} is out of range 1..={MAX_STEP_TIMEOUT_SECS}"),
                ));
            }
            if let Some(policy) = &step.network {
                policy
                    .clone()
                    .normalized()
                    .map_err(|m| bad(key("network"), m))?;
            }
        }
        if let Some(start) = &self.start {
            check_command("start.command", &start.command)?;
            check_env("start.env", &start.env)?;
            if let Some(w) = &start.workdir {
                check_abs_path("start.workdir", w)?;
            }
        }
        if let Some(ready) = &self.ready {
            let given = [
                ready.command.is_some(),
                ready.port.is_some(),
                ready.file.is_some(),
            ];
            if given.iter().filter(|g| **g).count() != 1 {
                return Err(bad(
                    "ready",
                    "give exactly one of `command`, `port` or `file`",
                ));
            }
            if let Some(c) = &ready.command {
                check_command("ready.command", c)?;
            }
            if ready.port == Some(0) {
                return Err(bad("ready.port", "must be 1..=65535"));
            }
            if let Some(f) = &ready.file {
                check_abs_path("ready.file", f)?;
            }
            if let Some(t) = ready.timeout_secs
                && !(1..=MAX_READY_TIMEOUT_SECS).contains(&t)
            {
                return Err(bad(
                    "ready.timeout_secs",
                    format!("{t} is out of range 1..={MAX_READY_TIMEOUT_SECS}"),
                ));
            }
        }
        Ok(())
    }

    /// The base, parsed.
    pub fn base_ref(&self) -> Result<BaseRef, TemplateError> {
        let base = self.base.as_str();
        if let Some(path) = base.strip_prefix("oci:") {
            check_abs_path("base", path)?;
            return Ok(BaseRef::Oci(path.to_owned()));
        }
        if let Some(asset) = base.strip_prefix("asset:") {
            if asset.is_empty() || asset.len() > 128 || asset.chars().any(|c| c.is_control()) {
                return Err(bad(
                    "base",
                    "an asset name of 1 to 128 printable characters",
                ));
            }
            return Ok(BaseRef::Asset(asset.to_owned()));
        }
        if uuid::Uuid::parse_str(base).is_ok() {
            return Ok(BaseRef::Image(base.to_owned()));
        }
        validate_name(base).map_err(|e| {
            bad(
                "base",
                format!("{e} (an image name or id, `asset:NAME` or `oci:PATH`)"),
            )
        })?;
        Ok(BaseRef::Image(base.to_owned()))
    }

    /// Whether any `run` step asks for a network (the build VM then gets one, its egress set
    /// per step).
    pub fn needs_network(&self) -> bool {
        self.run.iter().any(|s| s.network.is_some())
    }

    /// The requested size in bytes, if any.
    pub fn size_bytes(&self) -> Result<Option<u64>, TemplateError> {
        let Some(size) = &self.size else {
            return Ok(None);
        };
        let n: ByteSize = size.parse().map_err(|e| bad("size", format!("{e}")))?;
        if !(MIN_SIZE..=MAX_SIZE).contains(&n.bytes()) {
            return Err(bad("size", format!("{size} is out of range 16M..=256G")));
        }
        Ok(Some(n.bytes()))
    }

    /// The canonical form hashed into a build's cache key: the validated spec as JSON with
    /// sorted maps and no comments or formatting of the original text.
    pub fn canonical(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl FileSpec {
    /// The permission bits (`0644` by default).
    pub fn mode_bits(&self) -> Result<u32, String> {
        let Some(mode) = &self.mode else {
            return Ok(0o644);
        };
        let digits = mode.strip_prefix("0o").unwrap_or(mode);
        if digits.is_empty()
            || digits.len() > 4
            || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
        {
            return Err(format!("{mode:?} is not an octal mode such as \"0644\""));
        }
        u32::from_str_radix(digits, 8).map_err(|e| e.to_string())
    }
}

/// The agent's configuration of a VM made from a template's image: its `start` service and
/// `ready` check, kept in the image at [`START_CONFIG_PATH`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageStartConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<StartSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<ReadySpec>,
}

/// Where a built image keeps its [`ImageStartConfig`].
pub const START_CONFIG_PATH: &str = "/etc/nexus/start.json";

fn check_abs_path(key: &str, path: &str) -> Result<(), TemplateError> {
    if path.len() > MAX_PATH_BYTES {
        return Err(bad(key, format!("longer than {MAX_PATH_BYTES} bytes")));
    }
    if !path.starts_with('/') {
        return Err(bad(key, format!("{path:?} is not an absolute path")));
    }
    if path.chars().any(|c| c.is_control()) {
        return Err(bad(key, "contains a control character"));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(bad(key, format!("{path:?} contains `..`")));
    }
    Ok(())
}

fn check_command(key: &str, command: &str) -> Result<(), TemplateError> {
    if command.trim().is_empty() {
        return Err(bad(key, "must not be empty"));
    }
    if command.len() > MAX_COMMAND_BYTES {
        return Err(bad(key, format!("longer than {MAX_COMMAND_BYTES} bytes")));
    }
    if command.contains('\0') {
        return Err(bad(key, "contains a NUL byte"));
    }
    Ok(())
}

fn check_env(key: &str, env: &BTreeMap<String, String>) -> Result<(), TemplateError> {
    if env.len() > MAX_ENV {
        return Err(bad(key, format!("at most {MAX_ENV} variables")));
    }
    for (k, v) in env {
        let name_ok = !k.is_empty()
            && k.len() <= 128
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            return Err(bad(
                key,
                format!("{k:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"),
            ));
        }
        if v.len() > MAX_ENV_VALUE_BYTES || v.contains('\0') {
            return Err(bad(
                format!("{key}.{k}"),
                format!("at most {MAX_ENV_VALUE_BYTES} bytes and no NUL"),
            ));
        }
    }
    Ok(())
}

/// `user` or `user:group`, each a name (`[a-z_][a-z0-9_-]*`, at most 32) or a number.
fn check_owner(owner: &str) -> Result<(), String> {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 32
            && (p.bytes().all(|b| b.is_ascii_digit())
                || (p.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                    && p.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                    })))
    };
    let mut parts = owner.splitn(2, ':');
    let user = parts.next().unwrap_or("");
    let ok = part_ok(user) && parts.next().is_none_or(part_ok);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{owner:?} is not `user` or `user:group` (names or numbers)"
        ))
    }
}

#[cfg(test)]
#[path = "template_tests.rs"]
mod tests;
