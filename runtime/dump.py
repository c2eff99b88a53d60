"""Request dump (Layotto's TCP copy, as request records): windows of ``dump.duration`` seconds, one
every ``dump.interval``, in which a ``sample_rate`` share of the unary gRPC calls is written to
``dump.dir`` as varint-delimited records (runtime/dump_format.py) for ``l8 dump replay``.

- A window opens only while this process's CPU use (percent of the machine's cores, since the last
  check) is under ``cpu_max_rate`` and its resident memory (percent of the machine's) under
  ``mem_max_rate``; otherwise the window is skipped with a log line.
- Never recorded: the secrets APIs, health and reflection, metadata that carries credentials
  (``authorization``, ``dapr-api-token``, cookies, anything named like a token, a secret or a
  password, binary ``-bin`` values), and calls that are replays themselves (metadata ``l8-replay``).
- Records go through a bounded queue to one writer thread, so a call never waits on the disk; a
  record that finds the queue full is dropped and counted. Files rotate at ``max_file_bytes``, and
  only the newest ``max_files`` of this app are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import random
import re
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from runtime.dump_format import Record, delimited
from runtime.ops_config import DumpConfig

log = logging.getLogger("l8.dump")

REPLAY_KEY = "l8-replay"
_SECRET_KEY = re.compile(r"token|secret|passw|credential|auth|cookie|api-key|apikey", re.IGNORECASE)
_NEVER = ("/grpc.health.", "/grpc.reflection.")
_SECRET_METHODS = ("/GetSecret", "/GetBulkSecret", "/GetSecretAlpha1", "/GetBulkSecretAlpha1")
QUEUE = 10_000


def dumpable(method: str) -> bool:
    return not method.startswith(_NEVER) and not method.endswith(_SECRET_METHODS)


def kept_metadata(pairs: Iterable[tuple[str, Any]]) -> list[tuple[str, str]] | None:
    """The metadata a record keeps, or None for a replayed call (never recorded again)."""
    kept: list[tuple[str, str]] = []
    for key, value in pairs:
        if key == REPLAY_KEY:
            return None
        if not isinstance(value, str) or key.endswith("-bin") or key.startswith(":") or _SECRET_KEY.search(key):
            continue
        kept.append((key, value))
    return kept


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _memory_percent() -> float:
    try:
        rss_pages = int(Path("/proc/self/statm").read_text().split()[1])
        total_kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    except (OSError, ValueError, StopIteration, IndexError):
        return 0.0
    return rss_pages * os.sysconf("SC_PAGE_SIZE") / (total_kb * 1024) * 100


class Dump:
    """``start``/``stop`` are idempotent; ``record`` is called by the gRPC hooks for every call."""

    def __init__(self, config: DumpConfig, app_id: str) -> None:
        self.config = config
        self._app_id = app_id
        self._dir = Path(config.dir)
        self._window: str | None = None
        self._until = 0.0
        self._queue: queue.Queue[Record | None] = queue.Queue(QUEUE)
        self._writer: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self._cpu_mark = (time.monotonic(), _cpu_seconds())
        self.dropped = 0
        self.windows = 0
        self.skipped = 0

    def records(self, method: str) -> bool:
        return dumpable(method)

    @property
    def open(self) -> bool:
        return self._window is not None and time.monotonic() < self._until

    def record(self, method: str, metadata: Iterable[tuple[str, Any]], body: Any, elapsed: float, code: str) -> None:
        window = self._window
        if window is None or time.monotonic() >= self._until or not isinstance(body, bytes):
            return
        rate = self.config.sample_rate
        if rate < 1.0 and random.random() >= rate:
            return
        kept = kept_metadata(metadata)
        if kept is None:
            return
        now = time.time_ns()
        record = Record(now - int(elapsed * 1e9), method, kept, body, int(elapsed * 1e9), code, window)
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    # ---- windows ----

    async def start(self) -> None:
        if self._task is not None:
            return
        self._dir.mkdir(parents=True, exist_ok=True)
        self._writer = threading.Thread(target=self._write, name="l8-dump-writer", daemon=True)
        self._writer.start()
        self._task = asyncio.create_task(self._windows(), name="l8-dump-windows")

    async def stop(self) -> None:
        task, self._task = self._task, None
        self._window = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        writer, self._writer = self._writer, None
        if writer is not None:
            self._queue.put(None)
            await asyncio.to_thread(writer.join, 10.0)

    def usage(self) -> tuple[float, float]:
        """(CPU percent of the machine's cores since the last look, resident memory percent)."""
        now, cpu = time.monotonic(), _cpu_seconds()
        then, cpu_then = self._cpu_mark
        self._cpu_mark = (now, cpu)
        wall = max(now - then, 1e-6)
        return (cpu - cpu_then) / wall / (os.cpu_count() or 1) * 100, _memory_percent()

    async def _windows(self) -> None:
        cfg = self.config
        await asyncio.sleep(min(0.5, cfg.interval))  # a first CPU sample
        while True:
            cpu, mem = self.usage()
            if cpu < cfg.cpu_max_rate and mem < cfg.mem_max_rate:
                self._window = uuid.uuid4().hex
                self._until = time.monotonic() + cfg.duration
                self.windows += 1
                log.info(
                    "dump window %s open for %gs (CPU %.1f%%, memory %.1f%%)", self._window, cfg.duration, cpu, mem
                )
            else:
                self.skipped += 1
                log.info(
                    "dump window skipped: CPU %.1f%% (max %g%%), memory %.1f%% (max %g%%)",
                    cpu,
                    cfg.cpu_max_rate,
                    mem,
                    cfg.mem_max_rate,
                )
            await asyncio.sleep(cfg.interval)

    # ---- the writer thread ----

    def _files(self) -> list[Path]:
        return sorted(self._dir.glob(f"l8-dump-{self._app_id}-*.bin"))

    def _write(self) -> None:
        out: Any = None
        written = 0
        try:
            while True:
                record = self._queue.get()
                if record is None:
                    return
                data = delimited(record)
                if out is None or written + len(data) > self.config.max_file_bytes:
                    if out is not None:
                        out.close()
                    out, written = self._rotate(), 0
                out.write(data)
                written += len(data)
                if self._queue.empty():
                    out.flush()
        except OSError as exc:
            log.error("the request dump stopped: cannot write to %s: %s", self._dir, exc.strerror or exc)
        finally:
            if out is not None:
                out.close()

    def _rotate(self) -> Any:
        name = self._dir / f"l8-dump-{self._app_id}-{time.time_ns():020d}.bin"
        out = open(name, "ab")  # noqa: SIM115 - held across records by the writer thread
        for old in self._files()[: -self.config.max_files]:
            with contextlib.suppress(OSError):
                old.unlink()
        return out
