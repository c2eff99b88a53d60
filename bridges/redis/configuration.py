"""Configuration on Redis: a hash per item, watched through keyspace notifications.

Each item is a hash ``{content, tags, metadata, version}`` under ``<prefix><stored key>``; the
version comes from one counter per store, so it grows with every write. Writes are one Lua
script, so a save applies whole or not at all.

Keyspace notifications (``notify-keyspace-events`` with K, g, h, x, e) say which key changed but
not how, and they are lost while the subscriber is disconnected. So the watcher re-reads a key
on each notification and compares its version with the last one it pushed, and every time its
pattern subscription is (re)confirmed, which happens after each reconnect, it re-reads the whole
prefix and pushes the difference: changed items, new items and deletes. At start l8 adds the
flags it needs to the server's setting (metadata ``notifyKeyspaceEvents: manual`` leaves the
server alone, for servers that refuse CONFIG SET and are configured by their operator).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from typing import Any

import redis.exceptions

from bridges.errors import BackendUnavailable, L8Error
from bridges.protocols import ChangeSink, ConfigChange, ConfigEntry, ConfigurationLimits
from bridges.redis import client as clients
from bridges.redis.client import map_redis_errors
from bridges.registry import BridgeEnv

log = logging.getLogger("l8.bridges.redis.configuration")

# Keyspace events (K) of generic commands (g: del, rename...), hashes (h), expiries (x), evictions (e).
_NEEDED_FLAGS = "Kghxe"
_ALL_CLASSES = "g$lshzxetd"  # what the 'A' alias stands for

# KEYS: counter, the keys to set, then the keys to delete. ARGV: number of sets, then per set
# content, tags (JSON), metadata (JSON).
_WRITE = """
local n = tonumber(ARGV[1])
for i = 1, n do
  local b = 1 + (i - 1) * 3
  local v = redis.call('INCR', KEYS[1])
  redis.call('HSET', KEYS[i + 1], 'content', ARGV[b + 1], 'tags', ARGV[b + 2], 'metadata', ARGV[b + 3], 'version', v)
end
for i = n + 2, #KEYS do
  redis.call('DEL', KEYS[i])
