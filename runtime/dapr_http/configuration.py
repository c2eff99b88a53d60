"""Dapr's configuration routes: ``/v1.0/configuration/{store}`` (get), ``.../subscribe`` and
``.../{id}/unsubscribe`` (also under ``/v1.0-alpha1``).

A get answers ``{key: {value, version, metadata}}`` for the keys that exist (``key`` query
parameters; none means all); ``metadata.group`` / ``metadata.label`` pick a group or label, as on
gRPC. Unsubscribe ends any subscription of this sidecar by id, gRPC ones included. Subscribing
over HTTP delivers each change to the app's HTTP server, which needs an HTTP app channel: until
l8 has one, subscribe answers 501 and says so.
"""

from __future__ import annotations

import orjson

from handlers.proto import runtime_pb2 as pb
from runtime.configuration import ConfigurationHub
from runtime.dapr_http import body as b
from runtime.dapr_http.errors import HttpError
from runtime.dapr_http.front import HttpFront
from runtime.dapr_http.router import Params, Route, route
from runtime.http import Request, Response

API = "configuration"
_JSON = {"content-type": "application/json"}


class ConfigurationRoutes:
    def __init__(self, front: HttpFront, hub: ConfigurationHub | None) -> None:
        self._front = front
        self._hub = hub

    def routes(self) -> list[Route]:
        found = []
        for version in ("v1.0", "v1.0-alpha1"):
            found += [
                route("GET", f"/{version}/configuration/{{store}}", self.get),
                route(("GET", "POST"), f"/{version}/configuration/{{store}}/subscribe", self.subscribe),
                route(("GET", "POST"), f"/{version}/configuration/{{store}}/{{id}}/unsubscribe", self.unsubscribe),
            ]
        return found

    async def get(self, request: Request, params: Params) -> Response:
        store = self._front.component(API, params["store"], "ERR_CONFIGURATION_GET")
        metadata = b.query_metadata(request.query)
        keys = b.query_values(request.query, "key")
        if len(keys) > b.MAX_ITEMS:
            raise HttpError(400, "ERR_MALFORMED_REQUEST", f"{len(keys)} keys; at most {b.MAX_ITEMS}")
        req = pb.GetConfigurationRequest(
            store_name=store,
            keys=keys,
            metadata=metadata,
            group=metadata.get("group", ""),
            label=metadata.get("label", ""),
        )
        data = await self._front.call(API, store, "get", req.SerializeToString(), request, "ERR_CONFIGURATION_GET")
        items = {
            item.key: {"value": item.content, "version": item.version, "metadata": dict(item.metadata)}
            for item in pb.GetConfigurationResponse.FromString(data).items
        }
        return Response(200, orjson.dumps(items), dict(_JSON))

    async def subscribe(self, request: Request, params: Params) -> Response:
        self._front.component(API, params["store"], "ERR_CONFIGURATION_SUBSCRIBE")
        raise HttpError(
            501,
            "ERR_CONFIGURATION_SUBSCRIBE",
            "configuration subscriptions over HTTP deliver changes to an HTTP app, and this l8 has no HTTP "
            "app channel yet; subscribe over gRPC (SubscribeConfiguration)",
        )

    async def unsubscribe(self, request: Request, params: Params) -> Response:
        store = self._front.component(API, params["store"], "ERR_CONFIGURATION_UNSUBSCRIBE")
        ok, message = self._hub.unsubscribe(params["id"], store) if self._hub else (False, "no subscriptions")
        if not ok:
            raise HttpError(500, "ERR_CONFIGURATION_UNSUBSCRIBE", message)
        return Response(200, orjson.dumps({"ok": True}), dict(_JSON))
