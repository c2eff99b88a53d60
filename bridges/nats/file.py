"""Files in a NATS Object Store bucket, in the Object Store's own format.

The layout is JetStream's Object Store (stream ``OBJ_<bucket>``): an object's chunks are messages
on ``$O.<bucket>.C.<id>``, its info (name, size, digest, chunk count, mtime, headers) one JSON
message on ``$O.<bucket>.M.<base64url name>`` that replaces the previous one (rollup). So nats-py's
``ObjectStore`` and the ``nats object`` CLI read what l8 writes, and l8 reads what they write.

It is written here on JetStream's public calls rather than through nats-py's ``ObjectStore``, whose
``put`` reads from a blocking reader and whose ``get`` buffers every chunk a push consumer delivers:
a stream has to move chunks as they come with bounded memory.

- An upload publishes its chunks on a fresh id, with at most ``_IN_FLIGHT`` acknowledgements
  pending, then the info. Until the info is written nothing names the chunks, so an upload that
  fails or is cancelled is invisible (and its chunks are purged). The info is written with a
  compare-and-set on the name's last info message, so of two uploads of one name the one that
  completes last wins, and each purges exactly the chunks its info replaced.
- A download reads the chunks through an ephemeral pull consumer, a few at a time, and checks the
  size and the SHA-256 digest at the end; a mismatch (the object was replaced while it was read)
  ends the download with an error instead of handing out a mix.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, ObjectStoreConfig, StorageType

from bridges.errors import BackendUnavailable, DataLoss, NotFound, ResourceExhausted
from bridges.nats import keys
from bridges.nats.buckets import HDR_EXPECTED_LAST, last_in_stream, publish
from bridges.nats.errors import map_nats_errors
from bridges.protocols import FileInfo, FilePage
from bridges.registry import BridgeEnv

log = logging.getLogger("l8.bridges.nats.file")

DEFAULT_CHUNK = 128 << 10  # nats-py's and nats.go's default chunk size
_IN_FLIGHT = 8  # chunks published and not yet acknowledged, per upload
_FETCH = 4  # chunks asked for at once by a download
_ATTEMPTS = 8
_DIGEST = "SHA-256="
HDR_ROLLUP = "Nats-Rollup"


class NatsObjectFileStore:
    """A ``FileStore`` on one Object Store bucket (metadata ``bucket``, default ``l8_<ns>_<name>``)."""

    def __init__(self, name: str, metadata: dict[str, str], env: BridgeEnv) -> None:
        if env.nats is None:
            raise ValueError("the nats.objectstore file store needs the bus connection")
        self._nc = env.nats
        self.name = name
        self.bucket = keys.bucket_name(metadata.get("bucket") or f"l8_{env.namespace}_{name}")
        self.stream = f"OBJ_{self.bucket}"
        self._timeout = float(metadata.get("timeoutSeconds", "5"))
        self._replicas = int(metadata.get("replicas", "1"))
        self._max_bytes = int(metadata.get("maxBytes", "0"))
        self._chunk = int(metadata.get("chunkSize", str(DEFAULT_CHUNK)))
        if not 1024 <= self._chunk <= 8 << 20:
            raise ValueError(f"metadata chunkSize: {self._chunk} is not 1024 to {8 << 20} bytes")
        self._js = self._nc.jetstream(timeout=self._timeout)
        self._what = f"file store {name!r}"

    def features(self) -> frozenset[str]:
        return frozenset()

    async def start(self) -> None:
        with map_nats_errors(f"{self._what}: opening bucket {self.bucket}"):
            try:
                await self._js.object_store(self.bucket)
            except nats.js.errors.BucketNotFoundError:
                config = ObjectStoreConfig(
                    storage=StorageType.FILE, replicas=self._replicas, max_bytes=self._max_bytes or None
                )
                try:
                    await self._js.create_object_store(self.bucket, config)
                except nats.js.errors.BadRequestError:
                    await self._js.object_store(self.bucket)  # another runtime created it first
        # A chunk must fit in one bus message beside its headers.
        self._chunk = min(self._chunk, self._nc.max_payload - 4096)

    async def stop(self) -> None:
        return None

    def _meta_subject(self, name: str) -> str:
        return f"$O.{self.bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"

    def _chunk_subject(self, nuid: str) -> str:
        return f"$O.{self.bucket}.C.{nuid}"

    async def _info(self, name: str) -> tuple[int, dict[str, Any]] | None:
        """The sequence and info of the name's last info message, or None."""
        last = await last_in_stream(self._nc, self.stream, self._meta_subject(name), self._timeout)
        if last is None:
            return None
        try:
            info = json.loads(last.data)
        except ValueError:
            raise DataLoss(f"{self._what}: the info of {name!r} is not JSON") from None
        return last.seq, info

    async def _live(self, name: str) -> dict[str, Any]:
        found = await self._info(name)
        if found is None or found[1].get("deleted"):
            raise NotFound(f"{self._what} has no file {name!r}")
        return found[1]

    # ---- upload ----

    async def put(self, name: str, chunks: AsyncIterator[bytes], metadata: dict[str, str]) -> FileInfo:
        what = f"{self._what}: put {name!r}"
        nuid = uuid.uuid4().hex
        subject = self._chunk_subject(nuid)
        digest = hashlib.sha256()
        pending: deque[asyncio.Future[Any]] = deque()
        size = count = 0
        try:
            with map_nats_errors(what):
                buffer = bytearray()
                async for block in chunks:
                    if not buffer and len(block) == self._chunk:
                        count += await self._publish_chunk(subject, block, digest, pending)
                        size += len(block)
                        continue
                    buffer += block
                    while len(buffer) >= self._chunk:
                        piece = bytes(buffer[: self._chunk])
                        del buffer[: self._chunk]
                        count += await self._publish_chunk(subject, piece, digest, pending)
                        size += len(piece)
                if buffer:
                    count += await self._publish_chunk(subject, bytes(buffer), digest, pending)
                    size += len(buffer)
                while pending:
                    await self._acked(pending.popleft())
                mtime = time.time()
                info = {
                    "name": name,
                    "bucket": self.bucket,
                    "nuid": nuid,
                    "size": size,
                    "chunks": count,
                    "digest": _DIGEST + base64.urlsafe_b64encode(digest.digest()).decode(),
                    "mtime": _iso(mtime),
                    "options": {"max_chunk_size": self._chunk},
                }
                if metadata:
                    info["headers"] = {k: [v] for k, v in metadata.items()}
                replaced = await self._replace_info(name, info, what)
        except BaseException:
            # Chunks already sent may still be stored after a purge that overtook them: wait for
            # their acks (a bounded time) so the purge comes after every one of them.
            await asyncio.shield(self._discard(subject, list(pending)))
            raise
        if replaced:
            await self._purge(self._chunk_subject(replaced))
        return FileInfo(name, size, mtime, dict(metadata))

    async def _discard(self, subject: str, pending: list[asyncio.Future[Any]]) -> None:
        if pending:
            await asyncio.wait(pending, timeout=self._timeout)
            for future in pending:
                if future.done() and not future.cancelled():
                    future.exception()  # retrieved, so that a failed ack is not logged as unhandled
                else:
                    future.cancel()
        await self._purge(subject)

    async def _publish_chunk(self, subject: str, data: bytes, digest: Any, pending: deque[asyncio.Future[Any]]) -> int:
        digest.update(data)
        pending.append(await self._js.publish_async(subject, data))
        while len(pending) >= _IN_FLIGHT:
            await self._acked(pending.popleft())
        return 1

    async def _acked(self, future: asyncio.Future[Any]) -> None:
        try:
            await asyncio.wait_for(future, self._timeout)
        except TimeoutError:
            raise BackendUnavailable(f"{self._what}: JetStream did not acknowledge a chunk in time") from None
        except nats.js.errors.APIError as exc:
            if "maximum bytes" in (exc.description or "") or "insufficient resources" in (exc.description or ""):
                raise ResourceExhausted(f"{self._what}: bucket {self.bucket} is full ({exc.description})") from None
            raise

    async def _replace_info(self, name: str, info: dict[str, Any], what: str) -> str | None:
        """Write ``info`` over the name's last info; returns the id of the chunks it replaced."""
        data = json.dumps(info).encode()
        for _ in range(_ATTEMPTS):
            found = await self._info(name)
            expected = "0" if found is None else str(found[0])
            headers = {HDR_ROLLUP: "sub", HDR_EXPECTED_LAST: expected}
            if await publish(self._nc, self._meta_subject(name), data, headers, self._timeout, what) is None:
                continue  # another upload or delete of the name won the race: read again
            if found is None or found[1].get("deleted"):
                return None
            old = found[1].get("nuid")
            return old if isinstance(old, str) and old != info.get("nuid") else None
        raise BackendUnavailable(f"{what}: the file kept changing under {_ATTEMPTS} attempts")

    async def _purge(self, subject: str) -> None:
        try:
            await self._js.purge_stream(self.stream, subject=subject)
        except Exception as exc:  # chunks nobody names are harmless; the next purge tries again
            log.warning("%s: could not purge %s: %s", self._what, subject, exc)

    # ---- download ----

    async def get(self, name: str) -> tuple[FileInfo, AsyncGenerator[bytes, None]]:
        with map_nats_errors(f"{self._what}: get {name!r}"):
            raw = await self._live(name)
        return _file_info(name, raw), self._read(name, raw)

    async def _read(self, name: str, info: dict[str, Any]) -> AsyncGenerator[bytes, None]:
        chunks = int(info.get("chunks") or 0)
        size = int(info.get("size") or 0)
        if chunks == 0:
            return
        what = f"{self._what}: get {name!r}"
        consumer = uuid.uuid4().hex
        config = ConsumerConfig(
            name=consumer,
            filter_subject=self._chunk_subject(str(info["nuid"])),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=60.0,
            mem_storage=True,
            num_replicas=1,
        )
        with map_nats_errors(what):
            await self._js.add_consumer(self.stream, config)
        try:
            sub = await self._js.pull_subscribe_bind(consumer, stream=self.stream)
            digest = hashlib.sha256()
            got = read = 0
            try:
                while got < chunks:
                    with map_nats_errors(what):
                        try:
                            msgs = await sub.fetch(min(_FETCH, chunks - got), timeout=self._timeout)
                        except nats.errors.TimeoutError:
                            raise DataLoss(f"{what}: chunk {got + 1} of {chunks} is missing") from None
                    for msg in msgs:
                        got += 1
                        read += len(msg.data)
                        digest.update(msg.data)
                        yield msg.data
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            expected = str(info.get("digest") or "")
            actual = _DIGEST + base64.urlsafe_b64encode(digest.digest()).decode()
            if read != size or expected.upper() != actual.upper():
                raise DataLoss(f"{what}: the content does not match its size and digest; it changed while read")
        finally:
            with contextlib.suppress(Exception):
                await self._js.delete_consumer(self.stream, consumer)

    # ---- the rest ----

    async def stat(self, name: str) -> FileInfo:
        with map_nats_errors(f"{self._what}: stat {name!r}"):
            return _file_info(name, await self._live(name))

    async def list(self, directory: str, after: str, limit: int) -> FilePage:
        what = f"{self._what}: list {directory!r}"
        prefix = f"$O.{self.bucket}.M."
        under = f"{directory}/" if directory else ""
        with map_nats_errors(what):
            info = await self._js.stream_info(self.stream, subjects_filter=f"{prefix}>")
            names = []
            for subject in (info.state.subjects or {}) if info.state else {}:
                try:
                    name = base64.urlsafe_b64decode(subject[len(prefix) :]).decode()
                except ValueError:
                    continue
                if name.startswith(under) and name > after:
                    names.append(name)
            names.sort()
            files: list[FileInfo] = []
            for name in names:
                found = await self._info(name)
                if found is None or found[1].get("deleted"):
                    continue
                if len(files) == limit:
                    return FilePage(files, truncated=True)
                files.append(_file_info(name, found[1]))
        return FilePage(files, truncated=False)

    async def delete(self, name: str) -> None:
        what = f"{self._what}: delete {name!r}"
        with map_nats_errors(what):
            for _ in range(_ATTEMPTS):
                found = await self._info(name)
                if found is None or found[1].get("deleted"):
                    raise NotFound(f"{self._what} has no file {name!r}")
                seq, info = found
                gone = {**info, "deleted": True, "size": 0, "chunks": 0, "digest": "", "mtime": _iso(time.time())}
                headers = {HDR_ROLLUP: "sub", HDR_EXPECTED_LAST: str(seq)}
                data = json.dumps(gone).encode()
                if await publish(self._nc, self._meta_subject(name), data, headers, self._timeout, what):
                    await self._purge(self._chunk_subject(str(info.get("nuid"))))
                    return
        raise BackendUnavailable(f"{what}: the file kept changing under {_ATTEMPTS} attempts")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(raw: object) -> float:
    """An Object Store mtime: RFC 3339 from nats.go (nanoseconds) or nats-py (isoformat)."""
    if not isinstance(raw, str) or not raw:
        return 0.0
    text = raw.replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:
        digits = "".join(c for c in rest if c.isdigit())
        text = f"{head}.{digits[:6]}{rest[len(digits) :]}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


def _file_info(name: str, info: dict[str, Any]) -> FileInfo:
    headers = info.get("headers") or {}
    metadata = {
        str(k): str(v[0]) if isinstance(v, list) and v else str(v) for k, v in headers.items() if v not in ([], None)
    }
    return FileInfo(name, int(info.get("size") or 0), _parse_time(info.get("mtime")), metadata)
