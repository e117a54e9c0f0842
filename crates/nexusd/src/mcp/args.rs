//! What each MCP tool takes and returns. The input and output schemas clients see are generated
//! from these types (schemars), so the doc comments are what a model reads about each field.
//!
//! Inputs refuse unknown fields (`additionalProperties: false`), so a misspelt argument is an
//! error the model sees instead of a default it did not mean.

use std::collections::BTreeMap;

use nexus_lib::api::{DomainPattern, EgressPolicy, Ipv4Cidr, NetworkMode, Publish, VmState};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest `command` string of `run_command`.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Most bytes one `read_file` call returns. A result carries its content twice (as text and as
/// structured content), and clients bound what they take: the Python SDK refuses an SSE event
/// over 1 MiB, which 256 KiB in base64, twice, stays well under.
pub const MAX_READ_BYTES: u64 = 256 * 1024;
/// Most bytes one `write_file` call writes.
pub const MAX_WRITE_BYTES: usize = 8 * 1024 * 1024;
/// Default and largest `timeout_secs` of `run_command`.
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;
pub const MAX_TIMEOUT_SECS: u64 = 3600;
/// Default and largest number of entries `list_dir` returns.
pub const DEFAULT_LIST_LIMIT: usize = 1000;
pub const MAX_LIST_LIMIT: usize = nexus_lib::agent::MAX_LIST_ENTRIES;

/// A VM, by name or id.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmArgs {
    /// The VM's name (or its id).
    #[schemars(length(min = 1, max = 128))]
    pub vm: String,
}

/// Arguments of `vm_create`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmCreateArgs {
    /// Name of the new VM: lowercase letters, digits and '-', starting with a letter or digit,
    /// at most 63 characters, unique.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9-]{0,62}$"))]
    pub name: String,
    /// Image the VM's root disk is copied from (see `image_list`). Default `default`, a small
    /// busybox Linux that nexusd builds on first use.
    #[serde(default)]
    pub image: Option<String>,
    /// Virtual CPUs, 1 to 32 (default 1).
    #[serde(default)]
    #[schemars(range(min = 1, max = 32))]
    pub vcpus: Option<u32>,
    /// Memory in MiB, 64 to 65536 (default 256).
    #[serde(default)]
    #[schemars(range(min = 64, max = 65536))]
    pub memory_mib: Option<u32>,
    /// Size of the root disk, such as "4G" or "512M" (default: the image's size).
    #[serde(default)]
    pub disk_size: Option<String>,
    /// Boot the VM now and return once it answers (default true; a boot takes a few seconds).
    #[serde(default = "yes")]
    pub start: bool,
    /// "nat" (an address, NAT to the outside) or "none" (loopback only). Default: the daemon's
    /// configuration, "nat" unless changed.
    #[serde(default)]
    pub network: Option<NetworkChoice>,
    /// Host ports forwarded to the VM ("nat" only), each "[BIND:]HOST_PORT:GUEST_PORT[/tcp|udp]",
    /// bound to 127.0.0.1 unless BIND is given. At most 32.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub publish: Vec<String>,
    /// Allow outgoing connections only to these names ("pypi.org", "*.example.com") and to
    /// `allow_cidrs`. At most 256. Default: the daemon's policy (everything allowed unless
    /// configured otherwise).
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub allow_domains: Vec<String>,
    /// Allow outgoing connections only to these IPv4 networks ("10.1.0.0/16", "192.0.2.7") and
    /// to `allow_domains`. At most 256.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub allow_cidrs: Vec<String>,
    /// Allow no outgoing connection at all, not even DNS. Cannot be combined with the allow lists.
    #[serde(default)]
    pub deny_egress: bool,
    /// MCP servers to run inside the VM (stdio programs in the image), at most 8. While the VM
    /// runs, their tools appear in this server's tool list as `<vm>__<server>__<tool>`; a server
    /// that exits is restarted with back-off.
    #[serde(default)]
    #[schemars(length(max = 8))]
    pub mcp_servers: Vec<McpServerArg>,
}

