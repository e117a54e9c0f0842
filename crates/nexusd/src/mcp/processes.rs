//! Background-process tools: `start_process`, `process_output`, `process_signal`,
//! `process_list`, and their argument and result types. The processes live in the guest agent:
//! they keep running when the MCP client goes away, and their output is read by offset, so a
//! client that reconnects later goes on where it stopped.

use std::collections::BTreeMap;

use nexus_lib::agent::{ExecRequest, OutputStream, ProcessInfo, ProcessOutput, ProcessSignal};
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::NexusMcp;
use super::access::Access;
use super::args::{MAX_TIMEOUT_SECS, VmArgs, program};
use super::error::ToolError;

/// Default and largest bytes of each stream one `process_output` returns.
const DEFAULT_OUTPUT_BYTES: u64 = 10_000;
const MAX_OUTPUT_BYTES: u64 = 256 * 1024;

/// Arguments of `start_process`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartProcessArgs {
    /// The VM's name (or its id); it must be running.
    #[schemars(length(min = 1, max = 128))]
    pub vm: String,
    /// A shell command line, run as `/bin/sh -c COMMAND`. Give either this or `argv`.
    #[serde(default)]
    #[schemars(length(min = 1, max = 65536))]
    pub command: Option<String>,
    /// A program and its arguments, run without a shell. Give either this or `command`.
    #[serde(default)]
    #[schemars(length(min = 1, max = 4096))]
    pub argv: Option<Vec<String>>,
    /// Absolute working directory (default `/`).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Environment variables added to the default ones.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Seconds after which the process group is killed (1 to 3600; default: none, it runs until
    /// it ends or is signalled).
    #[serde(default)]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_secs: Option<u64>,
}

/// Arguments of `process_output`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessOutputArgs {
    /// The VM's name (or its id).
    #[schemars(length(min = 1, max = 128))]
    pub vm: String,
    /// The process id start_process returned.
    pub id: u64,
    /// Byte offset in stdout to read from (default 0; pass the previous stdout_next_offset).
    #[serde(default)]
    pub stdout_offset: u64,
    /// Byte offset in stderr to read from (default 0; pass the previous stderr_next_offset).
    #[serde(default)]
    pub stderr_offset: u64,
    /// Most bytes of each stream to return (default 10000, at most 262144).
    #[serde(default)]
    #[schemars(range(min = 1, max = 262144))]
    pub max_bytes: Option<u64>,
}

/// Arguments of `process_signal`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessSignalArgs {
    /// The VM's name (or its id).
    #[schemars(length(min = 1, max = 128))]
    pub vm: String,
    /// The process id start_process returned.
    pub id: u64,
    /// TERM (default), KILL, INT, HUP, QUIT, USR1, USR2, STOP or CONT.
    #[serde(default)]
    #[schemars(regex(pattern = r"^(SIG)?(TERM|KILL|INT|HUP|QUIT|USR1|USR2|STOP|CONT)$"))]
    pub signal: Option<String>,
}

/// A background process as the tools report it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ProcessView {
    /// The id to pass to process_output and process_signal.
    pub id: u64,
    pub pid: u32,
    pub command: String,
    pub running: bool,
    /// How it ended: its exit code, or the signal that killed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// When it started, milliseconds since the Unix epoch.
    pub started_ms: i64,
    /// Bytes written so far to each stream.
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
}

impl From<ProcessInfo> for ProcessView {
    fn from(p: ProcessInfo) -> Self {
        Self {
            id: p.id,
            pid: p.pid,
            command: crate::sanitize::clean(p.command, 256),
            running: p.running,
            exit_code: p.exit_code,
            signal: p.signal,
            started_ms: p.started_ms,
            stdout_bytes: p.stdout_bytes,
            stderr_bytes: p.stderr_bytes,
        }
    }
}

/// Result of `process_list`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ProcessList {
    pub processes: Vec<ProcessView>,
}

/// Result of `process_output`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ProcessOutputView {
    pub id: u64,
    pub running: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// New stdout text from stdout_offset (UTF-8, invalid bytes replaced).
    pub stdout: String,
    /// Where to read stdout from next time.
    pub stdout_next_offset: u64,
    /// Bytes written to stdout so far; more to read while stdout_next_offset is below it.
    pub stdout_size: u64,
    /// Bytes before the returned text that are gone (only the newest 16 MiB are kept).
    pub stdout_skipped: u64,
    pub stderr: String,
    pub stderr_next_offset: u64,
    pub stderr_size: u64,
    pub stderr_skipped: u64,
}

