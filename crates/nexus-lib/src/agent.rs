//! Wire protocol between `nexusd` and the guest agent (`nexus-agent`).
//!
//! The transport is HTTP/2 (prior knowledge) over vsock port [`AGENT_VSOCK_PORT`]. Both sides depend on
//! this module for the JSON types, the limits every message must respect, protocol negotiation and the
//! small query-string codec used for file paths, so the two ends cannot drift apart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The vsock port the agent listens on.
pub const AGENT_VSOCK_PORT: u32 = 1024;
/// The line the agent prints on the guest console once it listens on vsock. The host dials only
/// after seeing it: vsock connections attempted while the guest's vsock driver is still coming up
/// can wedge vhost-device-vsock (measured: about one boot in three under heavy host load).
pub const AGENT_READY_LINE: &str = "nexus-agent: ready on vsock";
/// Protocol versions this build speaks, lowest first.
pub const SUPPORTED_PROTOCOLS: &[u32] = &[1];
/// Request header carrying the protocol versions the host supports (comma-separated).
pub const PROTOCOL_HEADER: &str = "x-nexus-protocol";

/// Largest decoded stdin an exec request may carry.
pub const MAX_STDIN_BYTES: usize = 16 * 1024 * 1024;
/// Largest JSON request body (exec requests with base64 stdin included).
pub const MAX_REQUEST_JSON_BYTES: usize = MAX_STDIN_BYTES / 3 * 4 + 1024 * 1024;
/// Largest JSON reply either side accepts (a full directory listing is the biggest).
pub const MAX_REPLY_JSON_BYTES: usize = 8 * 1024 * 1024;
/// Size of one stdout/stderr chunk read by the agent.
pub const EXEC_CHUNK_BYTES: usize = 32 * 1024;
/// Longest NDJSON line of an exec stream (one base64 chunk plus JSON overhead).
pub const MAX_EVENT_LINE_BYTES: usize = 64 * 1024;
/// Most entries a `list` reply carries; longer directories are truncated.
pub const MAX_LIST_ENTRIES: usize = 10_000;
/// Longest path accepted anywhere in the protocol.
pub const MAX_PATH_BYTES: usize = 4096;
/// Most argv elements plus env entries of one exec request.
pub const MAX_EXEC_ARGS: usize = 4096;
/// Reply header of `GET /v1/files`: the byte offset the content starts at. An agent that
/// predates ranged reads ignores `offset`/`length` and sends no such header, so the host can tell.
pub const FILE_OFFSET_HEADER: &str = "x-nexus-offset";
/// Reply header of `GET /v1/files`: the file's whole size when the read started.
pub const FILE_SIZE_HEADER: &str = "x-nexus-file-size";

/// Most background processes an agent keeps track of (running or finished); finished ones are
/// forgotten, oldest first, to make room.
pub const MAX_PROCESSES: usize = 64;
/// The newest bytes of each background process's stdout and stderr the agent keeps.
pub const MAX_PROCESS_LOG_BYTES: u64 = 16 * 1024 * 1024;
/// Most bytes one `GET /v1/processes/output` returns.
pub const MAX_PROCESS_READ_BYTES: u64 = 1024 * 1024;

/// Most MCP servers one VM runs.
pub const MAX_MCP_SERVERS: usize = 8;
/// Most `argv` entries of one MCP server.
pub const MAX_MCP_SERVER_ARGS: usize = 256;
/// Most `env` entries of one MCP server.
pub const MAX_MCP_SERVER_ENV: usize = 64;
/// Most bytes of one MCP server's `argv` and `env` together.
pub const MAX_MCP_SERVER_SPEC_BYTES: usize = 64 * 1024;

/// Picks the highest protocol version both sides support.
pub fn negotiate(host: &[u32], agent: &[u32]) -> Option<u32> {
    host.iter().filter(|v| agent.contains(v)).max().copied()
}

/// Parses the [`PROTOCOL_HEADER`] value (`"1"` or `"1,2"`).
pub fn parse_protocol_header(value: &str) -> Option<Vec<u32>> {
    let versions: Option<Vec<u32>> = value.split(',').map(|v| v.trim().parse().ok()).collect();
    versions.filter(|v| !v.is_empty() && v.len() <= 32)
}

