"""Dapr's ``GET /v1.0/metadata`` (components with capabilities, subscriptions, attributes),
``PUT /v1.0/metadata/{name}`` (an attribute, the body its value) and ``POST /v1.0/shutdown``."""

from __future__ import annotations

from collections.abc import Callable

import orjson

from runtime.dapr_http.errors import HttpError
from runtime.dapr_http.router import Params, Route, route
from runtime.forward import FrontError
from runtime.http import Request, Response
from runtime.metadata import Metadata


class MetadataRoutes:
    def __init__(self, metadata: Metadata, shutdown: Callable[[], None] | None) -> None:
        self._metadata = metadata
        self._shutdown = shutdown

    def routes(self) -> list[Route]:
        return [
            route("GET", "/v1.0/metadata", self.get),
            route("PUT", "/v1.0/metadata/{name}", self.put),
            route("POST", "/v1.0/shutdown", self.shutdown),
        ]

    async def get(self, request: Request, params: Params) -> Response:
        return Response(200, orjson.dumps(await self._metadata.describe()), {"content-type": "application/json"})

    async def put(self, request: Request, params: Params) -> Response:
        try:
            value = request.body.decode()
        except UnicodeDecodeError:
            raise HttpError(400, "ERR_MALFORMED_REQUEST", "the metadata value is not UTF-8 text") from None
        try:
            self._metadata.set(params["name"], value)
        except FrontError as exc:
            raise HttpError.of(exc, "ERR_METADATA_SET") from None
        return Response(204)

    async def shutdown(self, request: Request, params: Params) -> Response:
        if self._shutdown is None:
            raise HttpError(501, "ERR_SHUTDOWN", "this l8 cannot be shut down over HTTP")
        self._shutdown()
        return Response(204)
