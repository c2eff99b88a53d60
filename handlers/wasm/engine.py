"""One wasmtime Engine per process, its epoch ticker, and compiled modules cached on disk.

Every store of the process shares the Engine, so its config is fixed here: epoch interruption (the
wall-clock deadline of a call) and fuel (a function's optional instruction budget; functions
without one get an effectively unlimited budget). A ticker thread advances the epoch every
``TICK`` seconds while any function runs, which gives deadlines a resolution of one tick.

The cache keys a compiled module by the sha256 of its bytes, the wasmtime version and this config,
so a wasmtime upgrade or a config change compiles again instead of loading an artifact built for
another engine. Processes of one user on a host share it (``compile_module`` says how it stays safe).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
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
    return f"{sha}-{WASMTIME_VERSION}-{config}.l8cwasm"


def compile_module(wasm: bytes, cache_dir: Path | None) -> Compiled:
    """Compile ``wasm`` (or load it from ``cache_dir``); ModuleError when the bytes are not a module.

    Every process on a host may share one cache: a module compiles once, under a lock the others
    wait on (a worker's deploy finds what the deploy command compiled). Since loading a compiled
    artifact runs its machine code, the cache is used only when this user alone can write to it
    (``usable``), and each artifact is checked against the digest stored with it before it loads.
    """
    sha = digest(wasm)
    eng = engine()
    if cache_dir is None or not usable(cache_dir):
        return Compiled(_compile(eng, wasm), sha, False)
    path = cache_dir / _cache_key(sha)
    found = _load(eng, path)
    if found is not None:
        return Compiled(found, sha, True)
    with _locked(path.with_suffix(".lock")):
        found = _load(eng, path)  # compiled by another process while this one waited
        if found is not None:
            return Compiled(found, sha, True)
        module = _compile(eng, wasm)
        _store(path, module.serialize())
    return Compiled(module, sha, False)


def _compile(eng: wasmtime.Engine, wasm: bytes) -> wasmtime.Module:
    try:
        return wasmtime.Module(eng, wasm)
    except wasmtime.WasmtimeError as exc:
        raise ModuleError(f"not a valid WebAssembly module: {_first_line(str(exc))}") from None


# An artifact on disk: magic | sha256 of the artifact | the artifact (wasmtime's serialized module).
_MAGIC = b"l8cwasm1"
_HEADER = len(_MAGIC) + 32
_refused: dict[Path, str] = {}  # cache dirs not used, and why (each is logged once)


def usable(cache_dir: Path) -> bool:
    """Whether ``cache_dir`` (created 0700 when missing) is a directory of this user that no one
    else may write to, in a parent where no one else can replace it (the parent is this user's
    and closed to others' writes, or sticky, as /tmp is); a cache anyone else could write to is
    not used. Checked at each load, so a cache removed or fixed meanwhile is made again or used
    again."""
    why = ""
    try:
        cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(cache_dir)
        parent = os.stat(cache_dir.parent)
        if not stat.S_ISDIR(st.st_mode):
            why = f"{cache_dir} is not a directory"
        elif st.st_uid != os.geteuid():
            why = f"{cache_dir} belongs to another user"
        elif st.st_mode & 0o022:
            why = f"others may write to {cache_dir}"
        elif parent.st_mode & 0o022 and not parent.st_mode & stat.S_ISVTX:
            why = f"others may write to {cache_dir.parent}, so they could replace {cache_dir.name}"
        elif parent.st_uid not in (os.geteuid(), 0):
            why = f"{cache_dir.parent} belongs to another user"
    except OSError as exc:
        why = f"{cache_dir}: {exc.strerror or exc}"
    if why and _refused.get(cache_dir) != why:
        log.warning("the compiled module cache is not used, modules compile each time: %s", why)
    if why:
        _refused[cache_dir] = why
    else:
        _refused.pop(cache_dir, None)
    return not why


def _load(eng: wasmtime.Engine, path: Path) -> wasmtime.Module | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("compiled module cache %s is unreadable (%s); compiling again", path, exc)
        return None
    if (
        data[: len(_MAGIC)] != _MAGIC
        or hashlib.sha256(memoryview(data)[_HEADER:]).digest() != data[len(_MAGIC) : _HEADER]
    ):
        log.warning("compiled module cache %s is damaged; compiling again", path)
        return None
    try:
        return wasmtime.Module.deserialize(eng, data[_HEADER:])
    except wasmtime.WasmtimeError as exc:
        log.warning("compiled module cache %s is unusable (%s); compiling again", path, _first_line(str(exc)))
        return None


@contextlib.contextmanager
def _locked(path: Path, wait: float = 120.0) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` across processes; past ``wait`` go on without it (a
    process that hangs while it compiles must not stop the others)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        log.warning("cannot lock %s (%s); compiling without the lock", path, exc.strerror or exc)
        yield
        return
    try:
        give_up = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > give_up:
                    log.warning("%s stayed locked for %.0fs; compiling without the lock", path, wait)
                    break
                time.sleep(0.005)
        yield
    finally:
        os.close(fd)  # releases the lock


def _store(path: Path, artifact: bytearray) -> None:
    """Write atomically: a reader sees the whole artifact or none, whichever process wrote it."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC)
            f.write(hashlib.sha256(artifact).digest())
            f.write(artifact)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not cache a compiled module in %s: %s", path.parent, exc)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines[:3])[:300] if lines else "unknown error"
