"""Apps written with the published SDKs, unchanged, behind an l8 sidecar that learns by itself which
protocol each speaks: Layotto's Node SDK subscriber ``Server`` (Layotto's AppCallback), and the
Dapr JS SDK's ``DaprServer`` over HTTP and over gRPC (events and invocations)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from runtime.sidecar import Sidecar
from tests.conftest import sidecar_config, unique
from tests.servers import Server, free_port, stop_pid
from tests.test_app_http import http, publish
from tests.test_event_routing import until

NODE = Path(__file__).parent / "node"
COMPONENTS = {"pubsub": {"kind": "pubsub", "type": "nats.jetstream"}}


class NodeApp:
    """A Node script that prints one JSON line per thing it saw; ``ready`` once it serves."""

    def __init__(self, script: str, *args: str, **env: str) -> None:
        self.proc = subprocess.Popen(
            ["node", str(NODE / script), *args],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: list[Any] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                self.lines.append(json.loads(raw))
            except ValueError:
                continue

    def seen(self, pick: Any) -> list[Any]:
        return [line for line in self.lines if isinstance(line, dict) and pick(line)]

    async def ready(self) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise AssertionError(f"the node app exited with {self.proc.returncode}: {err[-2000:]}")
            return "ready" in self.lines

        await until(up, "the node app serving", timeout=90)

    def stop(self) -> None:
        stop_pid(self.proc)  # type: ignore[arg-type]


async def sidecar_for(nats_server: Server, port: int, **app: Any) -> Sidecar:
    config = sidecar_config(
        nats_server.url, COMPONENTS, app={"id": unique("sdk-app"), "callback": f"127.0.0.1:{port}", **app}
    )
    sidecar = Sidecar(config)
    await sidecar.start()
    return sidecar


async def protocol_of(sidecar: Sidecar) -> str:
    _, _, body = await http(sidecar, "GET", "/v1.0/metadata")
    return str(json.loads(body)["appConnectionProperties"]["protocol"])


@pytest.fixture(scope="module")
async def layotto_app(nats_server: Server) -> AsyncIterator[tuple[Sidecar, NodeApp, str]]:
    port, topic = free_port(), unique("lt")
    sidecar = await sidecar_for(nats_server, port)
    app = NodeApp("layotto_server.js", appcallback_GRPC_PORT=str(port), TOPIC=topic)
    try:
        await app.ready()
        yield sidecar, app, topic
    finally:
        app.stop()
        await sidecar.stop()


async def test_a_layotto_sdk_subscriber_is_learned_and_its_subscriptions_announced(
    layotto_app: tuple[Sidecar, NodeApp, str],
) -> None:
    sidecar, _app, topic = layotto_app

    async def announced() -> list[Any]:
        _, _, body = await http(sidecar, "GET", "/v1.0/metadata")
        rows = json.loads(body)["subscriptions"]
        return [r for r in rows if r["topic"] in (f"{topic}-a", f"{topic}-b") and r["state"] == "delivering"]

    assert len(await until(announced, "both Layotto subscriptions delivering")) == 2
    assert await protocol_of(sidecar) == "layotto"


async def test_events_reach_the_layotto_sdk_handler_with_layottos_metadata_map(
    layotto_app: tuple[Sidecar, NodeApp, str],
) -> None:
    sidecar, app, topic = layotto_app
    await until(lambda: _delivering(sidecar, f"{topic}-a"), "delivering")
    await publish(sidecar, f"{topic}-a", {"from": "l8"})
    [got] = await until(lambda: app.seen(lambda e: e.get("topic") == f"{topic}-a"), "the event in the SDK handler")
    assert got["data"] == {"from": "l8"} and got["type"] == "application/json"
    # Layotto's metadata map carries the CloudEvent's other attributes.
    assert got["metadata"]["pubsubname"] == "pubsub" and got["metadata"]["traceparent"].startswith("00-")


async def test_a_layotto_sdk_handler_that_throws_gets_the_event_again(
    layotto_app: tuple[Sidecar, NodeApp, str],
) -> None:
    sidecar, app, topic = layotto_app
    await until(lambda: _delivering(sidecar, f"{topic}-b"), "delivering")
    await publish(sidecar, f"{topic}-b", {"n": 1})
    [got] = await until(lambda: app.seen(lambda e: e.get("topic") == f"{topic}-b" and "id" in e), "the retried event")
    [failed] = app.seen(lambda e: "failed" in e)
    assert failed["failed"] == got["id"]


async def _delivering(sidecar: Sidecar, topic: str) -> bool:
    _, _, body = await http(sidecar, "GET", "/v1.0/metadata")
    return any(r["topic"] == topic and r["state"] == "delivering" for r in json.loads(body)["subscriptions"])


@pytest.fixture(scope="module", params=["http", "grpc"])
async def dapr_server(
    request: pytest.FixtureRequest, nats_server: Server
) -> AsyncIterator[tuple[Sidecar, NodeApp, str, str]]:
    protocol: str = request.param
    port, topic = free_port(), unique(f"ds-{protocol}")
    sidecar = await sidecar_for(nats_server, port)
    assert sidecar.http is not None and sidecar.grpc is not None
    dapr_port = sidecar.http.port if protocol == "http" else sidecar.grpc.port
    app = NodeApp("dapr_server.js", protocol, APP_PORT=str(port), DAPR_PORT=str(dapr_port), TOPIC=topic)
    try:
        await app.ready()
        yield sidecar, app, protocol, topic
    finally:
        app.stop()
        await sidecar.stop()


async def test_the_dapr_js_sdks_daprserver_takes_events(dapr_server: tuple[Sidecar, NodeApp, str, str]) -> None:
    sidecar, app, protocol, topic = dapr_server
    await until(lambda: _delivering(sidecar, topic), "the DaprServer's subscription delivering")
    assert await protocol_of(sidecar) == protocol
    await publish(sidecar, topic, {"to": "daprserver"})
    [got] = await until(lambda: app.seen(lambda e: "event" in e), "the event in the DaprServer handler")
    assert got["event"] == {"to": "daprserver"}


async def test_the_dapr_js_sdks_daprserver_answers_invocations(
    dapr_server: tuple[Sidecar, NodeApp, str, str],
) -> None:
    sidecar, _app, _protocol, _topic = dapr_server
    app_id = sidecar.config.app.id
    status, _headers, body = await http(
        sidecar, "POST", f"/v1.0/invoke/{app_id}/method/hello", b'{"x": 1}', content_type="application/json"
    )
    assert status == 200, body
    answer = json.loads(body)
    assert json.loads(answer["hello"]) == {"x": 1}
