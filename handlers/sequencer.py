"""The Sequencer API: GetNextId on a Sequencer store, and segments for the fronts' WEAK caches.

Ops:
- ``next``: one id, asked of the store on every call (what STRONG needs; right for WEAK too).
  The callers of a key waiting at the same moment share one reservation of as many ids as they
  are. That keeps STRONG's promise: every caller in the batch began before the reservation was
  made, and the store hands out ids above every id it handed out before.
- ``reserve``: ``segmentSize`` ids at once for a front's cache; the reply is ``b"<first> <last>"``
  (an internal message between a front and this handler, not part of the public API).

``biggerThan.<key>: N`` in the component's metadata makes every id of ``<key>`` greater than N.
Keys are scoped per app id by default (``keyPrefix``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from bridges.errors import BackendUnavailable, InvalidArgument, ResourceExhausted, Unimplemented, quote
from bridges.protocols import Sequencer
from handlers import limits
from handlers.base import KeyPrefix, RequestInfo
from handlers.proto import runtime_pb2 as pb

BIGGER_THAN = "biggerThan."
DEFAULT_SEGMENT = 1000
MAX_ID = 2**63 - 1  # next_id is an int64
_INCREMENTS = (pb.SequencerOptions.WEAK, pb.SequencerOptions.STRONG)


def bigger_than(metadata: Mapping[str, str]) -> dict[str, int]:
    """The ``biggerThan.<key>`` floors of a component's metadata."""
    floors: dict[str, int] = {}
    for name, raw in metadata.items():
        if not name.startswith(BIGGER_THAN):
            continue
        key = name[len(BIGGER_THAN) :]
        try:
            floor = int(raw)
        except ValueError:
            raise ValueError(f"metadata {name}: {raw!r} is not a whole number") from None
        if not key or not 0 <= floor < MAX_ID:
            raise ValueError(f"metadata {name}: needs a key after 'biggerThan.' and a number from 0 to {MAX_ID - 1}")
        floors[key] = floor
    return floors


@dataclass(slots=True)
class _Batch:
    """Callers of one key waiting for ids, and the lock that lets one reservation run at a time."""

    waiting: list[asyncio.Future[int]] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class SequencerHandler:
    """Serves one sequencer component; ops are the last token of the request subject."""

    def __init__(self, component: str, store: Sequencer, metadata: dict[str, str]) -> None:
        self.component = component
        self.store = store
        self.prefix = KeyPrefix(metadata.get("keyPrefix", "appid"), component)
        self.floors = bigger_than(metadata)
        raw_segment = metadata.get("segmentSize", str(DEFAULT_SEGMENT))
        if not raw_segment.isdigit() or int(raw_segment) < 1:
            raise ValueError(f"metadata segmentSize: {raw_segment!r} is not a whole number >= 1")
        self.segment = int(raw_segment)
        self._batches: dict[str, _Batch] = {}
        self._ops: dict[str, Callable[[bytes, RequestInfo], Awaitable[bytes]]] = {
            "next": self.next_id,
            "reserve": self.reserve,
        }

    async def __call__(self, op: str, payload: bytes, ctx: RequestInfo) -> bytes:
        fn = self._ops.get(op)
        if fn is None:
            raise Unimplemented(f"sequencer has no operation {quote(op)}")
        return await fn(payload, ctx)

    def _key(self, req: pb.GetNextIdRequest, ctx: RequestInfo) -> str:
        key = self.prefix.apply(req.key, ctx.app_id)
        if req.metadata:
            limits.check_map(req.metadata, "metadata")
        if req.options.increment not in _INCREMENTS:
            raise InvalidArgument(f"options.increment {req.options.increment} is neither WEAK (0) nor STRONG (1)")
        return key

    async def next_id(self, payload: bytes, ctx: RequestInfo) -> bytes:
        req = pb.GetNextIdRequest.FromString(payload)
        key = self._key(req, ctx)
        next_id = await self._one(key, self.floors.get(req.key, 0))
        data: bytes = pb.GetNextIdResponse(next_id=next_id).SerializeToString()
        return data

    async def reserve(self, payload: bytes, ctx: RequestInfo) -> bytes:
        req = pb.GetNextIdRequest.FromString(payload)
        key = self._key(req, ctx)
        last = _checked(await self.store.reserve(key, self.segment, self.floors.get(req.key, 0)), key)
        return f"{last - self.segment + 1} {last}".encode()

    async def _one(self, key: str, floor: int) -> int:
        batch = self._batches.get(key)
        if batch is None:
            batch = self._batches[key] = _Batch()
        mine: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        batch.waiting.append(mine)
        try:
            async with batch.lock:
                if not mine.done():
                    await self._reserve_for(batch, key, floor)
        except BaseException:
            if mine.done() and not mine.cancelled():
                mine.exception()  # the error is raised here; mark the future's copy as seen
            raise
        finally:
            if not batch.waiting and not batch.lock.locked() and self._batches.get(key) is batch:
                del self._batches[key]
        return await mine

    async def _reserve_for(self, batch: _Batch, key: str, floor: int) -> None:
        callers = [f for f in batch.waiting if not f.done()]
        batch.waiting = []
        try:
            last = _checked(await self.store.reserve(key, len(callers), floor), key)
        except BaseException as exc:
            # The callers in this batch get the error; the store may have moved, which leaves a gap.
            err = exc if isinstance(exc, Exception) else BackendUnavailable("the reservation was interrupted")
            for f in callers:
                if not f.done():
                    f.set_exception(err)
            raise
        first = last - len(callers) + 1
        for i, f in enumerate(callers):
            if not f.done():
                f.set_result(first + i)


def _checked(last: int, key: str) -> int:
    if last > MAX_ID:
        raise ResourceExhausted(f"sequence {quote(key)} has used up its int64 ids")
    return last
