"""Idle memory and time to ready of `l8 run` on its default config, beside the interpreter's floors.

    .venv/bin/python -m bench.rss [--runs N] [--l8 PATH]

Each run starts `l8 run --grpc-port 0 --http-port 0 --data-dir <tmp>` in a fresh temp dir (the
packaged configs/default.yaml: embedded NATS, every default component), times spawn → first 204
from GET /v1.0/healthz/outbound, waits until 3 s after "l8 ready", then reads VmRSS of the l8
process only (its nats-server child is shown apart). The comparison rows, measured in the same run
with the same interpreter: a bare `python` sleeping, and a `python` that only imports what `l8 run`
imports (so "l8 idle" minus "imports only" is what starting costs). Medians of --runs (default 3).
Pass --l8 to measure another install, e.g. a venv made with a plain `pip install .`.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.procs import child_env, children, rss_mb, stop, venv_bin

SETTLE = 3.0  # seconds after "l8 ready" before reading VmRSS
DEADLINE = 30.0
_HTTP = re.compile(r"HTTP 127\.0\.0\.1:(\d+)")
# What `l8 run` imports before it starts (runtime/cli.py, then runtime/sidecar.py in _serve).
_IMPORTS = "import runtime.cli, runtime.sidecar, uvloop"
_REPORT = "import time\nprint('ok', flush=True)\ntime.sleep(60)"


@dataclass
class L8Run:
    rss: float
    ready: float
    nats_rss: float
    threads: int


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def run_l8(l8: str) -> L8Run:
    with tempfile.TemporaryDirectory(prefix="l8-rss-") as tmp:
        start = time.monotonic()
        proc = subprocess.Popen(
            [l8, "run", "--grpc-port", "0", "--http-port", "0", "--data-dir", str(Path(tmp) / "data")],
            cwd=tmp,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        try:
            assert proc.stderr is not None
            port = None
            for line in proc.stderr:
                if match := _HTTP.search(line):
                    port = int(match.group(1))
                if "l8 ready" in line:
                    break
            if port is None:
                raise RuntimeError(f"l8 exited ({proc.poll()}) before it reported ready")
            ready_at = time.monotonic()
            ready = _healthz(port, start)
            time.sleep(max(0.0, ready_at + SETTLE - time.monotonic()))
            nats = [rss_mb(pid) for pid in children(proc.pid)]
            return L8Run(rss_mb(proc.pid), ready, sum(nats), threads(proc.pid))
        finally:
            stop(proc)
            if proc.stderr is not None:
                proc.stderr.close()


def _healthz(port: int, start: float) -> float:
    url = f"http://127.0.0.1:{port}/v1.0/healthz/outbound"
    while time.monotonic() - start < DEADLINE:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 204:
                    return time.monotonic() - start
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.005)
    raise TimeoutError(f"{url} did not answer 204 within {DEADLINE}s")


def run_python(python: str, code: str) -> float:
    proc = subprocess.Popen(
        [python, "-c", f"{code}\n{_REPORT}"],
        # Not the checkout: `python -c` puts its cwd first on sys.path, and --l8 may name another install.
        cwd=tempfile.gettempdir(),
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=child_env(),
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        return rss_mb(proc.pid)
    finally:
        stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.rss", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--l8", default=None, help="the l8 console script (default: this venv's)")
    args = parser.parse_args()
    l8 = args.l8 or venv_bin("l8")
    python = str(Path(l8).parent / "python")
    runs = [run_l8(l8) for _ in range(args.runs)]
    bare = statistics.median(run_python(python, "pass") for _ in range(args.runs))
    imports = statistics.median(run_python(python, _IMPORTS) for _ in range(args.runs))
    rss = statistics.median(r.rss for r in runs)
    print(f"l8: {l8}  ({args.runs} runs, medians; loadavg {os.getloadavg()[0]:.2f})")
    print(f"{'row':<34}{'VmRSS MB':>10}")
    print(f"{'python, bare interpreter':<34}{bare:>10.1f}")
    print(f"{'python, imports of l8 run only':<34}{imports:>10.1f}")
    print(f"{'l8 run, idle (l8 process only)':<34}{rss:>10.1f}   runs {[round(r.rss, 1) for r in runs]}")
    print(f"{'  of which starting (idle-imports)':<34}{rss - imports:>10.1f}")
    print(f"{'  nats-server child (apart)':<34}{statistics.median(r.nats_rss for r in runs):>10.1f}")
    print(f"threads in l8: {[r.threads for r in runs]}")
    ready = statistics.median(r.ready for r in runs)
    print(f"time to ready (spawn -> healthz/outbound 204): {ready:.2f} s   runs {[round(r.ready, 2) for r in runs]}")


if __name__ == "__main__":
    sys.exit(main())
