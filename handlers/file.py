"""The File API (Layotto's): PutFile, GetFile, ListFile, DelFile and GetFileMeta on a FileStore.

PutFile and GetFile are streams beside their request (bus/stream.py): the upload's messages are the
caller's PutFileRequests as they came, the first naming the store, the file and its metadata; later
ones carry data and may repeat exactly those fields (Layotto's own clients resend them) but not name
anything else. GetFile answers GetFileResponses of ``CHUNK`` bytes, the last one shorter.

Names are checked here, the same for every bridge: 1 to 1024 bytes of '/'-separated segments, none
empty, '.', '..' or over 255 bytes, no control characters, not absolute, nothing under ``.l8*``
(bridges keep their own files there). A bad request answers INVALID_ARGUMENT and writes nothing;
an upload that fails or is cancelled midway leaves no file. Files are shared by every app of the
namespace, as in Layotto.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime

from bridges.errors import InvalidArgument, Unimplemented
from bridges.protocols import FileInfo, FileStore
from handlers import limits
from handlers.base import ChunkStream, RequestInfo, short
from handlers.proto import runtime_pb2 as pb

CHUNK = 128 << 10  # bytes of data per GetFileResponse
MAX_NAME = limits.FILE_NAME
MAX_SEGMENT = limits.FILE_SEGMENT
MAX_PAGE = limits.FILE_PAGE
DEFAULT_MAX_FILE = 1 << 30
RESERVED = ".l8"  # first segments that bridges keep for themselves (temporary uploads, metadata)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_META_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")


def check_name(name: str, what: str = "name", *, directory: bool = False) -> str:
    """A file name (or, with ``directory``, a directory prefix, "" for the root) as stores take it."""
    if directory:
        name = name.rstrip("/")
        if not name:
            return ""
    if not name:
        raise InvalidArgument(f"{what} is empty")
    if len(name.encode()) > MAX_NAME:
        raise InvalidArgument(f"{what} {short(name)} is over {MAX_NAME} bytes")
    if _CONTROL.search(name):
        raise InvalidArgument(f"{what} {short(name)} holds a control character")
    if name.startswith("/"):
        raise InvalidArgument(f"{what} {short(name)} is absolute; names are relative to the store's root")
    segments = name.split("/")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise InvalidArgument(f"{what} {short(name)} has an empty, '.' or '..' segment")
        if len(segment.encode()) > MAX_SEGMENT:
            raise InvalidArgument(f"{what} {short(name)} has a segment over {MAX_SEGMENT} bytes")
    if segments[0].startswith(RESERVED):
        raise InvalidArgument(f"{what} {short(name)} starts with {RESERVED!r}, which l8 reserves")
    return name


def check_file_metadata(metadata: Mapping[str, str], what: str) -> dict[str, str]:
    limits.check_map(
        metadata, f"{what}: metadata", limits.FILE_META_ENTRIES, limits.FILE_META_KEY, limits.FILE_META_VALUE
    )
    out = dict(metadata)
    for key, value in out.items():
        if not _META_KEY.match(key):
            raise InvalidArgument(f"{what}: metadata key {short(key)} may use only letters, digits, '_', '.' and '-'")
        if _CONTROL.search(value):
            raise InvalidArgument(f"{what}: metadata {short(key)} holds a control character")
    return out


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FileHandler:
    """Serves one file component: unary ops by ``__call__``, the two streams by ``streams``."""

    def __init__(self, component: str, store: FileStore, metadata: dict[str, str]) -> None:
        self.component = component
        self.store = store
        raw = metadata.get("maxFileBytes", str(DEFAULT_MAX_FILE))
        if not raw.isdigit() or int(raw) < 1:
            raise ValueError(f"metadata maxFileBytes: {raw!r} is not a whole number >= 1")
        self.max_file = int(raw)
        self._ops: dict[str, Callable[[bytes, RequestInfo], Awaitable[bytes]]] = {
            "list": self.list,
            "delete": self.delete,
            "meta": self.meta,
        }
        self.streams = {"put": self.put, "get": self.get}

    async def __call__(self, op: str, payload: bytes, ctx: RequestInfo) -> bytes:
        fn = self._ops.get(op)
        if fn is None:
            raise Unimplemented(f"file has no operation {op!r}")
        return await fn(payload, ctx)

    async def put(self, body: bytes, stream: ChunkStream, ctx: RequestInfo) -> bytes:
        messages = aiter(stream)
        raw = await anext(messages, None)
        if raw is None:
            raise InvalidArgument("PutFile sent no message; the first one names the store, the file and its metadata")
        first = pb.PutFileRequest.FromString(raw)
        name = check_name(first.name)
        metadata = check_file_metadata(first.metadata, f"file {short(name)}")
        await self.store.put(name, self._data(first, metadata, messages), metadata)
        return b""

    async def _data(
        self, first: pb.PutFileRequest, metadata: dict[str, str], messages: AsyncIterator[bytes]
    ) -> AsyncIterator[bytes]:
        total = len(first.data)
        self._check_size(total, first.name)
        if first.data:
            yield first.data
        index = 1
        async for raw in messages:
            msg = pb.PutFileRequest.FromString(raw)
            if (
                (msg.store_name and msg.store_name != first.store_name)
                or (msg.name and msg.name != first.name)
                or (msg.metadata and dict(msg.metadata) != metadata)
            ):
                raise InvalidArgument(
                    f"PutFile message {index} names another store, file or metadata than the first; "
                    "only the first message says which file it is"
                )
            total += len(msg.data)
            self._check_size(total, first.name)
            if msg.data:
                yield msg.data
            index += 1

    def _check_size(self, total: int, name: str) -> None:
        if total > self.max_file:
            raise InvalidArgument(
                f"file {short(name)} is over {self.max_file} bytes, the most file store {self.component!r} takes"
            )

    async def get(self, body: bytes, stream: ChunkStream, ctx: RequestInfo) -> bytes:
        req = pb.GetFileRequest.FromString(body)
        name = check_name(req.name)
        _info, content = await self.store.get(name)
        async with contextlib.aclosing(content):
            pending = bytearray()
            async for block in content:
                if not pending and len(block) == CHUNK:
                    await stream.send(pb.GetFileResponse(data=block).SerializeToString())
                    continue
                pending += block
                while len(pending) >= CHUNK:
                    await stream.send(pb.GetFileResponse(data=bytes(pending[:CHUNK])).SerializeToString())
                    del pending[:CHUNK]
            if pending:
                await stream.send(pb.GetFileResponse(data=bytes(pending)).SerializeToString())
        return b""

    async def list(self, payload: bytes, ctx: RequestInfo) -> bytes:
        req = pb.ListFileRequest.FromString(payload)
        directory = check_name(req.request.name, "directory", directory=True)
        if not 0 <= req.page_size <= MAX_PAGE:
            raise InvalidArgument(f"page_size must be 0 (the default, {MAX_PAGE}) to {MAX_PAGE}; got {req.page_size}")
        if len(req.marker.encode()) > MAX_NAME:
            raise InvalidArgument(f"marker {short(req.marker)} is over {MAX_NAME} bytes")
        page = await self.store.list(directory, req.marker, req.page_size or MAX_PAGE)
        resp = pb.ListFileResp(is_truncated=page.truncated)
        for info in page.files:
            resp.files.add(
                file_name=info.name, size=info.size, last_modified=rfc3339(info.last_modified), metadata=info.metadata
            )
        if page.truncated and page.files:
            resp.marker = page.files[-1].name
        data: bytes = resp.SerializeToString()
        return data

    async def delete(self, payload: bytes, ctx: RequestInfo) -> bytes:
        req = pb.DelFileRequest.FromString(payload)
        await self.store.delete(check_name(req.request.name))
        return b""

    async def meta(self, payload: bytes, ctx: RequestInfo) -> bytes:
        req = pb.GetFileMetaRequest.FromString(payload)
        info: FileInfo = await self.store.stat(check_name(req.request.name))
        resp = pb.GetFileMetaResponse(size=info.size, last_modified=rfc3339(info.last_modified))
        for key, value in info.metadata.items():
            resp.response.metadata[key].value.append(value)
        data: bytes = resp.SerializeToString()
        return data
