"""`l8 run` and `l8 worker` as subprocesses, as a user starts them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.servers import free_port, stop_pid

L8 = str(Path(sys.executable).parent / "l8")


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces; the ppid is the 2nd field after the closing paren.
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@dataclass
class L8Process:
    proc: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int
    log_path: Path
    cwd: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 20.0) -> float:
        """Seconds until /v1.0/healthz/outbound answered 204."""
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"l8 exited with {self.proc.returncode}:\n{self.log()}")
            url = f"http://127.0.0.1:{self.http_port}/v1.0/healthz/outbound"
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 204:
                    return time.monotonic() - began
            time.sleep(0.02)
        raise TimeoutError(f"l8 not ready after {timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def spawn(
    args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    cwd = cwd or Path(tempfile.mkdtemp(prefix="l8-run-"))
    log_path = cwd / f"l8-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([L8, *args], cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env or dict(os.environ))
    return proc, log_path


def start_l8(
    config: dict[str, Any] | None = None,
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    wait: bool = True,
) -> L8Process:
    """`l8 run` on free ports with ``config`` (or the packaged default when None)."""
    cwd = cwd or Path(tempfile.mkdtemp(prefix="l8-run-"))
    grpc_port, http_port = free_port(), free_port()
    argv = ["run", "--grpc-port", str(grpc_port), "--http-port", str(http_port), *args]
    if config is not None:
        argv = ["run", "--config", str(write_config(cwd / "l8.yaml", config)), *argv[1:]]
    proc, log_path = spawn(argv, cwd, env)
    l8 = L8Process(proc, grpc_port, http_port, log_path, cwd)
    if wait:
        try:
            l8.wait_ready()
        except BaseException:
            l8.stop(signal.SIGKILL)
            raise
    return l8


def start_worker(
    config: dict[str, Any], bus_url: str, handlers: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    cwd = cwd or Path(tempfile.mkdtemp(prefix="l8-worker-"))
    path = write_config(cwd / "worker.yaml", config)
    proc, _ = spawn(["worker", "--config", str(path), "--bus", bus_url, "--handlers", handlers], cwd, env)
    return proc


@contextlib.contextmanager
def l8_running(config: dict[str, Any] | None = None, *args: str, **kw: Any) -> Iterator[L8Process]:
    l8 = start_l8(config, *args, **kw)
    try:
        yield l8
    finally:
        l8.stop()


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        stop_pid(proc)


def wait_until_served(address: str, probe: Any, timeout: float = 30.0) -> None:
    """Call ``probe(channel)`` until it stops failing with UNAVAILABLE (a worker still starting)."""
    import grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        while True:
            try:
                probe(channel)
                return
            except grpc.RpcError as exc:
                if exc.code() is not grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:  # type: ignore[attr-defined]
                    raise
            time.sleep(0.1)
