"""Host calls: what ``l8.call`` does for each op, checked against the function's allow-list.

Each op becomes a request to another building block, as an app's request would be: the state
handler's subject for state ops, pub/sub's for publish, the invocation subject for invoke, the
sequencer's and configuration's for next_id and configuration.get. The runtime supplies the
transport as a ``Dispatcher``; this module knows neither gRPC nor NATS. A function acts under its
own name as app id, so its keys are prefixed with it and its events carry it as source.

``HostOps.run`` is called on the lane running the wasm code; it schedules the request on the
event loop and waits for it within the call's deadline. It never raises: every outcome is a code.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import queue
import struct
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from handlers.proto import runtime_pb2 as pb
from handlers.wasm.abi import OPS, Op, Status, decode_fields

log = logging.getLogger("l8.wasm")

_U64 = struct.Struct("<Q")
MAX_NAME = 256  # bytes of a store, pubsub, topic, app or method name in a request
MAX_KEY = 1024


class DispatchError(Exception):
    """A request a host call made failed; ``code`` is the status code name (NOT_FOUND, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Dispatcher(Protocol):
    """How host calls reach the other building blocks; the runtime implements it with the bus."""

    async def request(self, api: str, component: str, op: str, payload: bytes, *, app_id: str, timeout: float) -> bytes:
        """Send ``payload`` to ``api``'s handler of ``component``; raise DispatchError on failure."""
        ...

    async def invoke(self, target: str, payload: bytes, *, app_id: str, timeout: float) -> bytes:
        """Send ``InvokeRequest`` bytes to app ``target``; answer its ``InvokeResponse`` bytes."""
        ...


@dataclass(frozen=True, slots=True)
class Allow:
    """What a function may reach; empty denies. Entries are names or glob patterns (``*``, ``?``)."""

    state: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()  # pubsub/topic
    invoke: tuple[str, ...] = ()
    sequencer: tuple[str, ...] = ()
    configuration: tuple[str, ...] = ()

    @staticmethod
    def matches(patterns: Sequence[str], name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _text(raw: bytes, what: str, limit: int) -> str:
    if not raw:
        raise _BadRequest(f"{what} is empty")
    if len(raw) > limit:
        raise _BadRequest(f"{what} is {len(raw)} bytes; at most {limit}")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise _BadRequest(f"{what} is not UTF-8 (starts {raw[:16]!r})") from None


class _BadRequest(Exception):
    pass


def guess_content_type(data: bytes) -> str:
    """What a function's bytes are, as far as a caller is told: JSON when they parse as JSON."""
    try:
        json.loads(data)
    except ValueError:
        return "application/octet-stream"
    return "application/json"


class HostOps:
    """The ops of one function: ``run`` answers ``(status or length, response bytes)``."""

    def __init__(self, name: str, allow: Allow, dispatcher: Dispatcher, loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self.allow = allow
        self._dispatcher = dispatcher
        self._loop = loop
        self._loop_thread = threading.get_ident()  # built on the loop's thread

    def run(self, op: int, request: bytes, deadline: float) -> tuple[int, bytes]:
        spec = OPS.get(op)
        if spec is None:
            return self._refuse(Status.BAD_REQUEST, f"op {op} is not an op of l8/1 (1 to {len(OPS)})")
        op_name, at_least, at_most = spec
        fields = decode_fields(request, at_least, at_most)
        if fields is None:
            return self._refuse(
                Status.BAD_REQUEST, f"{op_name}: the request is not {at_least} fields of u32 length + bytes"
            )
        try:
            denied, coro = self._prepare(Op(op), fields, deadline)
        except _BadRequest as exc:
            return self._refuse(Status.BAD_REQUEST, f"{op_name}: {exc}")
        if denied is not None:
            return self._refuse(Status.DENIED, f"{op_name}: {denied} is not in the function's allow-list")
        assert coro is not None
        if threading.get_ident() == self._loop_thread:
            # Inline calls are only for modules that cannot call; waiting here would hang the loop.
            coro.close()
            return self._refuse(Status.FAILED, f"{op_name}: a host call cannot run on the event loop's thread")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            coro.close()
            return self._refuse(Status.TIMED_OUT, f"{op_name}: the call's deadline passed before it was sent")
        try:
            done = self._await(coro, remaining)
        except TimeoutError:
            return self._refuse(Status.TIMED_OUT, f"{op_name}: no answer within the call's deadline")
        except RuntimeError as exc:  # the loop has closed
            return self._refuse(Status.FAILED, f"{op_name}: {exc}")
        try:
            return 0, done.result()
        except asyncio.CancelledError:
            return self._refuse(Status.FAILED, f"{op_name}: the request was cancelled (l8 is stopping)")
        except DispatchError as exc:
            if exc.code == "NOT_FOUND":
                return Status.NOT_FOUND, b""
            status = {
                "DEADLINE_EXCEEDED": Status.TIMED_OUT,
                "INVALID_ARGUMENT": Status.BAD_REQUEST,
                "PERMISSION_DENIED": Status.DENIED,
            }.get(exc.code, Status.FAILED)
            return self._refuse(status, f"{op_name}: {exc.code}: {exc.message}")
        except _NotFound:
            return Status.NOT_FOUND, b""
        except Exception as exc:
            return self._refuse(Status.FAILED, f"{op_name}: {type(exc).__name__}: {exc}")

    def _await(self, coro: Coroutine[Any, Any, bytes], timeout: float) -> asyncio.Future[bytes]:
        """Run ``coro`` on the loop and wait for it on this thread: the done task (TimeoutError
        when it is not done in time, and then it is cancelled).

        One ``call_soon_threadsafe`` there and a ``SimpleQueue`` back cost a third of
        ``run_coroutine_threadsafe``, whose concurrent future is chained to the task with locks.
        """
        answer: queue.SimpleQueue[asyncio.Future[bytes]] = queue.SimpleQueue()
        started: list[asyncio.Task[bytes]] = []

        def start() -> None:
            task = self._loop.create_task(coro)
            started.append(task)
            task.add_done_callback(answer.put)

        def cancel() -> None:
            if started:
                started[0].cancel()
            else:
                coro.close()

        self._loop.call_soon_threadsafe(start)
        try:
            return answer.get(timeout=timeout)
        except queue.Empty:
            self._loop.call_soon_threadsafe(cancel)
            raise TimeoutError() from None

    def _refuse(self, status: Status, why: str) -> tuple[int, bytes]:
        log.warning("function %s: host call failed (%d): %s", self.name, status, why[:500])
        return status, b""

    def _prepare(
        self, op: Op, fields: list[bytes], deadline: float
    ) -> tuple[str | None, Coroutine[Any, Any, bytes] | None]:
        """The request an op makes, or what the allow-list denies."""
        a = self.allow
        if op in (Op.STATE_GET, Op.STATE_SET, Op.STATE_DELETE):
            store = _text(fields[0], "the store name", MAX_NAME)
            key = _text(fields[1], "the key", MAX_KEY)
            if not a.matches(a.state, store):
                return f"state store {store!r}", None
            if op is Op.STATE_GET:
                return None, self._state_get(store, key, deadline)
            if op is Op.STATE_SET:
                save = pb.SaveStateRequest(store_name=store, states=[pb.StateItem(key=key, value=fields[2])])
                return None, self._empty("state", store, "save", save.SerializeToString(), deadline)
            delete = pb.DeleteStateRequest(store_name=store, key=key)
            return None, self._empty("state", store, "delete", delete.SerializeToString(), deadline)
        if op is Op.PUBLISH:
            pubsub = _text(fields[0], "the pubsub name", MAX_NAME)
            topic = _text(fields[1], "the topic", MAX_NAME)
            if not a.matches(a.publish, f"{pubsub}/{topic}"):
                return f"topic {pubsub}/{topic}", None
            content_type = _text(fields[3], "the content type", MAX_NAME) if len(fields) > 3 else ""
            event = pb.PublishEventRequest(
                pubsub_name=pubsub,
                topic=topic,
                data=fields[2],
                data_content_type=content_type or guess_content_type(fields[2]),
            )
            return None, self._empty("pubsub", pubsub, "publish", event.SerializeToString(), deadline)
        if op is Op.INVOKE:
            app = _text(fields[0], "the app id", MAX_NAME)
            method = _text(fields[1], "the method", MAX_NAME)
            if not a.matches(a.invoke, app):
                return f"app {app!r}", None
            return None, self._invoke(app, method, fields[2], deadline)
        if op is Op.NEXT_ID:
            sequencer = _text(fields[0], "the sequencer name", MAX_NAME)
            key = _text(fields[1], "the key", MAX_KEY)
            if not a.matches(a.sequencer, sequencer):
                return f"sequencer {sequencer!r}", None
            return None, self._next_id(sequencer, key, deadline)
        store = _text(fields[0], "the configuration store name", MAX_NAME)
        key = _text(fields[1], "the key", MAX_KEY)
        if not a.matches(a.configuration, store):
            return f"configuration store {store!r}", None
        return None, self._configuration_get(store, key, deadline)

    def _timeout(self, deadline: float) -> float:
        return max(deadline - time.monotonic(), 0.001)

    async def _send(self, api: str, component: str, op: str, payload: bytes, deadline: float) -> bytes:
        return await self._dispatcher.request(
            api, component, op, payload, app_id=self.name, timeout=self._timeout(deadline)
        )

    async def _empty(self, api: str, component: str, op: str, payload: bytes, deadline: float) -> bytes:
        await self._send(api, component, op, payload, deadline)
        return b""

    async def _state_get(self, store: str, key: str, deadline: float) -> bytes:
        req = pb.GetStateRequest(store_name=store, key=key)
        raw = await self._send("state", store, "get", req.SerializeToString(), deadline)
        if not raw:
            raise _NotFound()
        data: bytes = pb.GetStateResponse.FromString(raw).data
        return data

    async def _invoke(self, app: str, method: str, data: bytes, deadline: float) -> bytes:
        req = pb.CommonInvokeRequest(method=method, content_type=guess_content_type(data))
        req.data.value = data
        raw = await self._dispatcher.invoke(
            app, req.SerializeToString(), app_id=self.name, timeout=self._timeout(deadline)
        )
        out: bytes = pb.InvokeResponse.FromString(raw).data.value
        return out

    async def _next_id(self, sequencer: str, key: str, deadline: float) -> bytes:
        req = pb.GetNextIdRequest(store_name=sequencer, key=key)
        raw = await self._send("sequencer", sequencer, "next", req.SerializeToString(), deadline)
        return _U64.pack(pb.GetNextIdResponse.FromString(raw).next_id)

    async def _configuration_get(self, store: str, key: str, deadline: float) -> bytes:
        req = pb.GetConfigurationRequest(store_name=store, keys=[key])
        raw = await self._send("configuration", store, "get", req.SerializeToString(), deadline)
        for item in pb.GetConfigurationResponse.FromString(raw).items:
            if item.key == key:
                content: str = item.content
                return content.encode()
        raise _NotFound()


class _NotFound(Exception):
    pass
