"""One redis-py client per URL, shared by every Redis component of the process."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import redis.asyncio as aioredis
import redis.exceptions

from bridges.errors import BackendUnavailable, L8Error

_clients: dict[str, tuple[aioredis.Redis, int]] = {}


def acquire(url: str, max_connections: int = 64) -> aioredis.Redis:
    client, users = _clients.get(url, (None, 0))
    if client is None:
        # A blocking pool waits for a free connection instead of failing under a burst.
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=5)
        client = aioredis.Redis(connection_pool=pool)
    _clients[url] = (client, users + 1)
    return client


async def connect(url: str, max_connections: int, what: str) -> aioredis.Redis:
    """The shared client of ``url``, checked with a PING; given back if the server does not answer."""
    client = acquire(url, max_connections)
    try:
        with map_redis_errors(f"{what}: connecting to {url}"):
            await client.ping()
    except BaseException:
        await release(url)
        raise
    return client


async def ping(client: aioredis.Redis | None, what: str) -> None:
    """One PING; BackendUnavailable when the server does not answer or the component is stopped."""
    if client is None:
        raise BackendUnavailable(f"{what} is not started")
    with map_redis_errors(what):
        await client.ping()


async def release(url: str) -> None:
    client, users = _clients.get(url, (None, 0))
    if client is None:
        return
    if users > 1:
        _clients[url] = (client, users - 1)
        return
    del _clients[url]
    # The pool was handed to the client, which then leaves it open on aclose() unless told.
    await client.aclose(close_connection_pool=True)


@contextlib.contextmanager
def map_redis_errors(what: str) -> Iterator[None]:
    try:
        yield
    except L8Error:
        raise
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise BackendUnavailable(f"{what}: redis unavailable: {exc}") from None
    except redis.exceptions.RedisError as exc:
        raise L8Error(f"{what}: redis error: {exc}") from None
