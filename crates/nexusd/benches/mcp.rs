//! MCP round trips on the real stack (nexusd + btrfs pool + QEMU + guest agent): `run_command`
//! of `true` through MCP over Streamable HTTP on the Unix socket and through `nexusctl mcp serve`
//! on stdio, next to the same exec through the REST API, interleaved so all three see the same
//! load; then the round trip of a per-VM MCP server's tool called through `/mcp` (the busybox
//! shell server of the MCP tests, `tests/mcp/echo-server.sh`, whose every answer forks `sed`). The MCP client is rmcp's (the Rust SDK), so the figures are the server's and the
//! bridge's, not a Python client's. Needs what the VM tests need (root, scripts/setup.sh,
//! NEXUS_AGENT_BIN) and a nexusctl built with the same profile:
//! `cargo build --release -p nexusctl && cargo bench -p nexusd --bench mcp`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nexus_lib::agent::{ExecEvent, ExecRequest, McpServerSpec};
use nexus_lib::api::{CreateVm, NetworkMode};
use nexus_lib::client::Client;
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use support::{pct, report};

const ROUNDS: usize = 200;
const WARMUP: usize = 10;

fn main() {
    let rt = support::runtime();
    let home = tempfile::tempdir().expect("tempdir");
    let mut daemon =
        support::spawn_nexusd(home.path(), &["--pool-size", "2G", "--network", "none"]);
    let socket = home.path().join("run/nexusd.sock");
    let result = rt.block_on(run(home.path(), &socket));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = daemon.wait();
    let _ = Command::new("umount")
        .arg(home.path().join("data/pool"))
        .stderr(Stdio::null())
        .status();
    result.expect("benchmark");
}

type Mcp = RunningService<RoleClient, ()>;

async fn run(home: &Path, socket: &Path) -> Result<(), String> {
    let rest = Client::unix(socket);
    let deadline = Instant::now() + Duration::from_secs(20);
    while rest.health().await.is_err() {
        if Instant::now() > deadline {
            return Err("nexusd did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rest.create_vm(&CreateVm {
        name: "bench".into(),
        image: Some("default".into()),
        start: true,
        network: Some(NetworkMode::None),
        mcp_servers: vec![echo_server()],
        ..CreateVm::default()
    })
    .await
    .map_err(|e| format!("create the VM: {e}"))?;

    let http = ()
        .serve(StreamableHttpClientTransport::from_unix_socket(
            &socket.to_string_lossy(),
            "http://localhost/mcp",
        ))
        .await
        .map_err(|e| format!("MCP over HTTP: {e}"))?;
    let mut bridge = Command::new(nexusctl());
    bridge.arg("--home").arg(home).args(["mcp", "serve"]);
    let stdio = ()
        .serve(
            TokioChildProcess::new(tokio::process::Command::from(bridge))
                .map_err(|e| format!("spawn nexusctl mcp serve: {e}"))?,
        )
        .await
        .map_err(|e| format!("MCP over stdio: {e}"))?;
    let revision = |c: &Mcp| {
        c.peer_info()
            .map(|i| i.protocol_version.to_string())
            .unwrap_or_else(|| "?".into())
    };
    println!(
        "MCP client: rmcp; revisions negotiated: HTTP {}, stdio {}",
        revision(&http),
        revision(&stdio)
    );

    let (mut via_rest, mut via_http, mut via_stdio) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..WARMUP + ROUNDS {
        let keep = round >= WARMUP;
        let t = Instant::now();
        rest_exec(&rest).await?;
        let rest_ms = ms(t);
        let t = Instant::now();
        mcp_run(&http).await?;
        let http_ms = ms(t);
        let t = Instant::now();
        mcp_run(&stdio).await?;
        let stdio_ms = ms(t);
        if keep {
            via_rest.push(rest_ms);
            via_http.push(http_ms);
            via_stdio.push(stdio_ms);
        }
    }
    report("exec `true` through the REST API (Unix socket)", &via_rest);
    report(
        "run_command `true` through MCP, Streamable HTTP (Unix socket)",
        &via_http,
    );
    report(
        "run_command `true` through MCP, stdio (nexusctl mcp serve)",
        &via_stdio,
    );
    println!(
        "MCP over REST, p50: HTTP +{:.2} ms, stdio +{:.2} ms",
        pct(&via_http, 0.5) - pct(&via_rest, 0.5),
        pct(&via_stdio, 0.5) - pct(&via_rest, 0.5)
    );

    let tool = "bench__echo__echo";
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http
        .list_all_tools()
        .await
        .map_err(|e| format!("tools/list: {e}"))?
        .iter()
        .any(|t| t.name == tool)
    {
        if Instant::now() > deadline {
            return Err(format!("{tool} did not appear within 60 s"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut via_guest = Vec::new();
    for round in 0..WARMUP + ROUNDS {
        let t = Instant::now();
        guest_echo(&http, tool).await?;
        if round >= WARMUP {
            via_guest.push(ms(t));
        }
    }
    report(
        "per-VM MCP server tool call through /mcp (Streamable HTTP, Unix socket)",
        &via_guest,
    );
    let _ = http.cancel().await;
    let _ = stdio.cancel().await;
    Ok(())
}

fn echo_server() -> McpServerSpec {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/echo-server.sh");
    McpServerSpec {
        name: "echo".into(),
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            std::fs::read_to_string(&script).expect("read tests/mcp/echo-server.sh"),
        ],
        env: Default::default(),
    }
}

async fn guest_echo(client: &Mcp, tool: &str) -> Result<(), String> {
    let args = serde_json::json!({"text": "ping"});
    let params = CallToolRequestParams::new(tool.to_owned())
        .with_arguments(args.as_object().cloned().unwrap_or_default());
    let result = client
        .call_tool(params)
        .await
        .map_err(|e| format!("{tool}: {e}"))?;
    match result.is_error {
        Some(true) => Err(format!("{tool} failed: {result:?}")),
        _ => Ok(()),
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

async fn rest_exec(client: &Client) -> Result<(), String> {
    let mut events = client
        .exec("bench", &ExecRequest::new(["true"]))
        .await
        .map_err(|e| format!("exec: {e}"))?;
    while let Some(event) = events.next().await.map_err(|e| format!("exec: {e}"))? {
        match event {
            ExecEvent::Exit { code: Some(0), .. } => return Ok(()),
            ExecEvent::Exit { .. } | ExecEvent::Error { .. } => {
                return Err(format!("exec ended with {event:?}"));
            }
            _ => {}
        }
    }
    Err("exec stream ended without an exit".into())
}

async fn mcp_run(client: &Mcp) -> Result<(), String> {
    let args = serde_json::json!({"vm": "bench", "argv": ["true"]});
    let params = CallToolRequestParams::new("run_command")
        .with_arguments(args.as_object().cloned().unwrap_or_default());
    let result = client
        .call_tool(params)
        .await
        .map_err(|e| format!("run_command: {e}"))?;
    let exit = result
        .structured_content
        .as_ref()
        .and_then(|v| v.get("exit_code"))
        .and_then(|v| v.as_i64());
    match (result.is_error, exit) {
        (Some(false) | None, Some(0)) => Ok(()),
        _ => Err(format!("run_command failed: {result:?}")),
    }
}

fn nexusctl() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_nexusd")).with_file_name("nexusctl");
    assert!(
        path.exists(),
        "{} is missing: build it with the same profile first (cargo build --release -p nexusctl)",
        path.display()
    );
    path
}
