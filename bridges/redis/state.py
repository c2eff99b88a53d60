"""State on Redis: a hash per key with ``data`` and ``version``, compare-and-set in Lua.

Versions come from one counter per store, so an etag never repeats, even after a delete and
re-create of the same key. A transaction is one Lua script that checks every etag before it
writes anything, which makes it atomic on a single Redis server.
"""

from __future__ import annotations

import time
from typing import Any

import redis.exceptions

from bridges.errors import EtagMismatch, InvalidEtag
from bridges.protocols import StateDelete, StateEntry, StateLimits, StateOp, StateSet
from bridges.redis import client as clients
from bridges.redis.client import map_redis_errors
from bridges.registry import BridgeEnv

# KEYS: counter, then the data keys. ARGV: n, then per op: kind ('S'|'D'), etag ('' = none),
# first_write ('1'|'0'), value, ttl ms ('0' = none). Errors: 'ETAG <i>' / 'EXISTS <i>'.
_TRANSACT = """
local n = tonumber(ARGV[1])
for i = 1, n do
  local b = 1 + (i - 1) * 5
  local etag, first = ARGV[b + 2], ARGV[b + 3]
  local ver = redis.call('HGET', KEYS[i + 1], 'version')
  if etag ~= '' then
    if ver ~= etag then return redis.error_reply('ETAG ' .. i) end
  elseif first == '1' and ARGV[b + 1] == 'S' and ver then
    return redis.error_reply('EXISTS ' .. i)
  end
end
for i = 1, n do
  local b = 1 + (i - 1) * 5
  local k = KEYS[i + 1]
  if ARGV[b + 1] == 'S' then
    local v = redis.call('INCR', KEYS[1])
    redis.call('HSET', k, 'data', ARGV[b + 4], 'version', v)
    local ttl = tonumber(ARGV[b + 5])
    if ttl > 0 then redis.call('PEXPIRE', k, ttl) else redis.call('PERSIST', k) end
  else
    redis.call('DEL', k)
  end
end
return n
"""

_GET = """
local r = redis.call('HMGET', KEYS[1], 'data', 'version')
if not r[2] then return nil end
return {r[1], r[2], redis.call('PTTL', KEYS[1])}
"""


class RedisStateStore:
    """A ``StateStore`` on Redis (metadata ``url``, default ``redis://127.0.0.1:6379``)."""

    def __init__(self, name: str, metadata: dict[str, str], env: BridgeEnv) -> None:
        self.name = name
        self._url = metadata.get("url") or "redis://127.0.0.1:6379"
        self._max_connections = int(metadata.get("maxConnections", "64"))
        self._counter = metadata.get("versionKey") or f"l8:{env.namespace}:{name}:version"
        self.limits = StateLimits(
            max_value_bytes=int(metadata.get("maxValueBytes", str(1 << 20))),
            features=frozenset({"ETAG", "TRANSACTIONAL", "TTL"}),
        )
        self._redis: Any = None
        self._get: Any = None
        self._transact: Any = None

    def features(self) -> frozenset[str]:
        return self.limits.features

    async def ping(self) -> None:
        await clients.ping(self._redis, f"state store {self.name!r}")

    async def start(self) -> None:
        if self._redis is not None:
            return
        self._redis = await clients.connect(self._url, self._max_connections, f"state store {self.name!r}")
        self._get = self._redis.register_script(_GET)
        self._transact = self._redis.register_script(_TRANSACT)

    async def stop(self) -> None:
        if self._redis is None:
            return
        self._redis = None
        await clients.release(self._url)

    async def get(self, key: str) -> StateEntry | None:
        with map_redis_errors(f"state store {self.name!r}: get"):
            found = await self._get(keys=[key])
        if found is None:
            return None
        data, version, pttl = found
        expires = time.time() + pttl / 1000 if pttl and pttl > 0 else None
        return StateEntry(value=data or b"", etag=version.decode(), expires_at=expires)

    async def set(self, op: StateSet) -> None:
        await self.transact([op])

    async def delete(self, op: StateDelete) -> None:
        await self.transact([op])

    async def transact(self, ops: list[StateOp]) -> None:
        if not ops:
            return
        argv: list[Any] = [len(ops)]
        for op in ops:
            etag = _version(op.etag) if op.etag is not None else ""
            if isinstance(op, StateSet):
                ttl = op.ttl * 1000 if op.ttl else 0
                argv += ["S", etag, "1" if op.first_write else "0", op.value, ttl]
            else:
                argv += ["D", etag, "0", b"", 0]
        keys = [self._counter, *(op.key for op in ops)]
        with map_redis_errors(f"state store {self.name!r}: write"):
            try:
                await self._transact(keys=keys, args=argv)
            except redis.exceptions.ResponseError as exc:
                raise self._conflict(exc, ops) from None

    def _conflict(self, exc: redis.exceptions.ResponseError, ops: list[StateOp]) -> Exception:
        kind, _, index = str(exc).partition(" ")
        if kind not in ("ETAG", "EXISTS") or not index.isdigit():
            return exc
        key = ops[int(index) - 1].key
        if kind == "ETAG":
            return EtagMismatch(f"state store {self.name!r}: etag mismatch for key {key!r}")
        return EtagMismatch(f"state store {self.name!r}: key {key!r} exists and FIRST_WRITE was asked without an etag")


def _version(etag: str) -> str:
    if not etag.isdigit() or etag.startswith("0"):
        raise InvalidEtag(f"etag {etag!r} is malformed: this store's etags are positive whole numbers")
    return etag
