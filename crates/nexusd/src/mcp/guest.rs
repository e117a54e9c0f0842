//! Guest tools: `run_command` and the file tools (`read_file`, `write_file`, `list_dir`, `stat`,
//! `remove`), through the VM's guest agent like the REST exec and file endpoints. Everything the
//! guest sends is bounded here: read sizes, listing lengths, output kept in memory.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::StreamExt;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};

use super::NexusMcp;
use super::access::Access;
use super::args::{
    CommandResult, DirEntryView, DirView, Encoding, FileContent, FileInfo, ListDirArgs,
    MAX_READ_BYTES, MAX_WRITE_BYTES, PathArgs, ReadFileArgs, RemoveArgs, Removed, RunCommandArgs,
    WriteFileArgs, kind_name,
};
use super::error::ToolError;
use super::run;
use crate::agent::AgentClient;

#[tool_router(router = guest_tools, vis = "pub(super)")]
impl NexusMcp {
    #[tool(
        description = "Run a command in a running VM and wait for it: `command` is a shell line (/bin/sh -c), `argv` a program and its arguments. Returns exit_code (or the signal), stdout, stderr and timed_out. Output longer than the server's limit (20000 characters in all unless configured otherwise) is cut in the middle with a marker, and the whole of it is saved in a file in the VM whose path is returned (stdout_file, stderr_file). The command and everything it started are killed at timeout_secs (default 300) or when the call is cancelled. Sends progress notifications while it runs when the request has a progress token.",
        annotations(
            title = "Run a command",
            destructive_hint = true,
            open_world_hint = true
        )
    )]
    async fn run_command(
        &self,
        Parameters(args): Parameters<RunCommandArgs>,
        access: Access,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<CommandResult>, ToolError> {
        let req = args.exec_request().map_err(ToolError::invalid)?;
        let agent = self.agent(&access, &args.vm).await?;
        let result = run::run(&agent, &req, self.settings.output_max_chars, &ctx).await?;
        Ok(Json(result))
    }

    #[tool(
        description = "Read a regular file in a running VM: up to `length` bytes (default 20000, at most 262144) from byte `offset`, as UTF-8 text or, with encoding \"base64\", as base64 of the raw bytes (use that for binary files). Returns the content, the file's size, eof, and next_offset to continue from.",
        annotations(title = "Read a file", read_only_hint = true, open_world_hint = false)
    )]
    async fn read_file(
        &self,
        Parameters(args): Parameters<ReadFileArgs>,
        access: Access,
    ) -> Result<Json<FileContent>, ToolError> {
        let default_length = self.settings.output_max_chars as u64;
        let length = args.length.unwrap_or(default_length);
        if !(1..=MAX_READ_BYTES).contains(&length) {
            return Err(ToolError::invalid(format!(
                "length must be 1 to {MAX_READ_BYTES}"
            )));
        }
        let agent = self.agent(&access, &args.vm).await?;
        let range = agent.read_range(&args.path, args.offset, length).await?;
        let mut content = range.content;
        let mut bytes = Vec::new();
        while let Some(chunk) = content.next().await {
            bytes.extend_from_slice(&chunk?);
        }
        drop(content);
        let text = match args.encoding {
            Encoding::Base64 => BASE64.encode(&bytes),
            Encoding::Text => {
                let cut_at_end = (bytes.len() as u64) == length;
                let text = utf8_prefix(&bytes, cut_at_end).map_err(|at| {
                    ToolError::new(format!(
                        "{} is not UTF-8 text (invalid byte at offset {}); read it with encoding \"base64\"",
                        args.path,
                        args.offset + at as u64
                    ))
                })?;
                if text.is_empty() && !bytes.is_empty() {
                    return Err(ToolError::invalid(
                        "length is too small to hold one character here; ask for more bytes",
                    ));
                }
                let text = text.to_string();
                bytes.truncate(text.len());
                text
            }
        };
        let end = args.offset + bytes.len() as u64;
        let eof = match range.size {
            Some(size) => end >= size,
            None => (bytes.len() as u64) < length,
        };
        Ok(Json(FileContent {
            path: args.path,
            offset: args.offset,
            bytes: bytes.len() as u64,
            size: range.size,
            eof,
            next_offset: (!eof).then_some(end),
            encoding: args.encoding,
            content: text,
        }))
    }

    #[tool(
        description = "Write a whole file in a running VM (created or replaced; written aside and renamed, so readers never see half a file). Content is UTF-8 text or, with encoding \"base64\", base64 of the bytes; at most 8 MiB. The directory must exist (create it with run_command and mkdir -p). Returns the file's metadata.",
        annotations(
            title = "Write a file",
            destructive_hint = true,
            open_world_hint = false
        )
    )]
    async fn write_file(
        &self,
        Parameters(args): Parameters<WriteFileArgs>,
        access: Access,
    ) -> Result<Json<FileInfo>, ToolError> {
        let mode = match args.mode.as_deref() {
            None => 0o644,
            Some(m) => u32::from_str_radix(m, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| {
                    ToolError::invalid(format!("mode {m:?} is not octal like \"644\""))
                })?,
        };
        let content = match args.encoding {
            Encoding::Text => args.content.into_bytes(),
            Encoding::Base64 => BASE64
                .decode(args.content.as_bytes())
                .map_err(|e| ToolError::invalid(format!("content is not base64: {e}")))?,
        };
        if content.len() > MAX_WRITE_BYTES {
            return Err(ToolError::invalid(format!(
                "content is larger than {MAX_WRITE_BYTES} bytes; split it or create the file with run_command"
            )));
        }
        nexus_lib::agent::validate_path(&args.path).map_err(ToolError::invalid)?;
        let agent = self.agent(&access, &args.vm).await?;
        let body = futures_util::stream::once(async move {
            Ok::<_, std::io::Error>(bytes::Bytes::from(content))
        });
        Ok(Json(agent.write_file(&args.path, mode, body).await?.into()))
    }

    #[tool(
        description = "List a directory in a running VM: each entry's name, kind (file, dir, symlink, other), size and mode, sorted by name; at most `limit` entries (default 1000), with truncated set when there are more.",
        annotations(
            title = "List a directory",
            read_only_hint = true,
            open_world_hint = false
        )
    )]
    async fn list_dir(
        &self,
        Parameters(args): Parameters<ListDirArgs>,
        access: Access,
    ) -> Result<Json<DirView>, ToolError> {
        let limit = args.limit.unwrap_or(super::args::DEFAULT_LIST_LIMIT);
        if !(1..=super::args::MAX_LIST_LIMIT).contains(&limit) {
            return Err(ToolError::invalid(format!(
                "limit must be 1 to {}",
                super::args::MAX_LIST_LIMIT
            )));
        }
        let listing = self
            .agent(&access, &args.vm)
            .await?
            .list(&args.path)
            .await?;
        let truncated = listing.truncated || listing.entries.len() > limit;
        Ok(Json(DirView {
            path: listing.path,
            entries: listing
                .entries
                .into_iter()
                .take(limit)
                .map(|e| DirEntryView {
                    name: crate::sanitize::clean(e.name, 1024),
                    kind: kind_name(e.kind).to_string(),
                    size: e.size,
                    mode: format!("{:04o}", e.mode),
                })
                .collect(),
            truncated,
        }))
    }

    #[tool(
        description = "Metadata of a path in a running VM (not following a final symlink): kind, size, mode, owner, modification time. Fails with guest_not_found when nothing is there.",
        annotations(title = "Stat a path", read_only_hint = true, open_world_hint = false)
    )]
    async fn stat(
        &self,
        Parameters(args): Parameters<PathArgs>,
        access: Access,
    ) -> Result<Json<FileInfo>, ToolError> {
        Ok(Json(
            self.agent(&access, &args.vm)
                .await?
                .stat(&args.path)
                .await?
                .into(),
        ))
    }

    #[tool(
        description = "Remove a file, a symlink or an empty directory in a running VM; with recursive true, a directory and everything in it. Refuses `/`.",
        annotations(
            title = "Remove a path",
            destructive_hint = true,
            open_world_hint = false
        )
    )]
    async fn remove(
        &self,
        Parameters(args): Parameters<RemoveArgs>,
        access: Access,
    ) -> Result<Json<Removed>, ToolError> {
        let agent = self.agent(&access, &args.vm).await?;
        agent.remove(&args.path, args.recursive).await?;
        Ok(Json(Removed { removed: args.path }))
    }
}

impl NexusMcp {
    /// The agent of a running VM the caller may see.
    pub(super) async fn agent(&self, access: &Access, vm: &str) -> Result<AgentClient, ToolError> {
        let id = self.visible_vm(access, vm).await?;
        Ok(self.state.lifecycle.agent(&id.to_string()).await?.1)
    }
}

/// `bytes` as UTF-8, without an incomplete character at the end when the read was cut there;
/// the offset of the first invalid byte otherwise.
fn utf8_prefix(bytes: &[u8], cut_at_end: bool) -> Result<&str, usize> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(text),
        Err(e) if e.error_len().is_none() && cut_at_end => {
            Ok(std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default())
        }
        Err(e) => Err(e.valid_up_to()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_cut_inside_a_character_stops_before_it() {
        assert_eq!(utf8_prefix("aé".as_bytes()[..2].as_ref(), true), Ok("a"));
    }

    #[test]
    fn invalid_text_names_the_offset() {
        assert_eq!(utf8_prefix(b"ab\xffcd", false), Err(2));
    }

    #[test]
    fn a_file_ending_inside_a_character_is_not_text() {
        assert_eq!(utf8_prefix("aé".as_bytes()[..2].as_ref(), false), Err(1));
    }
}
