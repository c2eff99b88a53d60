"""Knowing that the server has seen what a connection sent (a SUB, a core NATS publish).

The bridges' copy of bus/sync.py (the layers share no module; DESIGN.md): nats-py 2.16's flush()
writes its PING ahead of commands still in the client's buffer, so its PONG alone does not say
the server has them; once one flush has returned the buffer is on the socket, and a second
flush's PONG does.
"""

from typing import Any


async def server_has_seen(nc: Any) -> None:
    """Return once the server has handled every command this connection sent before the call."""
    await nc.flush()
    await nc.flush()
