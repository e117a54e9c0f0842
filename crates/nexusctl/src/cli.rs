//! The command-line grammar: `nexusctl [global flags] <noun> <verb> [args]`. Argument structs
//! only; what each command does lives in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use nexus_lib::api::{
    AssetKind, DomainPattern, EgressPolicy, Ipv4Cidr, NetworkMode, ProviderKind, Publish, VmState,
};
use nexus_lib::paths::HOME_ENV;
use nexus_lib::size::ByteSize;

#[derive(Debug, Parser)]
#[command(
    name = "nexusctl",
    version,
    about = "Control Nexus: a microVM for every AI agent"
)]
pub struct Cli {
    /// The daemon's API socket (default: resolved like nexusd does).
    #[arg(long, global = true, env = "NEXUS_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The Nexus home directory (as `nexusd --home`).
    #[arg(long, global = true, env = HOME_ENV, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show whether the daemon is up, its version and database.
    Status,
    /// Manage VMs.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Manage master images (read-only ext4 filesystems drives are made from).
    #[command(subcommand)]
    Image(ImageCommand),
    /// Manage drives (copy-on-write snapshots of images, attached to VMs).
    #[command(subcommand)]
    Drive(DriveCommand),
    /// Templates: images described once (base, files, commands), built in a VM and cached.
    #[command(subcommand)]
    Template(TemplateCommand),
    /// Builds of templates: their state, steps, logs.
    #[command(subcommand)]
    Build(BuildCommand),
    /// The host network of the VMs (bridge, subnet, NAT, resolver).
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Guest kernels in the asset store.
    #[command(subcommand)]
    Kernel(KernelCommand),
    /// Firecracker and jailer binaries in the asset store.
    #[command(subcommand)]
    Firecracker(FirecrackerCommand),
    /// Root filesystems in the asset store (tarballs images are made from).
    #[command(subcommand)]
    Rootfs(RootfsCommand),
    /// Everything in the asset store (kernels, VMM binaries, packages, files).
    #[command(subcommand)]
    Asset(AssetCommand),
    /// Providers: where assets come from, and the pipeline that downloads them.
    #[command(subcommand)]
    Provider(ProviderCommand),
    /// The MCP server of nexusd (Streamable HTTP at /mcp).
    #[command(subcommand)]
    Mcp(McpCommand),
    /// API tokens for the TCP listener, each limited to some VMs.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// List installed kernels.
    #[command(alias = "ls")]
    List,
    /// Download a kernel through a provider (default: Debian's cloud kernel through apt).
    Download(KernelDownloadArgs),
    /// Build Nexus's guest kernel from the distribution's kernel source package (minutes; a
    /// cache hit when these inputs were built before). QEMU boots it when it is installed.
    Build(KernelBuildArgs),
    /// Hash an installed kernel again and compare it with its record.
    Verify(AssetRef),
    /// Remove an installed kernel.
    #[command(alias = "rm")]
    Remove(AssetRef),
}

#[derive(Debug, Args)]
pub struct KernelDownloadArgs {
    /// The provider whose pipeline runs.
    #[arg(long, default_value = "debian-package")]
    pub provider: String,
    /// The package (debian-package providers), e.g. linux-image-cloud-amd64.
    #[arg(long)]
    pub package: Option<String>,
    /// The version, for providers that take one.
    #[arg(long)]
    pub version: Option<String>,
    #[command(flatten)]
    pub vars: VarArgs,
}

#[derive(Debug, Args)]
pub struct KernelBuildArgs {
    /// The provider whose pipeline runs.
    #[arg(long, default_value = "kernel-build")]
    pub provider: String,
    /// The kernel source package (default: the provider's, linux-source-6.1).
    #[arg(long)]
    pub package: Option<String>,
    /// Build even when a build of the same inputs is cached.
    #[arg(long)]
    pub rebuild: bool,
    /// Parallel make jobs (default: the host's CPUs).
    #[arg(long)]
    pub jobs: Option<u32>,
    #[command(flatten)]
    pub vars: VarArgs,
}

