"""Dapr's configuration routes: ``/v1.0/configuration/{store}`` (get), ``.../subscribe`` and
``.../{id}/unsubscribe`` (also under ``/v1.0-alpha1``).

A get answers ``{key: {value, version, metadata}}`` for the keys that exist (``key`` query
parameters; none means all); ``metadata.group`` / ``metadata.label`` pick a group or label, as on
gRPC. Subscribe (``key`` and ``metadata.*`` as for a get) answers ``{"id"}`` and delivers each
change to the app (runtime/configuration_push.py); a sidecar without an app callback answers 500
``ERR_APP_CHANNEL_NIL``. Unsubscribe ends any subscription of this sidecar by id, gRPC ones included.
"""

from __future__ import annotations

from typing import Any

import orjson

from bus.codec import HDR_TRACEPARENT
from handlers.proto import runtime_pb2 as pb
from runtime.configuration import ConfigurationHub
from runtime.configuration_push import AppPush
from runtime.dapr_http import body as b
from runtime.dapr_http.errors import HttpError
from runtime.dapr_http.front import HttpFront
from runtime.dapr_http.router import Params, Route, route
from runtime.forward import FrontError
from runtime.http import Request, Response

API = "configuration"
_JSON = {"content-type": "application/json"}


class ConfigurationRoutes:
    def __init__(self, front: HttpFront, hub: ConfigurationHub | None, push: AppPush | None = None) -> None:
        self._front = front
        self._hub = hub
        self._push = push

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
        req = pb.GetConfigurationRequest(**_selection(store, request))
        data = await self._front.call(API, store, "get", req.SerializeToString(), request, "ERR_CONFIGURATION_GET")
        items = {
            item.key: {"value": item.content, "version": item.version, "metadata": dict(item.metadata)}
            for item in pb.GetConfigurationResponse.FromString(data).items
        }
        return Response(200, orjson.dumps(items), dict(_JSON))

    async def subscribe(self, request: Request, params: Params) -> Response:
        store = self._front.component(API, params["store"], "ERR_CONFIGURATION_SUBSCRIBE")
        if self._push is None:
            raise HttpError(
                500,
                "ERR_APP_CHANNEL_NIL",
                "configuration changes go to the app, and this sidecar has no app callback (app.callback / --app-port)",
            )
        req = pb.SubscribeConfigurationRequest(**_selection(store, request))
        try:
            sub_id = await self._push.subscribe(req, request.headers.get(HDR_TRACEPARENT))
        except FrontError as exc:
            raise HttpError.of(exc, "ERR_CONFIGURATION_SUBSCRIBE") from None
        return Response(200, orjson.dumps({"id": sub_id}), dict(_JSON))

    async def unsubscribe(self, request: Request, params: Params) -> Response:
        store = self._front.component(API, params["store"], "ERR_CONFIGURATION_UNSUBSCRIBE")
        ok, message = self._hub.unsubscribe(params["id"], store) if self._hub else (False, "no subscriptions")
        if not ok:
            raise HttpError(500, "ERR_CONFIGURATION_UNSUBSCRIBE", message)
        return Response(200, orjson.dumps({"ok": True}), dict(_JSON))


def _selection(store: str, request: Request) -> dict[str, Any]:
    """The keys (``key`` query parameters) and ``metadata.*`` of a get or subscribe; ``group`` and
    ``label`` in the metadata pick the group and label."""
    metadata = b.query_metadata(request.query)
    keys = b.query_values(request.query, "key")
    if len(keys) > b.MAX_ITEMS:
        raise HttpError(400, "ERR_MALFORMED_REQUEST", f"{len(keys)} keys; at most {b.MAX_ITEMS}")
    return {
        "store_name": store,
        "keys": keys,
        "metadata": metadata,
        "group": metadata.get("group", ""),
        "label": metadata.get("label", ""),
    }
