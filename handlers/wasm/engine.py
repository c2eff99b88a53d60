"""One wasmtime Engine per process, its epoch ticker, and compiled modules cached on disk.

Every store of the process shares the Engine, so its config is fixed here: epoch interruption (the
wall-clock deadline of a call) and fuel (a function's optional instruction budget; functions
without one get an effectively unlimited budget). A ticker thread advances the epoch every
``TICK`` seconds while any function runs, which gives deadlines a resolution of one tick.

The cache keys a compiled module by the sha256 of its bytes, the wasmtime version and this config,
so a wasmtime upgrade or a config change compiles again instead of loading an artifact built for
another engine.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import wasmtime

from handlers.wasm.abi import ModuleError

log = logging.getLogger("l8.wasm")

TICK = 0.01  # seconds per epoch tick
# The config the Engine is built with; part of every cache key.
ENGINE_CONFIG = "epoch_interruption=1;consume_fuel=1;max_wasm_stack=1048576;cranelift_opt_level=speed"
WASMTIME_VERSION = importlib.metadata.version("wasmtime")

_lock = threading.Lock()
_engine: wasmtime.Engine | None = None


def engine() -> wasmtime.Engine:
    global _engine
    with _lock:
        if _engine is None:
            config = wasmtime.Config()
            config.epoch_interruption = True
            config.consume_fuel = True
            config.max_wasm_stack = 1 << 20
            config.cranelift_opt_level = "speed"
            _engine = wasmtime.Engine(config)
        return _engine


class EpochTicker:
    """Advances the Engine's epoch while at least one user holds it (``acquire``/``release``)."""

    def __init__(self) -> None:
        self._users = 0
        self._lock = threading.Lock()
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        with self._lock:
            self._users += 1
            if self._thread is None:
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._run, args=(self._stop,), name="l8-epoch", daemon=True)
                self._thread.start()

    def release(self) -> None:
        with self._lock:
            self._users = max(0, self._users - 1)
            if self._users or self._thread is None or self._stop is None:
                return
            stop, thread = self._stop, self._thread
            self._stop = self._thread = None
        stop.set()
        thread.join()

    @staticmethod
    def _run(stop: threading.Event) -> None:
        eng = engine()
        while not stop.wait(TICK):
            eng.increment_epoch()


ticker = EpochTicker()


def ticks_for(seconds: float) -> int:
    """Epoch ticks that cover ``seconds`` however far the current tick has gone."""
    return max(1, int(seconds / TICK + 0.999)) + 1


def digest(wasm: bytes) -> str:
    return hashlib.sha256(wasm).hexdigest()


@dataclass(frozen=True, slots=True)
class Compiled:
    module: wasmtime.Module
    digest: str
    cached: bool  # loaded from the disk cache rather than compiled


def _cache_key(sha: str) -> str:
    config = hashlib.sha256(f"{WASMTIME_VERSION}|{ENGINE_CONFIG}".encode()).hexdigest()[:16]
    return f"{sha}-{WASMTIME_VERSION}-{config}.cwasm"


def compile_module(wasm: bytes, cache_dir: Path | None) -> Compiled:
    """Compile ``wasm`` (or load it from ``cache_dir``); ModuleError when the bytes are not a module."""
    sha = digest(wasm)
    eng = engine()
    path = cache_dir / _cache_key(sha) if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            return Compiled(wasmtime.Module.deserialize_file(eng, str(path)), sha, True)
        except wasmtime.WasmtimeError as exc:
            # A truncated or foreign file: compile again and replace it.
            log.warning("compiled module cache %s is unusable (%s); compiling again", path, exc)
    try:
        module = wasmtime.Module(eng, wasm)
    except wasmtime.WasmtimeError as exc:
        raise ModuleError(f"not a valid WebAssembly module: {_first_line(str(exc))}") from None
    if path is not None:
        _store(path, module.serialize())
    return Compiled(module, sha, False)


def _store(path: Path, artifact: bytearray) -> None:
    """Write atomically: a reader sees the whole artifact or none, whichever process wrote it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(artifact)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not cache a compiled module in %s: %s", path.parent, exc)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines[:3])[:300] if lines else "unknown error"