/// `--set KEY=VALUE` template variables of a download.
#[derive(Debug, Clone, Default, Args)]
pub struct VarArgs {
    /// A variable of the provider's pipeline (repeatable), e.g. `--set url=https://…`.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_var)]
    pub set: Vec<(String, String)>,
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

#[derive(Debug, Subcommand)]
pub enum FirecrackerCommand {
    /// List installed Firecracker and jailer binaries.
    #[command(alias = "ls")]
    List,
    /// Download a Firecracker release (the firecracker and jailer binaries).
    Download(FirecrackerDownloadArgs),
    /// Hash the firecracker and jailer of a release again and compare them with their records.
    Verify(FirecrackerRef),
    /// Remove the firecracker and jailer of a release.
    #[command(alias = "rm")]
    Remove(FirecrackerRef),
}

#[derive(Debug, Args)]
pub struct FirecrackerDownloadArgs {
    /// The provider whose pipeline runs.
    #[arg(long, default_value = "firecracker-release")]
    pub provider: String,
    /// The release, e.g. 1.16.1 (default: the provider's).
    #[arg(long)]
    pub version: Option<String>,
    #[command(flatten)]
    pub vars: VarArgs,
}

#[derive(Debug, Args)]
pub struct FirecrackerRef {
    /// The release, e.g. 1.16.1.
    pub version: String,
}

#[derive(Debug, Subcommand)]
pub enum RootfsCommand {
    /// List installed root filesystems.
    #[command(alias = "ls")]
    List,
    /// Download a root filesystem tarball through a provider (default: `url`, pinned by sha256).
    Download(RootfsDownloadArgs),
    /// Build a root filesystem and import it as an image (`debian`: mmdebstrap from the host's
    /// apt configuration, with python3, git, curl and ca-certificates by default).
    Build(RootfsBuildArgs),
    /// Hash an installed root filesystem again and compare it with its record.
    Verify(AssetRef),
    /// Remove an installed root filesystem (images made from it stay).
    #[command(alias = "rm")]
    Remove(AssetRef),
}

#[derive(Debug, Args)]
pub struct RootfsDownloadArgs {
    /// The provider whose pipeline runs.
    #[arg(long, default_value = "url")]
    pub provider: String,
    /// The tarball's URL (url providers).
    #[arg(long)]
    pub url: Option<String>,
    /// Its sha256 (url providers).
    #[arg(long)]
    pub sha256: Option<String>,
    /// The asset's name.
    #[arg(long)]
    pub name: Option<String>,
    /// The asset's version.
    #[arg(long)]
    pub version: Option<String>,
    #[command(flatten)]
    pub vars: VarArgs,
}

/// Distributions `rootfs build` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Distro {
    Debian,
}

#[derive(Debug, Args)]
pub struct RootfsBuildArgs {
    /// What to build.
    pub distro: Distro,
    /// The provider whose pipeline runs.
    #[arg(long, default_value = "debian-rootfs")]
    pub provider: String,
    /// Suite or codename (default: the host's, e.g. bookworm).
    #[arg(long)]
    pub suite: Option<String>,
    /// mmdebstrap variant (default: apt, the smallest with apt and dpkg).
    #[arg(long)]
    pub variant: Option<String>,
    /// Extra packages, comma-separated (default: python3,git,curl,ca-certificates).
    #[arg(long)]
    pub packages: Option<String>,
    /// Name of the image (default: debian-SUITE).
    #[arg(long)]
    pub image: Option<String>,
    /// Size of the image's filesystem, e.g. 2G (default: the content plus a quarter).
    #[arg(long)]
    pub size: Option<ByteSize>,
    /// Only build the asset; do not import it as an image.
    #[arg(long)]
    pub no_import: bool,
    #[command(flatten)]
    pub vars: VarArgs,
}