/// An MCP server a VM runs.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpServerArg {
    /// Its name: lowercase letters, digits and '-', at most 32 characters, unique in the VM.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9-]{0,31}$"))]
    pub name: String,
    /// The program and its arguments, e.g. ["/usr/bin/my-mcp-server", "--stdio"]; it speaks MCP
    /// on its stdin and stdout. At most 256 entries, 64 KiB with `env`.
    #[schemars(length(min = 1, max = 256))]
    pub argv: Vec<String>,
    /// Environment variables it gets (at most 64).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// Parses every item of the argument `field`; the error names the argument.
fn parse_all<T: std::str::FromStr<Err = String>>(
    field: &str,
    items: &[String],
) -> Result<Vec<T>, String> {
    items
        .iter()
        .map(|s| s.parse().map_err(|e| format!("{field}: {e}")))
        .collect()
}

fn yes() -> bool {
    true
}

/// How a new VM is connected.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkChoice {
    Nat,
    None,
}

impl VmCreateArgs {
    /// The REST body this asks for; the error names the argument at fault.
    pub fn into_request(self) -> Result<nexus_lib::api::CreateVm, String> {
        let publish: Vec<Publish> = parse_all("publish", &self.publish)?;
        let cidrs: Vec<Ipv4Cidr> = parse_all("allow_cidrs", &self.allow_cidrs)?;
        let domains: Vec<DomainPattern> = parse_all("allow_domains", &self.allow_domains)?;
        if self.deny_egress && !(cidrs.is_empty() && domains.is_empty()) {
            return Err("deny_egress cannot be combined with allow_domains or allow_cidrs".into());
        }
        let disk_size = self
            .disk_size
            .map(|s| s.parse().map_err(|e| format!("disk_size: {e}")))
            .transpose()?;
        Ok(nexus_lib::api::CreateVm {
            name: self.name,
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            start: self.start,
            image: Some(self.image.unwrap_or_else(|| "default".into())),
            disk_size,
            network: self.network.map(|n| match n {
                NetworkChoice::Nat => NetworkMode::Nat,
                NetworkChoice::None => NetworkMode::None,
            }),
            publish,
            egress: EgressPolicy::from_choices(self.deny_egress, cidrs, domains),
            mcp_servers: self
                .mcp_servers
                .into_iter()
                .map(|s| nexus_lib::agent::McpServerSpec {
                    name: s.name,
                    argv: s.argv,
                    env: s.env,
                })
                .collect(),
        })
    }
}

/// Arguments of `vm_list`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmListArgs {
    /// Only VMs in this state: created, starting, running, stopping, stopped, crashed, failed.
    #[serde(default)]
    pub state: Option<String>,
}

/// Arguments of `vm_delete`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmDeleteArgs {
    /// The VM's name (or its id). It must not be running: stop it first.
    #[schemars(length(min = 1, max = 128))]
    pub vm: String,
    /// Keep the VM's disks (as drives) instead of deleting them with it (default false).
    #[serde(default)]
    pub keep_drives: bool,
}

/// A VM as the tools report it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct VmView {
    pub name: String,
    pub id: String,
    /// created, starting, running, stopping, stopped, crashed or failed. Guest tools need running.
    pub state: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// "nat" or "none".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The VM's IPv4 address ("nat" only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Published ports, "BIND:HOST_PORT:GUEST_PORT/PROTO".
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
    /// Where the VM may connect: allow-all, deny-all, or "allow" and the list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// When the state last changed, RFC 3339.
    pub state_changed_at: String,
}