/// Formats the host's supported versions for [`PROTOCOL_HEADER`].
pub fn protocol_header_value(versions: &[u32]) -> String {
    versions
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Milestones of the guest's boot, in milliseconds since the guest kernel started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootTimes {
    /// When the agent started as PID 1.
    pub init_ms: u64,
    /// When the root drive was mounted and switched to (equal to `init_ms` without an initramfs).
    pub root_ms: u64,
    /// When the agent started listening on vsock.
    pub ready_ms: u64,
}

/// Reply to `GET /v1/handshake`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handshake {
    /// The negotiated protocol version.
    pub protocol: u32,
    /// All versions the agent speaks.
    pub supported: Vec<u32>,
    pub agent_version: String,
    pub kernel_release: String,
    pub boot: BootTimes,
}

/// Body of `POST /v1/exec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Standard input, base64; the process gets an empty stdin when absent.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "b64_opt")]
    #[schema(value_type = Option<String>, format = Byte)]
    pub stdin: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Background processes only: keep the process's stdin open after `stdin` was written, for
    /// later `POST /v1/processes/stdin` calls.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[schema(ignore)]
    pub keep_stdin: bool,
}

impl ExecRequest {
    /// A request running `argv` with the agent's default environment.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Checks the request against the protocol's limits.
    pub fn validate(&self) -> Result<(), String> {
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err("argv must name a program".into());
        }
        if self.argv.len() + self.env.len() > MAX_EXEC_ARGS {
            return Err(format!("more than {MAX_EXEC_ARGS} argv and env entries"));
        }
        let nul = |s: &String| s.contains('\0');
        if self.argv.iter().any(nul) || self.env.iter().any(|(k, v)| nul(k) || nul(v)) {
            return Err("argv and env must not contain NUL bytes".into());
        }
        if self.env.keys().any(|k| k.is_empty() || k.contains('=')) {
            return Err("env names must be non-empty and must not contain '='".into());
        }
        if let Some(cwd) = &self.cwd {
            validate_path(cwd)?;
        }
        if self
            .stdin
            .as_ref()
            .is_some_and(|s| s.len() > MAX_STDIN_BYTES)
        {
            return Err(format!("stdin larger than {MAX_STDIN_BYTES} bytes"));
        }
        Ok(())
    }
}

/// One line of the newline-delimited JSON stream answering `POST /v1/exec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecEvent {
    Stdout {
        #[serde(with = "b64")]
        #[schema(value_type = String, format = Byte)]
        data: Vec<u8>,
    },
    Stderr {
        #[serde(with = "b64")]
        #[schema(value_type = String, format = Byte)]
        data: Vec<u8>,
    },
    /// The process ended: `code` when it exited, `signal` when a signal killed it.
    Exit {
        code: Option<i32>,
        signal: Option<i32>,
        timed_out: bool,
    },
    /// The process could not be run, or the stream broke; always the last event.
    Error { message: String },
}

/// Reply to `GET /v1/stat` and `PUT /v1/files`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileStat {
    pub path: String,
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits (`0o7777` part of `st_mode`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// One entry of a `GET /v1/list` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: String,
    pub kind: FileKind,
    pub size: u64,
    pub mode: u32,
}

/// Reply to `GET /v1/list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirListing {
    pub path: String,
    pub entries: Vec<DirEntry>,
    /// True when the directory held more than [`MAX_LIST_ENTRIES`] entries.
    pub truncated: bool,
}

/// Which output stream of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

impl OutputStream {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

impl std::str::FromStr for OutputStream {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stdout" => Ok(Self::Stdout),
            "stderr" => Ok(Self::Stderr),
            other => Err(format!("unknown stream {other:?} (stdout or stderr)")),
        }
    }
}

/// A background process (reply to `POST /v1/processes`, items of `GET /v1/processes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// The agent's id of the process (unique until the agent restarts).
    pub id: u64,
    pub pid: u32,
    /// The command line, shortened when long.
    pub command: String,
    /// When it started, milliseconds since the Unix epoch.
    pub started_ms: i64,
    pub running: bool,
    /// How it ended: its exit code, or the signal that killed it.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Bytes written to each stream so far.
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
}

