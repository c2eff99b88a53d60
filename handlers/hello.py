"""The Hello API (Layotto's demo): SayHello, and ApplyConfiguration of its component.

``say`` answers ``SayHelloResponse{hello, data}``: the component's greeting (", <name>" when the
request names someone) and the request's ``data`` back, which Layotto's load tests use to size
messages. ``apply`` takes Layotto's ``DynamicConfiguration`` and hands its metadata to the
component.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bridges.errors import InvalidArgument, Unimplemented
from bridges.protocols import Hello, Reconfigurable
from handlers.base import RequestInfo
from handlers.proto import lifecycle_pb2
from handlers.proto import runtime_pb2 as pb

MAX_NAME = 1024


class HelloHandler:
    """Serves one hello component; ops are the last token of the request subject."""

    def __init__(self, component: str, hello: Hello, metadata: dict[str, str]) -> None:
        self.component = component
        self.hello = hello
        self._ops: dict[str, Callable[[bytes, RequestInfo], Awaitable[bytes]]] = {
            "say": self.say,
            "apply": self.apply,
        }

    async def __call__(self, op: str, payload: bytes, ctx: RequestInfo) -> bytes:
        fn = self._ops.get(op)
        if fn is None:
            raise Unimplemented(f"hello has no operation {op!r}")
        return await fn(payload, ctx)

    async def say(self, payload: bytes, ctx: RequestInfo) -> bytes:
        req = pb.SayHelloRequest.FromString(payload)
        if len(req.name) > MAX_NAME:
            raise InvalidArgument(f"name is {len(req.name)} characters; at most {MAX_NAME}")
        resp = pb.SayHelloResponse(hello=await self.hello.hello(req.name))
        if req.HasField("data"):
            resp.data.CopyFrom(req.data)
        data: bytes = resp.SerializeToString()
        return data

    async def apply(self, payload: bytes, ctx: RequestInfo) -> bytes:
        req = lifecycle_pb2.DynamicConfiguration.FromString(payload)
        if not isinstance(self.hello, Reconfigurable):
            raise Unimplemented(f"hello component {self.component!r} does not take a new configuration")
        await self.hello.apply(dict(req.component_config.metadata))
        data: bytes = lifecycle_pb2.ApplyConfigurationResponse().SerializeToString()
        return data
