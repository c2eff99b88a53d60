"""Pub/sub on Redis Streams: a stream per topic, a consumer group per ``group``.

This is the component and its publishing side; each subscription is one consumer of its group, in
``bridges/redis/subscription.py``, which also says how pending messages are held, retried and
taken over. A ``ttl`` is stored as an ``expires`` field (unix ms); an expired entry is acked at
fetch and never handed out. New groups start at the beginning of the stream
(``XGROUP CREATE … 0``).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid
from typing import Any

import redis.exceptions

from bridges.errors import BackendUnavailable, InvalidArgument
from bridges.protocols import PubSubLimits
from bridges.redis import client as clients
from bridges.redis.client import map_redis_errors
from bridges.redis.subscription import RedisSubscription
from bridges.registry import BridgeEnv

# KEYS: stream. ARGV: group, consumer, then pairs (id, retry count or ''). Refreshes the idle time
# of (and optionally sets the delivery count of) the entries this consumer still owns; returns
# those ids. The owner check keeps a refresh from stealing an entry another consumer took over.
_REFRESH = """
local owned = {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2])
  if p[1] then
    if ARGV[i + 1] == '' then
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID')
    else
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'RETRYCOUNT', ARGV[i + 1], 'JUSTID')
    end
    owned[#owned + 1] = id
  end
end
return owned
"""

# KEYS: stream. ARGV: group, min idle ms. Deletes the group's consumers that hold nothing and were
# idle that long (processes that died or closed); a live one that reads again is simply recreated.
# Atomic, so no consumer gains a pending entry between the check and the delete.
_PRUNE = """
local n = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if info['pending'] == 0 and info['idle'] >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    n = n + 1
  end
end
return n
"""


def _seconds(metadata: dict[str, str], key: str, default: float) -> float:
    """A duration as Dapr writes them (``60s``, ``500ms``, ``2m``) or plain seconds."""
    raw = (metadata.get(key) or "").strip()
    if not raw:
        return default
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if raw.endswith(suffix):
            number, unit = raw[: -len(suffix)], scale
            break
    else:
        number, unit = raw, 1.0
    try:
        value = float(number) * unit
    except ValueError:
        raise InvalidArgument(f"metadata {key!r} must be a duration such as 60s or 500ms, got {raw!r}") from None
    if value <= 0:
        raise InvalidArgument(f"metadata {key!r} must be positive, got {raw!r}")
    return value


class RedisPubSub:
    """A ``PubSub`` on Redis Streams. Metadata: ``url``, ``maxLen`` (``XADD MAXLEN ~``; 0 keeps
    everything), ``processingTimeout`` (idle time after which a dead consumer's messages are taken
    over, default 60s), ``redeliverInterval`` (how often to look for them, default half of that
    and at most 5s),
    ``maxConnections``, ``maxMessageBytes``."""

    def __init__(self, name: str, metadata: dict[str, str], env: BridgeEnv) -> None:
        self.name = name
        self._url = metadata.get("url") or "redis://127.0.0.1:6379"
        self._max_connections = int(metadata.get("maxConnections", "64"))
        try:
            self._max_len = int(metadata.get("maxLen") or "0")
        except ValueError:
            raise InvalidArgument(f"metadata 'maxLen' must be a whole number, got {metadata['maxLen']!r}") from None
        self.processing_timeout = _seconds(metadata, "processingTimeout", 60.0)
        # Also how soon a consumer takes what another handed back on close: a few seconds at most.
        self.claim_interval = _seconds(metadata, "redeliverInterval", min(self.processing_timeout / 2, 5.0))
        self._consumer_prefix = f"{env.app_id}-{socket.gethostname()}-{os.getpid()}"
        self.limits = PubSubLimits(
            max_message_bytes=int(metadata.get("maxMessageBytes", str(1 << 20))),
            features=frozenset({"TTL", "ORDERED", "BULK_PUBLISH"}),
        )
        self._redis: Any = None
        self.refresh: Any = None
        self.prune: Any = None
        self._subs: set[RedisSubscription] = set()

    def features(self) -> frozenset[str]:
        return self.limits.features

    @property
    def redis(self) -> Any:
        if self._redis is None:
            raise BackendUnavailable(f"pubsub {self.name!r} is not started")
        return self._redis

    async def start(self) -> None:
        if self._redis is not None:
            return
        # connect() gives the shared client back when the PING fails, so a failed start leaks nothing.
        self._redis = await clients.connect(self._url, self._max_connections, f"pubsub {self.name!r}")
        self.refresh = self._redis.register_script(_REFRESH)
        self.prune = self._redis.register_script(_PRUNE)

    async def ping(self) -> None:
        await clients.ping(self._redis, f"pubsub {self.name!r}")

    async def stop(self) -> None:
        if self._redis is None:
            return
        await asyncio.gather(*(sub.close() for sub in list(self._subs)))
        self._redis = None
        await clients.release(self._url)

    def _fields(self, data: bytes, headers: dict[str, str], ttl: int | None) -> dict[str, Any]:
        fields: dict[str, Any] = {"data": data}
        if headers:
            fields["headers"] = json.dumps(headers, separators=(",", ":"))
        if ttl:
            fields["expires"] = int((time.time() + ttl) * 1000)
        return fields

    def _too_big(self, data: bytes) -> str | None:
        if len(data) > self.limits.max_message_bytes:
            return f"message of {len(data)} bytes exceeds this pubsub's limit of {self.limits.max_message_bytes}"
        return None

    async def publish(self, topic: str, data: bytes, headers: dict[str, str], *, ttl: int | None = None) -> None:
        if not topic:
            raise InvalidArgument("topic is empty")
        if problem := self._too_big(data):
            raise InvalidArgument(problem)
        with map_redis_errors(f"pubsub {self.name!r}: publish to {topic!r}"):
            await self.redis.xadd(topic, self._fields(data, headers, ttl), maxlen=self._max_len or None)

    async def publish_batch(self, topic: str, messages: list[tuple[bytes, dict[str, str]]]) -> list[str | None]:
        if not topic:
            raise InvalidArgument("topic is empty")
        results: list[str | None] = [self._too_big(data) for data, _ in messages]
        pipe = self.redis.pipeline(transaction=False)
        sent = [i for i, problem in enumerate(results) if problem is None]
        for i in sent:
            data, headers = messages[i]
            pipe.xadd(topic, self._fields(data, headers, None), maxlen=self._max_len or None)
        if not sent:
            return results
        try:
            outcomes = await pipe.execute(raise_on_error=False)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise BackendUnavailable(f"pubsub {self.name!r}: publish to {topic!r}: redis unavailable: {exc}") from None
        for i, outcome in zip(sent, outcomes, strict=True):
            if isinstance(outcome, Exception):
                results[i] = f"redis error: {outcome}"
        return results

    async def create_group(self, topic: str, group: str) -> None:
        try:
            await self.redis.xgroup_create(topic, group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def subscribe(
        self, topic: str, group: str, *, max_in_flight: int, ordered: bool = False
    ) -> RedisSubscription:
        if not topic or not group:
            raise InvalidArgument("topic and group must not be empty")
        if max_in_flight < 1:
            raise InvalidArgument(f"max_in_flight must be at least 1, got {max_in_flight}")
        with map_redis_errors(f"pubsub {self.name!r}: creating group {group!r} on {topic!r}"):
            await self.create_group(topic, group)
        consumer = f"{self._consumer_prefix}-{uuid.uuid4().hex[:8]}"
        sub = RedisSubscription(self, topic, group, consumer, 1 if ordered else max_in_flight)
        await sub.start()
        self._subs.add(sub)
        return sub
