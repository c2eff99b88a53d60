"""Sequences on Redis: ``INCRBY`` per key; a short Lua script lifts a key to its ``biggerThan``
floor in the same atomic step when the key is still below it."""

from __future__ import annotations

from typing import Any

from bridges.redis import client as clients
from bridges.redis.client import map_redis_errors
from bridges.registry import BridgeEnv

# KEYS[1]: the sequence. ARGV: count, floor (decimal strings). Lua numbers are doubles, exact only
# below 2^53, so the script does no arithmetic of its own: it compares decimal strings (length,
# then digits), lets INCRBY do the sum in Redis's int64, and returns the value as a string.
_RESERVE_ABOVE = """
local cur, floor = redis.call('GET', KEYS[1]), ARGV[2]
if not cur or #cur < #floor or (#cur == #floor and cur < floor) then
  redis.call('SET', KEYS[1], floor)
end
redis.call('INCRBY', KEYS[1], ARGV[1])
return redis.call('GET', KEYS[1])
"""

KEY_PREFIX = "sequencer|||"


class RedisSequencer:
    """A ``Sequencer`` on Redis (metadata ``url``, default ``redis://127.0.0.1:6379``)."""

    def __init__(self, name: str, metadata: dict[str, str], env: BridgeEnv) -> None:
        self.name = name
        self._url = metadata.get("url") or "redis://127.0.0.1:6379"
        self._max_connections = int(metadata.get("maxConnections", "64"))
        self._redis: Any = None
        self._above: Any = None

    def features(self) -> frozenset[str]:
        return frozenset({"SEGMENT"})

    async def ping(self) -> None:
        await clients.ping(self._redis, f"sequencer {self.name!r}")

    async def start(self) -> None:
        if self._redis is not None:
            return
        self._redis = await clients.connect(self._url, self._max_connections, f"sequencer {self.name!r}")
        self._above = self._redis.register_script(_RESERVE_ABOVE)

    async def stop(self) -> None:
        if self._redis is None:
            return
        self._redis = None
        await clients.release(self._url)

    async def reserve(self, key: str, count: int, floor: int) -> int:
        with map_redis_errors(f"sequencer {self.name!r}: key {key!r}"):
            if floor <= 0:
                return int(await self._redis.incrby(KEY_PREFIX + key, count))
            return int(await self._above(keys=[KEY_PREFIX + key], args=[str(count), str(floor)]))
