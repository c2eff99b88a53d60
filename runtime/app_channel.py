"""The channel to the app's AppCallback gRPC server (Dapr's ``dapr.proto.runtime.v1.AppCallback``).

The channel connects lazily and reconnects by itself, so l8 starts before its app and keeps
working across app restarts; calls made while the app is down fail with UNAVAILABLE.
"""

from __future__ import annotations

from typing import Any

import grpc


class AppChannel:
    def __init__(
        self, address: str | None, max_message_bytes: int = 16 << 20, interceptors: list[Any] | None = None
    ) -> None:
        self.address = address
        self._max = max_message_bytes
        # runtime/auth.py app_token_interceptors: APP_API_TOKEN on every call to the app.
        self._interceptors = interceptors or None
        self._channel: grpc.aio.Channel | None = None
        self._stubs: dict[str, Any] = {}
        self._unary: dict[str, grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = {}

    @property
    def configured(self) -> bool:
        return self.address is not None

    def _open(self) -> grpc.aio.Channel:
        if self.address is None:
            raise RuntimeError("no app callback is configured (app.callback / --app-port)")
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(
                self.address,
                interceptors=self._interceptors,
                options=[
                    ("grpc.max_receive_message_length", self._max),
                    ("grpc.max_send_message_length", self._max),
                    # Reconnect quickly when the app comes back after a restart.
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                    # Channels to one target share connections (and their reconnect backoff) by
                    # default: the subscriber's channel, refused while the app was starting, would
                    # then fail the first invocations fast. Each AppChannel connects on its own.
                    ("grpc.use_local_subchannel_pool", 1),
                ],
            )
        return self._channel

    @property
    def callback(self) -> Any:
        """``AppCallbackStub``: OnInvoke, ListTopicSubscriptions, OnTopicEvent, bindings."""
        stub = self._stubs.get("callback")
        if stub is None:
            from dapr.proto.runtime.v1 import appcallback_pb2_grpc

            stub = self._stubs["callback"] = appcallback_pb2_grpc.AppCallbackStub(self._open())
        return stub

    @property
    def alpha(self) -> Any:
        """``AppCallbackAlphaStub``: OnBulkTopicEventAlpha1 and the other alpha callbacks."""
        stub = self._stubs.get("alpha")
        if stub is None:
            from dapr.proto.runtime.v1 import appcallback_pb2_grpc

            stub = self._stubs["alpha"] = appcallback_pb2_grpc.AppCallbackAlphaStub(self._open())
        return stub

    @property
    def health(self) -> Any:
        stub = self._stubs.get("health")
        if stub is None:
            from dapr.proto.runtime.v1 import appcallback_pb2_grpc

            stub = self._stubs["health"] = appcallback_pb2_grpc.AppCallbackHealthCheckStub(self._open())
        return stub

    def unary(self, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
        """A bytes-in, bytes-out call of ``method`` (``/package.Service/Rpc``): for messages that
        l8 passes through without decoding, such as OnInvoke's."""
        call = self._unary.get(method)
        if call is None:
            call = self._unary[method] = self._open().unary_unary(method)
        return call

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        self._stubs.clear()
        self._unary.clear()
        if channel is not None:
            await channel.close()
