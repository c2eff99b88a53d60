"""CloudEvents 1.0, both ways: the envelope l8 wraps a published payload in, and the event a
subscriber gets back out of a broker message.

Wrapping: the payload goes into an envelope (id, source = the caller's app id, type, specversion,
datacontenttype, data or data_base64, topic, pubsubname, time, traceparent) unless the request says
``rawPayload=true``, in which case the bytes travel as they came; a payload whose content type is
``application/cloudevents+json`` is the envelope, completed where it lacks fields. ``ttlInSeconds``
sets ``expiration``; the broker may also drop the event itself.

Decoding: ``decode`` turns a broker message back into an ``Event``; anything that is not a usable
envelope (or raw payload) raises ``MalformedEvent``, so the caller can settle it and go on.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from bridges.errors import InvalidArgument
from handlers import limits
from handlers.base import RequestInfo, is_json_type, is_text_type, parse_ttl

EVENT_TYPE = "com.dapr.event.sent"
CLOUDEVENT_JSON = "application/cloudevents+json"
HDR_RAW = "l8-raw"  # the payload is not an envelope (published with rawPayload=true)
HDR_EXPIRES = "l8-expires"  # unix seconds after which a raw payload is not delivered
HDR_TRACEPARENT = "traceparent"
_EMPTY = b""
MAX_TOPIC = limits.TOPIC
_CORE = ("id", "source", "type", "specversion", "datacontenttype", "data", "data_base64")


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)  # what orjson refuses and json takes (integers past 64 bits); else ValueError


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1", "yes")


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(value: str) -> float | None:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def new_traceparent() -> str:
    ids = os.urandom(24).hex()
    return f"00-{ids[:32]}-{ids[32:]}-01"


@dataclass(slots=True)
class Outgoing:
    data: bytes
    headers: dict[str, str]
    ttl: int | None


def wrap(
    component: str,
    limit: int,
    topic: str,
    data: bytes,
    content_type: str,
    metadata: Mapping[str, str],
    ctx: RequestInfo,
    what: str,
) -> Outgoing:
    ttl = parse_ttl(metadata, what)
    traceparent: str | None = getattr(ctx, "traceparent", None)
    headers: dict[str, str] = {}
    if _truthy(metadata.get("rawPayload")):
        headers[HDR_RAW] = "1"
        if traceparent:
            headers[HDR_TRACEPARENT] = traceparent
        if ttl is not None:
            headers[HDR_EXPIRES] = str(int(time.time()) + ttl)
        if len(data) > limit:
            raise InvalidArgument(f"{what} is {len(data)} bytes; pub/sub {component!r} takes at most {limit}")
        return Outgoing(data, headers, ttl)
    content_type = content_type or "text/plain"
    if content_type.split(";", 1)[0].strip().lower() == CLOUDEVENT_JSON:
        event = _given_cloudevent(data, what)
    else:
        event = {"datacontenttype": content_type}
        if is_json_type(content_type):
            if data:
                try:
                    event["data"] = _loads(data)
                except ValueError:
                    raise InvalidArgument(
                        f"{what}: the data is not valid JSON, but its content type is {content_type!r}"
                    ) from None
        elif is_text_type(content_type):
            try:
                event["data"] = data.decode()
            except UnicodeDecodeError:
                event["data_base64"] = base64.b64encode(data).decode()
        else:
            event["data_base64"] = base64.b64encode(data).decode()
    event.setdefault("id", str(uuid.uuid4()))
    event.setdefault("source", ctx.app_id or "l8")
    event.setdefault("type", EVENT_TYPE)
    event.setdefault("specversion", "1.0")
    event.setdefault("datacontenttype", "application/json" if "data" in event else "application/octet-stream")
    for key, value in metadata.items():
        if key.startswith("cloudevent.") and len(key) > 11:
            event[key[11:]] = value
    event["topic"] = topic
    event["pubsubname"] = component
    event.setdefault("time", _rfc3339(time.time()))
    tp = traceparent or str(event.get("traceparent") or "") or new_traceparent()
    event["traceparent"] = tp
    event.setdefault("traceid", tp)
    if ttl is not None:
        event["expiration"] = _rfc3339(time.time() + ttl)
    # No traceparent header: the envelope carries it, and a message without headers costs less to
    # every broker client that reads it.
    body = _dumps(event)
    if len(body) > limit:
        raise InvalidArgument(
            f"{what} is {len(body)} bytes in its envelope; pub/sub {component!r} takes at most {limit}"
        )
    return Outgoing(body, headers, ttl)


def check_topic(topic: str) -> None:
    if not topic:
        raise InvalidArgument("the topic is empty")
    if not topic.strip():
        raise InvalidArgument("the topic is blank")
    limits.check_size(topic, limits.TOPIC, "the topic")


def _given_cloudevent(data: bytes, what: str) -> dict[str, Any]:
    try:
        event = _loads(data)
    except ValueError:
        raise InvalidArgument(f"{what}: content type {CLOUDEVENT_JSON} but the payload is not JSON") from None
    if not isinstance(event, dict):
        raise InvalidArgument(f"{what}: a CloudEvent must be a JSON object, not {type(event).__name__}")
    spec = event.get("specversion", "1.0")
    if spec != "1.0":
        raise InvalidArgument(f"{what}: specversion {spec!r} is not supported; l8 speaks CloudEvents 1.0")
    for key in ("id", "source", "type", "datacontenttype", "subject"):
        if key in event and not (isinstance(event[key], str) and event[key]):
            raise InvalidArgument(f"{what}: the CloudEvent attribute {key!r} must be a non-empty string")
    if "data" in event and "data_base64" in event:
        raise InvalidArgument(f"{what}: a CloudEvent holds data or data_base64, not both")
    if "data_base64" in event:
        raw = event["data_base64"]
        try:
            base64.b64decode(raw, validate=True)
        except (ValueError, TypeError):
            raise InvalidArgument(f"{what}: data_base64 is not valid base64") from None
    return event


class MalformedEvent(InvalidArgument):
    pass


_UNSET: Any = object()


class Event:
    """An event as the app sees it: the envelope's attributes and the data as bytes.

    The data of a JSON event and the extensions are worked out from the envelope when first read:
    a pub/sub worker routes most events without either, and the app's sidecar reads them once.
    """

    __slots__ = (
        "_data",
        "_extensions",
        "datacontenttype",
        "envelope",
        "expires_at",
        "id",
        "pubsubname",
        "source",
        "specversion",
        "topic",
        "traceparent",
        "type",
    )

    def __init__(
        self,
        id: str,
        source: str,
        type: str,
        specversion: str,
        datacontenttype: str,
        data: bytes | None,
        topic: str,
        pubsubname: str,
        extensions: dict[str, Any] | None = None,
        traceparent: str | None = None,
        expires_at: float | None = None,
        envelope: dict[str, Any] | None = None,
    ) -> None:
        self.id = id
        self.source = source
        self.type = type
        self.specversion = specversion
        self.datacontenttype = datacontenttype
        self._data = _UNSET if data is None else data
        self.topic = topic
        self.pubsubname = pubsubname
        self._extensions = _UNSET if extensions is None else extensions
        self.traceparent = traceparent
        self.expires_at = expires_at
        self.envelope = envelope if envelope is not None else {}

    @property
    def data(self) -> bytes:
        if self._data is _UNSET:
            value = self.envelope.get("data")
            self._data = _dumps(value) if value is not None else b""
        data: bytes = self._data
        return data

    @property
    def extensions(self) -> dict[str, Any]:
        if self._extensions is _UNSET:
            self._extensions = {k: v for k, v in self.envelope.items() if k not in _CORE}
        found: dict[str, Any] = self._extensions
        return found

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at


def decode(raw: bytes, headers: Mapping[str, str], pubsub: str, topic: str, raw_id: str | None = None) -> Event:
    """The event in a broker message; MalformedEvent if it is not a CloudEvents 1.0 envelope (or a
    raw payload with sane headers). A raw payload gets a new id, or ``raw_id`` when one was given."""
    traceparent = headers.get(HDR_TRACEPARENT)
    if headers.get(HDR_RAW):
        expires = headers.get(HDR_EXPIRES)
        try:
            expires_at = float(expires) if expires else None
        except ValueError:
            raise MalformedEvent(f"its {HDR_EXPIRES} header {str(expires)[:32]!r} is not a number") from None
        return Event(
            id=raw_id or str(uuid.uuid4()),
            source="",
            type=EVENT_TYPE,
            specversion="1.0",
            datacontenttype="application/octet-stream",
            data=raw,
            topic=topic,
            pubsubname=pubsub,
            traceparent=traceparent,
            expires_at=expires_at,
            envelope={"data_base64": base64.b64encode(raw).decode()},
        )
    try:
        envelope = _loads(raw)
    except (ValueError, RecursionError):
        raise MalformedEvent("the message is not JSON") from None
    if not isinstance(envelope, dict):
        raise MalformedEvent("the message is not a JSON object")
    content_type = str(envelope.get("datacontenttype") or "")
    data: bytes | None
    if "data_base64" in envelope:
        try:
            data = base64.b64decode(envelope["data_base64"])
        except (ValueError, TypeError):
            raise MalformedEvent("data_base64 is not base64") from None
    elif "data" not in envelope or envelope["data"] is None:
        data = b""
    elif isinstance(envelope["data"], str) and not is_json_type(content_type):
        data = envelope["data"].encode()
    else:
        data = None  # JSON, serialized again when read
    expiration = envelope.get("expiration")
    found = envelope.get("traceparent")
    return Event(
        id=str(envelope.get("id") or ""),
        source=str(envelope.get("source") or ""),
        type=str(envelope.get("type") or ""),
        specversion=str(envelope.get("specversion") or "1.0"),
        datacontenttype=content_type,
        data=data,
        # The subscription's, not the envelope's: a dead-lettered event must reach the dead-letter
        # topic's handler, and the app's handler lookup goes by (pubsub, topic, path).
        topic=topic,
        pubsubname=pubsub,
        traceparent=traceparent or (found if isinstance(found, str) else None),
        expires_at=_parse_time(expiration) if isinstance(expiration, str) else None,
        envelope=envelope,
    )
