"""Files in a local directory (metadata ``root``).

An upload is written to ``<root>/.l8-tmp/`` and renamed into place once complete and synced, so a
file is either the old one or the new one, never part of one; an upload that fails or is cancelled
leaves only its temporary file, which is removed (or, after a crash, swept at the next start when
it is a day old). Of two uploads of one name, the last rename wins. A file's metadata is a JSON file
in ``<root>/.l8-meta/``, named by the SHA-256 of the file's name. Disk calls run in threads, and a
cancelled call is let finish before its file is closed, so a thread never writes to a reused
descriptor.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import stat
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from bridges.errors import InvalidArgument, L8Error, NotFound
from bridges.localfs.paths import Root
from bridges.protocols import FileInfo, FilePage
from bridges.registry import BridgeEnv

T = TypeVar("T")
READ = 128 << 10
_STALE = 86_400.0


async def blocking(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a thread; if the caller is cancelled, the call still finishes first."""
    future = asyncio.get_running_loop().run_in_executor(None, fn, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await future
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class LocalDirFileStore:
    """A ``FileStore`` on a directory of this host."""

    def __init__(self, name: str, metadata: dict[str, str], env: BridgeEnv) -> None:
        self.name = name
        self._what = f"file store {name!r}"
        self.root = Root(metadata.get("root", ""), self._what)
        self._locks: dict[str, asyncio.Lock] = {}

    def features(self) -> frozenset[str]:
        return frozenset()

    async def start(self) -> None:
        await blocking(self._open)

    def _open(self) -> None:
        self.root.open()
        for sub in (".l8-tmp", ".l8-meta"):
            (self.root.real / sub).mkdir(exist_ok=True)
        now = time.time()
        for entry in (self.root.real / ".l8-tmp").iterdir():
            with contextlib.suppress(OSError):
                if now - entry.lstat().st_mtime > _STALE:
                    entry.unlink()

    async def stop(self) -> None:
        return None

    def _meta_path(self, name: str) -> Path:
        return self.root.real / ".l8-meta" / (hashlib.sha256(name.encode()).hexdigest() + ".json")

    def _read_meta(self, name: str) -> dict[str, str]:
        try:
            raw = json.loads(self._meta_path(name).read_bytes())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}

    def _real_file(self, name: str) -> tuple[Path, os.stat_result]:
        """The file's real path and stat; NotFound unless it is a regular file inside the root."""
        path = self.root.path_of(name)
        real = Path(os.path.realpath(path))
        try:
            st = os.stat(real)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"{self._what} has no file {name!r}") from None
        except OSError as exc:
            raise L8Error(f"{self._what}: stat {name!r}: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise NotFound(f"{self._what} has no file {name!r} (that name is not a regular file)")
        return real, st

    # ---- upload ----

    async def put(self, name: str, chunks: AsyncIterator[bytes], metadata: dict[str, str]) -> FileInfo:
        path = self.root.path_of(name)
        tmp = self.root.real / ".l8-tmp" / uuid.uuid4().hex
        meta_tmp = tmp.with_suffix(".meta") if metadata else None
        fd = await blocking(os.open, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        size = 0
        try:
            try:
                async for block in chunks:
                    await blocking(_write_all, fd, block)
                    size += len(block)
                await blocking(os.fsync, fd)
            finally:
                os.close(fd)
            if meta_tmp is not None:
                await blocking(meta_tmp.write_text, json.dumps(metadata))
            lock = self._locks.setdefault(name, asyncio.Lock())
            async with lock:
                await blocking(self._commit, name, path, tmp, meta_tmp)
        except BaseException:
            for leftover in (tmp, meta_tmp):
                if leftover is not None:
                    with contextlib.suppress(OSError):
                        leftover.unlink()
            raise
        finally:
            held = self._locks.get(name)
            if held is not None and not held.locked():
                self._locks.pop(name, None)
        return FileInfo(name, size, time.time(), dict(metadata))

    def _commit(self, name: str, path: Path, tmp: Path, meta_tmp: Path | None) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise InvalidArgument(f"{self._what}: a file is in the way of {name!r}'s directory") from None
        if not self.root.inside(path.parent):
            raise InvalidArgument(f"{self._what}: name {name!r} leads out of the store's root through a symlink")
        if path.is_dir() and not path.is_symlink():
            raise InvalidArgument(f"{self._what}: {name!r} is a directory")
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)
        if meta_tmp is not None:
            os.replace(meta_tmp, self._meta_path(name))
        else:
            self._meta_path(name).unlink(missing_ok=True)

    # ---- download ----

    async def get(self, name: str) -> tuple[FileInfo, AsyncGenerator[bytes, None]]:
        info = await self.stat(name)
        return info, self._read(name)

    async def _read(self, name: str) -> AsyncGenerator[bytes, None]:
        real, _ = await blocking(self._real_file, name)
        try:
            fd = await blocking(os.open, real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"{self._what} has no file {name!r}") from None
        except OSError as exc:
            raise L8Error(f"{self._what}: open {name!r}: {exc.strerror}") from None
        try:
            while True:
                block = await blocking(os.read, fd, READ)
                if not block:
                    return
                yield block
        finally:
            os.close(fd)

    # ---- the rest ----

    async def stat(self, name: str) -> FileInfo:
        return await blocking(self._stat, name)

    def _stat(self, name: str) -> FileInfo:
        _, st = self._real_file(name)
        return FileInfo(name, st.st_size, st.st_mtime, self._read_meta(name))

    async def list(self, directory: str, after: str, limit: int) -> FilePage:
        return await blocking(self._list, directory, after, limit)

    def _list(self, directory: str, after: str, limit: int) -> FilePage:
        base = self.root.path_of(directory) if directory else self.root.real
        names: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
            here = Path(dirpath)
            if here == self.root.real:
                dirnames[:] = [d for d in dirnames if not self.root.is_reserved(d)]
            for filename in filenames:
                path = here / filename
                name = self.root.name_of(path)
                if name <= after or self.root.is_reserved(name):
                    continue
                if path.is_symlink() and not self.root.inside(path):
                    continue
                names.append(name)
        names.sort()
        files: list[FileInfo] = []
        for name in names:
            try:
                info = self._stat(name)
            except (NotFound, InvalidArgument):
                continue  # removed meanwhile, or a link to something that is not a file
            if len(files) == limit:
                return FilePage(files, truncated=True)
            files.append(info)
        return FilePage(files, truncated=False)

    async def delete(self, name: str) -> None:
        await blocking(self._delete, name)

    def _delete(self, name: str) -> None:
        path = self.root.path_of(name)
        try:
            if path.is_dir() and not path.is_symlink():
                raise NotFound(f"{self._what} has no file {name!r} (that name is a directory)")
            path.unlink()
        except FileNotFoundError:
            raise NotFound(f"{self._what} has no file {name!r}") from None
        self._meta_path(name).unlink(missing_ok=True)
