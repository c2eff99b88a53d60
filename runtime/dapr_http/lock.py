"""Dapr's lock routes: ``/v1.0-alpha1/lock/{store}`` and ``/v1.0-alpha1/unlock/{store}``."""

from __future__ import annotations

import orjson

from handlers.proto import runtime_pb2 as pb
from runtime.dapr_http import body as b
from runtime.dapr_http.front import HttpFront
from runtime.dapr_http.router import Params, Route, route
from runtime.http import Request, Response

API = "lock"
_JSON = {"content-type": "application/json"}


class LockRoutes:
    def __init__(self, front: HttpFront) -> None:
        self._front = front

    def routes(self) -> list[Route]:
        return [
            route("POST", "/v1.0-alpha1/lock/{store}", self.try_lock),
            route("POST", "/v1.0-alpha1/unlock/{store}", self.unlock),
        ]

    async def try_lock(self, request: Request, params: Params) -> Response:
        store = self._front.component(API, params["store"], "ERR_TRY_LOCK")
        obj = b.json_object(b.json_body(request.body), "the body")
        req = pb.TryLockRequest(
            store_name=store,
            resource_id=b.string(obj, "resourceId", "the body"),
            lock_owner=b.string(obj, "lockOwner", "the body"),
            expire=b.integer(obj, "expiryInSeconds", "the body"),
        )
        data = await self._front.call(API, store, "trylock", req.SerializeToString(), request, "ERR_TRY_LOCK")
        return Response(200, orjson.dumps({"success": pb.TryLockResponse.FromString(data).success}), dict(_JSON))

    async def unlock(self, request: Request, params: Params) -> Response:
        store = self._front.component(API, params["store"], "ERR_UNLOCK")
        obj = b.json_object(b.json_body(request.body), "the body")
        req = pb.UnlockRequest(
            store_name=store,
            resource_id=b.string(obj, "resourceId", "the body"),
            lock_owner=b.string(obj, "lockOwner", "the body"),
        )
        data = await self._front.call(API, store, "unlock", req.SerializeToString(), request, "ERR_UNLOCK")
        return Response(200, orjson.dumps({"status": pb.UnlockResponse.FromString(data).status}), dict(_JSON))
