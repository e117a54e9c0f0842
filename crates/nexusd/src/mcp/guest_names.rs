//! What nexusd accepts of the tool list a per-VM MCP server reports (the guest is untrusted), and
//! how those tools are named on `/mcp`: `<vm>__<server>__<tool>`. VM and server names never
//! contain `_`, so the first two `__` split a name unambiguously whatever the tool's name is, and
//! no host tool (`vm_create`, `run_command`, …) contains `__`. A reported tool whose name is not
//! `[A-Za-z0-9_.-]{1,64}`, repeats an earlier one, or whose input schema is too large is left out;
//! past [`MAX_TOOLS_PER_SERVER`] the rest are left out; descriptions are cut. Only the name,
//! description and input schema are passed on: annotations (hints such as `readOnlyHint`) and
//! output schemas are claims a guest could use to mislead a client, so they are dropped.

use std::borrow::Cow;
use std::sync::Arc;

use rmcp::model::Tool;

/// Most tools one per-VM server exposes.
pub const MAX_TOOLS_PER_SERVER: usize = 64;
/// Longest tool name a per-VM server may report (bytes).
pub const MAX_TOOL_NAME: usize = 64;
/// Longest description passed on (characters; longer ones are cut).
pub const MAX_DESCRIPTION_CHARS: usize = 2048;
/// Largest input schema passed on (bytes of JSON).
pub const MAX_SCHEMA_BYTES: usize = 32 * 1024;

/// A tool of a per-VM server as `/mcp` shows it, with the name its server knows it by.
#[derive(Debug, Clone)]
pub struct GuestTool {
    pub exposed: Tool,
    pub original: String,
}

/// The name on `/mcp` of tool `tool` of server `server` in VM `vm`.
pub fn exposed_name(vm: &str, server: &str, tool: &str) -> String {
    format!("{vm}__{server}__{tool}")
}

/// Whether a name a guest reports is acceptable as a tool name.
pub fn valid_tool_name(name: &str) -> bool {
    (1..=MAX_TOOL_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The tools of `reported` that `/mcp` shows for server `server` of VM `vm`, and how many were
/// left out.
pub fn admit(vm: &str, server: &str, reported: Vec<Tool>) -> (Vec<GuestTool>, usize) {
    let total = reported.len();
    let mut kept: Vec<GuestTool> = Vec::new();
    for tool in reported {
        if kept.len() == MAX_TOOLS_PER_SERVER {
            break;
        }
        if !valid_tool_name(&tool.name) || kept.iter().any(|k| k.original == tool.name) {
            continue;
        }
        let schema_bytes = serde_json::to_vec(&*tool.input_schema).map_or(usize::MAX, |v| v.len());
        if schema_bytes > MAX_SCHEMA_BYTES {
            continue;
        }
        let said: String = tool
            .description
            .as_deref()
            .unwrap_or("")
            .chars()
            .take(MAX_DESCRIPTION_CHARS)
            .collect();
        let description = format!("[MCP server {server} in VM {vm}] {said}");
        let exposed = Tool::new(
            exposed_name(vm, server, &tool.name),
            Cow::Owned(description),
            Arc::clone(&tool.input_schema),
        );
        kept.push(GuestTool {
            exposed,
            original: tool.name.into_owned(),
        });
    }
    let left_out = total - kept.len();
    (kept, left_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str) -> Tool {
        Tool::new(name.to_owned(), "does things", serde_json::Map::new())
    }

    #[test]
    fn tools_are_renamed_under_their_vm_and_server() {
        let (kept, left_out) = admit("web", "echo", vec![tool("say")]);

        assert_eq!(left_out, 0);
        assert_eq!(kept[0].exposed.name, "web__echo__say");
        assert_eq!(kept[0].original, "say");
    }

    #[test]
    fn bad_duplicate_and_oversized_tools_are_left_out() {
        let mut huge = tool("huge");
        let mut schema = serde_json::Map::new();
        schema.insert("x".into(), "y".repeat(MAX_SCHEMA_BYTES).into());
        huge.input_schema = Arc::new(schema);
        let reported = vec![
            tool("ok"),
            tool("ok"),
            tool(""),
            tool("a b"),
            tool("../x"),
            tool(&"n".repeat(MAX_TOOL_NAME + 1)),
            huge,
        ];

        let (kept, left_out) = admit("vm", "s", reported);

        assert_eq!(kept.len(), 1);
        assert_eq!(left_out, 6);
    }

    #[test]
    fn at_most_the_cap_of_tools_is_kept_and_descriptions_are_cut() {
        let mut long = tool("t0");
        long.description = Some("d".repeat(10 * MAX_DESCRIPTION_CHARS).into());
        let reported: Vec<Tool> = std::iter::once(long)
            .chain((1..200).map(|i| tool(&format!("t{i}"))))
            .collect();

        let (kept, left_out) = admit("vm", "s", reported);

        assert_eq!(kept.len(), MAX_TOOLS_PER_SERVER);
        assert_eq!(left_out, 200 - MAX_TOOLS_PER_SERVER);
        let description = kept[0].exposed.description.as_deref().unwrap_or("");
        assert!(description.len() < MAX_DESCRIPTION_CHARS + 100);
    }

    #[test]
    fn guest_tool_names_cannot_reach_into_another_namespace() {
        // The tool part may hold `__`, but the VM and server parts come first and hold no `_`.
        let name = exposed_name("a", "b", "c__d");

        let mut parts = name.splitn(3, "__");

        assert_eq!(
            (parts.next(), parts.next(), parts.next()),
            (Some("a"), Some("b"), Some("c__d"))
        );
    }
}
