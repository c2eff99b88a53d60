"""Dapr's ``/v1.0/invoke/{app}/method/{method}``: any verb; the query string, the body, its content
type and the headers (as metadata) reach the app through the same Invoker as gRPC calls; the app's
data and content type come back, an app error as the HTTP status of its code.

The method is normalised as daprd does: decoded segment by segment (an encoded '/' stays inside
the method, never in the app id), refused with '#', '?' or a control character, and cleaned of
'.', '..' and repeated '/' (never above the app's root; a trailing '/' stays). A reply whose data
is a packed protobuf message (an ``Any`` with a type URL) answers ``application/x-protobuf`` with
that ``Any``, as daprd does.
"""

from __future__ import annotations

import json
import posixpath
import re

from bridges.errors import Code
from handlers.proto import runtime_pb2 as pb
from runtime import errors
from runtime.app_channel import HTTP_STATUS
from runtime.dapr_http.errors import malformed
from runtime.dapr_http.router import Params, Route, route
from runtime.forward import FrontError
from runtime.http import Request, Response
from runtime.invoke import NOT_METADATA, Invoker, http_status_of, metadata_headers

PROTOBUF = "application/x-protobuf"
_VERBS = tuple(name for name, _ in pb.HTTPExtension.Verb.items() if name != "NONE")
_BAD = re.compile(r"[#?\x00-\x1f\x7f]")


def normalize_method(method: str) -> str:
    if _BAD.search(method):
        raise malformed(f"the method {method[:64]!r} holds '#', '?' or a control character")
    trailing = method.endswith("/")
    clean = posixpath.normpath("/" + method.lstrip("/")).lstrip("/")
    if clean == ".":
        clean = ""
    if trailing and clean:
        clean += "/"
    return clean


def _error(code: Code, message: str) -> Response:
    body = json.dumps({"errorCode": "ERR_DIRECT_INVOKE", "message": message, "code": code.value}).encode()
    return Response(errors.http_status(code), body, {"content-type": "application/json"})


class InvokeRoutes:
    def __init__(self, invoker: Invoker) -> None:
        self._invoker = invoker

    def routes(self) -> list[Route]:
        return [route(_VERBS, "/v1.0/invoke/{app}/method/{method*}", self.invoke)]

    async def invoke(self, request: Request, params: Params) -> Response:
        method = normalize_method(params["method"])
        content_type = request.headers.get("content-type", "")
        message = pb.CommonInvokeRequest(
            method=method,
            content_type=content_type,
            http_extension=pb.HTTPExtension(
                verb=pb.HTTPExtension.Verb.Value(request.method),
                querystring=request.query,
            ),
        )
        message.data.value = request.body
        metadata, traceparent = metadata_headers(request.headers.items())
        try:
            result = await self._invoker.invoke(
                params["app"],
                method,
                message.SerializeToString(),
                timeout=None,
                metadata=metadata,
                traceparent=traceparent,
            )
        except FrontError as exc:
            return _error(exc.code, exc.message)
        answer = pb.InvokeResponse.FromString(result.data)
        # An HTTP app's own status comes back as it answered, as daprd passes it on.
        status = http_status_of(result.metadata) or 200
        headers = {
            k: v for k, v in result.metadata if isinstance(v, str) and k not in NOT_METADATA and k != HTTP_STATUS
        }
        if answer.data.type_url:
            headers["content-type"] = PROTOBUF
            return Response(status, answer.data.SerializeToString(), headers)
        if answer.content_type:
            headers["content-type"] = answer.content_type
        return Response(status, answer.data.value, headers)
