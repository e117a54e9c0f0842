"""Drives nexusd's MCP server with the official Python MCP SDK (PyPI `mcp` 2.x), as an MCP client
written by others would. Run by crates/nexusd/tests/mcp.rs; fails with an exception and a message
naming what was expected.

    check.py --transport http|tcp|stdio --mode legacy|2026-07-28 --socket SOCK --nexusctl BIN
             --home HOME [--url URL --token TOKEN] SCENARIO [--vm NAME]

`http` talks Streamable HTTP to /mcp on the daemon's Unix socket, `tcp` to URL with the bearer
TOKEN; `stdio` spawns `nexusctl mcp serve`. `legacy` is the 2025-11-25 initialize handshake, `2026-07-28` the stateless
revision.
"""

import argparse
import base64
import hashlib
import json
import pathlib
import sys
import time

import anyio
import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

TOOLS = {
    "vm_create", "vm_list", "vm_show", "vm_start", "vm_stop", "vm_delete", "image_list",
    "run_command", "read_file", "write_file", "list_dir", "stat", "remove",
    "start_process", "process_output", "process_signal", "process_list",
}


def check(condition, message, *details):
    if not condition:
        extra = "".join(f"\n  {d!r}"[:4000] for d in details)
        raise AssertionError(f"{message}{extra}")


def log(text):
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def connect(args, transport=None, **options):
    transport = transport or args.transport
    if transport == "stdio":
        server = StdioServerParameters(
            command=args.nexusctl, args=["--home", args.home, "mcp", "serve"]
        )
    elif transport == "tcp":
        http = httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {args.token}"},
            timeout=httpx2.Timeout(30.0, read=300.0),
        )
        server = streamable_http_client(args.url, http_client=http)
    else:
        http = httpx2.AsyncClient(
            transport=httpx2.AsyncHTTPTransport(uds=args.socket),
            timeout=httpx2.Timeout(30.0, read=300.0),
        )
        server = streamable_http_client("http://localhost/mcp", http_client=http)
    return Client(server, mode=args.mode, raise_exceptions=True, **options)


async def call(client, tool, arguments, **kw):
    """Calls a tool that must succeed; returns its structured result."""
    result = await client.call_tool(tool, arguments, **kw)
    text = " ".join(getattr(c, "text", "") for c in result.content)
    check(not result.is_error, f"{tool} failed", arguments, text)
    check(isinstance(result.structured_content, dict), f"{tool}: no structured content", result)
    return result.structured_content


async def call_error(client, tool, arguments):
    """Calls a tool that must fail as a tool result (isError); returns its text."""
    result = await client.call_tool(tool, arguments)
    text = " ".join(getattr(c, "text", "") for c in result.content)
    check(result.is_error, f"{tool} should have failed with isError", arguments, result)
    return text


async def run(client, vm, command, **extra):
    return await call(client, "run_command", {"vm": vm, "command": command, **extra})


async def scenario_tools(client, args):
    listed = await client.list_tools()
    names = {t.name for t in listed.tools}
    check(names == TOOLS, "tools/list does not list exactly the expected tools", sorted(names))
    for tool in listed.tools:
        check(tool.description and len(tool.description) > 40, f"{tool.name}: no useful description")
        check(tool.input_schema.get("type") == "object", f"{tool.name}: input schema is not an object")
    run_command = next(t for t in listed.tools if t.name == "run_command")
    props = run_command.input_schema["properties"]
    for arg in ["vm", "command", "argv", "cwd", "env", "stdin", "timeout_secs"]:
        check(arg in props, f"run_command takes no {arg}", sorted(props))
    check(run_command.input_schema.get("additionalProperties") is False,
          "run_command accepts unknown arguments")
    text = await call_error(client, "vm_show", {"vm": "no-such-vm"})
    check("not_found" in text and "vm_list" in text, "a missing VM's error is not actionable", text)
    text = await call_error(client, "run_command", {"vm": "x", "command": "true", "bogus": 1})
    check("unknown field `bogus`" in text, "an unknown argument is not named", text)
    text = await call_error(client, "run_command", {"vm": "x"})
    check("command" in text and "argv" in text, "a missing command is not explained", text)
    try:
        await client.call_tool("no_such_tool", {})
    except MCPError as e:
        check(e.error.code == -32602, "an unknown tool is not -32602 (invalid params)", e.error)
    else:
        raise AssertionError("calling an unknown tool did not raise a JSON-RPC error")
    log(f"tools ok: {len(names)} tools")


