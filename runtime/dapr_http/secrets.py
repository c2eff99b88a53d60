"""Dapr's secrets routes: ``GET /v1.0/secrets/{store}/{name}`` answers ``{key: value}``, and
``GET /v1.0/secrets/{store}/bulk`` answers ``{name: {key: value}}`` (``metadata.*`` query
parameters go to the store). An unknown store is Dapr's 401 ``ERR_SECRET_STORE_NOT_FOUND``; a
secret outside the app's scope 403 ``ERR_PERMISSION_DENIED``; bad input 400; any other failure
(a missing secret among them) 500 ``ERR_SECRET_GET``, as daprd answers."""

from __future__ import annotations

import orjson

from handlers.proto import runtime_pb2 as pb
from runtime.dapr_http import body as b
from runtime.dapr_http.errors import HttpError
from runtime.dapr_http.front import HttpFront
from runtime.dapr_http.router import Params, Route, route
from runtime.forward import FrontError
from runtime.http import Request, Response

API = "secrets"
_JSON = {"content-type": "application/json"}
_GET = "ERR_SECRET_GET"


class SecretRoutes:
    def __init__(self, front: HttpFront) -> None:
        self._front = front

    def routes(self) -> list[Route]:
        # The bulk route first: "bulk" is also a name the other route would take.
        return [
            route("GET", "/v1.0/secrets/{store}/bulk", self.bulk),
            route("GET", "/v1.0/secrets/{store}/{name}", self.get),
        ]

    def _store(self, name: str) -> str:
        try:
            return self._front.forwarder.component(API, name)
        except FrontError as exc:
            raise HttpError(401, "ERR_SECRET_STORE_NOT_FOUND", exc.message, resource=(API, name[:64])) from None

    async def _call(self, store: str, op: str, payload: bytes, request: Request) -> bytes:
        try:
            return await self._front.call(API, store, op, payload, request, _GET)
        except HttpError as exc:
            if exc.status == 403:
                raise HttpError(403, "ERR_PERMISSION_DENIED", exc.message, exc.reason, exc.resource) from None
            if exc.status != 400:
                raise HttpError(500, _GET, exc.message, exc.reason, exc.resource) from None
            raise

    async def get(self, request: Request, params: Params) -> Response:
        store = self._store(params["store"])
        req = pb.GetSecretRequest(store_name=store, key=params["name"], metadata=b.query_metadata(request.query))
        data = await self._call(store, "get", req.SerializeToString(), request)
        return Response(200, orjson.dumps(dict(pb.GetSecretResponse.FromString(data).data)), dict(_JSON))

    async def bulk(self, request: Request, params: Params) -> Response:
        store = self._store(params["store"])
        req = pb.GetBulkSecretRequest(store_name=store, metadata=b.query_metadata(request.query))
        data = await self._call(store, "bulkget", req.SerializeToString(), request)
        found = {name: dict(secret.secrets) for name, secret in pb.GetBulkSecretResponse.FromString(data).data.items()}
        return Response(200, orjson.dumps(found), dict(_JSON))