end
return n
"""

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
_SCAN_COUNT = 1000
_RETRY_MAX = 2.0


class RedisConfigurationStore:
    """A ``ConfigurationStore`` on Redis (metadata ``url``, default ``redis://127.0.0.1:6379``;
    ``redisPrefix``, default ``l8:<namespace>:<name>:``)."""

    def __init__(self, name: str, metadata: dict[str, str], env: BridgeEnv) -> None:
        self.name = name
        self._url = metadata.get("url") or "redis://127.0.0.1:6379"
        self._max_connections = int(metadata.get("maxConnections", "64"))
        self._prefix = metadata.get("redisPrefix") or f"l8:{env.namespace}:{name}:"
        # Outside the prefix, so the counter's own writes are not notifications of the store.
        self._counter = f"{self._prefix.rstrip(':')}#version"
        self._notify = metadata.get("notifyKeyspaceEvents", "auto")
        if self._notify not in ("auto", "manual"):
            raise ValueError(f"notifyKeyspaceEvents {self._notify!r} is neither 'auto' nor 'manual'")
        self.limits = ConfigurationLimits(
            max_value_bytes=int(metadata.get("maxValueBytes", str(1 << 20))), features=frozenset({"WATCH"})
        )
        if env.nats is not None:
            # Changes travel to the fronts as bus messages; an item must fit in one.
            self.limits.max_value_bytes = min(self.limits.max_value_bytes, env.nats.max_payload - 8192)
        self._redis: Any = None
        self._write: Any = None
        self._db = 0
        self._watch_task: asyncio.Task[None] | None = None
        self._watching = asyncio.Event()  # set once the first full read after subscribing is done
        self._ready_timeout = float(metadata.get("timeoutSeconds", "10"))
        self._versions: dict[str, int] = {}  # stored key -> version last pushed by the watcher

    def features(self) -> frozenset[str]:
        return self.limits.features

    async def ping(self) -> None:
        await clients.ping(self._redis, f"configuration store {self.name!r}")

    async def start(self) -> None:
        if self._redis is not None:
            return
        self._redis = await clients.connect(self._url, self._max_connections, f"configuration store {self.name!r}")
        self._write = self._redis.register_script(_WRITE)
        self._db = int(self._redis.connection_pool.connection_kwargs.get("db", 0) or 0)
        with map_redis_errors(f"configuration store {self.name!r}: keyspace notifications on {self._url}"):
            await self._ensure_notifications()

    async def stop(self) -> None:
        task, self._watch_task = self._watch_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._redis is None:
            return
        self._redis = None
        await clients.release(self._url)

    async def _ensure_notifications(self) -> None:
        if self._notify == "manual":
            return
        try:
            current = (await self._redis.config_get("notify-keyspace-events")).get("notify-keyspace-events", "")
        except redis.exceptions.ResponseError as exc:
            log.warning(
                "configuration store %r: cannot read notify-keyspace-events (%s); it must include %r",
                self.name,
                exc,
                _NEEDED_FLAGS,
            )
            return
        have = set(current.replace("A", _ALL_CLASSES))
        missing = "".join(f for f in _NEEDED_FLAGS if f not in have)
        if not missing:
            return
        try:
            await self._redis.config_set("notify-keyspace-events", current + missing)
        except redis.exceptions.ResponseError as exc:
            raise L8Error(
                f"configuration store {self.name!r}: redis refused CONFIG SET notify-keyspace-events ({exc}); "
                f"configure the server with flags {_NEEDED_FLAGS!r} and set notifyKeyspaceEvents: manual"
            ) from None

    # ---- reads ----

    async def _read(self, stored: list[str]) -> dict[str, ConfigEntry]:
        if not stored:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for key in stored:
            pipe.hgetall(self._prefix + key)
        results = await pipe.execute(raise_on_error=False)
        out: dict[str, ConfigEntry] = {}
        for key, fields in zip(stored, results, strict=True):
            if isinstance(fields, Exception):
                # A failed read says nothing of the key: reporting it absent would turn a
                # transient error (BUSY, LOADING, NOPERM...) into a delete for every subscriber.
                raise fields
            entry = _entry(key, fields)
            if entry is not None:
                out[key] = entry
        return out

    async def get(self, keys: list[str]) -> list[ConfigEntry]:
        with map_redis_errors(f"configuration store {self.name!r}: get"):
            return list((await self._read(keys)).values())

    async def _scan(self, scope: str) -> list[str]:
        pattern = _GLOB_SPECIAL.sub(r"\\\1", self._prefix + scope) + "*"
        return [
            raw.decode()[len(self._prefix) :] async for raw in self._redis.scan_iter(match=pattern, count=_SCAN_COUNT)
        ]

    async def list_scope(self, scope: str) -> list[ConfigEntry]:
        with map_redis_errors(f"configuration store {self.name!r}: list"):
            stored = [k for k in await self._scan(scope) if "||" not in k[len(scope) :]]
            return list((await self._read(stored)).values())

    # ---- writes ----

    async def write(self, sets: list[ConfigEntry], deletes: list[str]) -> None:
        argv: list[Any] = [len(sets)]
        for entry in sets:
            argv += [entry.content, json.dumps(entry.tags), json.dumps(entry.metadata)]
        keys = [self._counter, *(self._prefix + e.key for e in sets), *(self._prefix + k for k in deletes)]
        with map_redis_errors(f"configuration store {self.name!r}: write"):
            await self._write(keys=keys, args=argv)

    # ---- watch ----

    async def watch(self, sink: ChangeSink) -> None:
        """Returns once the watcher is subscribed and has pushed the current items, so that every
        later write reaches the sink as a notification, in order."""
        if self._watch_task is not None or self._redis is None:
            return
        self._watch_task = asyncio.create_task(self._watch(sink), name=f"l8-config-watch-{self.name}")
        try:
            await asyncio.wait_for(self._watching.wait(), self._ready_timeout)
        except TimeoutError:
            raise BackendUnavailable(
                f"configuration store {self.name!r}: the keyspace watcher did not start within {self._ready_timeout}s"
            ) from None

    async def _watch(self, sink: ChangeSink) -> None:
        channel_prefix = f"__keyspace@{self._db}__:{self._prefix}"
        pattern = _GLOB_SPECIAL.sub(r"\\\1", channel_prefix) + "*"
        delay = 0.1
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.psubscribe(pattern)
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=False, timeout=5.0)
                    if msg is None:
                        continue
                    if msg["type"] == "psubscribe":
                        # The first confirmation, or one after the driver reconnected: whatever
                        # changed while no notification could arrive is found by a full re-read.
                        await self._resync(sink)
                        self._watching.set()
                        delay = 0.1
                    elif msg["type"] == "pmessage":
                        await self._refresh(msg["channel"].decode()[len(channel_prefix) :], sink)
            except asyncio.CancelledError:
                raise
            except (redis.exceptions.RedisError, OSError) as exc:
                log.warning("configuration watcher of %r: %s; resubscribing in %.1fs", self.name, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _refresh(self, key: str, sink: ChangeSink) -> None:
        entry = (await self._read([key])).get(key)
        change = self._diff(key, entry)
        if change is not None:
            await self._push(sink, [change])

    async def _resync(self, sink: ChangeSink) -> None:
        current = await self._read(await self._scan(""))
        # In version order, so a subscriber sees the missed writes in the order they were made.
        writes = sorted((c for c in (self._diff(k, e) for k, e in current.items()) if c), key=lambda c: c.version)
        deletes = [c for c in (self._diff(k, None) for k in list(self._versions) if k not in current) if c]
        changes = writes + deletes
        if changes:
            await self._push(sink, changes)

    def _diff(self, key: str, entry: ConfigEntry | None) -> ConfigChange | None:
        known = self._versions.get(key)
        if entry is None:
            if known is None:
                return None
            del self._versions[key]
            # A delete carries the version it removed; readers order it after that write.
            return ConfigChange(key, known, None)
        if known == entry.version:
            return None
        self._versions[key] = entry.version
        return ConfigChange(key, entry.version, entry)

    async def _push(self, sink: ChangeSink, changes: list[ConfigChange]) -> None:
        try:
            await sink(changes)
        except Exception:
            log.exception("configuration watcher of %r: the sink failed", self.name)


def _entry(key: str, fields: Any) -> ConfigEntry | None:
    if not isinstance(fields, dict) or b"version" not in fields:
        return None  # absent, or not an item this store wrote
    try:
        version = int(fields[b"version"])
    except ValueError:
        return None
    return ConfigEntry(
        key=key,
        content=fields.get(b"content", b"").decode(errors="replace"),
        tags=ConfigEntry.string_map(fields.get(b"tags")),
        metadata=ConfigEntry.string_map(fields.get(b"metadata")),
        version=version,
    )
