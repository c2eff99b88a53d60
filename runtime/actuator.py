"""The HTTP port's routes: the actuator (liveness, readiness, info), Dapr's health checks, and
Dapr's HTTP API (runtime/dapr_http), in one router."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from runtime import __version__
from runtime.auth import http_refusal
from runtime.config import Config
from runtime.configuration import ConfigurationHub
from runtime.configuration_push import AppPush
from runtime.dapr_http.bindings import BindingRoutes
from runtime.dapr_http.configuration import ConfigurationRoutes
from runtime.dapr_http.front import HttpFront
from runtime.dapr_http.invoke import InvokeRoutes
from runtime.dapr_http.lock import LockRoutes
from runtime.dapr_http.metadata import MetadataRoutes
from runtime.dapr_http.pubsub import PubSubRoutes
from runtime.dapr_http.router import Params, Router, route
from runtime.dapr_http.secrets import SecretRoutes
from runtime.dapr_http.state import StateRoutes
from runtime.forward import Forwarder
from runtime.health import Health, Status
from runtime.http import Request, Response
from runtime.http import Router as Serve
from runtime.invoke import Invoker
from runtime.metadata import Metadata

_JSON = {"content-type": "application/json"}


def _json(status: int, body: Any) -> Response:
    return Response(status, json.dumps(body).encode(), dict(_JSON))


class Actuator:
    def __init__(self, config: Config, health: Health) -> None:
        self._config = config
        self._health = health

    def routes(self) -> list[Any]:
        return [
            route("GET", "/actuator/health/liveness", self.liveness),
            route("GET", "/actuator/health/readiness", self.readiness),
            route("GET", "/actuator/info", self.info),
            route("GET", "/v1.0/healthz", self.healthz),
            route("GET", "/v1.0/healthz/outbound", self.healthz),
        ]

    async def liveness(self, request: Request, params: Params) -> Response:
        # Alive while the process serves; only a shutdown turns it DOWN.
        down = self._health.indicators["runtime_startup"].status is Status.DOWN
        status = "DOWN" if down else "UP"
        return _json(503 if down else 200, {"status": status, "components": {"runtime": {"status": status}}})

    async def readiness(self, request: Request, params: Params) -> Response:
        return _json(200 if self._health.ready else 503, self._health.report())

    async def info(self, request: Request, params: Params) -> Response:
        return _json(200, {"app": {"name": "l8", "version": __version__, "app_id": self._config.app.id}})

    async def healthz(self, request: Request, params: Params) -> Response:
        if self._health.ready:
            return Response(204)
        return _json(500, {"errorCode": "ERR_HEALTH_NOT_READY", "message": "l8 is not ready"})


def http_router(
    config: Config,
    health: Health,
    forwarder: Forwarder,
    invoker: Invoker,
    metadata: Metadata,
    hub: ConfigurationHub | None,
    shutdown: Callable[[], None] | None,
    push: AppPush | None = None,
) -> Serve:
    front = HttpFront(forwarder)
    router = Router(Actuator(config, health).routes())
    for part in (
        StateRoutes(front),
        PubSubRoutes(front),
        ConfigurationRoutes(front, hub, push),
        LockRoutes(front),
        MetadataRoutes(metadata, shutdown),
        InvokeRoutes(invoker),
        SecretRoutes(front),
        BindingRoutes(front),
    ):
        router.add(*part.routes())
    return _guarded(router, config)


def probes_router(config: Config, health: Health) -> Serve:
    """The health probes alone: what `l8 worker --http-port` serves."""
    return _guarded(Router(Actuator(config, health).routes()), config)


def _guarded(router: Serve, config: Config) -> Serve:
    """``router`` behind the API token, when one is set (health probes stay open)."""
    token = config.server.api_token()
    if not token:
        return router
    secret = token.encode()

    async def serve(request: Request) -> Response:
        refused = http_refusal(request, secret)
        return refused if refused is not None else await router(request)

    return serve


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return re.sub(r"^\[|\]$", "", host), int(port)
