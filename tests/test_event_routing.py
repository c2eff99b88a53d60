"""Event routing on the bus: announced subscriptions, deliveries in pub/sub workers, targets behind
a seam, and the faults a user hits (poison messages, slow apps, dying loops), on every broker."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridges.protocols import PubSub
from bus import Bus, Reply, RequestContext, Route, WorkerHost
from bus.codec import request_headers
from bus.subjects import request_subject
from handlers.proto import runtime_pb2 as pb
from runtime.event_router import TARGETS, register_target
from runtime.sidecar import Sidecar
from tests.conftest import SidecarFactory, native_stub, sidecar_config, unique
from tests.process import L8
from tests.pubsub_app import RETRY, SUCCESS, AppServer, RecordingApp, subscription
from tests.pubsub_backends import SERVERS, component
from tests.servers import Server, start_redis


@pytest.fixture
async def app() -> AsyncIterator[AppServer]:
    server = await AppServer(RecordingApp()).start()
    yield server
    await server.stop()


@pytest.fixture(params=list(SERVERS))
def broker(request: pytest.FixtureRequest) -> tuple[str, Server | None]:
    fixture = SERVERS[request.param]
    return request.param, request.getfixturevalue(fixture) if fixture else None


def bridge_of(sidecar: Sidecar, name: str = "pubsub") -> PubSub:
    assert sidecar.components is not None
    found: PubSub = next(s.bridge for s in sidecar.components.served if s.name == name)
    return found


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


async def http_json(sidecar: Sidecar, path: str) -> tuple[int, Any]:
    """GET from the sidecar's HTTP port; in a thread, since the sidecar runs on this event loop."""
    assert sidecar.http is not None
    return await asyncio.to_thread(_get, f"http://127.0.0.1:{sidecar.http.port}{path}")


async def until(cond: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = cond()
        if asyncio.iscoroutine(found):
            found = await found
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.05)


async def readiness(sidecar: Sidecar, expected: int) -> Any:
    status, body = await http_json(sidecar, "/actuator/health/readiness")
    return body if status == expected else None


async def publish(sidecar: Sidecar, topic: str, data: bytes, pubsub: str = "pubsub") -> None:
    channel, stub = native_stub(sidecar)
    async with channel:
        await stub.PublishEvent(pb.PublishEventRequest(pubsub_name=pubsub, topic=topic, data=data), timeout=30)


async def metadata_rows(sidecar: Sidecar, topic: str, state: str | None = None) -> list[dict[str, Any]]:
    _status, body = await http_json(sidecar, "/v1.0/metadata")
    return [s for s in body["subscriptions"] if s["topic"] == topic and state in (None, s["state"])]


