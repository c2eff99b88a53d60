"""The compile cache of functions: keyed by content, shared by the processes of a host (one of them
compiles a new module, the others load what it compiled), used only where no one else may write,
and an artifact that does not match its digest is compiled again."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest

from handlers.wasm import engine
from tests import wasm_modules as mods


@pytest.fixture(scope="module")
def go_guest() -> bytes:
    return mods.build_guests()["go"].read_bytes()


def test_compiled_modules_are_cached_on_disk_by_content(go_guest: bytes, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = engine.compile_module(go_guest, cache)
    second = engine.compile_module(go_guest, cache)
    assert (first.cached, second.cached) == (False, True)
    assert len(list(cache.glob(f"{first.digest}-*.l8cwasm"))) == 1
    assert cache.stat().st_mode & 0o777 == 0o700  # made for this user alone


def test_loaders_of_one_new_module_at_once_compile_it_once_and_the_others_load_what_it_compiled(
    go_guest: bytes, tmp_path: Path
) -> None:
    # Threads stand in for processes: the lock is a file lock, which separate opens of the file
    # contend for in one process as in many.
    cache, n = tmp_path / "shared", 3
    start = threading.Barrier(n)
    cached: list[bool] = []

    def load() -> None:
        start.wait()
        cached.append(engine.compile_module(go_guest, cache).cached)

    threads = [threading.Thread(target=load) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(cached) == [False] + [True] * (n - 1)


def test_a_cache_others_may_write_to_or_replace_is_not_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wasm = mods.echo_version(7)
    cache = tmp_path / "open"
    cache.mkdir()
    os.chmod(cache, 0o777)
    assert [engine.compile_module(wasm, cache).cached for _ in range(2)] == [False, False]
    assert f"the compiled module cache is not used, modules compile each time: others may write to {cache}" in (
        caplog.text
    )
    assert not list(cache.iterdir())
    # Made by l8 (0700) in a directory anyone may write to: another user could swap it for theirs.
    inner = cache / "cache"
    assert engine.compile_module(wasm, inner).cached is False
    assert f"others may write to {cache}, so they could replace cache" in caplog.text
    assert not list(inner.iterdir())
    # Unless that directory is sticky, as /tmp is: then only its owner may rename or remove it.
    os.chmod(cache, 0o1777)
    assert [engine.compile_module(wasm, inner).cached for _ in range(2)] == [False, True]


def test_a_damaged_artifact_is_compiled_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "l8.wasm")
    cache = tmp_path / "cache"
    wasm = mods.echo_version(8)
    engine.compile_module(wasm, cache)
    (artifact,) = cache.glob("*.l8cwasm")
    data = bytearray(artifact.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the machine code
    artifact.write_bytes(bytes(data))
    assert engine.compile_module(wasm, cache).cached is False
    assert f"compiled module cache {artifact} is damaged; compiling again" in caplog.text
    assert engine.compile_module(wasm, cache).cached is True  # and stored whole again