#[derive(Debug, Subcommand)]
pub enum AssetCommand {
    /// List installed assets.
    #[command(alias = "ls")]
    List(AssetListArgs),
    /// Show one asset and what it was made from.
    Show(AssetRef),
    /// Hash an asset again and compare it with its record.
    Verify(AssetRef),
    /// Remove an asset (its file goes when no other asset shares it).
    #[command(alias = "rm")]
    Remove(AssetRef),
}

#[derive(Debug, Args)]
pub struct AssetListArgs {
    /// Only this kind: kernel, rootfs, firecracker, jailer, initrd, package, file.
    #[arg(long)]
    pub kind: Option<AssetKind>,
}

#[derive(Debug, Args)]
pub struct AssetRef {
    /// Asset id, name, or NAME@VERSION.
    pub asset: String,
}

#[derive(Debug, Subcommand)]
pub enum ProviderCommand {
    /// List providers.
    #[command(alias = "ls")]
    List,
    /// Show a provider's settings and pipeline.
    Show(ProviderRef),
    /// Add a provider (its pipeline is checked before it is stored).
    Add(ProviderAddArgs),
    /// Remove a provider that is not built in.
    #[command(alias = "rm")]
    Remove(ProviderRef),
}

#[derive(Debug, Args)]
pub struct ProviderRef {
    /// Provider name.
    pub provider: String,
}

#[derive(Debug, Args)]
pub struct ProviderAddArgs {
    /// Name: lowercase letters, digits and '-', at most 63.
    pub name: String,
    /// debian-package, firecracker-release, url, kernel-build or debian-rootfs.
    #[arg(long)]
    pub kind: ProviderKind,
    /// Settings as JSON, or @FILE: {"base_url", "vars", "no_signature", "no_checksum"}.
    #[arg(long, value_name = "JSON|@FILE")]
    pub settings: Option<String>,
    /// The pipeline as a JSON array of stages, or @FILE (default: the kind's own).
    #[arg(long, value_name = "JSON|@FILE")]
    pub stages: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; its secret is printed once (`token` with --json).
    Create(TokenCreateArgs),
    /// List tokens (never their secrets).
    #[command(alias = "ls")]
    List,
    /// Revoke a token: it is refused from its next request on.
    #[command(alias = "rm")]
    Revoke(TokenRef),
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// A VM the token may see and use (repeatable; name or id; must exist).
    #[arg(long = "vm", value_name = "VM")]
    pub vms: Vec<String>,
    /// Also let the token create VMs (they join its scope) and delete its VMs.
    #[arg(long)]
    pub lifecycle: bool,
    /// A label to recognise it by.
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct TokenRef {
    /// The token's id (from `token list`).
    pub id: String,
}

#[derive(Debug, Subcommand)]
pub enum McpCommand {
    /// Serve MCP on stdin/stdout, forwarding every message to nexusd's /mcp: for MCP clients
    /// that start a server as a command (Claude Code, Cursor, ...).
    Serve,
    /// List the tools an MCP client sees.
    Tools,
}

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Show the bridge, subnet, uplink and the VMs on it.
    Show,
    /// Remove taps, firewall rules and addresses the database does not know; rebuild the rest.
    Gc,
    /// Remove everything of Nexus from the host's network (no VM may be running on it).
    Down,
}

/// Egress flags shared by `vm create` and `vm network`.
#[derive(Debug, Clone, Default, Args)]
pub struct EgressArgs {
    /// Allow connections only to these domains (repeatable; `*.example.com` for subdomains).
    #[arg(long = "allow-domain", value_name = "DOMAIN")]
    pub allow_domain: Vec<DomainPattern>,
    /// Allow connections only to these networks (repeatable; ADDR/PREFIX or ADDR).
    #[arg(long = "allow-cidr", value_name = "CIDR")]
    pub allow_cidr: Vec<Ipv4Cidr>,
    /// Allow no connection out at all (not even DNS).
    #[arg(long, conflicts_with_all = ["allow_domain", "allow_cidr"])]
    pub deny_egress: bool,
}

