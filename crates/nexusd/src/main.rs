//! The `nexusd` binary: flags, logging, signals, then [`nexusd::daemon::run`].

use std::io::IsTerminal;

use clap::Parser;
use nexus_lib::config::LogFormat;
use nexusd::settings::{Args, Settings};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let settings = match Settings::resolve(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("nexusd: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    init_logging(&settings);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nexusd: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let shutdown_bound = nexusd::daemon::shutdown_bound(&settings);
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        nexusd::daemon::cancel_on_signals(shutdown.clone())?;
        nexusd::daemon::exit_if_shutdown_hangs(shutdown.clone(), shutdown_bound);
        nexusd::daemon::run(settings, shutdown)
            .await
            .map_err(anyhow::Error::from)
    });
    // Tasks still running (a request handler stuck on a guest) must not hold the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nexusd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// rmcp (the MCP SDK) logs every request at info and a client that went away (a cancelled call)
/// at error; neither is news for an operator. Applies unless the filter names rmcp itself.
const RMCP_LOG: &str = "rmcp=warn,rmcp::service=off";

fn init_logging(settings: &Settings) {
    let text = std::env::var("RUST_LOG")
        .ok()
        .filter(|f| EnvFilter::try_new(f).is_ok())
        .unwrap_or_else(|| settings.log_level.clone());
    let text = if text.contains("rmcp") {
        text
    } else {
        format!("{text},{RMCP_LOG}")
    };
    let filter = EnvFilter::try_new(&text).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match settings.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Human | LogFormat::Auto => {
            builder.with_ansi(std::io::stderr().is_terminal()).init()
        }
    }
}
