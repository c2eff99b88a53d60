"""The message bus: NATS connection, subject scheme, request/reply, worker host, embedded server.

The bus knows no building block: it moves bytes and headers between fronts and workers.
"""

import bus._nats_import  # noqa: F401  - hides aiohttp from nats-py; must come first
from bus.codec import RequestContext
from bus.connection import Bus
from bus.embedded import EmbeddedNats
from bus.errors import BusError, BusTimeout, NoResponders, RemoteError, StreamBroken
from bus.worker import WorkerHost

__all__ = [
    "Bus",
    "BusError",
    "BusTimeout",
    "EmbeddedNats",
    "NoResponders",
    "RemoteError",
    "RequestContext",
    "StreamBroken",
    "WorkerHost",
]
