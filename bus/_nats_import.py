"""Loads nats-py without its optional websocket transport.

nats-py imports aiohttp only to offer ws:// servers, and aiohttp costs about 14 MB of memory and
0.2 s of start-up. l8 reaches NATS over TCP (and TLS), so aiohttp is hidden while nats-py loads;
other code that imports aiohttp later still gets it.
"""

import sys

if "aiohttp" not in sys.modules and "nats.aio.transport" not in sys.modules:
    sys.modules["aiohttp"] = None  # type: ignore[assignment]
    try:
        import nats.aio.transport  # noqa: F401
    finally:
        del sys.modules["aiohttp"]