async def scenario_vm(client, args):
    vm = args.vm
    created = await call(client, "vm_create", {"name": vm, "network": "none", "memory_mib": 256})
    check(created["state"] == "running", "vm_create did not boot the VM", created)
    listed = await call(client, "vm_list", {})
    check(vm in [v["name"] for v in listed["vms"]], "vm_list misses the new VM", listed)
    shown = await call(client, "vm_show", {"vm": vm})
    check(shown["last_boot"] and "ready after" in shown["last_boot"], "vm_show has no boot", shown)

    out = await run(client, vm, "uname -n; echo err >&2; exit 3")
    check(out["stdout"] == f"{vm}\n", "stdout is not the guest's hostname", out)
    check(out["stderr"] == "err\n" and out["exit_code"] == 3, "stderr or exit code wrong", out)
    out = await call(client, "run_command", {
        "vm": vm, "argv": ["sh", "-c", 'cat; echo "$GREETING"; pwd'],
        "stdin": "from stdin\n", "env": {"GREETING": "hello"}, "cwd": "/tmp",
    })
    check(out["stdout"] == "from stdin\nhello\n/tmp\n", "argv, stdin, env or cwd not applied", out)
    out = await run(client, vm, "sleep 5", timeout_secs=1)
    check(out["timed_out"] and out["exit_code"] is None, "the timeout did not kill it", out)

    ticks = []

    async def progress(value, total, message):
        ticks.append((value, total, message))

    out = await call(client, "run_command", {"vm": vm, "command": "sleep 2.5; echo done"},
                     progress_callback=progress)
    check(out["stdout"] == "done\n", "the slow command's output is wrong", out)
    check(len(ticks) >= 2, "no progress notifications during a 2.5 s command", ticks)
    check(all(a[0] < b[0] for a, b in zip(ticks, ticks[1:])), "progress does not increase", ticks)

    text = "héllo wörld\nline 2\n"
    written = await call(client, "write_file", {"vm": vm, "path": "/root/note.txt",
                                                "content": text, "mode": "600"})
    check(written["size"] == len(text.encode()) and written["mode"] == "0600",
          "write_file metadata wrong", written)
    read = await call(client, "read_file", {"vm": vm, "path": "/root/note.txt"})
    check(read["content"] == text and read["eof"], "text did not round-trip", read)
    part = await call(client, "read_file", {"vm": vm, "path": "/root/note.txt", "offset": 1,
                                            "length": 2})
    check(part["content"] == "é" and part["next_offset"] == 3, "a text range is wrong", part)

    blob = bytes(range(256)) * 64 + b"\x00\xff"
    await call(client, "write_file", {"vm": vm, "path": "/root/blob.bin", "encoding": "base64",
                                      "content": base64.b64encode(blob).decode()})
    read = await call(client, "read_file", {"vm": vm, "path": "/root/blob.bin",
                                            "encoding": "base64", "length": 256 * 1024})
    check(base64.b64decode(read["content"]) == blob and read["size"] == len(blob),
          "binary content did not round-trip", read["size"])
    digest = await run(client, vm, "sha256sum /root/blob.bin")
    check(digest["stdout"].split()[0] == hashlib.sha256(blob).hexdigest(),
          "the guest holds other bytes than written", digest)
    text_error = await call_error(client, "read_file", {"vm": vm, "path": "/root/blob.bin"})
    check("base64" in text_error, "reading binary as text does not point to base64", text_error)

    listing = await call(client, "list_dir", {"vm": vm, "path": "/root"})
    names = {e["name"]: e for e in listing["entries"]}
    check("note.txt" in names and names["blob.bin"]["size"] == len(blob), "list_dir", listing)
    stat = await call(client, "stat", {"vm": vm, "path": "/root"})
    check(stat["kind"] == "dir", "stat of a directory", stat)
    await call(client, "remove", {"vm": vm, "path": "/root/note.txt"})
    missing = await call_error(client, "stat", {"vm": vm, "path": "/root/note.txt"})
    check("guest_not_found" in missing, "a removed file still answers stat", missing)

    stopped = await call(client, "vm_stop", {"vm": vm})
    check(stopped["state"] == "stopped", "vm_stop", stopped)
    not_running = await call_error(client, "run_command", {"vm": vm, "command": "true"})
    check("conflict" in not_running and "vm_start" in not_running,
          "a stopped VM's error does not say to start it", not_running)
    await call(client, "vm_delete", {"vm": vm})
    listed = await call(client, "vm_list", {})
    check(vm not in [v["name"] for v in listed["vms"]], "vm_delete left the VM", listed)
    log("vm ok")


