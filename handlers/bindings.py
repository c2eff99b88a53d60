"""Bindings: InvokeBinding(name, operation, data, metadata) -> (data, metadata) on output bindings,
and, for input bindings, the registry ops through which sidecars announce which apps take the
binding's events (handlers/announcements.py; the events go by handlers/bindings_input.py).

Each binding names the operations it supports; any other (or none) answers INVALID_ARGUMENT
listing them. The request's metadata is checked for size here and given to the binding, which reads
what it knows (a path, headers, a key...). Every call runs within the caller's deadline, and a reply
over ``maxResponseBytes`` (component metadata, default just under the bus's 1 MiB message) is
refused with RESOURCE_EXHAUSTED rather than read whole.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from bridges.errors import InvalidArgument, Unimplemented
from bridges.protocols import InputBinding, OutputBinding
from handlers import limits
from handlers.announcements import Announcements
from handlers.base import RequestInfo, short
from handlers.bindings_input import BindingSource
from handlers.proto import runtime_pb2 as pb

DEFAULT_MAX_REPLY = (1 << 20) - (64 << 10)
MAX_MAX_REPLY = 64 << 20


class TimedRequest(RequestInfo, Protocol):
    """What a binding call knows of its request: the caller, and the time it has left."""

    def remaining(self) -> float: ...


class BindingsHandler:
    """Serves one binding: op ``invoke``, and for an input binding (``source`` is set) the registry
    ops once the process attaches deliveries to ``registry``."""

    def __init__(self, component: str, binding: OutputBinding, metadata: dict[str, str]) -> None:
        self.component = component
        self.binding = binding
        self.source = BindingSource(component, binding) if isinstance(binding, InputBinding) else None
        self.registry = Announcements(component, "input binding", binding=True)
        raw = metadata.get("maxResponseBytes", str(DEFAULT_MAX_REPLY))
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_MAX_REPLY:
            raise ValueError(f"metadata maxResponseBytes: {raw!r} is not a whole number from 1 to {MAX_MAX_REPLY}")
        self.max_reply = int(raw)
        self._ops: dict[str, Callable[[bytes, TimedRequest], Awaitable[bytes]]] = {"invoke": self.invoke}
        if self.source is not None:
            self._ops.update(self.registry.ops)

    async def __call__(self, op: str, payload: bytes, ctx: TimedRequest) -> bytes:
        fn = self._ops.get(op)
        if fn is None:
            raise Unimplemented(f"bindings has no operation {op!r}")
        return await fn(payload, ctx)

    async def invoke(self, payload: bytes, ctx: TimedRequest) -> bytes:
        req = pb.InvokeBindingRequest.FromString(payload)
        supported = self.binding.operations()
        if not supported:
            raise InvalidArgument(f"binding {self.component!r} is an input binding only; it has no operations")
        listed = ", ".join(supported)
        if not req.operation:
            raise InvalidArgument(f"the operation is empty; binding {self.component!r} supports: {listed}")
        if req.operation not in supported:
            raise InvalidArgument(
                f"binding {self.component!r} has no operation {short(req.operation)}; it supports: {listed}"
            )
        limits.check_map(req.metadata, f"binding {self.component!r}: metadata")
        metadata = dict(req.metadata)
        reply = await self.binding.invoke(
            req.operation, req.data, metadata, timeout=max(ctx.remaining(), 0.001), max_reply=self.max_reply
        )
        data: bytes = pb.InvokeBindingResponse(data=reply.data, metadata=reply.metadata).SerializeToString()
        return data