#[tool_router(router = process_tools, vis = "pub(super)")]
impl NexusMcp {
    #[tool(
        description = "Start a command in the background in a running VM and return at once with its id: servers, builds, anything long. It keeps running after this call and after the client disconnects; read its output with process_output (by offset, any time later), stop it with process_signal, list them with process_list. The newest 16 MiB of each output stream are kept.",
        annotations(
            title = "Start a background process",
            destructive_hint = true,
            open_world_hint = true
        )
    )]
    async fn start_process(
        &self,
        Parameters(args): Parameters<StartProcessArgs>,
        access: Access,
    ) -> Result<Json<ProcessView>, ToolError> {
        let argv =
            program(args.command.as_deref(), args.argv.as_deref()).map_err(ToolError::invalid)?;
        if args
            .timeout_secs
            .is_some_and(|t| !(1..=MAX_TIMEOUT_SECS).contains(&t))
        {
            return Err(ToolError::invalid(format!(
                "timeout_secs must be 1 to {MAX_TIMEOUT_SECS}"
            )));
        }
        let req = ExecRequest {
            argv,
            env: args.env,
            cwd: args.cwd,
            stdin: None,
            timeout_ms: args.timeout_secs.map(|t| t * 1000),
            keep_stdin: false,
        };
        req.validate().map_err(ToolError::invalid)?;
        let agent = self.agent(&access, &args.vm).await?;
        Ok(Json(agent.start_process(&req).await?.into()))
    }

    #[tool(
        description = "Read a background process's output from the given byte offsets (0 the first time, then the previous stdout_next_offset and stderr_next_offset), up to max_bytes of each stream, and whether it still runs or how it ended. Output stays readable after the process ended and after reconnecting.",
        annotations(
            title = "Read a background process's output",
            read_only_hint = true,
            open_world_hint = false
        )
    )]
    async fn process_output(
        &self,
        Parameters(args): Parameters<ProcessOutputArgs>,
        access: Access,
    ) -> Result<Json<ProcessOutputView>, ToolError> {
        let length = args.max_bytes.unwrap_or(DEFAULT_OUTPUT_BYTES);
        if !(1..=MAX_OUTPUT_BYTES).contains(&length) {
            return Err(ToolError::invalid(format!(
                "max_bytes must be 1 to {MAX_OUTPUT_BYTES}"
            )));
        }
        let agent = self.agent(&access, &args.vm).await?;
        let out = agent
            .process_output(args.id, OutputStream::Stdout, args.stdout_offset, length)
            .await?;
        let err = agent
            .process_output(args.id, OutputStream::Stderr, args.stderr_offset, length)
            .await?;
        let (stdout, stdout_next) = text(&out);
        let (stderr, stderr_next) = text(&err);
        Ok(Json(ProcessOutputView {
            id: args.id,
            running: out.running && err.running,
            exit_code: err.exit_code,
            signal: err.signal,
            stdout,
            stdout_next_offset: stdout_next,
            stdout_size: out.size,
            stdout_skipped: out.skipped,
            stderr,
            stderr_next_offset: stderr_next,
            stderr_size: err.size,
            stderr_skipped: err.skipped,
        }))
    }

    #[tool(
        description = "Send a signal (default TERM; KILL cannot be ignored) to a background process and every process it started (its whole process group). Returns the process; process_output or process_list shows when it has ended.",
        annotations(
            title = "Signal a background process",
            destructive_hint = true,
            open_world_hint = false
        )
    )]
    async fn process_signal(
        &self,
        Parameters(args): Parameters<ProcessSignalArgs>,
        access: Access,
    ) -> Result<Json<ProcessView>, ToolError> {
        let signal: ProcessSignal = args
            .signal
            .as_deref()
            .unwrap_or("TERM")
            .parse()
            .map_err(ToolError::invalid)?;
        let agent = self.agent(&access, &args.vm).await?;
        Ok(Json(agent.signal_process(args.id, signal).await?.into()))
    }

    #[tool(
        description = "List the background processes of a running VM (started with start_process; the agent keeps the last 64), running or finished, with their ids, states and output sizes.",
        annotations(
            title = "List background processes",
            read_only_hint = true,
            open_world_hint = false
        )
    )]
    async fn process_list(
        &self,
        Parameters(args): Parameters<VmArgs>,
        access: Access,
    ) -> Result<Json<ProcessList>, ToolError> {
        let processes = self.agent(&access, &args.vm).await?.processes().await?;
        Ok(Json(ProcessList {
            processes: processes
                .into_iter()
                .take(nexus_lib::agent::MAX_PROCESSES)
                .map(ProcessView::from)
                .collect(),
        }))
    }
}

/// The output as text and the offset after it. A character cut at the end is left for the next
/// read unless the stream has ended there.
fn text(out: &ProcessOutput) -> (String, u64) {
    let data = &out.data;
    let end = out.offset + data.len() as u64;
    let keep = match std::str::from_utf8(data) {
        Err(e) if e.error_len().is_none() && (out.running || end < out.size) => e.valid_up_to(),
        _ => data.len(),
    };
    (
        String::from_utf8_lossy(&data[..keep]).into_owned(),
        out.offset + keep as u64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(data: &[u8], running: bool, size: u64) -> ProcessOutput {
        ProcessOutput {
            id: 1,
            stream: OutputStream::Stdout,
            offset: 10,
            data: data.to_vec(),
            size,
            skipped: 0,
            running,
            exit_code: None,
            signal: None,
        }
    }

    #[test]
    fn a_character_cut_at_the_end_is_left_for_the_next_read() {
        let out = output("aé".as_bytes()[..2].as_ref(), true, 13);
        assert_eq!(text(&out), ("a".to_string(), 11));
    }

    #[test]
    fn the_last_bytes_of_an_ended_stream_are_returned_whatever_they_are() {
        let out = output(b"a\xc3", false, 12);
        assert_eq!(text(&out), ("a\u{FFFD}".to_string(), 12));
    }
}
