"""The one place that knows how to configure each pub/sub bridge type for the tests.

``component(type_, servers)`` returns the component config of a bridge type; ``SERVERS`` names the
server fixture each type needs (started once per session, on free ports, stopped by PID). A new
bridge registered in bridges/registry.py joins the conformance suite by adding a line to each.
"""

from __future__ import annotations

from typing import Any

from bridges import registry
from tests.servers import TANSU, Server

# bridge type -> the pytest fixture of the server it needs (None: the bus's own nats-server)
SERVERS: dict[str, str | None] = {
    "nats.jetstream": None,
    "redis": "redis_server",
    "kafka": "kafka_server",
}


def types() -> list[str]:
    return registry.types_for("pubsub")


def component(type_: str, server: Server | None, **metadata: str) -> dict[str, Any]:
    meta = dict(metadata)
    if type_ == "nats.jetstream":
        meta.setdefault("ackWaitSeconds", "10")
    elif type_ == "redis":
        assert server is not None
        meta.setdefault("url", f"redis://127.0.0.1:{server.port}")
    elif type_ == "kafka":
        assert server is not None
        meta.setdefault("brokers", f"127.0.0.1:{server.port}")
        meta.update(TANSU)
        # tansu takes about session_timeout/2 to (re)join a group; short values keep tests quick.
        meta.setdefault("sessionTimeoutMs", "1000")
        meta.setdefault("heartbeatIntervalMs", "100")
    else:
        raise AssertionError(f"tests/pubsub_backends.py does not know how to configure pub/sub type {type_!r}")
    return {"kind": "pubsub", "type": type_, "metadata": meta}
