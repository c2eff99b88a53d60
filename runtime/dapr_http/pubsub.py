"""Dapr's publish routes: ``/v1.0/publish/{pubsub}/{topic}`` (the body as it came, its content type,
``metadata.*`` query) and ``/v1.0-alpha1/publish/bulk/{pubsub}/{topic}`` (a JSON array of entries
``{entryId, event, contentType, metadata}``; JSON content types take any JSON event, others a
string). The CloudEvent envelope is made by the pub/sub handler, as for gRPC."""

from __future__ import annotations

from typing import Any

import orjson

from handlers.base import is_json_type
from handlers.proto import runtime_pb2 as pb
from runtime.dapr_http import body as b
from runtime.dapr_http.errors import HttpError, malformed
from runtime.dapr_http.front import HttpFront
from runtime.dapr_http.router import Params, Route, route
from runtime.http import Request, Response

API = "pubsub"
_EVENTS = "DAPR_PUBSUB_UNMARSHAL_EVENTS"


class PubSubRoutes:
    def __init__(self, front: HttpFront) -> None:
        self._front = front

    def routes(self) -> list[Route]:
        return [
            route("POST", "/v1.0/publish/{pubsub}/{topic*}", self.publish),
            route("POST", "/v1.0-alpha1/publish/bulk/{pubsub}/{topic*}", self.bulk_publish),
            route("POST", "/v1.0/publish/bulk/{pubsub}/{topic*}", self.bulk_publish),
        ]

    def _target(self, params: Params) -> tuple[str, str]:
        pubsub = self._front.component(API, params["pubsub"], "ERR_PUBSUB_PUBLISH_MESSAGE")
        topic = params["topic"]
        if not topic:
            raise malformed(f"topic is empty in pubsub {pubsub}", "DAPR_PUBSUB_TOPIC_NAME_EMPTY")
        if len(topic) > b.MAX_NAME:
            raise malformed(f"the topic is {len(topic)} characters; at most {b.MAX_NAME}")
        return pubsub, topic

    async def publish(self, request: Request, params: Params) -> Response:
        pubsub, topic = self._target(params)
        req = pb.PublishEventRequest(
            pubsub_name=pubsub,
            topic=topic,
            data=request.body,
            data_content_type=request.headers.get("content-type", ""),
            metadata=b.query_metadata(request.query, "DAPR_PUBSUB_METADATA_DESERIALIZATION"),
        )
        await self._front.call(API, pubsub, "publish", req.SerializeToString(), request, "ERR_PUBSUB_PUBLISH_MESSAGE")
        return Response(204)

    async def bulk_publish(self, request: Request, params: Params) -> Response:
        pubsub, topic = self._target(params)
        entries = b.json_list(request.body, "the body", _EVENTS)
        req = pb.BulkPublishRequest(
            pubsub_name=pubsub,
            topic=topic,
            metadata=b.query_metadata(request.query, "DAPR_PUBSUB_METADATA_DESERIALIZATION"),
        )
        seen: set[str] = set()
        for i, entry in enumerate(entries):
            req.entries.append(_entry(entry, f"[{i}]", seen))
        data = await self._front.call(
            API, pubsub, "bulkpublish", req.SerializeToString(), request, "ERR_PUBSUB_PUBLISH_MESSAGE"
        )
        failed = pb.BulkPublishResponse.FromString(data).failed_entries
        if not failed:
            return Response(204)
        body = {
            "failedEntries": [{"entryId": f.entry_id, "error": f.error} for f in failed],
            "errorCode": "ERR_PUBSUB_PUBLISH_MESSAGE",
        }
        return Response(500, orjson.dumps(body), {"content-type": "application/json"})


def _entry(value: Any, where: str, seen: set[str]) -> pb.BulkPublishRequestEntry:
    def bad(message: str) -> HttpError:
        return malformed(f"{where}: {message}", _EVENTS)

    if not isinstance(value, dict):
        raise bad("an entry must be a JSON object")
    entry_id = b.get(value, "entryId")
    if not isinstance(entry_id, str) or not entry_id:
        raise bad("entryId is missing or not a string")
    if entry_id in seen:
        raise bad(f"entryId {b.short(entry_id)} is used twice")
    seen.add(entry_id)
    content_type = b.get(value, "contentType") or ""
    if not isinstance(content_type, str):
        raise bad("contentType must be a string")
    if not b.has(value, "event"):
        raise bad("event is missing")
    event = b.get(value, "event")
    if not content_type and not isinstance(event, str):
        content_type = "application/json"  # a JSON event with no type given is JSON
    if is_json_type(content_type):
        data = b.encode(event)
    elif isinstance(event, str):
        data = event.encode()
    else:
        raise bad(f"event must be a string for content type {b.short(content_type or '(none)')}")
    metadata = b.string_map(b.get(value, "metadata"), f"{where}.metadata", _EVENTS)
    return pb.BulkPublishRequestEntry(entry_id=entry_id, event=data, content_type=content_type, metadata=metadata)