/// Reply to `GET /v1/processes/output?id=&stream=&offset=&length=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessOutput {
    pub id: u64,
    pub stream: OutputStream,
    /// Where `data` starts: the offset asked for, or later when the bytes there were dropped.
    pub offset: u64,
    #[serde(with = "b64")]
    pub data: Vec<u8>,
    /// Bytes written to the stream so far (the offset after the last one).
    pub size: u64,
    /// Bytes between the offset asked for and `offset` that are gone (only the newest
    /// [`MAX_PROCESS_LOG_BYTES`] are kept).
    pub skipped: u64,
    pub running: bool,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

/// Signals a background process's group can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ProcessSignal {
    Term,
    Kill,
    Int,
    Hup,
    Quit,
    Usr1,
    Usr2,
    Stop,
    Cont,
}

impl ProcessSignal {
    /// The names accepted, as on the wire.
    pub const NAMES: &'static str = "TERM, KILL, INT, HUP, QUIT, USR1, USR2, STOP, CONT";
}

impl std::str::FromStr for ProcessSignal {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let name = s.trim_start_matches("SIG");
        serde_json::from_value(serde_json::Value::String(name.to_string()))
            .map_err(|_| format!("unknown signal {s:?} (one of {})", Self::NAMES))
    }
}

/// Body of `POST /v1/processes/signal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    pub id: u64,
    pub signal: ProcessSignal,
}

/// Body of `POST /v1/processes/stdin`: bytes for a background process's open stdin, and/or
/// closing it (EOF).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessStdin {
    pub id: u64,
    #[serde(default, with = "b64")]
    pub data: Vec<u8>,
    #[serde(default)]
    pub close: bool,
}

/// Largest chunk one `POST /v1/processes/stdin` carries.
pub const MAX_PROCESS_STDIN_CHUNK: usize = 1024 * 1024;

/// Longest a `GET /v1/processes/follow` stream waits between events before it sends an empty
/// stdout chunk, so either side notices a dead peer.
pub const FOLLOW_KEEPALIVE_MS: u64 = 15_000;

/// Most directory watches (`GET /v1/watch` streams) one agent keeps at once.
pub const MAX_WATCHERS: usize = 64;
/// Most directories one recursive watch follows.
pub const MAX_WATCHED_DIRS: usize = 4096;
/// Events one watch queues in the guest before it drops them and reports an overflow.
pub const WATCH_QUEUE_EVENTS: usize = 1024;
/// Longest a `GET /v1/watch` stream stays silent before it sends a keep-alive.
pub const WATCH_KEEPALIVE_MS: u64 = 15_000;

/// What happened to a watched entry (E2B's and fsnotify's operations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchOp {
    /// Created, or moved in.
    Create,
    Write,
    Remove,
    /// Moved away (the new name, if still watched, comes as a `Create`).
    Rename,
    /// Metadata (mode, owner, times) changed.
    Chmod,
}

/// One line of the newline-delimited JSON stream answering `GET /v1/watch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WatchEvent {
    /// `name` is relative to the watched directory (`sub/file` in a recursive watch).
    Fs { op: WatchOp, name: String },
    /// Events were lost (the kernel's queue or the watch's own queue overflowed, or a recursive
    /// watch reached [`MAX_WATCHED_DIRS`]).
    Overflow,
    /// Nothing happened for [`WATCH_KEEPALIVE_MS`].
    Keepalive,
    /// The watched directory itself was removed or moved: the last event.
    Gone,
}

impl WatchEvent {
    /// Checks what a guest sent: a relative name, bounded, without NUL or `..` parts.
    pub fn validate(&self) -> Result<(), String> {
        let Self::Fs { name, .. } = self else {
            return Ok(());
        };
        if name.is_empty() || name.len() > MAX_PATH_BYTES {
            return Err(format!("watch event name of {} bytes", name.len()));
        }
        if name.starts_with('/') || name.contains('\0') || name.split('/').any(|p| p == "..") {
            return Err(format!("watch event name {name:?} is not a relative path"));
        }
        Ok(())
    }
}

