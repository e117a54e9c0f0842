"""The E2B SDK side of benches/e2b.rs: Sandbox.create → first output of a command, and the
commands.run("true") round trip, through the unmodified SDK. Prints one JSON line."""

import json
import sys
import time

from e2b import Sandbox

creates, rounds = int(sys.argv[1]), int(sys.argv[2])
first_output, run_true = [], []
for _ in range(creates):
    t = time.perf_counter()
    sbx = Sandbox.create(timeout=600)
    seen = []

    def out(line):
        if not seen:
            seen.append(time.perf_counter() - t)

    sbx.commands.run("echo first", on_stdout=out)
    first_output.append(seen[0] * 1e3)
    for _ in range(rounds):
        t = time.perf_counter()
        sbx.commands.run("true")
        run_true.append((time.perf_counter() - t) * 1e3)
    sbx.kill()
print(json.dumps({"first_output": first_output, "run_true": run_true}))