def sleepers(ps_output):
    return [line for line in ps_output.splitlines() if "sleep 600" in line]


async def scenario_cancel(client, args):
    vm = args.vm
    started = anyio.Event()
    outcome = {}

    async def progress(value, total, message):
        started.set()

    async def long_call():
        try:
            outcome["result"] = await client.call_tool(
                "run_command", {"vm": vm, "command": "sleep 600"}, progress_callback=progress)
        except anyio.get_cancelled_exc_class():
            outcome["cancelled"] = True
            raise

    async with anyio.create_task_group() as tg:
        tg.start_soon(long_call)
        with anyio.fail_after(30):
            await started.wait()
        before = await run(client, vm, "ps")
        check(sleepers(before["stdout"]), "sleep 600 is not running in the VM", before["stdout"])
        tg.cancel_scope.cancel()
    check(outcome.get("cancelled") and "result" not in outcome,
          "the call was not cancelled on the client", outcome)
    deadline = time.monotonic() + 15
    while True:
        after = await call(client, "run_command", {"vm": vm, "argv": ["ps"]})
        left = sleepers(after["stdout"])
        if not left:
            break
        check(time.monotonic() < deadline, "sleep 600 still runs in the VM 15 s after the cancel",
              left)
        await anyio.sleep(0.2)
    log("cancel ok")


async def read_on(client, vm, pid, offsets):
    """One process_output call from `offsets`; returns (new stdout, new stderr, result)."""
    out = await call(client, "process_output", {"vm": vm, "id": pid,
                                                "stdout_offset": offsets[0],
                                                "stderr_offset": offsets[1]})
    check(out["stdout_skipped"] == 0 and out["stderr_skipped"] == 0, "output was dropped", out)
    offsets[0], offsets[1] = out["stdout_next_offset"], out["stderr_next_offset"]
    return out["stdout"], out["stderr"], out


async def scenario_processes(args):
    vm = args.vm
    script = "for i in 1 2 3 4 5 6; do echo line$i; sleep 0.5; done; echo bye >&2; exit 7"
    offsets, stdout, stderr = [0, 0], "", ""
    async with connect(args) as first:
        started = await call(first, "start_process", {"vm": vm, "command": script})
        pid = started["id"]
        check(started["running"], "start_process did not leave it running", started)
        while "line1" not in stdout:
            new_out, new_err, _ = await read_on(first, vm, pid, offsets)
            stdout, stderr = stdout + new_out, stderr + new_err
            await anyio.sleep(0.2)
    log(f"first client read {offsets[0]} bytes of process {pid}, then left")
    async with connect(args) as second:
        deadline = time.monotonic() + 30
        while True:
            new_out, new_err, out = await read_on(second, vm, pid, offsets)
            stdout, stderr = stdout + new_out, stderr + new_err
            if not out["running"] and offsets[0] == out["stdout_size"]:
                break
            check(time.monotonic() < deadline, "the process did not end within 30 s", out)
            await anyio.sleep(0.3)
        expected = "".join(f"line{i}\n" for i in range(1, 7))
        check(stdout == expected and stderr == "bye\n", "output lost or repeated across clients",
              stdout, stderr)
        check(out["exit_code"] == 7, "exit code of the background process", out)
        listed = await call(second, "process_list", {"vm": vm})
        mine = [p for p in listed["processes"] if p["id"] == pid]
        check(mine and not mine[0]["running"] and mine[0]["exit_code"] == 7, "process_list", listed)

        group = await call(second, "start_process", {"vm": vm,
                                                     "command": "sleep 600 & sleep 601 & wait"})
        await anyio.sleep(1)
        before = await call(second, "run_command", {"vm": vm, "argv": ["ps"]})
        check(sleepers(before["stdout"]) and "sleep 601" in before["stdout"],
              "the group's sleeps do not run", before["stdout"])
        await call(second, "process_signal", {"vm": vm, "id": group["id"], "signal": "KILL"})
        deadline = time.monotonic() + 15
        while True:
            after = await call(second, "run_command", {"vm": vm, "argv": ["ps"]})
            if not sleepers(after["stdout"]) and "sleep 601" not in after["stdout"]:
                break
            check(time.monotonic() < deadline, "a process of the group survived KILL",
                  after["stdout"])
            await anyio.sleep(0.2)
        ended = await call(second, "process_output", {"vm": vm, "id": group["id"]})
        check(ended["signal"] == 9 and not ended["running"], "the leader was not killed", ended)
    log("processes ok")


