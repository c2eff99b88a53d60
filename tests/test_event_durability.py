"""No acknowledged event is lost when the pieces of event routing die, on every broker: `l8 run
--workers none` fronts and `l8 worker --handlers pubsub` processes as a user starts them, a
counting app, and SIGKILL. Duplicates may follow a crash; the tests count them, and there are none
before it."""

from __future__ import annotations

import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import unique
from tests.process import L8Process, start_l8, start_worker, stop_all
from tests.pubsub_backends import SERVERS, component
from tests.servers import Server, free_port, start_nats, start_redis, stop_pid
from tests.test_pubsub_e2e import native, publish_seq, read_events, start_counting_app, wait_until


@pytest.fixture(params=list(SERVERS))
def broker(request: pytest.FixtureRequest) -> tuple[str, Server | None]:
    fixture = SERVERS[request.param]
    return request.param, request.getfixturevalue(fixture) if fixture else None


def quick_takeover(type_: str) -> dict[str, str]:
    """How soon each broker gives a dead member's events to another: seconds, not minutes."""
    return {
        "nats.jetstream": {"ackWaitSeconds": "2"},
        "redis": {"processingTimeout": "2s", "redeliverInterval": "0.25s"},
        # Two partitions, so that both workers of the group consume.
        "kafka": {"partitions": "2"},
    }[type_]


def config(bus: str, comp: dict[str, Any], ns: str, app_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "app": {"id": app_id},
        "namespace": ns,
        "bus": {"url": bus},
        "components": {"pubsub": comp},
        **extra,
    }


def front(bus: str, comp: dict[str, Any], ns: str, app_id: str, cwd: Path, **extra: Any) -> L8Process:
    return start_l8(config(bus, comp, ns, app_id, workers="none", **extra), cwd=cwd)


def directory(parent: Path, name: str) -> Path:
    path = parent / name
    path.mkdir(exist_ok=True)
    return path


def successes(events: Path) -> Counter[int]:
    return Counter(e["data"]["n"] for e in read_events(events) if e["status"] == "success")


def target(port: int, topic: str, concurrency: int = 4) -> dict[str, Any]:
    return {
        "app": {"callback": f"127.0.0.1:{port}"},
        "subscriptions": [{"pubsub": "pubsub", "topic": topic, "concurrency": concurrency}],
    }


