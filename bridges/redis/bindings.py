"""An output binding to Redis: ``set``, ``get`` and ``delete`` of one key (metadata ``key``), and
``create``, Dapr's name for ``set``.

Component metadata: ``url`` (default ``redis://127.0.0.1:6379``), ``maxConnections``. Keys are used
as they are named (no app prefix, as Dapr's Redis binding), so give a binding its own database or
server when it shares one with l8's state. ``set`` takes ``ttlInSeconds``; ``get`` of a missing key
answers empty data; a value over the reply limit is refused before it is read.
"""

from __future__ import annotations

from typing import Any

from bridges.errors import InvalidArgument, ResourceExhausted
from bridges.protocols import BindingReply
from bridges.redis import client as clients
from bridges.redis.client import map_redis_errors
from bridges.registry import BridgeEnv

MAX_KEY = 1024


class RedisBinding:
    def __init__(self, name: str, metadata: dict[str, str], env: BridgeEnv) -> None:
        self.name = name
        self._what = f"binding {name!r}"
        self._url = metadata.get("url") or "redis://127.0.0.1:6379"
        self._max_connections = int(metadata.get("maxConnections", "64"))
        self._client: Any = None

    def features(self) -> frozenset[str]:
        return frozenset()

    def operations(self) -> tuple[str, ...]:
        return ("set", "get", "delete", "create")

    async def start(self) -> None:
        if self._client is None:
            self._client = await clients.connect(self._url, self._max_connections, self._what)

    async def stop(self) -> None:
        if self._client is not None:
            self._client = None
            await clients.release(self._url)

    async def invoke(
        self, operation: str, data: bytes, metadata: dict[str, str], *, timeout: float, max_reply: int
    ) -> BindingReply:
        key = metadata.get("key", "")
        if not key or len(key) > MAX_KEY:
            raise InvalidArgument(f"{self._what}: metadata key must be 1 to {MAX_KEY} characters")
        ttl = metadata.get("ttlInSeconds", "")
        if ttl and (not ttl.isdigit() or int(ttl) < 1):
            raise InvalidArgument(f"{self._what}: ttlInSeconds {ttl[:32]!r} is not a whole number >= 1")
        client = self._client
        with map_redis_errors(f"{self._what}: {operation} {key[:64]!r}"):
            if operation in ("set", "create"):
                await client.set(key, data, ex=int(ttl) if ttl else None)
                return BindingReply()
            if operation == "delete":
                await client.delete(key)
                return BindingReply()
            size = await client.strlen(key)
            if size > max_reply:
                raise ResourceExhausted(
                    f"{self._what}: the value of {key[:64]!r} is {size} bytes; the most is {max_reply}"
                )
            value = await client.get(key)
        return BindingReply(value or b"")
