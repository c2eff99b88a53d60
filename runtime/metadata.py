"""What GetMetadata answers, on gRPC and HTTP alike, and the attributes SetMetadata adds.

Components are listed with their capabilities: those of the running bridge when this process
serves the component, else the ones its type declares (a front-only sidecar runs no bridges).
Attributes are the app's own key/value pairs (``extended`` in Dapr's answer), bounded in number
and size, kept in this sidecar's memory as Dapr keeps them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bridges import registry
from bridges.errors import Code
from runtime import __version__
from runtime.config import Config
from runtime.forward import FrontError

MAX_ATTRIBUTES = 64
MAX_KEY = 256
MAX_VALUE = 4096


@dataclass
class Metadata:
    config: Config
    # The subscriptions of this sidecar with their delivery state (runtime/subscriptions.py's report).
    report: Callable[[], Awaitable[list[dict[str, Any]]]] | None = None
    running: Callable[[], dict[str, frozenset[str]]] = dict  # component name -> features of its live bridge
    attributes: dict[str, str] = field(default_factory=dict)
    # The WebAssembly functions this sidecar runs, with their state (runtime/functions.py's rows).
    functions: Callable[[], list[dict[str, Any]]] | None = None
    # The protocol the app speaks (app.protocol, or what l8 learned from the app; "" not yet).
    app_protocol: Callable[[], str] | None = None
    # The API plugins this sidecar serves (runtime/plugins.py).
    plugins: Callable[[], list[dict[str, Any]]] | None = None

    def set(self, key: str, value: str) -> None:
        """SetMetadata: INVALID_ARGUMENT for an empty, long or reserved key or a long value."""
        if not key:
            raise FrontError(Code.INVALID_ARGUMENT, "the metadata key is empty")
        if len(key) > MAX_KEY or len(value) > MAX_VALUE:
            raise FrontError(
                Code.INVALID_ARGUMENT, f"a metadata key may have {MAX_KEY} characters and a value {MAX_VALUE}"
            )
        if key not in self.attributes and len(self.attributes) >= MAX_ATTRIBUTES:
            raise FrontError(
                Code.RESOURCE_EXHAUSTED, f"this sidecar holds at most {MAX_ATTRIBUTES} metadata attributes"
            )
        if key in self._reserved:
            raise FrontError(Code.INVALID_ARGUMENT, f"metadata key {key[:64]!r} is l8's own")
        self.attributes[key] = value

    _reserved = frozenset({"namespace", "daprRuntimeVersion", "appCommand", "l8.plugins"})

    def capabilities(self, name: str, kind: str, type_: str) -> list[str]:
        live = self.running().get(name)
        return sorted(live if live is not None else registry.features_of(kind, type_))

    def components(self) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "type": f"{c.kind}.{c.type}",
                "version": "v1",
                "capabilities": self.capabilities(name, c.kind, c.type),
            }
            for name, c in sorted(self.config.components.items())
        ]

    def extended(self) -> dict[str, str]:
        found = {**self.attributes, "namespace": self.config.namespace, "daprRuntimeVersion": f"l8-{__version__}"}
        if self.plugins is not None:
            found["l8.plugins"] = ",".join(p["name"] for p in self.plugins())
        return found

    async def subscriptions(self, rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """As Dapr's /v1.0/metadata lists them, with l8's delivery state beside each."""
        return [_subscription_row(row) for row in rows or await self._rows() if not _is_binding(row)]

    async def input_bindings(self, rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """The app's input bindings and how they are delivered (l8's own field)."""
        return [_binding_row(row) for row in rows or await self._rows() if _is_binding(row)]

    async def _rows(self) -> list[dict[str, Any]]:
        return await self.report() if self.report is not None else []

    async def describe(self) -> dict[str, Any]:
        """Dapr's HTTP answer (``GET /v1.0/metadata``); the gRPC one is built from the same parts."""
        app = self.config.app
        rows = await self._rows()
        protocol = (self.app_protocol() if self.app_protocol is not None else "") or app.protocol or "grpc"
        connection: dict[str, Any] = {"protocol": protocol, "maxConcurrency": self.config.concurrency}
        if app.callback:
            host, _, port = app.callback.rpartition(":")
            connection.update(port=int(port), channelAddress=host)
        check = app.health_check
        if check.enabled:
            connection["health"] = {
                "healthCheckPath": check.path,
                "healthProbeInterval": f"{check.interval:g}s",
                "healthProbeTimeout": f"{check.timeout * 1000:g}ms",
                "healthThreshold": check.threshold,
            }
        return {
            "id": app.id,
            "runtimeVersion": f"l8-{__version__}",
            "enabledFeatures": [],
            "actors": [],
            "components": self.components(),
            "extended": self.extended(),
            "subscriptions": await self.subscriptions(rows),
            "inputBindings": await self.input_bindings(rows),
            "httpEndpoints": [],
            "appConnectionProperties": connection,
            **({"functions": self.functions()} if self.functions is not None else {}),
            **({"plugins": self.plugins()} if self.plugins is not None else {}),
        }


_TYPES = {"config": "DECLARATIVE", "app": "PROGRAMMATIC", "stream": "STREAMING"}


def _is_binding(row: dict[str, Any]) -> bool:
    return row.get("target") == "binding" or row.get("origin") == "binding"


def _binding_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": row["pubsub"],
        "state": row["state"],
        "reason": row.get("reason", ""),
        "workers": row.get("workers", []),
    }


def _subscription_row(row: dict[str, Any]) -> dict[str, Any]:
    rules = [{"match": m, "path": p} for m, p in row.get("rules", ())]
    if row.get("default_route") is not None and "rules" in row:
        rules.append({"match": "", "path": row["default_route"]})
    return {
        "pubsubname": row["pubsub"],
        "topic": row["topic"],
        "deadLetterTopic": row.get("dead_letter_topic") or "",
        "rules": rules,
        "type": _TYPES.get(row["origin"], "UNKNOWN"),
        "state": row["state"],
        "reason": row.get("reason", ""),
        "workers": row.get("workers", []),
    }