impl From<nexus_lib::api::Vm> for VmView {
    fn from(vm: nexus_lib::api::Vm) -> Self {
        let network = vm.network.as_ref();
        Self {
            name: vm.name,
            id: vm.id.to_string(),
            state: vm.state.to_string(),
            vcpus: vm.vcpus,
            memory_mib: vm.memory_mib,
            network: network.map(|n| n.mode.as_str().to_string()),
            ip: network.and_then(|n| n.ip).map(|ip| ip.to_string()),
            publish: network
                .map(|n| n.publish.iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
            egress: network.map(|n| n.egress.summary()),
            created_at: vm.created_at,
            state_changed_at: vm.state_changed_at,
        }
    }
}

/// Result of `vm_list`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct VmList {
    pub vms: Vec<VmView>,
}

/// Result of `vm_show`: the VM, its latest state changes and its last boot.
#[derive(Debug, Serialize, JsonSchema)]
pub struct VmDetail {
    #[serde(flatten)]
    pub vm: VmView,
    /// The latest state changes, oldest first, each "from -> to: reason" (failures say why).
    pub recent_history: Vec<String>,
    /// The last boot: spawn to guest agent ready, in ms, and how it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_boot: Option<String>,
}

/// Result of `vm_delete`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Deleted {
    pub deleted: String,
}

/// An image as `image_list` reports it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ImageView {
    pub name: String,
    pub id: String,
    /// "ready", or "broken" (only deletable).
    pub state: String,
    pub size_bytes: u64,
    pub created_at: String,
}

/// Result of `image_list`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ImageList {
    pub images: Vec<ImageView>,
}

/// Parses a state filter.
pub fn parse_state(state: Option<&str>) -> Result<Option<VmState>, String> {
    state.map(str::parse).transpose()
}

/// Arguments of `run_command`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCommandArgs {
    /// The VM's name (or its id); it must be running.
    #[schemars(length(min = 1, max = 128))]
    pub vm: String,
    /// A shell command line, run as `/bin/sh -c COMMAND` (pipes, redirections, `&&` work).
    /// Give either this or `argv`.
    #[serde(default)]
    #[schemars(length(min = 1, max = 65536))]
    pub command: Option<String>,
    /// A program and its arguments, run directly without a shell (no quoting needed).
    /// Give either this or `command`.
    #[serde(default)]
    #[schemars(length(min = 1, max = 4096))]
    pub argv: Option<Vec<String>>,
    /// Absolute working directory (default `/`).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Environment variables added to the default ones (PATH, HOME=/root, TERM).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Text given to the command's standard input (default: empty input).
    #[serde(default)]
    pub stdin: Option<String>,
    /// Seconds after which the command and every process it started are killed (1 to 3600,
    /// default 300).
    #[serde(default)]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_secs: Option<u64>,
}

impl RunCommandArgs {
    /// The agent request this asks for; the error names the argument at fault.
    pub fn exec_request(&self) -> Result<nexus_lib::agent::ExecRequest, String> {
        let argv = program(self.command.as_deref(), self.argv.as_deref())?;
        let timeout = self.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
        if !(1..=MAX_TIMEOUT_SECS).contains(&timeout) {
            return Err(format!("timeout_secs must be 1 to {MAX_TIMEOUT_SECS}"));
        }
        let req = nexus_lib::agent::ExecRequest {
            argv,
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            stdin: self.stdin.as_ref().map(|s| s.as_bytes().to_vec()),
            timeout_ms: Some(timeout * 1000),
            keep_stdin: false,
        };
        req.validate()?;
        Ok(req)
    }
}

/// The argv a `command` (run by the shell) or an `argv` asks for; exactly one must be given.
pub fn program(command: Option<&str>, argv: Option<&[String]>) -> Result<Vec<String>, String> {
    match (command, argv) {
        (Some(command), None) => {
            if command.len() > MAX_COMMAND_BYTES {
                return Err(format!("command is longer than {MAX_COMMAND_BYTES} bytes"));
            }
            Ok(vec!["/bin/sh".into(), "-c".into(), command.into()])
        }
        (None, Some(argv)) => Ok(argv.to_vec()),
        (Some(_), Some(_)) => Err("give either command or argv, not both".into()),
        (None, None) => Err("give command (a shell command line) or argv (a list)".into()),
    }
}

