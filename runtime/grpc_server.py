"""The one gRPC server: native and Dapr fronts, health and reflection."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from runtime import dapr, native
from runtime.config import Config
from runtime.forward import Forwarder
from runtime.subscriber import SubscriberManager


class GrpcServer:
    def __init__(self, config: Config, forwarder: Forwarder, subscriber: SubscriberManager | None = None) -> None:
        self._config = config
        self._forwarder = forwarder
        self._subscriber = subscriber
        self._server: grpc.aio.Server | None = None
        self._health = health_aio.HealthServicer()
        self.port = 0

    async def start(self) -> None:
        if self._server is not None:
            return
        limit = self._config.server.max_message_bytes
        server = grpc.aio.server(
            options=[
                # Linux lets a second server share a reused port silently; a taken port must fail.
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
            ]
        )
        server.add_generic_rpc_handlers(
            (
                native.native_service(self._forwarder, self._subscriber),
                dapr.dapr_service(self._forwarder, self._config, self._subscriber),
            )
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (
                native.SERVICE,
                dapr.SERVICE,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        address = self._config.server.grpc
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"server.grpc: cannot listen on {address}: {exc}") from None
        await server.start()
        self._server = server
        for name in ("", native.SERVICE, dapr.SERVICE):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", native.SERVICE, dapr.SERVICE):
            await self._health.set(name, status)

    async def stop(self, grace: float = 5.0) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        await self._health.enter_graceful_shutdown()
        await server.stop(grace)
