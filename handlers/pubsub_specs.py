"""Subscriptions as the bus carries them: what a sidecar announces and a pub/sub worker delivers.

A ``Spec`` says which events (pub/sub component and topic) go to which target (an app's sidecars,
an app's streaming subscription, or another kind of target the runtime registers), routed how
(rules and a default path), settled how (dead-letter topic, deliveries before dead-lettering,
backoff) and at what pace (concurrency, bulk batches, the target's deadline). It is plain data:
``to_json``/``from_json`` move it across the bus unchanged, and every field is checked on the way
in, so a bad announcement is refused before a worker acts on it.

Subscriptions come from three places, each with its own parser here: the sidecar's config, the
app's own declaration (metadata values as Dapr's SDKs send them, JSON-encoded strings included),
and streaming subscriptions. A subscription l8 cannot use raises ``SpecError`` saying why.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from handlers import limits
from handlers.pubsub_envelope import MAX_TOPIC
from handlers.pubsub_rules import Routes, RuleError

# With a dead-letter topic and no maxDeliveries of its own, an event that keeps failing goes
# there after this many deliveries (without a dead-letter topic it is retried for as long as it
# takes: dropping it would lose it).
DEFAULT_DEAD_LETTER_AFTER = 5
MAX_CONCURRENCY = limits.MAX_IN_FLIGHT
MAX_BULK = 10_000
MAX_RULES = 100
MAX_TIMEOUT = 3600.0
_KINDS = ("config", "app", "stream", "function")  # who declared it


class SpecError(ValueError):
    """A subscription l8 cannot use; the message says why."""


@dataclass(slots=True, frozen=True)
class Spec:
    app: str  # the target's id: whose consumer group this is
    pubsub: str
    topic: str
    target: str = "app"  # the kind of target; the runtime resolves it to a bus subject
    rules: tuple[tuple[str, str], ...] = ()
    default_route: str | None = ""  # None: events that match no rule are not delivered
    dead_letter_topic: str | None = None
    bulk: bool = False
    bulk_max_messages: int = 100
    bulk_max_await_ms: int = 1000
    concurrency: int = 32
    max_deliveries: int = 0  # then dead-letter; 0 is unlimited
    backoff_initial: float = 0.2
    backoff_max: float = 5.0
    timeout: float = 60.0  # seconds the target has to answer one delivery
    origin: str = "config"
    routes: Routes = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check(self)
        try:
            routes = Routes.of(list(self.rules), self.default_route)
        except RuleError as exc:
            raise SpecError(str(exc)) from None
        object.__setattr__(self, "routes", routes)

    @property
    def ordered(self) -> bool:
        return self.concurrency == 1

    @property
    def key(self) -> tuple[str, str, str]:
        """One delivery per (target kind, target, topic) of a component."""
        return self.target, self.app, self.topic

    def to_dict(self) -> dict[str, Any]:
        found = asdict(self)
        found.pop("routes", None)
        found["rules"] = [list(r) for r in self.rules]
        return found

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, raw: Any) -> Spec:
        if not isinstance(raw, dict):
            raise SpecError("a subscription must be a JSON object")
        known = {f for f in cls.__dataclass_fields__ if f != "routes"}
        unknown = set(raw) - known
        if unknown:
            raise SpecError(f"unknown subscription fields: {', '.join(sorted(unknown)[:5])}")
        values = dict(raw)
        rules = values.get("rules", [])
        if not isinstance(rules, list) or not all(
            isinstance(r, list) and len(r) == 2 and all(isinstance(x, str) for x in r) for r in rules
        ):
            raise SpecError("rules must be a list of [match, path] pairs of strings")
        values["rules"] = tuple((m, p) for m, p in rules)
        try:
            return cls(**values)
        except TypeError as exc:
            raise SpecError(f"bad subscription: {exc}") from None

    @classmethod
    def from_json(cls, data: bytes) -> Spec:
        try:
            return cls.from_dict(orjson.loads(data))
        except orjson.JSONDecodeError:
            raise SpecError("a subscription must be JSON") from None


def _check(spec: Spec) -> None:
    for name in ("app", "pubsub", "target"):
        value = getattr(spec, name)
        if not isinstance(value, str) or not value or len(value) > 128:
            raise SpecError(f"{name} must be a non-empty string of at most 128 characters")
    if not isinstance(spec.topic, str) or not spec.topic.strip():
        raise SpecError("the topic is empty")
    if limits.size(spec.topic) > MAX_TOPIC:
        raise SpecError(f"the topic is {limits.size(spec.topic)} bytes; at most {MAX_TOPIC}")
    if spec.dead_letter_topic is not None and (
        not isinstance(spec.dead_letter_topic, str) or len(spec.dead_letter_topic) > MAX_TOPIC
    ):
        raise SpecError(f"deadLetterTopic must be a topic name of at most {MAX_TOPIC} characters")
    if len(spec.rules) > MAX_RULES:
        raise SpecError(f"a subscription has at most {MAX_RULES} rules, not {len(spec.rules)}")
    _int_in(spec.concurrency, "concurrency", 1, MAX_CONCURRENCY)
    _int_in(spec.bulk_max_messages, "bulk maxMessages", 1, MAX_BULK)
    _int_in(spec.bulk_max_await_ms, "bulk maxAwaitMs", 1, 600_000)
    _int_in(spec.max_deliveries, "maxDeliveries", 0, 1_000_000)
    for name, value, top in (
        ("backoff initial", spec.backoff_initial, 3600.0),
        ("backoff max", spec.backoff_max, 3600.0),
        ("timeout", spec.timeout, MAX_TIMEOUT),
    ):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= top:
            raise SpecError(f"{name} must be a number of seconds above 0 and at most {top:g}, got {value!r}")
    if spec.origin not in _KINDS:
        raise SpecError(f"origin must be one of {', '.join(_KINDS)}")


def _int_in(value: Any, name: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SpecError(f"{name} must be a whole number from {low} to {high}, got {value!r}")


def metadata_value(raw: str) -> str:
    """A subscription metadata value as Dapr's SDKs may send it: ``"\\"1\\""`` is ``1``."""
    text = raw.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            decoded = json.loads(text)
        except ValueError:
            return raw
        if isinstance(decoded, str):
            return decoded
    return raw


def metadata_int(metadata: dict[str, str], key: str, default: int | None, low: int, high: int) -> int | None:
    """A whole number from subscription metadata, checked against its range; SpecError names the key."""
    raw = metadata.get(key)
    if raw is None or raw == "":
        return default
    value = metadata_value(raw).strip()
    try:
        number = int(value)
    except ValueError:
        raise SpecError(f"metadata {key!r} must be a whole number, got {value[:32]!r}") from None
    if not low <= number <= high:
        raise SpecError(f"metadata {key!r} must be from {low} to {high}, got {number}")
    return number


def dead_letter_default(max_deliveries: int | None, dead_letter_topic: str | None) -> int:
    """``maxDeliveries`` when given, else the documented default: bounded with a dead-letter
    topic (the event has somewhere to go), unlimited without one."""
    if max_deliveries is not None:
        return max_deliveries
    return DEFAULT_DEAD_LETTER_AFTER if dead_letter_topic else 0