/// Result of `run_command`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CommandResult {
    /// The exit code, when the command exited (0 is success).
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did (9 after a timeout).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Whether `timeout_secs` ran out and the command was killed.
    pub timed_out: bool,
    /// Standard output (UTF-8, invalid bytes replaced). When long it is cut in the middle with a
    /// marker, and `stdout_file` holds all of it.
    pub stdout: String,
    pub stderr: String,
    /// Total bytes the command wrote to standard output.
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// When stdout was cut: the file in the VM holding the whole of it (read it with read_file
    /// and offset/length, or search it with run_command and grep).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr_file: Option<String>,
    pub duration_ms: u64,
}

/// How file content is carried in `read_file` and `write_file`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// UTF-8 text.
    #[default]
    Text,
    /// Base64 of the raw bytes, for binary files.
    Base64,
}

/// A path in a VM.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathArgs {
    /// The VM's name (or its id); it must be running.
    #[schemars(length(min = 1, max = 128))]
    pub vm: String,
    /// Absolute path in the VM.
    #[schemars(length(min = 1, max = 4096))]
    pub path: String,
}

/// Arguments of `read_file`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadFileArgs {
    /// The VM's name (or its id); it must be running.
    #[schemars(length(min = 1, max = 128))]
    pub vm: String,
    /// Absolute path of a regular file in the VM.
    #[schemars(length(min = 1, max = 4096))]
    pub path: String,
    /// Byte offset to start at (default 0). Use the previous result's `next_offset` to go on.
    #[serde(default)]
    pub offset: u64,
    /// Most bytes to return (default 20000, at most 262144).
    #[serde(default)]
    #[schemars(range(min = 1, max = 262144))]
    pub length: Option<u64>,
    /// "text" (UTF-8; default) or "base64" (any bytes).
    #[serde(default)]
    pub encoding: Encoding,
}

/// Result of `read_file`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FileContent {
    pub path: String,
    /// Where this content starts in the file.
    pub offset: u64,
    /// Bytes of the file this content holds.
    pub bytes: u64,
    /// The file's whole size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Whether the content reaches the end of the file.
    pub eof: bool,
    /// The offset to pass to read the next part, when there is more.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<u64>,
    pub encoding: Encoding,
    pub content: String,
}

/// Arguments of `write_file`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteFileArgs {
    /// The VM's name (or its id); it must be running.
    #[schemars(length(min = 1, max = 128))]
    pub vm: String,
    /// Absolute path of the file; its directory must exist. An existing file is replaced.
    #[schemars(length(min = 1, max = 4096))]
    pub path: String,
    /// The whole new content (at most 8 MiB once decoded).
    pub content: String,
    /// "text" (written as UTF-8; default) or "base64" (decoded to bytes first).
    #[serde(default)]
    pub encoding: Encoding,
    /// Octal permission bits such as "644" or "755" (default "644").
    #[serde(default)]
    #[schemars(regex(pattern = r"^0?[0-7]{3,4}$"))]
    pub mode: Option<String>,
}

/// Arguments of `list_dir`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListDirArgs {
    /// The VM's name (or its id); it must be running.
    #[schemars(length(min = 1, max = 128))]
    pub vm: String,
    /// Absolute path of a directory in the VM.
    #[schemars(length(min = 1, max = 4096))]
    pub path: String,
    /// Most entries to return, by name order (default 1000, at most 10000).
    #[serde(default)]
    #[schemars(range(min = 1, max = 10000))]
    pub limit: Option<usize>,
}

/// Arguments of `remove`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveArgs {
    /// The VM's name (or its id); it must be running.
    #[schemars(length(min = 1, max = 128))]
    pub vm: String,
    /// Absolute path of the file or directory to remove (never `/`).
    #[schemars(length(min = 1, max = 4096))]
    pub path: String,
    /// Remove a directory with everything in it (default false: only an empty directory).
    #[serde(default)]
    pub recursive: bool,
}