impl EgressArgs {
    /// The policy the flags ask for; `None` when no flag was given.
    pub fn policy(&self) -> Option<EgressPolicy> {
        EgressPolicy::from_choices(
            self.deny_egress,
            self.allow_cidr.clone(),
            self.allow_domain.clone(),
        )
    }
}

#[derive(Debug, Args)]
pub struct VmNetworkArgs {
    /// VM name or id.
    pub vm: String,
    #[command(flatten)]
    pub egress: EgressArgs,
    /// Allow every connection out.
    #[arg(long, conflicts_with_all = ["allow_domain", "allow_cidr", "deny_egress"])]
    pub allow_all: bool,
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Record a new VM.
    Create(VmCreateArgs),
    /// List VMs.
    #[command(alias = "ls")]
    List(VmListArgs),
    /// Show one VM.
    Show(VmRef),
    /// Delete a VM that is not running, and the drives created with it.
    #[command(alias = "rm")]
    Delete(VmDeleteArgs),
    /// Show a VM's state transitions.
    History(VmRef),
    /// Boot a VM and wait for its guest agent.
    Start(VmRef),
    /// Power a VM off (the guest is asked first; the VMM is killed after the stop timeout).
    Stop(VmRef),
    /// Stop and start a VM.
    Restart(VmRef),
    /// Run a command in a running VM; exits with the command's exit code.
    Exec(VmExecArgs),
    /// Open an interactive shell (or CMD) in a running VM, in a session that survives detaching.
    Shell(VmShellArgs),
    /// Re-attach to a terminal session; sees the output it missed (up to 1 MiB).
    Attach(VmAttachArgs),
    /// List a VM's terminal sessions.
    Sessions(VmRef),
    /// Kill a terminal session.
    #[command(name = "kill-session")]
    KillSession(VmKillSessionArgs),
    /// Copy a file into (`LOCAL VM:/path`) or out of (`VM:/path LOCAL`) a running VM.
    Cp(VmCpArgs),
    /// Show a VM's serial console.
    Logs(VmLogsArgs),
    /// Show a VM's network, or change its egress policy (at once, also while it runs).
    Network(VmNetworkArgs),
}

#[derive(Debug, Args)]
pub struct VmExecArgs {
    /// VM name or id.
    pub vm: String,
    /// Send this process's standard input to the command (read fully first, at most 16 MiB).
    #[arg(short = 'i', long = "stdin")]
    pub stdin: bool,
    /// Environment variable for the command (repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory in the guest.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// Kill the command after this many seconds (exit code 124).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub argv: Vec<String>,
}

/// Options of an interactive terminal.
#[derive(Debug, Args)]
pub struct TerminalOpts {
    /// Key sequence that detaches, comma-separated (`ctrl-X` or one character).
    #[arg(long, default_value = "ctrl-],d", value_name = "KEYS")]
    pub detach_keys: String,
}

#[derive(Debug, Args)]
pub struct VmShellArgs {
    /// VM name or id.
    pub vm: String,
    #[command(flatten)]
    pub opts: TerminalOpts,
    /// The command to run instead of the shell.
    #[arg(last = true, value_name = "CMD")]
    pub argv: Vec<String>,
}

#[derive(Debug, Args)]
pub struct VmAttachArgs {
    /// VM name or id.
    pub vm: String,
    /// Session id (`vm sessions`); may be left out when the VM has one running session.
    pub session: Option<String>,
    #[command(flatten)]
    pub opts: TerminalOpts,
}

#[derive(Debug, Args)]
pub struct VmKillSessionArgs {
    /// VM name or id.
    pub vm: String,
    /// Session id.
    pub session: String,
}

#[derive(Debug, Args)]
pub struct VmCpArgs {
    /// `LOCAL` or `VM:/path`.
    pub from: String,
    /// `VM:/path` or `LOCAL`.
    pub to: String,
}

