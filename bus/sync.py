"""Knowing that the server has seen what this connection sent (a SUB above all).

``NATS.flush()`` is meant to be that: a PING whose PONG comes back once the server has handled
everything before it. But nats-py 2.16 writes the PING straight to the socket, while a SUB sits in
the client's pending buffer until its flusher task runs, so the PONG can come back before the
server has seen the SUB; a request another connection sends at once then finds no responders.
When the first flush returns, the flusher has run (the loop turned while we waited for the PONG),
so everything from before is on the socket ahead of the second PING, whose PONG is the guarantee.

A flush must also never be cancelled while its PONG is due: nats-py leaves the cancelled future in
its queue of PONG waiters, and the PONG's ``set_result`` on it raises in the read loop, which
drops the connection. So each flush runs shielded: a caller that is cancelled stops waiting, the
flush itself finishes.
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
    # A flush whose caller left may still fail (the connection closed): nobody awaits it, so its
    # error is taken here rather than reported as never retrieved.
    if not flush.cancelled():
        flush.exception()
