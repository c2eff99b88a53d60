"""Locks on Redis: ``SET NX PX`` takes one; Lua scripts check the owner before they delete or
re-expire it, so nobody but the holder can unlock or renew, and a check never races a change."""

from __future__ import annotations

from typing import Any

from bridges.protocols import LockStatus
from bridges.redis import client as clients
from bridges.redis.client import map_redis_errors
from bridges.registry import BridgeEnv

# KEYS[1]: the lock. ARGV[1]: the owner; ARGV[2] (renew only): the expiry in ms.
# Both answer with the LockStatus numbers: 0 SUCCESS, 1 UNEXIST, 2 BELONGS_TO_OTHERS.
_UNLOCK = """
local v = redis.call('GET', KEYS[1])
if not v then return 1 end
if v ~= ARGV[1] then return 2 end
redis.call('DEL', KEYS[1])
return 0
"""

_RENEW = """
local v = redis.call('GET', KEYS[1])
if not v then return 1 end
if v ~= ARGV[1] then return 2 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 0
"""

KEY_PREFIX = "lock|||"  # keeps lock keys apart from state keys of the same app on one Redis


class RedisLockStore:
    """A ``LockStore`` on Redis (metadata ``url``, default ``redis://127.0.0.1:6379``)."""

    def __init__(self, name: str, metadata: dict[str, str], env: BridgeEnv) -> None:
        self.name = name
        self._url = metadata.get("url") or "redis://127.0.0.1:6379"
        self._max_connections = int(metadata.get("maxConnections", "64"))
        self._redis: Any = None
        self._unlock: Any = None
        self._renew: Any = None

    def features(self) -> frozenset[str]:
        return frozenset({"TTL", "KEEPALIVE"})

    async def ping(self) -> None:
        await clients.ping(self._redis, f"lock store {self.name!r}")

    async def start(self) -> None:
        if self._redis is not None:
            return
        self._redis = await clients.connect(self._url, self._max_connections, f"lock store {self.name!r}")
        self._unlock = self._redis.register_script(_UNLOCK)
        self._renew = self._redis.register_script(_RENEW)

    async def stop(self) -> None:
        if self._redis is None:
            return
        self._redis = None
        await clients.release(self._url)

    async def try_lock(self, resource: str, owner: str, expire: int) -> bool:
        with map_redis_errors(f"lock store {self.name!r}: lock {resource!r}"):
            return bool(await self._redis.set(KEY_PREFIX + resource, owner, nx=True, px=expire * 1000))

    async def unlock(self, resource: str, owner: str) -> LockStatus:
        with map_redis_errors(f"lock store {self.name!r}: unlock {resource!r}"):
            return LockStatus(int(await self._unlock(keys=[KEY_PREFIX + resource], args=[owner])))

    async def keep_alive(self, resource: str, owner: str, expire: int) -> LockStatus:
        with map_redis_errors(f"lock store {self.name!r}: renew {resource!r}"):
            return LockStatus(int(await self._renew(keys=[KEY_PREFIX + resource], args=[owner, expire * 1000])))