#[derive(Debug, Args)]
pub struct VmLogsArgs {
    /// VM name or id.
    pub vm: String,
    /// Keep printing new output.
    #[arg(short, long)]
    pub follow: bool,
    /// Lines of history to print first.
    #[arg(long, default_value_t = 100)]
    pub tail: usize,
}

#[derive(Debug, Args)]
pub struct VmCreateArgs {
    /// Name: lowercase letters, digits and '-', at most 63.
    pub name: String,
    /// Number of vCPUs (1-32, default 1).
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Memory in MiB (64-65536, default 256).
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u32>,
    /// Boot it right away.
    #[arg(long)]
    pub start: bool,
    /// Create the VM's root drive from this image (id or name).
    #[arg(long, value_name = "IMAGE", conflicts_with = "template")]
    pub image: Option<String>,
    /// Create the VM from the image of this template, building it first unless an unchanged
    /// build exists; the VM is started.
    #[arg(long, value_name = "TEMPLATE")]
    pub template: Option<String>,
    /// Size of that root drive, e.g. 4G (default: the image's size).
    #[arg(long, value_name = "SIZE")]
    pub disk_size: Option<ByteSize>,
    /// `nat` (a tap on the host's bridge, NAT out) or `none` (loopback only); default nat.
    #[arg(long, value_name = "MODE")]
    pub network: Option<NetworkMode>,
    /// Forward a host port to the VM: [BIND:]HOST_PORT:GUEST_PORT[/tcp|udp] (repeatable;
    /// BIND defaults to 127.0.0.1).
    #[arg(long, value_name = "RULE")]
    pub publish: Vec<Publish>,
    #[command(flatten)]
    pub egress: EgressArgs,
    /// Run an MCP server inside the VM: NAME=COMMAND, COMMAND run with `/bin/sh -c` in the
    /// guest and speaking MCP on stdio (repeatable, at most 8). Its tools appear on nexusd's
    /// /mcp as <vm>__<NAME>__<tool> while the VM runs.
    #[arg(long = "mcp-server", value_name = "NAME=COMMAND", value_parser = parse_mcp_server)]
    pub mcp_servers: Vec<(String, String)>,
    /// An environment variable of one of those servers: NAME:KEY=VALUE (repeatable).
    #[arg(long = "mcp-env", value_name = "NAME:KEY=VALUE", value_parser = parse_mcp_env)]
    pub mcp_env: Vec<(String, String, String)>,
}

fn parse_mcp_server(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, command)) if !name.is_empty() && !command.trim().is_empty() => {
            Ok((name.to_owned(), command.to_owned()))
        }
        _ => Err("expected NAME=COMMAND".into()),
    }
}

fn parse_mcp_env(s: &str) -> Result<(String, String, String), String> {
    let (name, pair) = s.split_once(':').ok_or("expected NAME:KEY=VALUE")?;
    let (key, value) = pair.split_once('=').ok_or("expected NAME:KEY=VALUE")?;
    Ok((name.to_owned(), key.to_owned(), value.to_owned()))
}

