"""`python -m tests.shards N [pytest args]`: the suite as N pytest processes side by side (`make test`).

Shard 0 prints to the terminal as it runs; the others write to a log each, printed when they end. The exit code is
the first non-zero one. See `--shard` in tests/conftest.py for why and how files are split.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack


def main(argv: list[str]) -> int:
    shards, extra = int(argv[0]), argv[1:]
    start = time.perf_counter()
    with ExitStack() as stack:
        logs = [
            stack.enter_context(tempfile.TemporaryFile("w+", prefix=f"pytest-shard{i}-"))
            for i in range(shards)
        ]
        procs = []
        for i in range(shards):
            out = None if i == 0 else logs[i]
            cmd = [sys.executable, "-m", "pytest", "-q", "tests", f"--shard={i}/{shards}", *extra]
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None))
        codes = [p.wait() for p in procs]
        for i in range(1, shards):
            logs[i].seek(0)
            print(f"\n===== shard {i}/{shards} (exit {codes[i]}) =====\n{logs[i].read()}", flush=True)
    print(f"tests.shards: {shards} shards, exits {codes}, {time.perf_counter() - start:.0f} s of wall time")
    return next((c for c in codes if c), 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