/// A stdio MCP server the agent runs and supervises in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct McpServerSpec {
    /// `[a-z0-9][a-z0-9-]{0,31}`, unique in the VM; its tools are `<vm>__<name>__<tool>`.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,31}$")]
    pub name: String,
    /// The program and its arguments; it speaks MCP on its stdin and stdout.
    #[schema(min_items = 1, max_items = 256)]
    pub argv: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

impl McpServerSpec {
    pub fn validate(&self) -> Result<(), String> {
        let name_ok = (1..=32).contains(&self.name.len())
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !self.name.starts_with('-');
        if !name_ok {
            return Err(format!(
                "MCP server name {:?} must match [a-z0-9][a-z0-9-]{{0,31}}",
                self.name
            ));
        }
        if self.argv.len() > MAX_MCP_SERVER_ARGS {
            return Err(format!(
                "MCP server {}: at most {MAX_MCP_SERVER_ARGS} arguments",
                self.name
            ));
        }
        if self.env.len() > MAX_MCP_SERVER_ENV {
            return Err(format!(
                "MCP server {}: at most {MAX_MCP_SERVER_ENV} environment variables",
                self.name
            ));
        }
        let bytes: usize = self.argv.iter().map(String::len).sum::<usize>()
            + self
                .env
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        if bytes > MAX_MCP_SERVER_SPEC_BYTES {
            return Err(format!(
                "MCP server {}: argv and env hold {bytes} bytes; at most {MAX_MCP_SERVER_SPEC_BYTES}",
                self.name
            ));
        }
        let exec = ExecRequest {
            argv: self.argv.clone(),
            env: self.env.clone(),
            ..ExecRequest::default()
        };
        exec.validate()
            .map_err(|e| format!("MCP server {}: {e}", self.name))
    }

    /// Checks a VM's whole list: each server, their number, distinct names.
    pub fn validate_all(servers: &[Self]) -> Result<(), String> {
        if servers.len() > MAX_MCP_SERVERS {
            return Err(format!("at most {MAX_MCP_SERVERS} MCP servers per VM"));
        }
        for (i, server) in servers.iter().enumerate() {
            server.validate()?;
            if servers[..i].iter().any(|s| s.name == server.name) {
                return Err(format!("two MCP servers are named {:?}", server.name));
            }
        }
        Ok(())
    }
}

/// Body of `PUT /v1/mcp-servers`: the servers the agent must run (others are stopped).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerSet {
    pub servers: Vec<McpServerSpec>,
}

/// One MCP server as the agent reports it (`GET`/`PUT /v1/mcp-servers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpServerStatus {
    pub name: String,
    pub running: bool,
    pub pid: Option<u32>,
    /// How many times it was started.
    pub starts: u64,
    /// How its last run ended, if it did.
    pub last_exit: Option<String>,
}

/// Reply to `GET /v1/info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub agent_version: String,
    pub protocol: Vec<u32>,
    pub kernel_release: String,
    pub hostname: String,
    pub uptime_ms: u64,
    pub mem_total_kib: u64,
    pub mem_available_kib: u64,
}

/// Reply to `POST /v1/shutdown`, sent before the guest powers off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownAccepted {
    pub shutting_down: bool,
}

/// Error body of every non-2xx reply: `{"error":{"code":"…","message":"…"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// Checks that a guest path is absolute, bounded and free of NUL bytes.
pub fn validate_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("path {path:?} is not absolute"));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(format!("path longer than {MAX_PATH_BYTES} bytes"));
    }
    if path.contains('\0') {
        return Err("path contains a NUL byte".into());
    }
    Ok(())
}

/// Percent-encodes a query-string value (everything but unreserved characters and `/`).
pub fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parses `a=b&c=d` into pairs, decoding `%XX` and `+`; `None` on malformed input.
pub fn parse_query(query: &str) -> Option<Vec<(String, String)>> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(data))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

