"""Knowing that the server has seen what a connection sent (a SUB, a core NATS publish).

The bridges' copy of bus/sync.py (the layers share no module; DESIGN.md): nats-py 2.16's flush()
writes its PING ahead of commands still in the client's buffer, so its PONG alone does not say
the server has them; once one flush has returned the buffer is on the socket, and a second
flush's PONG does. Each flush runs shielded, because a flush cancelled while its PONG is due makes
nats-py's read loop raise and drop the connection.
"""

import asyncio
from typing import Any


async def server_has_seen(nc: Any) -> None:
    """Return once the server has handled every command this connection sent before the call."""
    for _ in range(2):
        flush = asyncio.ensure_future(nc.flush())
        flush.add_done_callback(_retrieve)
        await asyncio.shield(flush)


def _retrieve(flush: "asyncio.Future[None]") -> None:
    if not flush.cancelled():
        flush.exception()