def with_app(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    merged["app"] = {**base["app"], **extra["app"]}
    merged["subscriptions"] = extra["subscriptions"]
    return merged


def test_nothing_is_lost_when_a_delivery_worker_is_killed_mid_stream(
    nats_server: Server, broker: tuple[str, Server | None], tmp_path: Path
) -> None:
    type_, server = broker
    comp = component(type_, server, **quick_takeover(type_))
    ns, app_id, topic = unique("ns"), unique("target"), unique("kill-worker")
    events, port = tmp_path / "events.jsonl", free_port()
    app = start_counting_app(port, events, DELAY="0.05")
    base = config(nats_server.url, comp, ns, app_id)
    workers = [start_worker(base, nats_server.url, "pubsub", directory(tmp_path, f"w{i}")) for i in range(2)]
    sidecar = None
    try:
        cfg = with_app(config(nats_server.url, comp, ns, app_id, workers="none"), target(port, topic))
        sidecar = start_l8(cfg, cwd=tmp_path)
        channel, stub = native(sidecar)
        with channel:
            wait_until(lambda: _published(stub, topic, range(1)), "a worker serves the publish")
            publish_seq(stub, topic, range(1, 150))
        wait_until(lambda: sum(successes(events).values()) >= 30, "deliveries through both workers")
        before = successes(events)
        assert max(before.values()) == 1, "duplicates before any crash"
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait()
        wait_until(lambda: set(successes(events)) == set(range(150)), "every event after a worker died", 120)
        duplicates = sum(n - 1 for n in successes(events).values())
        # At most what the dead worker held (its window, and for Kafka what it had not committed).
        assert duplicates <= (150 if type_ == "kafka" else 16), f"{duplicates} duplicates"
    finally:
        if sidecar is not None:
            sidecar.stop()
        stop_all(workers)
        stop_pid(app)


def test_events_wait_while_the_apps_sidecar_is_killed_and_arrive_when_it_returns(
    nats_server: Server, broker: tuple[str, Server | None], tmp_path: Path
) -> None:
    type_, server = broker
    comp = component(type_, server, **quick_takeover(type_))
    ns, app_id, topic = unique("ns"), unique("target"), unique("kill-sidecar")
    events, port = tmp_path / "events.jsonl", free_port()
    app = start_counting_app(port, events)
    worker = start_worker(
        config(nats_server.url, comp, ns, app_id), nats_server.url, "pubsub", directory(tmp_path, "w")
    )
    cfg = with_app(config(nats_server.url, comp, ns, app_id, workers="none"), target(port, topic))
    publisher = front(nats_server.url, comp, ns, unique("publisher"), directory(tmp_path, "p"))
    sidecar = start_l8(cfg, cwd=tmp_path)
    try:
        channel, stub = native(publisher)
        with channel:
            wait_until(lambda: _published(stub, topic, range(1)), "a worker serves the publish")
            publish_seq(stub, topic, range(1, 10))
            wait_until(lambda: set(successes(events)) == set(range(10)), "the first events")
            sidecar.stop(signal.SIGKILL)
            publish_seq(stub, topic, range(10, 40))
        assert set(successes(events)) == set(range(10)), "delivered with the app's sidecar dead"
        sidecar = start_l8(cfg, cwd=tmp_path)
        wait_until(lambda: set(successes(events)) == set(range(40)), "the held events once the sidecar is back", 120)
        assert max(successes(events).values()) == 1, "duplicates without a crash of anything that held an event"
    finally:
        sidecar.stop()
        publisher.stop()
        stop_pid(worker)
        stop_pid(app)


def test_events_published_across_a_broker_restart_all_arrive(broker: tuple[str, Server | None], tmp_path: Path) -> None:
    type_, _shared = broker
    bus = start_nats(tmp_path / "nats")
    own: Server | None = None
    if type_ == "redis":
        (tmp_path / "redis").mkdir()
        own = start_redis(data_dir=tmp_path / "redis")
    elif type_ == "kafka":
        from tests.servers import start_tansu

        own = start_tansu()
    comp = component(type_, own, **quick_takeover(type_))
    ns, app_id, topic = unique("ns"), unique("target"), unique("restart")
    events, port = tmp_path / "events.jsonl", free_port()
    procs: list[subprocess.Popen[bytes]] = []
    l8s: list[L8Process] = []
    app = start_counting_app(port, events)
    try:
        procs.append(start_worker(config(bus.url, comp, ns, app_id), bus.url, "pubsub", directory(tmp_path, "w")))
        cfg = with_app(config(bus.url, comp, ns, app_id, workers="none"), target(port, topic))
        l8s.append(start_l8(cfg, cwd=tmp_path))
        channel, stub = native(l8s[0])
        with channel:
            wait_until(lambda: _published(stub, topic, range(1)), "a worker serves the publish")
            publish_seq(stub, topic, range(1, 10))
            wait_until(lambda: set(successes(events)) == set(range(10)), "before the restart")
            stop_pid(app)
            # tansu keeps nothing across a restart, so for Kafka nothing may wait in it meanwhile.
            kept = range(10, 20) if type_ != "kafka" else range(0)
            publish_seq(stub, topic, kept)
            restarted = own if own is not None else bus
            restarted.stop()
            if type_ == "nats.jetstream":
                bus = start_nats(bus.data_dir, bus.port)
            elif type_ == "redis":
                own = start_redis(own.port, own.data_dir)  # type: ignore[union-attr]
            else:
                from tests.servers import start_tansu

                own = start_tansu(own.port)  # type: ignore[union-attr]
            app = start_counting_app(port, events)
            wait_until(lambda: _published(stub, topic, range(20, 30)), "publishing again after the restart", 120)
        expected = set(range(10)) | set(kept) | set(range(20, 30))
        wait_until(lambda: set(successes(events)) == expected, "every acknowledged event", 120)
    finally:
        for l8 in l8s:
            l8.stop()
        stop_all(procs)
        stop_pid(app)
        if own is not None:
            own.stop()
        bus.stop()


def _published(stub: Any, topic: str, numbers: range) -> bool:
    import grpc

    try:
        publish_seq(stub, topic, numbers)
    except grpc.RpcError:
        return False
    return True
