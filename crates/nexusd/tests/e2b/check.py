"""Scenarios of the unmodified E2B SDK (PyPI `e2b`) against nexusd's E2B listener.

Run by tests/e2b.rs with E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY set. Each scenario
raises (with what it expected and what it got) on failure and prints JSON facts for the
Rust side on its last line.
"""

import json
import sys
import threading
import time

from e2b import CommandExitException, Sandbox, SandboxQuery
from e2b.sandbox.commands.command_handle import PtySize


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def wait_for(pred, what, limit=30.0):
    deadline = time.time() + limit
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def commands(sbx):
    seen = []
    result = sbx.commands.run("echo hi", on_stdout=seen.append)
    expect(result.exit_code == 0, f"echo hi exit {result.exit_code}")
    expect(result.stdout == "hi\n", f"echo hi stdout {result.stdout!r}")
    expect("".join(seen) == "hi\n", f"on_stdout saw {seen!r}")

    err = []
    try:
        sbx.commands.run("echo oops >&2; exit 3", on_stderr=err.append)
        raise AssertionError("a non-zero exit did not raise CommandExitException")
    except CommandExitException as e:
        expect(e.exit_code == 3, f"exit code {e.exit_code}")
        expect("oops" in e.stderr, f"stderr {e.stderr!r}")
    expect("".join(err) == "oops\n", f"on_stderr saw {err!r}")

    handle = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.send_stdin(handle.pid, "from stdin\n")
    sbx.commands.close_stdin(handle.pid)
    result = handle.wait()
    expect(result.stdout == "from stdin\n", f"cat echoed {result.stdout!r}")

    handle = sbx.commands.run("sleep 1; echo done", background=True)
    running = [p.pid for p in sbx.commands.list()]
    expect(handle.pid in running, f"pid {handle.pid} not in list {running}")
    result = handle.wait()
    expect(result.stdout == "done\n", f"background stdout {result.stdout!r}")

    result = sbx.commands.run("echo $NEXUS_E2B_VAR", envs={"NEXUS_E2B_VAR": "from-envs"})
    expect(result.stdout == "from-envs\n", f"envs: {result.stdout!r}")


def kill_tree(sbx):
    # Processes named `sleep`, counted from /proc (busybox has no pgrep).
    count = "grep -lx sleep /proc/[0-9]*/comm 2>/dev/null | wc -l"
    sleeps = lambda: sbx.commands.run(count).stdout.strip()
    handle = sbx.commands.run("sleep 300 & sleep 300 & wait", background=True)
    wait_for(lambda: sleeps() == "2", "the command's two children to start")
    expect(sbx.commands.kill(handle.pid), "kill() returned False")
    wait_for(lambda: sleeps() == "0", "every child to die", 10)


def files(sbx):
    info = sbx.files.write("/tmp/e2b/hello.txt", "hello from the sdk")
    expect(info.path == "/tmp/e2b/hello.txt", f"write answered {info}")
    expect(sbx.files.read("/tmp/e2b/hello.txt") == "hello from the sdk", "read back")
    expect(sbx.files.make_dir("/tmp/e2b/sub"), "make_dir of a new dir returned False")
    expect(not sbx.files.make_dir("/tmp/e2b/sub"), "make_dir of an existing dir returned True")
    names = sorted(e.name for e in sbx.files.list("/tmp/e2b"))
    expect(names == ["hello.txt", "sub"], f"list: {names}")
    moved = sbx.files.rename("/tmp/e2b/hello.txt", "/tmp/e2b/sub/moved.txt")
    expect(moved.path == "/tmp/e2b/sub/moved.txt", f"rename answered {moved}")
    expect(sbx.files.exists("/tmp/e2b/sub/moved.txt"), "moved file missing")
    expect(not sbx.files.exists("/tmp/e2b/hello.txt"), "old name still there")
    deep = sorted(e.path for e in sbx.files.list("/tmp/e2b", depth=2))
    expect(deep == ["/tmp/e2b/sub", "/tmp/e2b/sub/moved.txt"], f"depth 2: {deep}")
    sbx.files.remove("/tmp/e2b/sub")
    expect(not sbx.files.exists("/tmp/e2b/sub"), "removed dir still there")
    blob = bytes(range(256)) * 1024
    sbx.files.write("/tmp/e2b/blob.bin", blob)
    expect(sbx.files.read("/tmp/e2b/blob.bin", format="bytes") == blob, "binary round trip")


def wait_for_event(handle, events, name, kind, what):
    wait_for(
        lambda: events.extend(handle.get_new_events()) or any(
            e.name == name and e.type.name == kind for e in events
        ),
        f"a {kind} event for {what} (saw {[(e.name, e.type.name) for e in events]})",
        15,
    )


