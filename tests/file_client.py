"""A File API client as Layotto's clients call it (100 KiB PutFile messages), for tests and benches."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc

MB = 1 << 20
LAYOTTO_CHUNK = 102400
_BLOCK = os.urandom(4 * MB)  # content is slices of one random block, so making it costs nothing


def content(size: int, chunk: int = LAYOTTO_CHUNK) -> AsyncIterator[bytes]:
    async def pieces() -> AsyncIterator[bytes]:
        offset = 0
        while offset < size:
            n = min(chunk, size - offset)
            start = offset % (len(_BLOCK) - chunk)
            yield _BLOCK[start : start + n]
            offset += n

    return pieces()


async def digest_of(size: int) -> str:
    h = hashlib.sha256()
    async for piece in content(size):
        h.update(piece)
    return h.hexdigest()


async def upload(stub: runtime_pb2_grpc.RuntimeStub, store: str, name: str, size: int) -> None:
    async def messages() -> AsyncIterator[pb.PutFileRequest]:
        first = True
        async for piece in content(size):
            if first:
                yield pb.PutFileRequest(store_name=store, name=name, data=piece)
                first = False
            else:
                yield pb.PutFileRequest(data=piece)

    await stub.PutFile(messages())


async def download(stub: runtime_pb2_grpc.RuntimeStub, store: str, name: str) -> tuple[int, str]:
    """The size and SHA-256 of what GetFile streams, without keeping it."""
    h = hashlib.sha256()
    total = 0
    async for resp in stub.GetFile(pb.GetFileRequest(store_name=store, name=name)):
        total += len(resp.data)
        h.update(resp.data)
    return total, h.hexdigest()


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """VmRSS (or VmHWM, the peak) of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for {pid}")
