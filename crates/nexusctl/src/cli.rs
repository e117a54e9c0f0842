//! The command-line grammar: `nexusctl [global flags] <noun> <verb> [args]`. Argument structs
//! only; what each command does lives in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use nexus_lib::api::VmState;
use nexus_lib::paths::HOME_ENV;

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
    /// Delete a VM that is not running.
    #[command(alias = "rm")]
    Delete(VmRef),
    /// Show a VM's state transitions.
    History(VmRef),
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
