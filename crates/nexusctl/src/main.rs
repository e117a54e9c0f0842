//! `nexusctl`, the Nexus CLI. Talks to `nexusd` through `nexus-lib`'s client only.
//!
//! Exit codes: 0 ok, 1 failure, 2 usage, 3 daemon unreachable, 4 not found, 5 conflict.

mod cli;
mod commands;
mod output;

use std::process::ExitCode;

use clap::Parser;
use nexus_lib::client::{Client, ClientError};
use nexus_lib::paths::Paths;

use cli::{Cli, Command};
use output::Printer;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let socket = cli.socket.clone().unwrap_or_else(|| resolve_socket(&cli));
    let client = Client::unix(socket.clone());
    let out = Printer { json: cli.json };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nexusctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let home = cli.home.clone();
    let result = runtime.block_on(async {
        match cli.command {
            Command::Status => commands::status::run(&client, out).await.map(|()| 0),
            Command::Vm(cmd) => commands::vm::run(&client, out, cmd).await,
            Command::Image(cmd) => commands::image::run(&client, out, cmd).await.map(|()| 0),
            Command::Drive(cmd) => commands::drive::run(&client, out, cmd).await.map(|()| 0),
            Command::Template(cmd) => commands::template::run(&client, out, cmd).await,
            Command::Build(cmd) => commands::build::run(&client, out, cmd).await,
            Command::Network(cmd) => commands::network::run(&client, out, cmd).await.map(|()| 0),
            Command::Kernel(cmd) => commands::kernel::run(&client, out, cmd).await,
            Command::Firecracker(cmd) => commands::firecracker::run(&client, out, cmd).await,
            Command::Rootfs(cmd) => commands::rootfs::run(&client, out, cmd).await,
            Command::Asset(cmd) => commands::asset::run(&client, out, cmd).await,
            Command::Provider(cmd) => commands::provider::run(&client, out, cmd).await.map(|()| 0),
            Command::Token(cmd) => commands::token::run(&client, out, cmd).await.map(|()| 0),
            Command::Mcp(cmd) => commands::mcp::run(&client, &socket, out, cmd)
                .await
                .map(|()| 0),
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => report(&e, home.as_deref()),
    }
}

/// The socket as nexusd resolves it: home, else XDG, and the config file's `socket` key.
fn resolve_socket(cli: &Cli) -> std::path::PathBuf {
    let paths = Paths::resolve(cli.home.as_deref());
    nexus_lib::config::Config::load(&paths.config_file)
        .ok()
        .and_then(|c| c.socket)
        .unwrap_or(paths.socket)
}

/// Prints the error for a person and maps it to the exit code.
fn report(err: &ClientError, home: Option<&std::path::Path>) -> ExitCode {
    match err {
        ClientError::Unreachable { endpoint, source } => {
            let home = home
                .map(|h| format!(" --home {}", h.display()))
                .unwrap_or_default();
            eprintln!(
                "nexusctl: nexusd is not running (cannot connect to {endpoint}: {source}). \
                 Start it with `systemctl --user start nexus` or `nexusd{home}`."
            );
            ExitCode::from(3)
        }
        ClientError::Api {
            status, message, ..
        } => {
            eprintln!("nexusctl: {message}");
            ExitCode::from(match status {
                404 => 4,
                409 => 5,
                400 | 413 | 422 => 2,
                // 503 (pool unavailable) and 507 (pool full) are failures: 1.
                _ => 1,
            })
        }
        other => {
            eprintln!("nexusctl: {}", nexus_lib::error::error_chain(other));
            ExitCode::FAILURE
        }
    }
}