#[derive(Debug, Args)]
pub struct VmDeleteArgs {
    /// VM name or id.
    pub vm: String,
    /// Keep the drives created with the VM (they are detached instead).
    #[arg(long)]
    pub keep_drives: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import an ext4 image file or a directory (a path on the daemon's host).
    Import(ImageImportArgs),
    /// List images.
    #[command(alias = "ls")]
    List,
    /// Show one image.
    Show(ImageRef),
    /// Delete an image no drive depends on.
    #[command(alias = "rm")]
    Delete(ImageRef),
}

#[derive(Debug, Args)]
pub struct ImageImportArgs {
    /// An ext4 image file or a directory.
    #[arg(required_unless_present = "asset", conflicts_with = "asset")]
    pub path: Option<PathBuf>,
    /// Instead of a path: a rootfs asset (id, name or NAME@VERSION), unpacked into ext4 with
    /// the guest agent added.
    #[arg(long)]
    pub asset: Option<String>,
    /// Make the filesystem at least this big, e.g. 2G (directories and assets).
    #[arg(long)]
    pub size: Option<ByteSize>,
    /// Name (default: from the file name).
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct ImageRef {
    /// Image name or id.
    pub image: String,
}

#[derive(Debug, Subcommand)]
pub enum DriveCommand {
    /// Create a drive from an image.
    Create(DriveCreateArgs),
    /// List drives.
    #[command(alias = "ls")]
    List,
    /// Show one drive.
    Show(DriveRef),
    /// Delete a drive that is not attached to a running VM.
    #[command(alias = "rm")]
    Delete(DriveRef),
    /// Attach a drive to a VM that is not running.
    Attach(DriveAttachArgs),
    /// Detach a drive from its VM (which must not be running).
    Detach(DriveRef),
}

#[derive(Debug, Args)]
pub struct DriveCreateArgs {
    /// Image name or id.
    #[arg(long)]
    pub image: String,
    /// Grow the filesystem to this size, e.g. 4G (default: the image's size).
    #[arg(long, value_name = "SIZE")]
    pub size: Option<ByteSize>,
    /// Name (default: <image>-<short id>).
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct DriveRef {
    /// Drive name or id.
    pub drive: String,
}

#[derive(Debug, Args)]
pub struct DriveAttachArgs {
    /// Drive name or id.
    pub drive: String,
    /// VM name or id.
    #[arg(long)]
    pub vm: String,
    /// Attach as the VM's root drive.
    #[arg(long)]
    pub root: bool,
}

#[derive(Debug, Args)]
pub struct VmListArgs {
    /// Only VMs in this state.
    #[arg(long)]
    pub state: Option<VmState>,
}

#[derive(Debug, Args)]
pub struct VmRef {
    /// VM name or id.
    pub vm: String,
}

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Store a new version of the template in FILE (TOML; see the README).
    Create(TemplateCreateArgs),
    /// List templates (their newest versions).
    #[command(alias = "ls")]
    List,
    /// Show a template (NAME, id or NAME@VERSION) with its TOML.
    Show(TemplateRef),
    /// Delete every version of a template (its builds and images stay).
    Delete(TemplateRef),
    /// Build a template's image (a cache hit when nothing changed).
    Build(TemplateBuildArgs),
}

#[derive(Debug, Args)]
pub struct TemplateCreateArgs {
    /// The template file (TOML).
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct TemplateRef {
    /// Template name, id, or NAME@VERSION.
    pub template: String,
}

#[derive(Debug, Args)]
pub struct TemplateBuildArgs {
    /// Template name, id, or NAME@VERSION.
    pub template: String,
    /// Print the build's log as it runs.
    #[arg(long, short)]
    pub follow: bool,
    /// Build even when an unchanged build exists.
    #[arg(long)]
    pub no_cache: bool,
}

#[derive(Debug, Subcommand)]
pub enum BuildCommand {
    /// List builds, newest first.
    #[command(alias = "ls")]
    List(BuildListArgs),
    /// Show one build with its steps.
    Show(BuildRef),
    /// Print a build's log.
    Logs(BuildLogsArgs),
    /// Cancel a queued or running build (its VM and drive are removed).
    Cancel(BuildRef),
}

#[derive(Debug, Args)]
pub struct BuildListArgs {
    /// Only the builds of this template.
    #[arg(long)]
    pub template: Option<String>,
}

#[derive(Debug, Args)]
pub struct BuildRef {
    /// Build id (or a unique prefix of at least 8 characters).
    pub build: String,
}

#[derive(Debug, Args)]
pub struct BuildLogsArgs {
    /// Build id (or a unique prefix of at least 8 characters).
    pub build: String,
    /// Keep printing until the build is over.
    #[arg(long, short)]
    pub follow: bool,
}
