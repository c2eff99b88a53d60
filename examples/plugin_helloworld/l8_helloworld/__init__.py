"""An l8 API plugin: gRPC's ``helloworld.Greeter`` on l8's own port (Layotto's helloworld API plugin,
the Python way). Its ``SayHello`` asks l8's hello component for the greeting over the bus, as any
app's ``SayHello`` would, and counts its greetings in l8's metrics.

l8 loads it from ``plugins: ["l8_helloworld:plugin"]`` in its config, or, once this package is
installed (``pip install examples/plugin_helloworld``), from its ``l8.plugins`` entry point.
"""

from __future__ import annotations

from typing import Any

import grpc

from handlers.proto import runtime_pb2 as pb
from l8_helloworld import helloworld_pb2, helloworld_pb2_grpc
from runtime.errors import grpc_status
from runtime.forward import FrontError
from runtime.plugins import PluginContext


class Greeter(helloworld_pb2_grpc.GreeterServicer):  # type: ignore[misc]
    name = "helloworld"

    def __init__(self, context: PluginContext) -> None:
        hellos = [name for name, c in context.config.components.items() if c.kind == "hello"]
        if not hellos:
            raise ValueError("the helloworld plugin answers with a hello component; configure one (kind: hello)")
        self._context = context
        self._component = hellos[0]
        metrics = context.metrics
        self._greetings = (
            metrics.counter("l8_plugin_helloworld_greetings", "greetings the helloworld plugin answered")
            if metrics is not None
            else None
        )

    def register(self, server: Any) -> None:
        helloworld_pb2_grpc.add_GreeterServicer_to_server(self, server)

    async def start(self) -> None:
        self._context.logger.info("helloworld plugin greets with hello component %r", self._component)

    async def SayHello(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        forwarder = self._context.forwarder
        ask = pb.SayHelloRequest(service_name=self._component, name=request.name).SerializeToString()
        try:
            reply = await forwarder.call(
                forwarder.subject("hello", self._component, "say"),
                ask,
                timeout=context.time_remaining(),
                what=f"hello component {self._component!r}",
            )
        except FrontError as exc:
            await context.abort(grpc_status(exc.code), exc.message)
        if self._greetings is not None:
            self._greetings.inc()
        return helloworld_pb2.HelloReply(message=pb.SayHelloResponse.FromString(reply).hello)


def plugin(context: PluginContext) -> Greeter:
    """The factory l8 calls at start."""
    return Greeter(context)
