"""What the gRPC app channels share (Dapr's AppCallback in runtime/app_dapr.py, Layotto's in
runtime/app_layotto.py): one lazily opened channel to the app, its errors in l8's terms, and the
raw unary call that gRPC proxying (a call with ``dapr-app-id`` to any service) forwards."""

from __future__ import annotations

from typing import Any

import grpc

from runtime import errors
from runtime.app_channel import AppCallError, AppUnavailable, Metadata
from runtime.auth import app_token_interceptors


def translate(exc: grpc.aio.AioRpcError, address: str) -> AppCallError:
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        return AppUnavailable(f"the app at {address} is unavailable: {exc.details() or ''}".strip())
    return AppCallError(errors.code_of_grpc(exc.code()), exc.details() or "")


class GrpcConnection:
    """The channel to one app; opened on first use, reconnecting by itself."""

    def __init__(self, address: str, max_message_bytes: int = 16 << 20, api_token: str | None = None) -> None:
        self.address = address
        self._max = max_message_bytes
        # runtime/auth.py: APP_API_TOKEN on every call to the app, as one channel interceptor.
        self._interceptors = app_token_interceptors(api_token) or None
        self._channel: grpc.aio.Channel | None = None
        self._stubs: dict[Any, Any] = {}
        self._calls: dict[str, grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = {}

    def channel(self) -> grpc.aio.Channel:
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
                    # default: a channel refused while the app was starting would then fail the
                    # first calls of every other channel fast. Each channel connects on its own.
                    ("grpc.use_local_subchannel_pool", 1),
                ],
            )
        return self._channel

    def stub(self, cls: Any) -> Any:
        """A stub of generated class ``cls`` on this channel, made once."""
        stub = self._stubs.get(cls)
        if stub is None:
            stub = self._stubs[cls] = cls(self.channel())
        return stub

    async def unary(self, method: str, request: bytes, *, timeout: float, metadata: Metadata) -> tuple[bytes, Metadata]:
        """Call ``method`` (``/pkg.Service/Method``) with bytes as they came; the reply's bytes and
        its initial metadata come back, an error as AppCallError."""
        call_of = self._calls.get(method)
        if call_of is None:
            if len(self._calls) >= 256:
                self._calls.clear()
            call_of = self._calls[method] = self.channel().unary_unary(method)
        try:
            call = call_of(request, timeout=timeout, metadata=metadata)
            reply: bytes = await call
            answered = await call.initial_metadata()
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, self.address) from None
        return reply, list(answered or ())

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        self._stubs.clear()
        self._calls.clear()
        if channel is not None:
            await channel.close()
