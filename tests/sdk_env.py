"""What the SDK tests share: `l8 run` beside an app written with the Dapr SDK's ``App`` (the
invocation target), a Node script run against it, and a pull subscriber that takes one event."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc
from tests.conftest import unique
from tests.process import L8Process, start_l8
from tests.servers import Server, free_port, stop_pid, wait_port

HERE = Path(__file__).parent
NODE = HERE / "node"
APP = HERE / "apps" / "echo_app.py"
COMPONENTS = {
    "statestore": {"kind": "state", "type": "nats.kv"},
    "configstore": {"kind": "configuration", "type": "nats.kv"},
    "lockstore": {"kind": "lock", "type": "nats.kv"},
    "sequencer": {"kind": "sequencer", "type": "nats.kv"},
    "pubsub": {"kind": "pubsub", "type": "nats.jetstream"},
    "helloworld": {"kind": "hello", "type": "helloworld"},
}


@contextlib.contextmanager
def l8_with_app(nats_server: Server, prefix: str) -> Iterator[L8Process]:
    """`l8 run` whose app (app id in ``extra["app_id"]``) is tests/apps/echo_app.py."""
    app_id = unique(prefix)
    app_port = free_port()
    config = {
        "app": {"id": app_id},
        "namespace": unique("ns"),
        "bus": {"url": nats_server.url},
        "components": COMPONENTS,
    }
    sidecar = start_l8(config, "--app-port", str(app_port))
    app = subprocess.Popen(
        [sys.executable, str(APP)],
        env={**os.environ, "APP_ID": app_id, "APP_PORT": str(app_port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(app_port, timeout=30, proc=app)
        sidecar.extra["app_id"] = app_id
        yield sidecar
    finally:
        stop_pid(app)
        sidecar.stop()


def run_node(l8: L8Process, script: str, *args: str, **env: str) -> Any:
    """Run tests/node/``script`` with ``args``; its last stdout line is the JSON it saw."""
    out = subprocess.run(
        ["node", str(NODE / script), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode == 0, f"{out.stderr}\n{l8.log()[-3000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def take_events(l8: L8Process, topic: str, count: int, publish: Callable[[], Any]) -> list[pb.TopicEventRequest]:
    """Open a pull subscription to ``topic``, call ``publish``, and take ``count`` events from it."""
    outgoing: queue.Queue[pb.SubscribeTopicEventsRequest | None] = queue.Queue()
    outgoing.put(
        pb.SubscribeTopicEventsRequest(
            initial_request=pb.SubscribeTopicEventsRequestInitial(pubsub_name="pubsub", topic=topic)
        )
    )

    def requests() -> Iterator[pb.SubscribeTopicEventsRequest]:
        while (req := outgoing.get()) is not None:
            yield req

    events = []
    with grpc.insecure_channel(l8.grpc_address) as channel:
        stream = runtime_pb2_grpc.RuntimeStub(channel).SubscribeTopicEvents(requests(), timeout=60)
        assert next(stream).HasField("initial_response")
        publish()
        for _ in range(count):
            event = next(stream).event_message
            events.append(event)
            processed = pb.SubscribeTopicEventsRequestProcessed(
                id=event.id, status=pb.TopicEventResponse(status=pb.TopicEventResponse.SUCCESS)
            )
            outgoing.put(pb.SubscribeTopicEventsRequest(event_processed=processed))
        outgoing.put(None)
        stream.cancel()
    return events
