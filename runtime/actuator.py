"""The HTTP port's routes: the actuator (liveness, readiness, info), Dapr's health checks, and
Dapr's HTTP API (runtime/dapr_http), in one router."""

from __future__ import annotations

import datetime
import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from runtime.front_hooks import Hooks
    from runtime.metrics import Metrics

_JSON = {"content-type": "application/json"}
# Layotto's level names, and Python's.
LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "critical": logging.CRITICAL,
}
_LOGGER = re.compile(r"^l8(\.[A-Za-z0-9_-]{1,64}){0,8}$")
# When this copy of l8 was built (installed): the "compiled" of Layotto's /actuator/info.
COMPILED = datetime.datetime.fromtimestamp(Path(__file__).stat().st_mtime, datetime.UTC).isoformat(timespec="seconds")


def _json(status: int, body: Any) -> Response:
    return Response(status, json.dumps(body).encode(), dict(_JSON))


class Actuator:
    def __init__(self, config: Config, health: Health, metrics: Metrics | None = None) -> None:
        self._config = config
        self._health = health
        self._metrics = metrics

    def routes(self) -> list[Any]:
        found = [
            route("GET", "/actuator/health/liveness", self.liveness),
            route("GET", "/actuator/health/readiness", self.readiness),
            route("GET", "/actuator/info", self.info),
            route("POST", "/actuator/logger", self.logger),
            route("GET", "/v1.0/healthz", self.healthz),
            route("GET", "/v1.0/healthz/outbound", self.healthz),
        ]
        if self._metrics is not None:
            found.append(route("GET", "/metrics", self.scrape))
        return found

    async def scrape(self, request: Request, params: Params) -> Response:
        assert self._metrics is not None
        from runtime.metrics import CONTENT_TYPE

        return Response(200, self._metrics.scrape(), {"content-type": CONTENT_TYPE})

    async def logger(self, request: Request, params: Params) -> Response:
        """Layotto's ``POST /actuator/logger {"component", "level"}``: the level of an l8 logger
        (``l8`` for all of them, ``l8.bus``, ``l8.handlers``...) from now on."""
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            return _json(400, {"error": 'the body is not JSON: send {"component": "l8", "level": "debug"}'})
        if not isinstance(body, dict):
            return _json(400, {"error": "the body must be a JSON object {component, level}"})
        name = body.get("component") or "l8"
        level = body.get("level")
        if not isinstance(name, str) or not _LOGGER.match(name):
            return _json(
                400, {"error": f"component {str(name)[:64]!r} is not an l8 logger (l8, l8.bus, l8.handlers...)"}
            )
        if not isinstance(level, str) or level.lower() not in LEVELS:
            return _json(400, {"error": f"level {str(level)[:16]!r} is not one of {', '.join(LEVELS)}"})
        logging.getLogger(name).setLevel(LEVELS[level.lower()])
        logging.getLogger("l8").info("log level of %s set to %s through the actuator", name, level.lower())
        return _json(200, {"component": name, "level": level.lower()})

    async def liveness(self, request: Request, params: Params) -> Response:
        # Alive while the process serves; only a shutdown turns it DOWN.
        down = self._health.indicators["runtime_startup"].status is Status.DOWN
        status = "DOWN" if down else "UP"
        return _json(503 if down else 200, {"status": status, "components": {"runtime": {"status": status}}})

    async def readiness(self, request: Request, params: Params) -> Response:
        return _json(200 if self._health.ready else 503, self._health.report())

    async def info(self, request: Request, params: Params) -> Response:
        app = {"name": "l8", "version": __version__, "compiled": COMPILED, "app_id": self._config.app.id}
        return _json(200, {"app": app})

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
    hooks: Hooks | None = None,
    extra: Sequence[Any] = (),
) -> Serve:
    front = HttpFront(forwarder)
    router = Router(Actuator(config, health, hooks.metrics if hooks else None).routes())
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
    router.add(*extra)
    if hooks is not None and hooks.any:
        from runtime.front_hooks import wrap_http

        router.wrap(lambda r: wrap_http(r, hooks))
    return _guarded(router, config)


def probes_router(config: Config, health: Health, metrics: Metrics | None = None) -> Serve:
    """The health probes (and /metrics) alone: what `l8 worker --http-port` serves."""
    return _guarded(Router(Actuator(config, health, metrics).routes()), config)


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
