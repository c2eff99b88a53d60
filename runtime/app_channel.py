"""The channel from a sidecar to its app: what l8 asks of an app, whatever protocol the app speaks.

A sidecar calls its app for invocations (``on_invoke``, and ``call_grpc`` for proxied gRPC calls),
to learn the app's topic subscriptions and input bindings, to push events (``on_event``,
``on_bulk_event``, ``on_binding_event``) and to probe its health. Each app protocol is one
implementation of ``AppChannel``: Dapr's ``AppCallback`` over gRPC (runtime/app_dapr.py),
Layotto's (runtime/app_layotto.py) and HTTP apps as daprd calls them (runtime/app_http.py);
``open_app`` is the one factory, and with no protocol configured it returns a channel that learns
which one the app speaks (runtime/app_detect.py). Channels connect lazily and reconnect by
themselves, so l8 starts before its app and keeps working across app restarts.

Errors: a call the app answered with an error raises ``AppCallError`` with the app's status code; an
app that cannot be reached raises ``AppUnavailable``, so callers can tell "the app said no" from
"nobody is there".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from bridges.errors import Code

if TYPE_CHECKING:
    from handlers.pubsub_envelope import Event

# Metadata as gRPC carries it: text values, and bytes for keys ending in -bin.
Metadata = list[tuple[str, "str | bytes"]]

SUCCESS, RETRY, DROP = 0, 1, 2  # an app's verdict on an event, as Dapr and Layotto number them
# Beside an HTTP app's answer to an invocation: its HTTP status (daprd's header name), which the
# fronts answer with.
HTTP_STATUS = "dapr-http-status"


class AppCallError(Exception):
    """The app answered a call with an error status."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class AppUnavailable(AppCallError):
    """The app could not be reached (down, restarting, or not listening where l8 looks)."""

    def __init__(self, message: str) -> None:
        super().__init__(Code.UNAVAILABLE, message)


@dataclass(slots=True, frozen=True)
class AppSubscription:
    """One topic subscription as the app declared it, before l8 checks it."""

    pubsub: str
    topic: str
    metadata: dict[str, str] = field(default_factory=dict)
    rules: tuple[tuple[str, str], ...] = ()  # (match, path), first match wins
    default_route: str = ""  # Dapr's routes.default; "" is a path too (the handler without a rule)
    dead_letter_topic: str | None = None
    bulk: bool = False
    bulk_max_messages: int = 0  # 0: l8's default
    bulk_max_await_ms: int = 0


@dataclass(slots=True, frozen=True)
class BulkEntry:
    entry_id: str
    event: Event


@dataclass(slots=True, frozen=True)
class BindingAnswer:
    """An app's answer to an input binding event (Dapr's BindingEventResponse): optionally states to
    save in ``store_name`` (``states``: key -> value bytes) and ``data`` for the output bindings ``to``."""

    store_name: str = ""
    states: tuple[tuple[str, bytes], ...] = ()
    to: tuple[str, ...] = ()
    data: bytes = b""
    parallel: bool = False


PROTOCOLS = ("grpc", "layotto", "http")  # app.protocol: Dapr's gRPC AppCallback, Layotto's, HTTP


class AppChannel(Protocol):
    """What a sidecar needs of its app; one implementation per app protocol."""

    @property
    def address(self) -> str: ...

    @property
    def protocol(self) -> str:
        """One of PROTOCOLS; "" while a detecting channel has not learned it yet."""
        ...

    async def call_grpc(
        self, method: str, request: bytes, *, timeout: float, metadata: Metadata
    ) -> tuple[bytes, Metadata]:
        """gRPC proxying: call the app's own unary ``method`` (``/pkg.Service/Method``) with the
        caller's bytes; an app that is no gRPC server raises AppCallError(UNIMPLEMENTED)."""
        ...

    async def health(self, *, timeout: float) -> tuple[bool, str]:
        """One probe of the app's health: (healthy, why not)."""
        ...

    async def on_invoke(self, request: bytes, *, timeout: float, metadata: Metadata) -> tuple[bytes, Metadata]:
        """Pass Dapr's ``common.v1.InvokeRequest`` bytes to the app; its ``InvokeResponse`` bytes
        and response metadata come back."""
        ...

    async def list_subscriptions(self, *, timeout: float) -> list[AppSubscription] | None:
        """The app's subscriptions; None when the app declares none (it does not implement the call)."""
        ...

    async def on_event(self, event: Event, path: str, *, timeout: float, metadata: Metadata) -> int:
        """Push one event; the app's verdict (SUCCESS, RETRY, DROP or a status l8 does not know).
        An app that does not implement event delivery raises AppCallError(UNIMPLEMENTED)."""
        ...

    async def on_bulk_event(
        self, pubsub: str, topic: str, path: str, entries: Sequence[BulkEntry], *, timeout: float
    ) -> dict[str, int]:
        """Push a batch; a verdict per entry id (entries the app left out are missing)."""
        ...

    async def list_input_bindings(self, *, timeout: float) -> list[str] | None:
        """The input bindings the app takes events from; None when it does not implement the call."""
        ...

    async def on_binding_event(
        self, name: str, data: bytes, metadata: dict[str, str], *, timeout: float
    ) -> BindingAnswer:
        """Push one input binding event; an error (AppCallError) means "deliver it again"."""
        ...

    async def close(self) -> None: ...


def open_app(
    address: str,
    max_message_bytes: int = 16 << 20,
    api_token: str | None = None,
    *,
    protocol: str | None = "grpc",
    bindings: Sequence[str] = (),
    health_path: str = "/healthz",
) -> AppChannel:
    """The channel to the app at ``address`` (host:port) speaking ``protocol`` (one of PROTOCOLS;
    None: learn it from the app). ``api_token`` (APP_API_TOKEN) goes to the app as
    ``dapr-api-token`` on every call; ``bindings`` are the input bindings an HTTP app is asked about
    (``OPTIONS /<name>``); ``health_path`` is an HTTP app's health check."""
    if protocol is None:
        from runtime.app_detect import DetectedApp

        return DetectedApp(address, max_message_bytes, api_token, bindings=bindings, health_path=health_path)
    if protocol == "http":
        from runtime.app_http import HttpApp

        return HttpApp(address, max_message_bytes, api_token, bindings=bindings, health_path=health_path)
    if protocol == "layotto":
        from runtime.app_layotto import LayottoGrpcApp

        return LayottoGrpcApp(address, max_message_bytes, api_token)
    if protocol != "grpc":
        raise ValueError(f"app protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    from runtime.app_dapr import DaprGrpcApp

    return DaprGrpcApp(address, max_message_bytes, api_token)
