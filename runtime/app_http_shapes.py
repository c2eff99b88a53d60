"""The JSON an HTTP app and daprd exchange (runtime/app_http.py sends and reads it): Dapr's
programmatic subscriptions (``GET /dapr/subscribe``), the CloudEvent of one event, the bulk
envelope and the apps' verdicts. Field names are matched as Go's encoding/json matches them
(exactly, else ignoring case), as daprd reads them."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from bridges.errors import Code
from runtime.app_channel import DROP, RETRY, SUCCESS, AppCallError, AppSubscription, BulkEntry

if TYPE_CHECKING:
    from handlers.pubsub_envelope import Event

CLOUDEVENT_JSON = "application/cloudevents+json"
BULK_EVENT_TYPE = "com.dapr.event.sent.bulk"
UNKNOWN_STATUS = 99  # an answer l8 does not know: the event server retries it
_VERDICTS = {"": SUCCESS, "SUCCESS": SUCCESS, "RETRY": RETRY, "DROP": DROP}
_BULK_VERDICTS = {"SUCCESS": SUCCESS, "RETRY": RETRY, "DROP": DROP}  # an empty status retries


def _status(answer: Any, verdicts: dict[str, int], default: int) -> int:
    if not isinstance(answer, dict):
        return default
    value = field_of(answer, "status")
    if value is None:
        return default
    return verdicts.get(str(value).upper(), UNKNOWN_STATUS)


def field_of(obj: dict[str, Any], name: str) -> Any:
    """A JSON field as Go's encoding/json finds it (exact name, else any case), as Dapr reads them."""
    if name in obj:
        return obj[name]
    lower = name.lower()
    for key, value in obj.items():
        if isinstance(key, str) and key.lower() == lower:
            return value
    return None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def subscriptions_of(body: bytes) -> list[AppSubscription]:
    """Dapr's ``/dapr/subscribe`` answer; AppCallError when it is not one."""
    if not body.strip():
        return []
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise AppCallError(Code.INVALID_ARGUMENT, "GET /dapr/subscribe did not answer JSON") from None
    if not isinstance(items, list):
        raise AppCallError(Code.INVALID_ARGUMENT, "GET /dapr/subscribe must answer a JSON list of subscriptions")
    found: list[AppSubscription] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise AppCallError(Code.INVALID_ARGUMENT, f"GET /dapr/subscribe: entry {i} is not an object")
        routes = field_of(item, "routes")
        routes = routes if isinstance(routes, dict) else {}
        rules = field_of(routes, "rules")
        bulk = field_of(item, "bulkSubscribe")
        bulk = bulk if isinstance(bulk, dict) else {}
        metadata = field_of(item, "metadata")
        found.append(
            AppSubscription(
                pubsub=_text(field_of(item, "pubsubname")),
                topic=_text(field_of(item, "topic")),
                metadata={str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {},
                rules=tuple(
                    (_text(field_of(r, "match")), _text(field_of(r, "path")))
                    for r in (rules if isinstance(rules, list) else [])
                    if isinstance(r, dict)
                ),
                default_route=_text(field_of(routes, "default")) or _text(field_of(item, "route")),
                dead_letter_topic=_text(field_of(item, "deadLetterTopic")) or None,
                bulk=field_of(bulk, "enabled") is True,
                bulk_max_messages=_int(field_of(bulk, "maxMessagesCount")),
                bulk_max_await_ms=_int(field_of(bulk, "maxAwaitDurationMs")),
            )
        )
    return found


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def cloud_event(event: Event) -> dict[str, Any]:
    """The CloudEvent an HTTP app receives: the envelope as published, with the subscription's topic
    and pub/sub (a dead-lettered event goes to the dead-letter topic's route); a raw payload in an
    envelope of its own, as daprd builds one."""
    envelope = dict(event.envelope)
    if "id" not in envelope:
        envelope.update(
            id=event.id,
            source=event.source,
            type=event.type,
            specversion=event.specversion,
            datacontenttype=event.datacontenttype,
        )
    envelope["topic"] = event.topic
    envelope["pubsubname"] = event.pubsubname
    return envelope


def _raw(event: Event) -> bool:
    return "id" not in event.envelope


def route_path(path: str) -> str:
    return path if path.startswith("/") else "/" + path


def event_verdict(answer: bytes) -> int:
    """The verdict in a 2xx answer to one event: an empty or unreadable body is SUCCESS, as in daprd."""
    try:
        parsed = orjson.loads(answer) if answer.strip() else None
    except orjson.JSONDecodeError:
        return SUCCESS
    return _status(parsed, _VERDICTS, SUCCESS)


def bulk_envelope(pubsub: str, topic: str, entries: Sequence[BulkEntry]) -> bytes:
    """Dapr's bulk envelope: CloudEvents as objects, raw payloads as base64 strings."""
    items = []
    for entry in entries:
        event = entry.event
        raw = _raw(event)
        items.append(
            {
                "entryId": entry.entry_id,
                "event": base64.b64encode(event.data).decode() if raw else cloud_event(event),
                "metadata": {},
                "contentType": "application/octet-stream" if raw else CLOUDEVENT_JSON,
            }
        )
    envelope = {
        "id": str(uuid.uuid4()),
        "type": BULK_EVENT_TYPE,
        "topic": topic,
        "pubsubname": pubsub,
        "metadata": {},
        "entries": items,
    }
    return orjson.dumps(envelope)


def bulk_verdicts(answer: bytes) -> dict[str, int]:
    """``{"statuses": [{entryId, status}]}``: a verdict per entry the app named (an empty status
    retries); AppCallError when the answer is not JSON."""
    try:
        parsed = orjson.loads(answer)
    except orjson.JSONDecodeError:
        raise AppCallError(Code.UNKNOWN, "the app's answer to a bulk event is not JSON") from None
    statuses = field_of(parsed, "statuses") if isinstance(parsed, dict) else None
    found: dict[str, int] = {}
    for item in statuses if isinstance(statuses, list) else ():
        if isinstance(item, dict) and isinstance(entry_id := field_of(item, "entryId"), str):
            found[entry_id] = _status(item, _BULK_VERDICTS, RETRY) if field_of(item, "status") else RETRY
    return found
