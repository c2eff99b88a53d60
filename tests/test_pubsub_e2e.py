"""Pub/sub as a user runs it: `l8 run` as a subprocess, apps written with the Dapr SDK, and the
promise that no event is lost across crashes, app outages and graceful stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc
from tests.conftest import unique
from tests.process import L8Process, start_l8
from tests.servers import Server, free_port, stop_pid, wait_port

HERE = Path(__file__).parent
APPS = HERE / "apps"


def pubsub_config(nats_server: Server, app_port: int, **extra: Any) -> dict[str, Any]:
    return {
        "app": {"id": extra.pop("app_id", unique("e2e")), "callback": f"127.0.0.1:{app_port}"},
        "namespace": extra.pop("namespace", unique("ns")),
        "bus": {"url": nats_server.url},
        "components": {
            "pubsub": {"kind": "pubsub", "type": "nats.jetstream", "metadata": {"ackWaitSeconds": "3"}},
        },
        **extra,
    }


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_until(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    return tmp_path / "events.jsonl"


def start_app(script: str, port: int, events: Path, **env: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, str(APPS / script)],
        env={**os.environ, "APP_PORT": str(port), "EVENTS_FILE": str(events), **env},
        cwd=HERE.parent,
    )
    wait_port(port, timeout=30, proc=proc)
    return proc


@pytest.fixture
def dapr_app(events_file: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    proc = start_app("dapr_subscriber.py", port, events_file)
    yield port, proc
    stop_pid(proc)


def test_dapr_sdk_apps_publish_and_receive_with_cloudevent_fields_retry_drop_rules_and_streaming(
    nats_server: Server, dapr_app: tuple[int, subprocess.Popen[bytes]], events_file: Path
) -> None:
    port, _ = dapr_app
    config = pubsub_config(nats_server, port, app_id="orders-app")
    l8 = start_l8(config)
    try:
        out = subprocess.run(
            [sys.executable, str(APPS / "dapr_publisher.py"), unique("stream")],
            env={**os.environ, "DAPR_GRPC_PORT": str(l8.grpc_port), "DAPR_HTTP_PORT": str(l8.http_port)},
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout + out.stderr + l8.log()

        def by(handler: str) -> list[dict[str, Any]]:
            return [e for e in read_events(events_file) if e["handler"] == handler]

        wait_until(
            lambda: (
                len(by("orders")) >= 2
                and any(e["status"] == "success" for e in by("flaky"))
                and len(by("poison-dead")) >= 1
                and len(by("widgets")) >= 1
                and len(by("gadgets")) >= 1
            ),
            "every handler got its events",
        )
        orders = by("orders")
        assert {json.dumps(o["data"]) if not isinstance(o["data"], str) else o["data"] for o in orders} >= {
            "plain text"
        }
        first = orders[0]
        assert first["source"] == "orders-app"
        assert first["type"] == "com.dapr.event.sent"
        assert first["id"]
        assert first["extensions"]["pubsubname"] == "pubsub"
        assert first["extensions"]["traceparent"].startswith("00-")
        assert "time" in first["extensions"]
        flaky = by("flaky")
        assert [e["status"] for e in flaky][:2] == ["retry", "success"]
        assert flaky[0]["id"] == flaky[1]["id"]
        assert len(by("poison")) == 1  # dropped: not redelivered, but dead-lettered
        assert by("poison-dead")[0]["id"] == by("poison")[0]["id"]
        assert by("widgets")[0]["id"] == "widget-1" and by("widgets")[0]["source"] == "factory"
        assert by("gadgets")[0]["id"] == "gadget-1"
    finally:
        l8.stop()


def native(l8: L8Process) -> tuple[grpc.Channel, runtime_pb2_grpc.RuntimeStub]:
    channel = grpc.insecure_channel(l8.grpc_address)
    return channel, runtime_pb2_grpc.RuntimeStub(channel)


def publish_seq(stub: runtime_pb2_grpc.RuntimeStub, topic: str, numbers: range) -> None:
    for n in numbers:
        stub.PublishEvent(
            pb.PublishEventRequest(
                pubsub_name="pubsub",
                topic=topic,
                data=json.dumps({"n": n}).encode(),
                data_content_type="application/json",
            ),
            timeout=10,
        )


def acked(events: Path) -> set[int]:
    return {e["data"]["n"] for e in read_events(events) if e["status"] == "success"}


def start_counting_app(port: int, events: Path, **env: str) -> subprocess.Popen[bytes]:
    return start_app("counting_subscriber.py", port, events, **env)


def test_events_the_app_did_not_acknowledge_are_delivered_after_l8_is_killed_and_restarted(
    nats_server: Server, events_file: Path, tmp_path: Path
) -> None:
    port = free_port()
    topic = unique("crash")
    app = start_counting_app(port, events_file, TOPIC=topic, DELAY="0.1")
    config = pubsub_config(nats_server, port, subscriptions=[{"pubsub": "pubsub", "topic": topic, "concurrency": 8}])
    try:
        l8 = start_l8(config, cwd=tmp_path)
        channel, stub = native(l8)
        with channel:
            publish_seq(stub, topic, range(200))
        wait_until(lambda: len(read_events(events_file)) >= 20, "events flow")
        l8.stop(signal.SIGKILL)
        delivered_before = acked(events_file)
        assert len(delivered_before) < 200, "all events were delivered before the kill; nothing was in flight"
        l8 = start_l8(config, cwd=tmp_path)
        try:
            wait_until(lambda: acked(events_file) == set(range(200)), "every event after the restart", timeout=90)
        finally:
            l8.stop()
    finally:
        stop_pid(app)


def test_events_wait_while_the_app_is_down_and_arrive_when_it_returns(
    nats_server: Server, events_file: Path, tmp_path: Path
) -> None:
    port = free_port()
    topic = unique("outage")
    config = pubsub_config(nats_server, port, subscriptions=[{"pubsub": "pubsub", "topic": topic}])
    l8 = start_l8(config, cwd=tmp_path)
    try:
        channel, stub = native(l8)
        with channel:
            publish_seq(stub, topic, range(50))
            # The app is down for a while: l8 keeps the events and keeps trying.
            time_down = time.monotonic()
            while time.monotonic() - time_down < 10:
                assert l8.proc.poll() is None
                time.sleep(0.5)
            publish_seq(stub, topic, range(50, 60))
        app = start_counting_app(port, events_file, TOPIC=topic)
        try:
            wait_until(lambda: acked(events_file) == set(range(60)), "every event once the app is back")
        finally:
            stop_pid(app)
    finally:
        l8.stop()


def test_sigterm_finishes_deliveries_in_flight_and_hands_back_the_rest(
    nats_server: Server, events_file: Path, tmp_path: Path
) -> None:
    port = free_port()
    topic = unique("drain")
    app = start_counting_app(port, events_file, TOPIC=topic, DELAY="0.5")
    config = pubsub_config(nats_server, port, subscriptions=[{"pubsub": "pubsub", "topic": topic, "concurrency": 4}])
    try:
        l8 = start_l8(config, cwd=tmp_path)
        channel, stub = native(l8)
        with channel:
            publish_seq(stub, topic, range(40))
        wait_until(lambda: len(read_events(events_file)) >= 4, "deliveries started")
        assert l8.stop(signal.SIGTERM) == 0
        log = l8.log()
        started = {e["data"]["n"] for e in read_events(events_file) if e["status"] == "started"}
        finished = acked(events_file)
        # Every delivery the app had started when l8 stopped was finished and acknowledged.
        assert started <= finished, (started - finished, log)
        assert len(finished) < 40
        l8 = start_l8(config, cwd=tmp_path)
        try:
            wait_until(lambda: acked(events_file) == set(range(40)), "the rest after the restart")
        finally:
            l8.stop()
    finally:
        stop_pid(app)