async def test_subscriptions_live_on_the_bus_and_l8_subscriptions_and_metadata_show_their_state(
    make_sidecar: SidecarFactory, nats_server: Server, app: AppServer
) -> None:
    topic, ns = unique("listed"), unique("ns")
    config = sidecar_config(
        nats_server.url,
        {"pubsub": {"kind": "pubsub", "type": "nats.jetstream"}},
        app={"id": unique("app"), "callback": app.address},
        namespace=ns,
        subscriptions=[{"pubsub": "pubsub", "topic": topic}],
    )
    sidecar = await make_sidecar(config)
    await publish(sidecar, topic, b"first")
    await app.app.wait_for(lambda ds: len(ds) == 1)
    rows = await until(lambda: metadata_rows(sidecar, topic, "delivering"), "delivering")
    assert rows[0]["pubsubname"] == "pubsub" and rows[0]["type"] == "DECLARATIVE" and rows[0]["workers"]

    out = await asyncio.to_thread(
        subprocess.run,
        [L8, "subscriptions", "--bus", nats_server.url, "--namespace", ns, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    listed = [r for r in json.loads(out.stdout) if r["topic"] == topic]
    assert listed and listed[0]["app"] == config.app.id and listed[0]["state"] == "delivering", listed

    await app.stop()
    await publish(sidecar, topic, b"while the app is down")
    down = await until(lambda: metadata_rows(sidecar, topic, "unreachable"), "the app shown unreachable")
    assert app.address in down[0]["reason"]
    app = await AppServer(app.app, app.port).start()
    try:
        await app.app.wait_for(lambda ds: [d.data for d in ds] == [b"first", b"while the app is down"])
        await until(lambda: metadata_rows(sidecar, topic, "delivering"), "recovered")
    finally:
        await app.stop()


async def test_a_front_without_workers_delivers_events_routed_by_a_pubsub_worker_with_no_broker_of_its_own(
    make_sidecar: SidecarFactory, nats_server: Server, kafka_server: Server, app: AppServer
) -> None:
    topic, ns, app_id = unique("fronted"), unique("ns"), unique("app")
    # The front names the component but knows no broker address: only the worker does.
    front = await make_sidecar(
        sidecar_config(
            nats_server.url,
            {"orders": {"kind": "pubsub", "type": "kafka"}},
            app={"id": app_id, "callback": app.address},
            namespace=ns,
            workers="none",
            subscriptions=[{"pubsub": "orders", "topic": topic}],
        )
    )
    worker = await make_sidecar(
        sidecar_config(nats_server.url, {"orders": component("kafka", kafka_server)}, namespace=ns, workers="all"),
        serve=False,
    )
    assert front.components is not None and not front.components.served
    await publish(front, topic, b"through a worker", pubsub="orders")
    got = await app.app.wait_for(lambda ds: len(ds) == 1)
    assert got[0].data == b"through a worker" and got[0].topic == topic
    assert worker.workers is not None and ("pubsub", "orders") in worker.workers.routes


async def test_a_registered_kind_of_target_gets_events_through_the_routing_seam(
    make_sidecar: SidecarFactory, nats_server: Server
) -> None:
    ns, topic, probe_id = unique("ns"), unique("probed"), unique("probe")
    sidecar = await make_sidecar(
        sidecar_config(nats_server.url, {"pubsub": {"kind": "pubsub", "type": "nats.jetstream"}}, namespace=ns)
    )
    seen: list[bytes] = []

    async def probe(op: str, payload: bytes, ctx: RequestContext) -> Reply:
        seen.append(payload)
        first_try = seen.count(payload) == 1 and b"again" in payload
        return Reply(b"1" if first_try else b"0")  # RETRY once for "again", else SUCCESS

    register_target("probe", lambda namespace, spec: f"l8.{namespace}.probe.{spec.app}")
    bus = Bus([nats_server.url])
    await bus.start()
    host = WorkerHost(bus, ns)
    try:
        await host.start()
        await host.serve(Route(f"l8.{ns}.probe.{probe_id}", "probes", probe, "probe", caller_in_subject=False))
        spec = {"app": probe_id, "pubsub": "pubsub", "topic": topic, "target": "probe", "origin": "app"}
        spec |= {"backoff_initial": 0.01, "backoff_max": 0.02}
        announcement = json.dumps({"instance": "probe1", "specs": [spec]}).encode()
        await bus.call(
            request_subject(ns, "pubsub", "pubsub", "announce", probe_id),
            announcement,
            timeout=10,
            headers=request_headers(10),
        )
        await publish(sidecar, topic, b"once")
        await publish(sidecar, topic, b"again")
        await until(lambda: len(seen) == 3, "the probe got both events, one of them twice")
        assert sorted(json.loads(s)["data"] for s in seen) == ["again", "again", "once"]
    finally:
        TARGETS.pop("probe", None)
        await host.stop()
        await bus.stop()


async def test_a_poison_message_on_an_ordered_subscription_is_dead_lettered_and_the_next_event_flows(
    make_sidecar: SidecarFactory,
    nats_server: Server,
    app: AppServer,
    broker: tuple[str, Server | None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    type_, server = broker
    topic, dlq = unique("poison"), unique("poison-dlq")
    sidecar = await make_sidecar(
        sidecar_config(
            nats_server.url,
            {"pubsub": component(type_, server)},
            app={"id": unique("app"), "callback": app.address},
            subscriptions=[{"pubsub": "pubsub", "topic": topic, "concurrency": 1, "deadLetterTopic": dlq}],
        )
    )
    bridge = bridge_of(sidecar)
    caplog.set_level(logging.ERROR, "l8")
    await bridge.publish(topic, b"{not json", {})
    await bridge.publish(topic, b"raw", {"l8-raw": "1", "l8-expires": "soon"})
    await publish(sidecar, topic, b"good")
    got = await app.app.wait_for(lambda ds: len(ds) == 1)
    assert got[0].data == b"good"
    poisoned = [r.getMessage() for r in caplog.records if "cannot be delivered" in r.getMessage()]
    assert len(poisoned) == 2 and all(f"topic {topic!r}" in m and "'pubsub'" in m for m in poisoned), poisoned
    sub = await bridge.subscribe(dlq, unique("inspect"), max_in_flight=10)
    try:
        dead: list[Any] = []
        deadline = time.monotonic() + 60
        while len(dead) < 2 and time.monotonic() < deadline:
            dead += await sub.fetch(10, 0.5)
        assert sorted(m.data for m in dead) == [b"raw", b"{not json"]
        assert all("malformed" in m.headers["l8-dead-letter-reason"] for m in dead)
        for m in dead:
            await m.ack()
    finally:
        await sub.close()


def slow_metadata(type_: str) -> dict[str, str]:
    """Each broker's lease on a held message, short enough that a slow app outlives it."""
    return {
        "nats.jetstream": {"ackWaitSeconds": "1"},
        "redis": {"processingTimeout": "1s", "redeliverInterval": "0.25s"},
        "kafka": {"maxPollIntervalMs": "1500", "sessionTimeoutMs": "1000", "heartbeatIntervalMs": "100"},
    }[type_]


async def test_an_app_slower_than_the_brokers_lease_gets_each_event_once(
    make_sidecar: SidecarFactory, nats_server: Server, app: AppServer, broker: tuple[str, Server | None]
) -> None:
    type_, server = broker
    topic = unique("slow")
    app.app.delay = 3.0
    sidecar = await make_sidecar(
        sidecar_config(
            nats_server.url,
            {"pubsub": component(type_, server, **slow_metadata(type_))},
            app={"id": unique("app"), "callback": app.address},
            # Where each broker would hand out a second copy: JetStream and Redis to a consumer
            # still fetching (free slots), Kafka to another member once this one stops polling
            # (no free slot).
            subscriptions=[{"pubsub": "pubsub", "topic": topic, "concurrency": 1 if type_ == "kafka" else 4}],
        )
    )
    for data in (b"a", b"b"):
        await publish(sidecar, topic, data)
    await app.app.wait_for(lambda ds: len(ds) >= 2, timeout=60)
    app.app.delay = 0.0
    await publish(sidecar, topic, b"fence")
    got = await app.app.wait_for(lambda ds: any(d.data == b"fence" for d in ds), timeout=60)
    assert sorted(d.data for d in got) == [b"a", b"b", b"fence"]


async def test_bulk_delivery_with_concurrency_one_delivers_full_batches_in_order(
    make_sidecar: SidecarFactory, nats_server: Server, app: AppServer, broker: tuple[str, Server | None]
) -> None:
    type_, server = broker
    topic, ns = unique("batches"), unique("ns")
    comp = component(type_, server)
    publisher = await make_sidecar(sidecar_config(nats_server.url, {"pubsub": comp}, namespace=ns))
    bridge = bridge_of(publisher)
    for i in range(20):
        await bridge.publish(topic, b"%02d" % i, {"l8-raw": "1"})
    bulk = {"enabled": True, "maxMessages": 5, "maxAwaitMs": 5000}
    await make_sidecar(
        sidecar_config(
            nats_server.url,
            {"pubsub": comp},
            app={"id": unique("app"), "callback": app.address},
            namespace=ns,
            workers="none",
            subscriptions=[{"pubsub": "pubsub", "topic": topic, "concurrency": 1, "bulk": bulk}],
        )
    )
    got = await app.app.wait_for(lambda ds: len(ds) >= 20)
    assert [d.data for d in got] == [b"%02d" % i for i in range(20)]
    assert app.app.bulk_sizes == [5, 5, 5, 5]


async def test_a_delivery_loop_that_fails_is_restarted_and_readiness_shows_it_meanwhile(
    make_sidecar: SidecarFactory, nats_server: Server, app: AppServer
) -> None:
    redis_server = start_redis()
    try:
        topic = unique("flaky")
        sidecar = await make_sidecar(
            sidecar_config(
                nats_server.url,
                {"pubsub": component("redis", redis_server)},
                app={"id": unique("app"), "callback": app.address},
                subscriptions=[{"pubsub": "pubsub", "topic": topic}],
            )
        )
        await publish(sidecar, topic, b"before")
        await app.app.wait_for(lambda ds: len(ds) == 1)
        redis_server.stop()
        report = await until(lambda: readiness(sidecar, 503), "readiness goes down")
        assert report["components"]["pubsub-delivery"]["status"] == "DOWN", report
        assert topic in report["components"]["pubsub-delivery"]["details"]["reason"]
        redis_server = start_redis(redis_server.port)
        await until(lambda: readiness(sidecar, 200), "readiness comes back")
        await publish(sidecar, topic, b"after")
        got = await app.app.wait_for(lambda ds: len(ds) == 2)
        assert [d.data for d in got] == [b"before", b"after"]
    finally:
        redis_server.stop()


async def test_json_encoded_subscription_metadata_is_accepted_and_an_unusable_subscription_is_an_error_shown(
    make_sidecar: SidecarFactory, nats_server: Server, app: AppServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "l8")
    ok, unknown, bad = unique("quoted"), unique("unknown"), unique("bad")
    app.app.subscriptions = [
        subscription("pubsub", ok, metadata={"concurrency": '"1"', "maxDeliveries": '"2"'}),
        subscription("nope", unknown),
        subscription("pubsub", bad, metadata={"maxDeliveries": "lots"}),
    ]
    sidecar = await make_sidecar(
        sidecar_config(
            nats_server.url,
            {"pubsub": {"kind": "pubsub", "type": "nats.jetstream"}},
            app={"id": unique("app"), "callback": app.address},
        )
    )
    assert sidecar.announcer is not None
    spec = (await until(lambda: [s for s in sidecar.announcer.specs() if s.topic == ok], "announced"))[0]
    assert (spec.concurrency, spec.max_deliveries) == (1, 2)
    for topic, why in ((unknown, "not configured"), (bad, "maxDeliveries")):
        rows = await until(lambda t=topic: metadata_rows(sidecar, t), f"{topic} listed")
        assert rows[0]["state"] == "failing" and why in rows[0]["reason"], rows
        assert any(topic in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


async def test_with_a_dead_letter_topic_an_event_that_keeps_failing_gets_there_after_the_default_deliveries(
    make_sidecar: SidecarFactory, nats_server: Server, app: AppServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "l8")
    topic, dlq = unique("doomed"), unique("doomed-dlq")
    app.app.decide = lambda e, _n: RETRY if e.topic == topic else SUCCESS
    subs = [
        {"pubsub": "pubsub", "topic": topic, "deadLetterTopic": dlq, "backoff": {"initial": 0.01, "max": 0.02}},
        {"pubsub": "pubsub", "topic": dlq},
    ]
    sidecar = await make_sidecar(
        sidecar_config(
            nats_server.url,
            {"pubsub": {"kind": "pubsub", "type": "nats.jetstream"}},
            app={"id": unique("app"), "callback": app.address},
            subscriptions=subs,
        )
    )
    await publish(sidecar, topic, b"never")
    got = await app.app.wait_for(lambda ds: any(d.topic == dlq for d in ds))
    assert len([d for d in got if d.topic == topic]) == 5
    assert any("RETRY" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


async def test_the_streaming_subscription_refuses_a_max_in_flight_out_of_range(
    make_sidecar: SidecarFactory, nats_server: Server
) -> None:
    import grpc

    sidecar = await make_sidecar(
        sidecar_config(nats_server.url, {"pubsub": {"kind": "pubsub", "type": "nats.jetstream"}})
    )
    channel, stub = native_stub(sidecar)
    async with channel:
        for value in ("99999999999999", "0", "many"):
            initial = pb.SubscribeTopicEventsRequestInitial(
                pubsub_name="pubsub", topic=unique("t"), metadata={"maxInFlight": value}
            )
            call = stub.SubscribeTopicEvents(iter([pb.SubscribeTopicEventsRequest(initial_request=initial)]))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in call:
                    pass
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "maxInFlight" in str(info.value.details())
    status, _ = await http_json(sidecar, "/v1.0/healthz")
    assert status == 204
