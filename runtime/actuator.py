"""HTTP routes: the actuator (liveness, readiness, info) and Dapr's /v1.0 subset."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from runtime import __version__
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
        *,
        functions: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self._config = config
        self._functions = functions  # the wasm functions' rows for /v1.0/metadata
        self._health = health
        self._invoke = invoke  # Dapr's /v1.0/invoke/{app}/method/{method}, any verb
        self._exact = {
            "/actuator/health/liveness": self.liveness,
            "/actuator/health/readiness": self.readiness,
            "/actuator/info": self.info,
            "/v1.0/healthz": self.healthz,
            "/v1.0/healthz/outbound": self.healthz,
            "/v1.0/metadata": self.metadata,
        }

    async def __call__(self, request: Request) -> Response:
        if self._invoke is not None and request.path.startswith("/v1.0/invoke/"):
            return await self._invoke(request)
        route = self._exact.get(request.path.rstrip("/") or "/")
        if route is None:
            return _json(404, {"errorCode": "ERR_NOT_FOUND", "message": f"no route for {request.path}"})
        if request.method not in ("GET", "HEAD"):
            return _json(
                405, {"errorCode": "ERR_METHOD_NOT_ALLOWED", "message": f"{request.method} is not allowed here"}
            )
        return route(request)

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

    def metadata(self, _: Request) -> Response:
        components = [
            {"name": name, "type": f"{c.kind}.{c.type}", "version": "v1"}
            for name, c in sorted(self._config.components.items())
        ]
        body: dict[str, Any] = {
            "id": self._config.app.id,
            "runtimeVersion": f"l8-{__version__}",
            "components": components,
            "extended": {"namespace": self._config.namespace},
        }
        if self._functions is not None:
            body["functions"] = self._functions()
        return _json(200, body)


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return re.sub(r"^\[|\]$", "", host), int(port)
