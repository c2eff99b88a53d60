"""HTTP routes: the actuator (liveness, readiness, info) and Dapr's /v1.0 subset."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from runtime import __version__
from runtime.auth import http_refusal
from runtime.config import Config
from runtime.health import Health, Status
from runtime.http import Request, Response, Router

_JSON = {"content-type": "application/json"}


def _json(status: int, body: Any) -> Response:
    return Response(status, json.dumps(body).encode(), dict(_JSON))


class Routes:
    def __init__(
        self,
        config: Config,
        health: Health,
        invoke: Router | None = None,
        subscriptions: Callable[[], Awaitable[list[dict[str, Any]]]] | None = None,
    ) -> None:
        self._config = config
        self._health = health
        token = config.server.api_token()
        self._token = token.encode() if token else None
        self._invoke = invoke  # Dapr's /v1.0/invoke/{app}/method/{method}, any verb
        self._subscriptions = subscriptions
        self._exact: dict[str, Callable[[Request], Response | Awaitable[Response]]] = {
            "/actuator/health/liveness": self.liveness,
            "/actuator/health/readiness": self.readiness,
            "/actuator/info": self.info,
            "/v1.0/healthz": self.healthz,
            "/v1.0/healthz/outbound": self.healthz,
            "/v1.0/metadata": self.metadata,
        }

    async def __call__(self, request: Request) -> Response:
        refused = http_refusal(request, self._token)
        if refused is not None:
            return refused
        if self._invoke is not None and request.path.startswith("/v1.0/invoke/"):
            return await self._invoke(request)
        route = self._exact.get(request.path.rstrip("/") or "/")
        if route is None:
            return _json(404, {"errorCode": "ERR_NOT_FOUND", "message": f"no route for {request.path}"})
        if request.method not in ("GET", "HEAD"):
            return _json(
                405, {"errorCode": "ERR_METHOD_NOT_ALLOWED", "message": f"{request.method} is not allowed here"}
            )
        found = route(request)
        return await found if inspect.isawaitable(found) else found

    def liveness(self, _: Request) -> Response:
        # Alive while the process serves; only a shutdown turns it DOWN.
        down = self._health.indicators["runtime_startup"].status is Status.DOWN
        status = "DOWN" if down else "UP"
        return _json(503 if down else 200, {"status": status, "components": {"runtime": {"status": status}}})

    def readiness(self, _: Request) -> Response:
        report = self._health.report()
        return _json(200 if self._health.ready else 503, report)

    def info(self, _: Request) -> Response:
        return _json(200, {"app": {"name": "l8", "version": __version__, "app_id": self._config.app.id}})

    def healthz(self, _: Request) -> Response:
        if self._health.ready:
            return Response(204)
        return _json(500, {"errorCode": "ERR_HEALTH_NOT_READY", "message": "l8 is not ready"})

    async def metadata(self, _: Request) -> Response:
        components = [
            {"name": name, "type": f"{c.kind}.{c.type}", "version": "v1"}
            for name, c in sorted(self._config.components.items())
        ]
        subscriptions = [_subscription_row(row) for row in await self._subscriptions()] if self._subscriptions else []
        return _json(
            200,
            {
                "id": self._config.app.id,
                "runtimeVersion": f"l8-{__version__}",
                "components": components,
                "subscriptions": subscriptions,
                "extended": {"namespace": self._config.namespace},
            },
        )


_TYPES = {"config": "DECLARATIVE", "app": "PROGRAMMATIC", "stream": "STREAMING"}


def _subscription_row(row: dict[str, Any]) -> dict[str, Any]:
    """A subscription as Dapr's /v1.0/metadata lists it, with l8's delivery state beside it."""
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


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return re.sub(r"^\[|\]$", "", host), int(port)