def expected_output(size):
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\n"
    return (line * (size // len(line) + 1))[:size]


async def scenario_truncate(client, args):
    vm, size = args.vm, 5_000_000
    out = await run(client, vm, f"yes 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                f" | head -c {size}; echo tail-of-stderr >&2")
    check(out["exit_code"] == 0 and out["stdout_bytes"] == size, "wrong size or exit", out["exit_code"],
          out["stdout_bytes"])
    check(len(out["stdout"]) < 21_000, "stdout was not cut to the limit", len(out["stdout"]))
    check("not shown" in out["stdout"] and out["stdout_file"] in out["stdout"],
          "the cut has no marker naming the file", out["stdout"][9_000:11_000])
    expected = expected_output(size)
    check(out["stdout"].startswith(expected[:9000].decode()), "the start of stdout is wrong")
    check(out["stdout"].endswith(expected[-9000:].decode()), "the end of stdout is wrong")
    check(out["stderr"] == "tail-of-stderr\n" and out.get("stderr_file") is None,
          "stderr should be whole", out["stderr"])
    path, offset, whole = out["stdout_file"], 0, bytearray()
    while True:
        part = await call(client, "read_file", {"vm": vm, "path": path, "offset": offset,
                                                "length": 256 * 1024, "encoding": "base64"})
        whole += base64.b64decode(part["content"])
        if part["eof"]:
            break
        offset = part["next_offset"]
    check(len(whole) == size, "the saved file has the wrong size", len(whole))
    check(hashlib.sha256(whole).digest() == hashlib.sha256(expected).digest(),
          "the saved file is not the whole output")
    log(f"truncate ok: {len(out['stdout'])} characters returned, {path} holds {len(whole)} bytes")


async def scenario_scoped(client, args):
    """Run with a token scoped to the VM `mine` (not running) while `theirs` exists too."""
    listed = await call(client, "vm_list", {})
    check([v["name"] for v in listed["vms"]] == ["mine"], "a scoped token sees other VMs", listed)
    shown = await call(client, "vm_show", {"vm": "mine"})
    check(shown["name"] == "mine", "vm_show of the token's own VM", shown)
    for tool, arguments in [
        ("vm_show", {"vm": "theirs"}),
        ("vm_start", {"vm": "theirs"}),
        ("run_command", {"vm": "theirs", "command": "true"}),
        ("read_file", {"vm": "theirs", "path": "/etc/hostname"}),
        ("process_list", {"vm": "theirs"}),
    ]:
        text = await call_error(client, tool, arguments)
        check(text.startswith("not_found:") and "theirs" in text,
              f"{tool} on another VM does not answer as if it did not exist", text)
    for tool, arguments in [("vm_create", {"name": "sneaky"}), ("vm_delete", {"vm": "mine"})]:
        text = await call_error(client, tool, arguments)
        check(text.startswith("forbidden:") and "--lifecycle" in text,
              f"{tool} without lifecycle is not refused", text)
    log("scoped ok")


# A per-VM MCP server: a busybox shell script (tools `echo` and `crash`, and one invalid name).
ECHO_SERVER = (pathlib.Path(__file__).parent / "echo-server.sh").read_text()


async def tool_names(client):
    return {t.name for t in (await client.list_tools()).tools}


async def wait_for_tools(client, wanted, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        names = await tool_names(client)
        if wanted <= names:
            return names
        check(time.monotonic() < deadline, f"{sorted(wanted)} did not appear in tools/list",
              sorted(names))
        await anyio.sleep(0.3)


async def echo(client, tool, text):
    """Calls a per-VM `echo` tool; returns the pid of the server that answered, or None when
    the tool is not there (yet)."""
    try:
        result = await client.call_tool(tool, {"text": text})
    except MCPError as e:
        check(e.error.code == -32602, "calling a missing per-VM tool is not -32602", e.error)
        return None
    said = " ".join(getattr(c, "text", "") for c in result.content)
    if result.is_error:
        return None
    check(said.startswith(f"echo: {text} from pid "), "the per-VM tool answered wrongly", said)
    return said.rsplit(" ", 1)[1]


async def scenario_guest_servers(args):
    """A VM declaring a per-VM server: its tools through the host, a crash and the restart, and
    `tools/list_changed` when the VM stops."""
    vm, changes = args.vm, []

    async def on_message(message):
        inner = getattr(message, "root", message)
        if getattr(inner, "method", None) == "notifications/tools/list_changed":
            changes.append(time.monotonic())

    async with connect(args, message_handler=on_message) as client:
        server = {"name": "echo", "argv": ["/bin/sh", "-c", ECHO_SERVER]}
        created = await call(client, "vm_create", {"name": vm, "network": "none",
                                                   "mcp_servers": [server]})
        check(created["state"] == "running", "vm_create did not boot the VM", created)
        tool, crash = f"{vm}__echo__echo", f"{vm}__echo__crash"
        names = await wait_for_tools(client, {tool, crash})
        check(not [n for n in names if "bad" in n], "an invalid tool name was exposed", sorted(names))
        listed = {t.name: t for t in (await client.list_tools()).tools}
        check(f"VM {vm}" in listed[tool].description, "the description does not name the VM",
              listed[tool].description)
        check(changes, "no tools/list_changed when the server's tools appeared")
        first = await echo(client, tool, "hello")
        check(first, "the per-VM tool failed")
        log(f"{tool} answered from pid {first}")

        crashed = await client.call_tool(crash, {})
        check(crashed.is_error, "a call that crashes the server is not an error", crashed)
        deadline, second = time.monotonic() + 60, None
        while not second:
            check(time.monotonic() < deadline, "the crashed server did not come back in 60 s")
            await anyio.sleep(0.5)
            second = await echo(client, tool, "again")
        check(second != first, "the server was not restarted", first, second)
        log(f"restarted: pid {first} then {second}")
        logged = await call(client, "read_file", {"vm": vm, "path": "/run/nexus-agent/mcp/echo.log"})
        check(f"echo server {first} started" in logged["content"]
              and f"echo server {second} started" in logged["content"],
              "the server's stderr is not in its log", logged["content"])

        seen = len(changes)
        await call(client, "vm_stop", {"vm": vm})
        with anyio.fail_after(15):
            while len(changes) == seen:
                await anyio.sleep(0.1)
        names = await tool_names(client)
        check(not [n for n in names if n.startswith(f"{vm}__")],
              "the stopped VM's tools are still listed", sorted(names))
        await call(client, "vm_delete", {"vm": vm})
    log(f"guest servers ok: {len(changes)} tools/list_changed notifications")


async def scenario_guest_tool(client, args):
    """The running VM `--vm` declares the echo server: its tool appears and answers."""
    tool = f"{args.vm}__echo__echo"
    await wait_for_tools(client, {tool})
    pid = await echo(client, tool, "still here")
    check(pid, f"{tool} does not answer")
    log(f"guest tool ok: {tool} answered from pid {pid}")


async def scenario_guest_scoped(client, args):
    """Run with a token scoped to `mine`; `mine` and `theirs` both run the echo server."""
    async with connect(args, transport="http") as everything:
        await wait_for_tools(everything, {"mine__echo__echo", "theirs__echo__echo"})
    names = await tool_names(client)
    check("mine__echo__echo" in names, "the token does not see its VM's per-VM tools",
          sorted(names))
    check(not [n for n in names if n.startswith("theirs__")],
          "a scoped token sees another VM's per-VM tools", sorted(names))
    check(await echo(client, "mine__echo__echo", "mine"), "the token cannot call its own")
    try:
        await client.call_tool("theirs__echo__echo", {"text": "x"})
    except MCPError as e:
        check(e.error.code == -32602, "another VM's per-VM tool is not answered as unknown",
              e.error)
    else:
        raise AssertionError("a scoped token called another VM's per-VM tool")
    log("guest scoped ok")


SCENARIOS = {
    "tools": scenario_tools,
    "vm": scenario_vm,
    "cancel": scenario_cancel,
    "truncate": scenario_truncate,
    "scoped": scenario_scoped,
    "guest_scoped": scenario_guest_scoped,
    "guest_tool": scenario_guest_tool,
}

# Scenarios that open their own clients (to disconnect and reconnect).
OWN_CLIENTS = {
    "processes": scenario_processes,
    "guest_servers": scenario_guest_servers,
}


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--transport", choices=["http", "tcp", "stdio"], required=True)
    parser.add_argument("--mode", choices=["legacy", "2026-07-28"], required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--nexusctl", required=True)
    parser.add_argument("--home", required=True)
    parser.add_argument("--url")
    parser.add_argument("--token")
    parser.add_argument("--vm", default="mcp-vm")
    parser.add_argument("scenario", choices=sorted([*SCENARIOS, *OWN_CLIENTS]))
    args = parser.parse_args()
    log(f"{args.scenario} over {args.transport} ({args.mode})")
    if args.scenario in OWN_CLIENTS:
        await OWN_CLIENTS[args.scenario](args)
        return
    async with connect(args) as client:
        await SCENARIOS[args.scenario](client, args)


if __name__ == "__main__":
    anyio.run(main)
    sys.exit(0)
