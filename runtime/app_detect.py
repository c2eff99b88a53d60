"""An app channel that learns which protocol the app speaks (``app.protocol`` unset).

On the first call, and again after a failed try (at most every ``RETRY`` seconds), l8 opens a
TCP connection to the app and sends one HTTP/1.1 request (``GET /dapr/config``):

- an answer that starts ``HTTP/`` is an HTTP app;
- HTTP/2 frames (every gRPC server answers an HTTP/1.1 request with a SETTINGS or GOAWAY frame)
  mean a gRPC app; then Dapr's ``AppCallback/ListTopicSubscriptions`` is called, and if the app
  does not know it, Layotto's: the one it answers picks the channel (Dapr's when it knows neither,
  e.g. a gRPC app that is only invoked);
- anything else (silence, other bytes) is an app that speaks none of them: logged at WARNING
  naming what came back, and asked again later.

Until the protocol is known every call raises ``AppUnavailable``, so events wait and invocations
answer UNAVAILABLE, as with an app that is not up yet. The answer is kept for the channel's life.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import grpc

from runtime.app_channel import (
    AppChannel,
    AppSubscription,
    AppUnavailable,
    BindingAnswer,
    BulkEntry,
    Metadata,
    open_app,
)
from runtime.app_grpc import GrpcConnection

if TYPE_CHECKING:
    from handlers.pubsub_envelope import Event

log = logging.getLogger("l8.runtime.app")

RETRY = 0.5  # seconds between tries while the app is not there or speaks nothing l8 knows
PROBE_TIMEOUT = 2.0
_DAPR = "/dapr.proto.runtime.v1.AppCallback/ListTopicSubscriptions"
_LAYOTTO = "/spec.proto.runtime.v1.AppCallback/ListTopicSubscriptions"
_H2_FRAMES = (0x04, 0x07)  # SETTINGS, GOAWAY


class NotDetected(Exception):
    """The app could not tell l8 its protocol this time; ``reachable`` if something answered."""

    def __init__(self, message: str, reachable: bool) -> None:
        super().__init__(message)
        self.message = message
        self.reachable = reachable


async def wire_protocol(address: str, timeout: float = PROBE_TIMEOUT) -> str:
    """ "http" or "h2" by what the app answers an HTTP/1.1 request; NotDetected otherwise."""
    host, _, port = address.rpartition(":")
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), timeout)
    except (OSError, TimeoutError) as exc:
        raise NotDetected(f"nothing listens at {address} ({exc.__class__.__name__}: {exc})", False) from None
    try:
        writer.write(f"GET /dapr/config HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        head = b""
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(timeout):
                while len(head) < 9:
                    chunk = await reader.read(64)
                    if not chunk:
                        break
                    head += chunk
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    if head.startswith(b"HTTP/"):
        return "http"
    if len(head) >= 9 and head[3] in _H2_FRAMES:
        return "h2"
    shown = repr(head[:32]) if head else "nothing"
    raise NotDetected(f"the app at {address} answered an HTTP/1.1 request with {shown}", True)


async def grpc_flavour(address: str, timeout: float = PROBE_TIMEOUT) -> str:
    """ "grpc" (Dapr's AppCallback) or "layotto", by the ListTopicSubscriptions the app knows."""
    conn = GrpcConnection(address)
    try:
        for method, protocol in ((_DAPR, "grpc"), (_LAYOTTO, "layotto")):
            call = conn.channel().unary_unary(method)
            try:
                await call(b"", timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    continue
                raise NotDetected(f"the gRPC app at {address} answered {method} with {exc.code().name}", True) from None
            return protocol
        return "grpc"
    finally:
        await conn.close()


class DetectedApp:
    def __init__(
        self,
        address: str,
        max_message_bytes: int = 16 << 20,
        api_token: str | None = None,
        *,
        bindings: Sequence[str] = (),
        health_path: str = "/healthz",
    ) -> None:
        self._address = address
        self._args = (max_message_bytes, api_token)
        self._bindings = tuple(bindings)
        self._health_path = health_path
        self._channel: AppChannel | None = None
        self._lock = asyncio.Lock()
        self._next_try = 0.0
        self._why = "l8 has not asked it yet"
        self._warned = ""
        self._closed = False

    @property
    def address(self) -> str:
        return self._address

    @property
    def protocol(self) -> str:
        return self._channel.protocol if self._channel is not None else ""

    async def _app(self) -> AppChannel:
        if self._channel is not None:
            return self._channel
        async with self._lock:
            if self._channel is not None:
                return self._channel
            if self._closed or time.monotonic() < self._next_try:
                raise AppUnavailable(f"l8 does not know yet which protocol the app speaks: {self._why}")
            try:
                protocol = await wire_protocol(self._address)
                if protocol == "h2":
                    protocol = await grpc_flavour(self._address)
            except NotDetected as exc:
                self._next_try = time.monotonic() + RETRY
                self._why = exc.message
                if exc.reachable and self._warned != exc.message:
                    log.warning(
                        "the app at %s speaks neither gRPC (Dapr's or Layotto's AppCallback) nor HTTP: %s; "
                        "set app.protocol (--app-protocol grpc|layotto|http) if it should",
                        self._address,
                        exc.message,
                    )
                    self._warned = exc.message
                raise AppUnavailable(f"l8 does not know yet which protocol the app speaks: {exc.message}") from None
            names = {"grpc": "Dapr's gRPC AppCallback", "layotto": "Layotto's gRPC AppCallback", "http": "HTTP"}
            log.info("the app at %s speaks %s", self._address, names[protocol])
            self._channel = open_app(
                self._address,
                *self._args,
                protocol=protocol,
                bindings=self._bindings,
                health_path=self._health_path,
            )
            return self._channel

    async def on_invoke(self, request: bytes, *, timeout: float, metadata: Metadata) -> tuple[bytes, Metadata]:
        return await (await self._app()).on_invoke(request, timeout=timeout, metadata=metadata)

    async def call_grpc(
        self, method: str, request: bytes, *, timeout: float, metadata: Metadata
    ) -> tuple[bytes, Metadata]:
        return await (await self._app()).call_grpc(method, request, timeout=timeout, metadata=metadata)

    async def health(self, *, timeout: float) -> tuple[bool, str]:
        try:
            app = await self._app()
        except AppUnavailable as exc:
            return False, exc.message
        return await app.health(timeout=timeout)

    async def list_subscriptions(self, *, timeout: float) -> list[AppSubscription] | None:
        return await (await self._app()).list_subscriptions(timeout=timeout)

    async def on_event(self, event: Event, path: str, *, timeout: float, metadata: Metadata) -> int:
        return await (await self._app()).on_event(event, path, timeout=timeout, metadata=metadata)

    async def on_bulk_event(
        self, pubsub: str, topic: str, path: str, entries: Sequence[BulkEntry], *, timeout: float
    ) -> dict[str, int]:
        return await (await self._app()).on_bulk_event(pubsub, topic, path, entries, timeout=timeout)

    async def list_input_bindings(self, *, timeout: float) -> list[str] | None:
        return await (await self._app()).list_input_bindings(timeout=timeout)

    async def on_binding_event(
        self, name: str, data: bytes, metadata: dict[str, str], *, timeout: float
    ) -> BindingAnswer:
        return await (await self._app()).on_binding_event(name, data, metadata, timeout=timeout)

    async def close(self) -> None:
        self._closed = True
        async with self._lock:
            channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()