/// File metadata, as `stat` and `write_file` report it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FileInfo {
    pub path: String,
    /// file, dir, symlink or other.
    pub kind: String,
    pub size: u64,
    /// Octal permission bits, such as "0644".
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    /// Last modification, milliseconds since the Unix epoch.
    pub mtime_ms: i64,
}

impl From<nexus_lib::agent::FileStat> for FileInfo {
    fn from(s: nexus_lib::agent::FileStat) -> Self {
        Self {
            path: s.path,
            kind: kind_name(s.kind).to_string(),
            size: s.size,
            mode: format!("{:04o}", s.mode),
            uid: s.uid,
            gid: s.gid,
            mtime_ms: s.mtime_ms,
        }
    }
}

pub fn kind_name(kind: nexus_lib::agent::FileKind) -> &'static str {
    use nexus_lib::agent::FileKind;
    match kind {
        FileKind::File => "file",
        FileKind::Dir => "dir",
        FileKind::Symlink => "symlink",
        FileKind::Other => "other",
    }
}

/// One entry of `list_dir`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DirEntryView {
    pub name: String,
    /// file, dir, symlink or other.
    pub kind: String,
    pub size: u64,
    /// Octal permission bits.
    pub mode: String,
}

/// Result of `list_dir`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DirView {
    pub path: String,
    pub entries: Vec<DirEntryView>,
    /// Whether the directory has more entries than returned.
    pub truncated: bool,
}

/// Result of `remove`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Removed {
    pub removed: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(json: serde_json::Value) -> RunCommandArgs {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_command_string_runs_through_the_shell() {
        let req = run(serde_json::json!({"vm": "a", "command": "echo hi | wc -c"}))
            .exec_request()
            .unwrap();
        assert_eq!(req.argv, ["/bin/sh", "-c", "echo hi | wc -c"]);
        assert_eq!(req.timeout_ms, Some(DEFAULT_TIMEOUT_SECS * 1000));
    }

    #[test]
    fn command_and_argv_together_are_refused() {
        let args = run(serde_json::json!({"vm": "a", "command": "x", "argv": ["y"]}));
        assert!(args.exec_request().unwrap_err().contains("not both"));
    }

    #[test]
    fn a_timeout_over_the_maximum_is_refused() {
        let args = run(serde_json::json!({"vm": "a", "argv": ["true"], "timeout_secs": 3601}));
        assert!(args.exec_request().unwrap_err().contains("timeout_secs"));
    }

    #[test]
    fn an_unknown_argument_is_an_error() {
        let parsed = serde_json::from_value::<RunCommandArgs>(
            serde_json::json!({"vm": "a", "argv": ["true"], "timeout": 3}),
        );
        assert!(
            parsed
                .unwrap_err()
                .to_string()
                .contains("unknown field `timeout`")
        );
    }

    #[test]
    fn vm_create_defaults_to_the_default_image_and_starting() {
        let args: VmCreateArgs = serde_json::from_value(serde_json::json!({"name": "a"})).unwrap();
        let req = args.into_request().unwrap();
        assert_eq!((req.image.as_deref(), req.start), (Some("default"), true));
    }

    #[test]
    fn vm_create_names_the_bad_publish_rule() {
        let args: VmCreateArgs =
            serde_json::from_value(serde_json::json!({"name": "a", "publish": ["x:80"]})).unwrap();
        assert!(args.into_request().unwrap_err().starts_with("publish: "));
    }

    #[test]
    fn vm_create_deny_egress_with_an_allow_list_is_refused() {
        let args: VmCreateArgs = serde_json::from_value(serde_json::json!(
            {"name": "a", "deny_egress": true, "allow_cidrs": ["10.0.0.0/8"]}
        ))
        .unwrap();
        assert!(args.into_request().unwrap_err().contains("deny_egress"));
    }
}
