"""The File API's two streaming rpcs at the front: PutFile and GetFile, as streams on the bus.

Both read only the store name off the first message (``runtime/routing.py``) and move messages as
they came: PutFile's request messages go to the worker one by one, GetFile's response messages come
back one by one (``bus/stream.py``), never more than a window of them in flight, so a file of any
size crosses with bounded memory. The worker's reply at the end is the rpc's status. A caller that
goes away midway cancels the stream, and the worker drops what it had written.

A stream carries the caller's gRPC deadline; without one it may run ``STREAM_TIMEOUT`` seconds, and
either end that hears nothing from the other for ``bus.stream``'s idle time gives up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from bridges.errors import Code
from bus import BusError
from bus.connection import ENVELOPE
from bus.stream import DOWNLOAD, UPLOAD, Opened, open_stream
from runtime import errors
from runtime.forward import Forwarder, FrontError, abort
from runtime.routing import Malformed, string_field

STREAM_TIMEOUT = 3600.0


def _timeout(context: grpc.aio.ServicerContext[Any, Any]) -> float:
    remaining = context.time_remaining()
    return STREAM_TIMEOUT if remaining is None else max(remaining, 0.001)


async def _component(forwarder: Forwarder, message: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> str:
    try:
        name = string_field(message, 1)
    except Malformed as exc:
        await abort(context, Code.INVALID_ARGUMENT, f"the request is not a valid protobuf message: {exc}")
    try:
        return forwarder.component("file", name)
    except FrontError as exc:
        await abort(context, exc.code, exc.message)


async def _open(
    forwarder: Forwarder,
    component: str,
    what: str,
    op: str,
    first: bytes,
    direction: str,
    context: grpc.aio.ServicerContext[Any, Any],
) -> Opened:
    """The stream to the worker serving ``component`` (``what`` in errors), with the caller's
    deadline and metadata."""
    timeout = _timeout(context)
    try:
        return await open_stream(
            forwarder.bus,
            forwarder.subject("file", component, op),
            first,
            direction=direction,
            timeout=timeout,
            headers=forwarder.headers(timeout, context),
        )
    except BusError as exc:
        await abort(context, *errors.from_bus_error(exc, what))


async def _ended_cleanly(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """Raise CancelledError unless the client finished sending, rather than went away.

    grpc.aio ends the request stream of a call the client cancelled (or whose connection broke) as
    if the client had finished: the core fails the pending receive, and grpc.aio hands that failure
    out as the end of the stream; it cancels the handler only when the call's close reaches the
    loop, which comes as a separate completion, later by however long the machine is busy. The
    response headers tell them apart: on a call the client only half-closed the core sends them, on
    a call it cancelled the core fails the send (and the handler is usually cancelled while it
    waits). So an upload is committed only once its headers went out.
    """
    try:
        await context.send_initial_metadata(())
    except Exception as exc:  # grpc.aio raises its internal batch error: the call is gone
        raise asyncio.CancelledError("the client went away before it finished the upload") from exc


def put_file(forwarder: Forwarder) -> grpc.RpcMethodHandler:
    async def put(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        first = await anext(aiter(requests), None)
        if first is None:
            await abort(
                context,
                Code.INVALID_ARGUMENT,
                "PutFile sent no message; the first one names the store, the file and its metadata",
            )
        component = await _component(forwarder, first, context)
        what = f"file store {component!r}"
        opened = await _open(forwarder, component, what, "put", b"", UPLOAD, context)
        try:
            await opened.send(first)
            async for message in requests:
                await opened.send(message)
            await _ended_cleanly(context)
            return await opened.result()
        except BusError as exc:
            await abort(context, *errors.from_bus_error(exc, what))
        finally:
            await opened.close()

    return grpc.stream_unary_rpc_method_handler(put)


def get_file(forwarder: Forwarder) -> grpc.RpcMethodHandler:
    async def get(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        component = await _component(forwarder, request, context)
        what = f"file store {component!r}"
        limit = forwarder.bus.max_payload - ENVELOPE
        if len(request) > limit:
            await abort(context, Code.INVALID_ARGUMENT, f"the request is {len(request)} bytes; the bus carries {limit}")
        opened = await _open(forwarder, component, what, "get", request, DOWNLOAD, context)
        try:
            async for message in opened:
                yield message
            await opened.result()
        except BusError as exc:
            await abort(context, *errors.from_bus_error(exc, what))
        finally:
            await opened.close()

    return grpc.unary_stream_rpc_method_handler(get)


def native_handlers(forwarder: Forwarder) -> dict[str, grpc.RpcMethodHandler]:
    return {"PutFile": put_file(forwarder), "GetFile": get_file(forwarder)}
