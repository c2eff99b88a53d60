"""Dapr's output bindings route: ``POST`` or ``PUT /v1.0/bindings/{name}`` with
``{"data", "metadata", "operation"}``. ``data`` goes to the binding as its JSON (as daprd
marshals it: a JSON string arrives with its quotes), the reply's data comes back with 200 and
its metadata as ``metadata.<key>`` headers. A body that is not such an object is 400
``ERR_MALFORMED_REQUEST``; an unknown binding or a failed call 500 ``ERR_INVOKE_OUTPUT_BINDING``
(bad input the binding refuses: 400), as daprd answers."""

from __future__ import annotations

import re

from handlers.proto import runtime_pb2 as pb
from runtime.dapr_http import body as b
from runtime.dapr_http.errors import HttpError
from runtime.dapr_http.front import HttpFront
from runtime.dapr_http.router import Params, Route, route
from runtime.forward import FrontError
from runtime.http import Request, Response

API = "bindings"
_INVOKE = "ERR_INVOKE_OUTPUT_BINDING"
_HEADER = re.compile(r"[A-Za-z0-9_.-]{1,256}")
_VALUE = re.compile(r"[\x20-\x7e]*")


class BindingRoutes:
    def __init__(self, front: HttpFront) -> None:
        self._front = front

    def routes(self) -> list[Route]:
        return [route(("POST", "PUT"), "/v1.0/bindings/{name}", self.invoke)]

    async def invoke(self, request: Request, params: Params) -> Response:
        obj = b.json_object(b.json_body(request.body), "the body")
        req = pb.InvokeBindingRequest(
            data=b.encode(b.get(obj, "data")),
            metadata=b.string_map(b.get(obj, "metadata"), "metadata"),
            operation=b.string(obj, "operation", "the body"),
        )
        try:
            req.name = self._front.forwarder.component(API, params["name"])
        except FrontError as exc:
            raise HttpError(500, _INVOKE, exc.message, resource=(API, params["name"][:64])) from None
        try:
            data = await self._front.call(API, req.name, "invoke", req.SerializeToString(), request, _INVOKE)
        except HttpError as exc:
            if exc.status != 400:
                raise HttpError(500, _INVOKE, exc.message, exc.reason, exc.resource) from None
            raise
        reply = pb.InvokeBindingResponse.FromString(data)
        headers = {
            f"metadata.{k}": v
            for k, v in reply.metadata.items()
            if _HEADER.fullmatch(k) and v.isascii() and v.isprintable()
        }
        return Response(200, reply.data, headers)
