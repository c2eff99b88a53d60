"""How an event crosses the bus from a pub/sub worker to its target, and how the answer comes back.

One event: the broker message's bytes as they came, with the few facts the target needs in
headers: ``l8-topic`` (the subscription's topic), ``l8-path`` (the route picked by the worker's
rules), ``l8-raw`` and ``l8-id`` for a raw payload (so the target uses the id the worker logged),
and ``traceparent``. A bulk batch: the same headers plus ``l8-bulk`` (the count),
and a payload of entries ``u8 flags | u16 id length | id | u32 data length | data`` (flag 1: raw).
Names that are not plain printable ASCII travel base64url-encoded under a ``-b64`` header.

The answer: one ASCII digit per event (the ``Outcome``: 0 success, 1 retry, 2 drop, 3 the target
could not take it), and ``l8-why`` saying why when not all succeeded.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from bridges.errors import InvalidArgument
from bus.codec import HDR_TIMEOUT, HDR_TRACEPARENT, RequestContext
from handlers.pubsub_delivery import Delivery, Outcome
from handlers.pubsub_envelope import HDR_RAW, Event, MalformedEvent, decode

HDR_TOPIC = "l8-topic"
HDR_PATH = "l8-path"
HDR_ID = "l8-id"
HDR_BULK = "l8-bulk"
HDR_WHY = "l8-why"
_B64 = "-b64"
_ENTRY = struct.Struct("<BH")
_LEN = struct.Struct("<I")
_OUTCOMES = {str(int(o)).encode()[0]: o for o in Outcome}


def _put_name(headers: dict[str, str], key: str, value: str) -> None:
    if value.isascii() and value.isprintable():
        headers[key] = value
    else:
        headers[key + _B64] = base64.urlsafe_b64encode(value.encode()).decode()


def _get_name(headers: dict[str, str], key: str) -> str:
    value = headers.get(key)
    if value is not None:
        return value
    encoded = headers.get(key + _B64)
    if encoded is None:
        return ""
    try:
        return base64.urlsafe_b64decode(encoded.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise MalformedEvent(f"its {key} header is not base64url") from None


def request(batch: Sequence[Delivery], topic: str, timeout: float, bulk: bool) -> tuple[bytes, dict[str, str]]:
    """The payload and headers that carry ``batch`` (one event unless ``bulk``)."""
    headers = {HDR_TIMEOUT: str(max(1, int(timeout * 1000)))}
    _put_name(headers, HDR_TOPIC, topic)
    path = batch[0].path
    if path:
        _put_name(headers, HDR_PATH, path)
    if not bulk:
        delivery = batch[0]
        received, event = delivery.received, delivery.event
        broker = received.headers
        if broker.get(HDR_RAW):
            headers[HDR_RAW] = "1"
            headers[HDR_ID] = event.id
        if event.traceparent and event.traceparent.isascii() and event.traceparent.isprintable():
            headers[HDR_TRACEPARENT] = event.traceparent
        return received.data, headers
    headers[HDR_BULK] = str(len(batch))
    parts: list[bytes] = []
    for delivery in batch:
        raw = bool(delivery.received.headers.get(HDR_RAW))
        ident = delivery.event.id.encode()[:1024] if raw else b""
        data = delivery.received.data
        parts += (_ENTRY.pack(1 if raw else 0, len(ident)), ident, _LEN.pack(len(data)), data)
    return b"".join(parts), headers


@dataclass(slots=True)
class Frame:
    """A request as the target reads it: the events, their route, pub/sub component and topic."""

    pubsub: str
    topic: str
    path: str
    events: list[Event]
    bulk: bool


def read(pubsub: str, payload: bytes, headers: dict[str, str] | None) -> Frame:
    """The events of a request; MalformedEvent when the frame cannot be read."""
    headers = headers or {}
    topic = _get_name(headers, HDR_TOPIC)
    if not topic:
        raise MalformedEvent("the event carries no topic")
    path = _get_name(headers, HDR_PATH)
    count = headers.get(HDR_BULK)
    if count is None:
        event = decode(payload, headers, pubsub, topic, raw_id=headers.get(HDR_ID))
        return Frame(pubsub, topic, path, [event], False)
    if not count.isdigit() or int(count) > 100_000:
        raise MalformedEvent(f"its {HDR_BULK} header is not a count")
    events: list[Event] = []
    pos = 0
    view = memoryview(payload)
    for _ in range(int(count)):
        if pos + _ENTRY.size > len(payload):
            raise MalformedEvent("a bulk frame ends early")
        flags, id_len = _ENTRY.unpack_from(payload, pos)
        pos += _ENTRY.size
        ident = bytes(view[pos : pos + id_len]).decode(errors="replace")
        pos += id_len
        if pos + _LEN.size > len(payload):
            raise MalformedEvent("a bulk frame ends early")
        (size,) = _LEN.unpack_from(payload, pos)
        pos += _LEN.size
        if pos + size > len(payload):
            raise MalformedEvent("a bulk frame ends early")
        data = bytes(view[pos : pos + size])
        pos += size
        entry_headers = {HDR_RAW: "1"} if flags & 1 else {}
        events.append(decode(data, entry_headers, pubsub, topic, raw_id=ident or None))
    return Frame(pubsub, topic, path, events, True)


def read_request(payload: bytes, ctx: RequestContext) -> Frame:
    """The events of a request on an event subject (``...event.<pubsub>.<topic key>``, or
    ``stream``); InvalidArgument, for the worker to hear, when the frame cannot be read."""
    try:
        return read(ctx.subject.rsplit(".", 2)[1], payload, ctx.headers)
    except MalformedEvent as exc:
        raise InvalidArgument(f"an event frame l8 cannot read: {exc}") from None


def answer(outcomes: Sequence[Outcome], why: str = "") -> tuple[bytes, dict[str, str] | None]:
    data = bytes(48 + int(o) for o in outcomes)
    if not why or all(o is Outcome.SUCCESS for o in outcomes):
        return data, None
    clean = " ".join(why.split())[:500].encode("ascii", "backslashreplace").decode("ascii")
    return data, {HDR_WHY: clean}


def outcomes_of(data: bytes, headers: dict[str, str] | None, count: int) -> list[tuple[Outcome, str]] | None:
    """The outcomes in an answer, or None when it is not one answer per event."""
    if len(data) != count:
        return None
    why = (headers or {}).get(HDR_WHY, "")
    found: list[tuple[Outcome, str]] = []
    for byte in data:
        outcome = _OUTCOMES.get(byte)
        if outcome is None:
            return None
        found.append((outcome, "" if outcome is Outcome.SUCCESS else why))
    return found
