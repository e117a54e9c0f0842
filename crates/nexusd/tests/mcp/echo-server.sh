# A tiny stdio MCP server for busybox sh, run inside test VMs as a per-VM MCP server. It reads
# one JSON-RPC message per line (as rmcp writes them: compact, "id" right after "jsonrpc") and
# answers initialize, ping, tools/list and tools/call. Tools: `echo` returns its `text` argument
# with this process's pid (so a restart is visible); `crash` exits without answering. It says
# on stderr that it started, which the agent keeps in /run/nexus-agent/mcp/<name>.log.
echo "echo server $$ started" >&2
reply() { printf '{"jsonrpc":"2.0","id":%s,"result":%s}\n' "$1" "$2"; }
while IFS= read -r line; do
  id=$(printf '%s\n' "$line" | sed -n 's/^{"jsonrpc":"2.0","id":\([0-9][0-9]*\),.*/\1/p')
  case "$line" in
    *'"method":"initialize"'*)
      version=$(printf '%s\n' "$line" | sed -n 's/.*"protocolVersion":"\([^"]*\)".*/\1/p')
      reply "$id" '{"protocolVersion":"'"$version"'","capabilities":{"tools":{}},"serverInfo":{"name":"echo","version":"1"}}' ;;
    *'"method":"tools/list"'*)
      reply "$id" '{"tools":[{"name":"echo","description":"Echoes text back with the server pid.","inputSchema":{"type":"object","properties":{"text":{"type":"string"}},"required":["text"]}},{"name":"crash","description":"Exits the server.","inputSchema":{"type":"object"}},{"name":"bad name!","description":"An invalid name nexusd must drop.","inputSchema":{"type":"object"}}]}' ;;
    *'"method":"tools/call"'*'"name":"crash"'*)
      exit 7 ;;
    *'"method":"tools/call"'*)
      text=$(printf '%s\n' "$line" | sed -n 's/.*"text":"\([^"]*\)".*/\1/p')
      reply "$id" '{"content":[{"type":"text","text":"echo: '"$text"' from pid '"$$"'"}],"isError":false}' ;;
    *'"method":"ping"'*)
      reply "$id" '{}' ;;
    *)
      if [ -n "$id" ]; then
        printf '{"jsonrpc":"2.0","id":%s,"error":{"code":-32601,"message":"method not found"}}\n' "$id"
      fi ;;
  esac
done
