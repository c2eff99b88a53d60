"""The front's side of GetNextId: STRONG goes to a worker each call, WEAK is served from segments.

A WEAK id comes from a segment of ids this sidecar reserved through the bus (op ``reserve``,
answered by any sequencer worker). The cache lives here, in the front, rather than in the
workers: a sidecar's requests spread over every worker of the queue group, so per-worker caches
would interleave their segments and one sidecar's ids would go back and forth. Here one sidecar
holds one segment per key at a time and takes the next one only when it has used it up, and each
reservation lies above the ones before it, so the ids a sidecar hands out for a key only grow.
Like Layotto's double buffer, the next segment is reserved when half of the current one is used,
so callers rarely wait for the bus. Ids of a segment left unused at shutdown are gaps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import grpc

from bridges.errors import Code
from bus.codec import HDR_TRACEPARENT
from handlers.base import SEPARATOR
from handlers.proto import runtime_pb2 as pb
from runtime.forward import Forwarder, FrontError, abort

log = logging.getLogger("l8.runtime.sequencer")

_WEAK = pb.SequencerOptions.WEAK
_STRONG = pb.SequencerOptions.STRONG


@dataclass(slots=True)
class _Segment:
    next: int = 1
    last: int = 0  # next > last: used up
    refill_at: int = 0  # reserve the next segment once ``next`` passes this
    pending: asyncio.Task[tuple[int, int]] | None = None


class SegmentCache:
    """WEAK ids per (sequencer, key) for one sidecar; ``close()`` cancels reservations in flight."""

    def __init__(self, forwarder: Forwarder) -> None:
        self._forwarder = forwarder
        self._segments: dict[tuple[str, str], _Segment] = {}
        self._closed = False

    async def get_next_id(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        try:
            req = pb.GetNextIdRequest.FromString(request)
        except Exception as exc:  # protobuf's DecodeError, untyped
            await abort(context, Code.INVALID_ARGUMENT, f"the request is not a valid GetNextIdRequest: {exc}")
        try:
            component = self._forwarder.component("sequencer", req.store_name)
        except FrontError as exc:
            await abort(context, exc.code, exc.message)
        what = f"sequencer {component!r}"
        if req.options.increment != _WEAK or not req.key or SEPARATOR in req.key or self._closed:
            # STRONG asks the store each call; bad input goes the same way so the handler names the fault.
            return await self._forwarder.send(
                self._forwarder.subject("sequencer", component, "next"), request, context, what
            )
        segment = self._segments.get((component, req.key))
        if segment is None:
            segment = self._segments[(component, req.key)] = _Segment()
        while True:
            if segment.next <= segment.last:
                next_id = segment.next
                segment.next += 1
                if segment.next > segment.refill_at and segment.pending is None:
                    segment.pending = self._reserve(component, req, context)
                data: bytes = pb.GetNextIdResponse(next_id=next_id).SerializeToString()
                return data
            task = segment.pending
            if task is None:
                task = segment.pending = self._reserve(component, req, context)
            try:
                first, last = await asyncio.shield(task)
            except FrontError as exc:
                if segment.pending is task:
                    segment.pending = None
                await abort(context, exc.code, exc.message)
            if segment.pending is task:
                # The first waiter back installs the segment; the others find it installed.
                segment.pending = None
                segment.next, segment.last = first, last
                segment.refill_at = first + (last - first + 1) // 2

    def _reserve(
        self, component: str, req: pb.GetNextIdRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> asyncio.Task[tuple[int, int]]:
        traceparent = None
        for key, value in context.invocation_metadata() or ():
            if key == HDR_TRACEPARENT:
                traceparent = str(value)
        # Only what the worker needs: the segment outlives the call that asked for it.
        payload = pb.GetNextIdRequest(store_name=req.store_name, key=req.key).SerializeToString()
        subject = self._forwarder.subject("sequencer", component, "reserve")
        task = asyncio.create_task(self._call(subject, payload, traceparent, f"sequencer {component!r}"))
        # A reservation made ahead may fail while no caller waits for it; its error is then seen
        # here, and the caller that needs the segment gets it (and the next one tries again).
        task.add_done_callback(_seen)
        return task

    async def _call(self, subject: str, payload: bytes, traceparent: str | None, what: str) -> tuple[int, int]:
        # The reservation is the front's own request: it carries no caller's deadline.
        reply = await self._forwarder.call(subject, payload, traceparent=traceparent, what=what)
        first, _, last = reply.decode().partition(" ")
        return int(first), int(last)

    async def close(self) -> None:
        self._closed = True
        tasks = [s.pending for s in self._segments.values() if s.pending is not None]
        self._segments.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, FrontError):
                await task


def _seen(task: asyncio.Task[tuple[int, int]]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("a segment reservation failed: %s", task.exception())


def next_id_handler(cache: SegmentCache) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(cache.get_next_id)