mod b64_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match data {
            Some(d) => super::b64::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super::b64")] Vec<u8>);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_event_names_must_be_bounded_relative_paths() {
        let named = |name: &str| WatchEvent::Fs {
            op: WatchOp::Create,
            name: name.into(),
        };

        let verdicts: Vec<bool> = ["sub/f", "", "/etc/passwd", "../x", "a\0b"]
            .iter()
            .map(|n| named(n).validate().is_ok())
            .chain([named(&"x".repeat(MAX_PATH_BYTES + 1)).validate().is_ok()])
            .collect();

        assert_eq!(verdicts, [true, false, false, false, false, false]);
    }

    #[test]
    fn negotiate_picks_highest_common_version() {
        assert_eq!(negotiate(&[1, 2, 3], &[1, 2]), Some(2));
    }

    #[test]
    fn negotiate_without_common_version_is_none() {
        assert_eq!(negotiate(&[2], &[1]), None);
    }

    #[test]
    fn protocol_header_round_trips() {
        assert_eq!(
            parse_protocol_header(&protocol_header_value(&[1, 2])),
            Some(vec![1, 2])
        );
    }

    #[test]
    fn protocol_header_rejects_garbage() {
        assert_eq!(parse_protocol_header("1,x"), None);
    }

    #[test]
    fn exec_stdout_event_serializes_as_tagged_base64() {
        let json = serde_json::to_string(&ExecEvent::Stdout {
            data: b"hi\n".to_vec(),
        })
        .unwrap();
        assert_eq!(json, r#"{"type":"stdout","data":"aGkK"}"#);
    }

    #[test]
    fn exec_exit_event_serializes_nulls() {
        let ev = ExecEvent::Exit {
            code: Some(3),
            signal: None,
            timed_out: false,
        };
        let json = serde_json::to_string(&ev).unwrap();
        assert_eq!(
            json,
            r#"{"type":"exit","code":3,"signal":null,"timed_out":false}"#
        );
    }

    #[test]
    fn exec_request_stdin_round_trips_through_base64() {
        let mut req = ExecRequest::new(["cat"]);
        req.stdin = Some(b"abc".to_vec());
        let json = serde_json::to_string(&req).unwrap();
        assert!(json.contains(r#""stdin":"YWJj""#));
        assert_eq!(serde_json::from_str::<ExecRequest>(&json).unwrap(), req);
    }

    #[test]
    fn exec_request_without_argv_is_invalid() {
        assert!(ExecRequest::default().validate().is_err());
    }

    #[test]
    fn signals_parse_with_or_without_the_sig_prefix() {
        assert_eq!("SIGKILL".parse(), Ok(ProcessSignal::Kill));
        assert_eq!("TERM".parse(), Ok(ProcessSignal::Term));
        assert!("kill".parse::<ProcessSignal>().is_err());
    }

    #[test]
    fn mcp_server_names_are_checked_and_unique() {
        let server = |name: &str| McpServerSpec {
            name: name.into(),
            argv: vec!["srv".into()],
            env: BTreeMap::new(),
        };
        assert!(McpServerSpec::validate_all(&[server("a"), server("b-2")]).is_ok());
        assert!(McpServerSpec::validate_all(&[server("a"), server("a")]).is_err());
        assert!(server("A").validate().is_err());
        assert!(server("a__b").validate().is_err());
        assert!(server(&"a".repeat(33)).validate().is_err());
        let mut big = server("big");
        big.argv.push("x".repeat(MAX_MCP_SERVER_SPEC_BYTES));
        assert!(big.validate().is_err());
    }

    #[test]
    fn relative_path_is_invalid() {
        assert!(validate_path("etc/passwd").is_err());
    }

    #[test]
    fn query_value_round_trips() {
        let path = "/tmp/a b&c=d%é";
        let q = format!("path={}&mode=644", encode_query_value(path));
        let pairs = parse_query(&q).unwrap();
        assert_eq!(pairs[0], ("path".to_string(), path.to_string()));
        assert_eq!(pairs[1], ("mode".to_string(), "644".to_string()));
    }

    #[test]
    fn query_with_truncated_escape_is_malformed() {
        assert_eq!(parse_query("path=%2"), None);
    }
}
