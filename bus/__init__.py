"""The message bus: NATS connection, subject scheme, request/reply, worker host, embedded server.

The bus knows no building block: it moves bytes and headers between fronts and workers.
"""

import bus._nats_import  # noqa: F401  - hides aiohttp from nats-py; must come first
from bus.codec import Reply, RequestContext
from bus.connection import Bus
from bus.embedded import EmbeddedNats
from bus.errors import BusError, BusTimeout, NoResponders, PayloadTooLarge, RemoteError
from bus.worker import Route, WorkerHost

__all__ = [
    "Bus",
    "BusError",
    "BusTimeout",
    "EmbeddedNats",
    "NoResponders",
    "PayloadTooLarge",
    "RemoteError",
    "Reply",
    "RequestContext",
    "Route",
    "WorkerHost",
]
