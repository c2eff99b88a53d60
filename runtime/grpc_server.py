"""The one gRPC server: native and Dapr fronts, health and reflection."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from runtime import auth, configuration_grpc, dapr, file, lifecycle, native
from runtime.config import Config
from runtime.configuration import ConfigurationHub
from runtime.forward import Forwarder
from runtime.grpc_proxy import GrpcProxy
from runtime.invoke import Invoker, grpc_handler
from runtime.metadata import Metadata
from runtime.sequencer import SegmentCache, next_id_handler
from runtime.streaming import Streams

if TYPE_CHECKING:
    from runtime.front_hooks import Hooks
    from runtime.plugins import Plugin

REFLECTION_SERVICE = "grpc.reflection.v1alpha.ServerReflection"
_REFLECTION_METHOD = f"/{REFLECTION_SERVICE}/ServerReflectionInfo"


class _GoneClient(logging.Filter):
    """Demotes grpc.aio's report of a status it could not send because the client had gone.

    grpc.aio logs that at ERROR with a traceback of its own internals when a handler ends (an
    abort, a refusal) after the client closed its connection; nothing was lost and nothing can be
    done, so it is a DEBUG line of l8's, without the traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith("Failed sending error status"):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.exc_info, record.exc_text = None, None
        return _log.isEnabledFor(logging.DEBUG)


_log = logging.getLogger("l8.grpc")
_GRPC_CORE = logging.getLogger("grpc._cython.cygrpc")
_GONE_CLIENT = _GoneClient()


class _LazyReflection(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Server reflection, loaded on its first call.

    grpc_reflection imports protobuf's descriptor_pb2 and builds its servicer over the whole
    descriptor pool: about 1 MB of memory and 60 ms of start-up that most sidecars never use
    (reflection serves tools such as grpcurl). The real servicer answers every call, so what
    clients see is unchanged.
    """

    def __init__(self, service_names: tuple[str, ...]) -> None:
        self._service_names = service_names
        self._handler: grpc.RpcMethodHandler | None = None

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if handler_call_details.method != _REFLECTION_METHOD:
            return None
        if self._handler is None:
            # The Dapr messages are imported lazily elsewhere (runtime/dapr.py); reflection
            # describes the Dapr service from the descriptor pool, so it loads them here.
            import dapr.proto.runtime.v1.dapr_pb2  # noqa: F401
            from grpc_reflection.v1alpha import reflection, reflection_pb2

            servicer: Any = reflection.aio.ReflectionServicer(self._service_names)
            self._handler = grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        return self._handler


class GrpcServer:
    def __init__(
        self,
        config: Config,
        forwarder: Forwarder,
        invoker: Invoker,
        streams: Streams | None = None,
        metadata: Metadata | None = None,
        shutdown: Callable[[], None] | None = None,
        hooks: Hooks | None = None,
        plugins: Sequence[Plugin] = (),
    ) -> None:
        self._config = config
        self._hooks = hooks if hooks is not None and hooks.any else None
        self._plugins = list(plugins)
        self._metadata = metadata or Metadata(config, streams.announcer.report if streams else None)
        self._shutdown = shutdown
        self._forwarder = forwarder
        self._invoker = invoker
        self._streams = streams
        self._server: grpc.aio.Server | None = None
        self._health = health_aio.HealthServicer()
        self._segments = SegmentCache(forwarder)
        self.configuration = ConfigurationHub(forwarder)
        self.port = 0

    async def start(self) -> None:
        if self._server is not None:
            return
        if _GONE_CLIENT not in _GRPC_CORE.filters:
            _GRPC_CORE.addFilter(_GONE_CLIENT)
        limit = self._config.server.max_message_bytes
        token = self._config.server.api_token()
        server = grpc.aio.server(
            options=[
                # Linux lets a second server share a reused port silently; a taken port must fail.
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
            ],
        )
        # Dapr's InvokeServiceRequest and InvokeResponse are the native ones on the wire.
        invoke = grpc_handler(self._invoker)
        native_special = {
            "InvokeService": invoke,
            "SubscribeConfiguration": configuration_grpc.native_subscribe(self.configuration),
            # GetNextId reads its options at the edge: WEAK ids come from this sidecar's segment cache.
            "GetNextId": next_id_handler(self._segments),
            # PutFile and GetFile move their messages as streams on the bus.
            **file.native_handlers(self._forwarder),
        }
        # Dapr's configuration messages differ from the native ones: translated in runtime/configuration_grpc.py.
        dapr_special = {
            "InvokeService": invoke,
            **configuration_grpc.dapr_handlers(self.configuration, self._forwarder),
        }
        if self._streams is not None:
            # Pull subscriptions: one implementation behind both the native and the Dapr rpc.
            from runtime.streaming import dapr_messages, native_messages, stream_handler

            native_special["SubscribeTopicEvents"] = stream_handler(self._forwarder, self._streams, native_messages())
            dapr_special["SubscribeTopicEventsAlpha1"] = stream_handler(self._forwarder, self._streams, dapr_messages())
        generic: list[grpc.GenericRpcHandler] = [
            native.native_service(self._forwarder, native_special),
            dapr.dapr_service(self._forwarder, self._metadata, dapr_special, self._shutdown),
            lifecycle.lifecycle_service(self._forwarder),
        ]
        plugin_services: list[str] = []
        for plugin in self._plugins:
            generic.extend(plugin.handlers())
            plugin_services.extend(plugin.services)
        handlers: list[grpc.GenericRpcHandler] = list(generic)
        if self._hooks is not None:
            # Flow control, spans, metrics and the dump around every method (runtime/front_hooks.py).
            from runtime.front_hooks import GrpcHooks

            handlers = [GrpcHooks(generic, self._hooks)]
        # Health first: it is open, and no call to it goes to the proxy.
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        handlers += [
            # Last: a call with dapr-app-id to any service l8 does not serve goes to that app.
            GrpcProxy(self._invoker),
            _LazyReflection(
                (
                    native.SERVICE,
                    dapr.SERVICE,
                    lifecycle.SERVICE,
                    *plugin_services,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    REFLECTION_SERVICE,
                )
            ),
        ]
        server.add_generic_rpc_handlers((auth.TokenGate(handlers, token),) if token else tuple(handlers))
        address = self._config.server.grpc
        tls = self._config.server.tls
        try:
            if tls.enabled:
                self.port = server.add_secure_port(address, auth.grpc_credentials(tls))
            else:
                self.port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"server.grpc: cannot listen on {address}: {exc}") from None
        await server.start()
        self._server = server
        for name in ("", native.SERVICE, dapr.SERVICE):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    @property
    def segments(self) -> SegmentCache:
        """The WEAK sequencer segments this front holds."""
        return self._segments

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", native.SERVICE, dapr.SERVICE):
            await self._health.set(name, status)

    async def stop(self, grace: float = 5.0) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        await self._health.enter_graceful_shutdown()
        # Subscription streams never finish by themselves; end them so the grace is for unary calls.
        await self.configuration.stop()
        await server.stop(grace)
        await self._segments.close()