def watch(sbx):
    sbx.files.make_dir("/tmp/watched")
    handle = sbx.files.watch_dir("/tmp/watched")
    events = []
    sbx.commands.run("echo x > /tmp/watched/made-by-command")
    wait_for_event(handle, events, "made-by-command", "CREATE", "the file a command made")
    sbx.commands.run("echo more >> /tmp/watched/made-by-command")
    wait_for_event(handle, events, "made-by-command", "WRITE", "the file a command appended to")
    sbx.commands.run("rm /tmp/watched/made-by-command")
    wait_for_event(handle, events, "made-by-command", "REMOVE", "the file a command removed")
    handle.stop()

    recursive = sbx.files.watch_dir("/tmp/watched", recursive=True)
    events = []
    sbx.commands.run("mkdir -p /tmp/watched/later/deeper && echo y > /tmp/watched/later/deeper/f")
    wait_for_event(
        recursive, events, "later/deeper/f", "CREATE", "a file in a directory made after the watch"
    )
    recursive.stop()


def pty(sbx):
    out = []
    handle = sbx.pty.create(PtySize(rows=24, cols=80))
    t = threading.Thread(
        target=lambda: handle.wait(on_pty=lambda d: out.append(bytes(d))), daemon=True
    )
    t.start()
    text = lambda: b"".join(out).decode("utf-8", "replace")
    sbx.pty.send_stdin(handle.pid, b"stty size\n")
    wait_for(lambda: "24 80" in text(), f"stty size 24 80 (got {text()!r})", 15)
    sbx.pty.resize(handle.pid, PtySize(rows=30, cols=100))
    sbx.pty.send_stdin(handle.pid, b"stty size\n")
    wait_for(lambda: "30 100" in text(), f"stty size 30 100 after resize (got {text()!r})", 15)
    sbx.pty.send_stdin(handle.pid, b"exit\n")
    t.join(15)
    expect(not t.is_alive(), "the PTY did not end after exit")


def listing(sbx, run):
    mine = Sandbox.list(query=SandboxQuery(metadata={"run": run})).next_items()
    expect([s.sandbox_id for s in mine] == [sbx.sandbox_id], f"metadata filter: {mine}")
    expect(mine[0].metadata.get("run") == run, f"metadata: {mine[0].metadata}")
    other = Sandbox.list(query=SandboxQuery(metadata={"run": run + "-other"})).next_items()
    expect(other == [], f"filter on another value: {other}")


def main():
    scenario = sys.argv[1]
    run = sys.argv[2] if len(sys.argv) > 2 else "r"
    if scenario == "all":
        sbx = Sandbox.create(metadata={"run": run, "suite": "nexus"}, timeout=900)
        commands(sbx)
        kill_tree(sbx)
        files(sbx)
        watch(sbx)
        pty(sbx)
        listing(sbx, run)
        expect(sbx.kill(), "kill() returned False")
        expect(not Sandbox.kill(sbx.sandbox_id), "a second kill found the sandbox")
        print(json.dumps({"sandbox": sbx.sandbox_id}))
    elif scenario == "start-long":
        sbx = Sandbox.create(metadata={"run": run}, timeout=900)
        handle = sbx.commands.run(
            "echo begin; sleep 180; echo end", background=True, timeout=0
        )
        print(json.dumps({"sandbox": sbx.sandbox_id, "pid": handle.pid}))
    elif scenario == "reconnect":
        sandbox_id, pid = sys.argv[3], int(sys.argv[4])
        sbx = Sandbox.connect(sandbox_id)
        handle = sbx.commands.connect(pid, timeout=0)
        result = handle.wait()
        expect(result.stdout == "begin\nend\n", f"reconnected stdout {result.stdout!r}")
        expect(result.exit_code == 0, f"exit {result.exit_code}")
        expect(sbx.kill(), "kill() returned False")
        print(json.dumps({"sandbox": sandbox_id}))
    elif scenario == "timeout":
        sbx = Sandbox.create(metadata={"run": run}, timeout=600)
        sbx.set_timeout(3)
        deadline = time.time() + 60
        while time.time() < deadline:
            if not Sandbox.list(query=SandboxQuery(metadata={"run": run})).next_items():
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the sandbox outlived its timeout")
        expect(not sbx.is_running(), "is_running() after expiry")
        print(json.dumps({"sandbox": sbx.sandbox_id}))
    else:
        raise SystemExit(f"unknown scenario {scenario}")


if __name__ == "__main__":
    main()
