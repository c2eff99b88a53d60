"""Input bindings (NATS, JetStream-backed NATS, Kafka, cron) delivered to apps through Dapr's
ListInputBindings / OnBindingEvent, on real servers: one suite of the delivery rules over every
source, then what each source and an app's answer do, and the input l8 refuses."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from dapr.proto.runtime.v1 import appcallback_pb2 as ac

from bridges.nats.subscription import durable_name
from bus.codec import request_headers
from bus.errors import RemoteError
from handlers.proto import runtime_pb2 as pb
from runtime.components import ComponentError
from runtime.sidecar import Sidecar
from tests.binding_app import BindingApp, BindingAppServer, Refuse
from tests.conftest import SidecarFactory, native_stub, sidecar_config, unique
from tests.process import start_worker
from tests.servers import TANSU, KafkaServer, Server, stop_pid
from tests.test_event_routing import http_json, until

SOURCES = ["nats", "nats.jetstream", "kafka"]
Send = Callable[[bytes, dict[str, str]], Awaitable[None]]


async def sender(kind: str, meta: dict[str, str], request: pytest.FixtureRequest) -> tuple[Send, Any]:
    """How the test puts an event on the source, and what to close after."""
    if kind == "kafka":
        kafka: KafkaServer = request.getfixturevalue("kafka_server")
        producer = AIOKafkaProducer(bootstrap_servers=kafka.url, enable_idempotence=False)
        await producer.start()

        async def produce(data: bytes, headers: dict[str, str]) -> None:
            key = headers.pop("key", None)
            await producer.send_and_wait(
                meta["topics"],
                data,
                key=key.encode() if key else None,
                headers=[(k, v.encode()) for k, v in headers.items()],
            )

        return produce, producer.stop
    nats_server: Server = request.getfixturevalue("nats_server")
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()

    async def publish(data: bytes, headers: dict[str, str]) -> None:
        if kind == "nats.jetstream":
            await js.publish(meta["subject"], data, headers=headers or None)
        else:
            await nc.publish(meta["subject"], data, headers=headers or None)
            await nc.flush()

    return publish, nc.close


def source(kind: str, request: pytest.FixtureRequest, **extra: str) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    if kind == "kafka":
        kafka: KafkaServer = request.getfixturevalue("kafka_server")
        meta = {"brokers": kafka.url, "topics": f"in-{tag}", "sessionTimeoutMs": "1000", "heartbeatIntervalMs": "100"}
        meta.update(TANSU)
        return {"kind": "bindings", "type": "kafka", "metadata": {**meta, **extra}}
    meta = {"subject": f"in.{tag}"}
    if kind == "nats.jetstream":
        meta.update(stream=f"IN_{tag}", ackWaitSeconds="3")
    return {"kind": "bindings", "type": "nats", "metadata": {**meta, **extra}}


@pytest.fixture
async def apps() -> AsyncIterator[Callable[..., Awaitable[BindingAppServer]]]:
    started: list[BindingAppServer] = []

    async def make(bindings: list[str], answer: Any = None) -> BindingAppServer:
        server = await BindingAppServer(BindingApp(bindings, answer)).start()
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()


async def app_sidecar(
    make_sidecar: SidecarFactory, nats_server: Server, app: BindingAppServer, components: dict[str, Any], **extra: Any
) -> Sidecar:
    app_cfg = {"id": extra.pop("app_id", unique("app")), "callback": app.address}
    return await make_sidecar(sidecar_config(nats_server.url, components, app=app_cfg, **extra))


async def delivering(sidecar: Sidecar, name: str) -> Any:
    async def found() -> Any:
        _status, body = await http_json(sidecar, "/v1.0/metadata")
        return [r for r in body.get("inputBindings", []) if r["name"] == name and r["state"] == "delivering"]

    return await until(found, f"binding {name} delivering")


# ---- the delivery rules, over every source ----


@pytest.mark.parametrize("kind", SOURCES)
async def test_an_app_gets_every_event_of_its_input_binding_with_its_data_and_metadata(
    kind: str, request: pytest.FixtureRequest, nats_server: Server, make_sidecar: SidecarFactory, apps: Any
) -> None:
    comp = source(kind, request)
    app = await apps(["incoming"])
    sidecar = await app_sidecar(make_sidecar, nats_server, app, {"incoming": comp})
    await delivering(sidecar, "incoming")
    send, close = await sender(kind, comp["metadata"], request)
    try:
        for i in range(5):
            await send(f"event-{i}".encode(), {"x-order": str(i), "key": f"k{i}"})
    finally:
        await close()
    await app.app.wait_for(lambda a: len(a.ok("incoming")) >= 5, "five events")
    seen = {s.data: s.metadata for s in app.app.ok("incoming")}
    assert set(seen) == {f"event-{i}".encode() for i in range(5)}
    assert seen[b"event-3"]["x-order"] == "3"
    if kind == "kafka":
        assert seen[b"event-3"]["__key"] == "k3" and seen[b"event-3"]["__topic"] == comp["metadata"]["topics"]
        assert {"__partition", "__offset", "__timestamp"} <= set(seen[b"event-3"])


@pytest.mark.parametrize("kind", SOURCES)
async def test_an_event_the_app_fails_is_delivered_again_with_backoff_until_it_succeeds(
    kind: str, request: pytest.FixtureRequest, nats_server: Server, make_sidecar: SidecarFactory, apps: Any
) -> None:
    def answer(req: Any, before: int) -> Any:
        if before < 2:
            raise Refuse("not yet")
        return ac.BindingEventResponse()

    comp = source(kind, request)
    app = await apps(["flaky"], answer)
    sidecar = await app_sidecar(make_sidecar, nats_server, app, {"flaky": comp})
    await delivering(sidecar, "flaky")
    send, close = await sender(kind, comp["metadata"], request)
    try:
        await send(b"try-me", {})
    finally:
        await close()
    await app.app.wait_for(lambda a: len(a.ok("flaky")) == 1, "success after two failures")
    assert [s.failed for s in app.app.seen] == [True, True, False]


@pytest.mark.parametrize("kind", SOURCES)
async def test_replicas_of_an_app_share_its_events_and_every_other_app_gets_each_one(
    kind: str, request: pytest.FixtureRequest, nats_server: Server, make_sidecar: SidecarFactory, apps: Any
) -> None:
    comp = source(kind, request)
    ns, app_id = unique("ns"), unique("shared")
    replicas = [await apps(["feed"]) for _ in range(2)]
    other = await apps(["feed"])
    sidecars = [
        await app_sidecar(make_sidecar, nats_server, r, {"feed": comp}, app_id=app_id, namespace=ns) for r in replicas
    ]
    sidecars.append(await app_sidecar(make_sidecar, nats_server, other, {"feed": comp}, namespace=ns))
    for sidecar in sidecars:
        await delivering(sidecar, "feed")
    send, close = await sender(kind, comp["metadata"], request)
    try:
        for i in range(20):
            await send(f"n{i}".encode(), {})
    finally:
        await close()
    expected = {f"n{i}".encode() for i in range(20)}
    await other.app.wait_for(lambda a: {s.data for s in a.ok()} == expected, "the other app gets every event")

    def shared() -> list[bytes]:
        return [s.data for r in replicas for s in r.app.ok()]

    await until(lambda: set(shared()) == expected, "the replicas get every event between them")
    assert len(shared()) == 20, "an event went to both replicas"


@pytest.mark.parametrize("kind", ["nats.jetstream", "kafka"])
async def test_no_event_is_lost_when_the_worker_delivering_it_is_killed(
    kind: str,
    request: pytest.FixtureRequest,
    nats_server: Server,
    make_sidecar: SidecarFactory,
    apps: Any,
    tmp_path: Path,
) -> None:
    comp = source(kind, request)
    ns, app_id = unique("ns"), unique("durable")
    holding = {"on": True}

    def answer(req: Any, before: int) -> Any:
        if holding["on"]:
            raise Refuse("held")
        return ac.BindingEventResponse()

    app = await apps(["durable"], answer)
    worker_cfg = {
        "app": {"id": app_id},
        "namespace": ns,
        "bus": {"url": nats_server.url},
        "components": {"durable": comp},
    }
    first = start_worker(
        worker_cfg, nats_server.url, "bindings", tmp_path / "w1" if (tmp_path / "w1").mkdir() is None else None
    )
    second = None
    try:
        sidecar = await app_sidecar(
            make_sidecar, nats_server, app, {"durable": comp}, app_id=app_id, namespace=ns, workers="none"
        )
        await delivering(sidecar, "durable")
        send, close = await sender(kind, comp["metadata"], request)
        try:
            for i in range(5):
                await send(f"d{i}".encode(), {})
        finally:
            await close()
        await app.app.wait_for(lambda a: len({s.data for s in a.seen}) == 5, "every event reached the app once")
        first.send_signal(signal.SIGKILL)
        first.wait()
        holding["on"] = False
        (tmp_path / "w2").mkdir()
        second = start_worker(worker_cfg, nats_server.url, "bindings", tmp_path / "w2")
        await app.app.wait_for(
            lambda a: {s.data for s in a.ok()} == {f"d{i}".encode() for i in range(5)},
            "every event after the kill",
            120,
        )
    finally:
        stop_pid(first)
        if second is not None:
            stop_pid(second)


# ---- the app's answer ----


async def test_the_apps_answer_saves_its_states_and_sends_its_data_to_output_bindings(
    nats_server: Server, make_sidecar: SidecarFactory, apps: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    relay_subject = f"relay.{uuid.uuid4().hex[:8]}"

    def answer(req: Any, before: int) -> Any:
        return ac.BindingEventResponse(
            store_name="statestore",
            states=[{"key": f"got-{req.data.decode()}", "value": req.data.upper()}],
            to=["relay", "outbox"],
            data=b"forwarded:" + req.data,
            concurrency=ac.BindingEventResponse.PARALLEL,
        )

    comp = source("nats", request)
    app = await apps(["orders"], answer)
    nc = await nats.connect(nats_server.url)
    relayed = await nc.subscribe(relay_subject)
    try:
        components = {
            "orders": comp,
            "statestore": {"kind": "state", "type": "nats.kv"},
            "relay": {"kind": "bindings", "type": "nats", "metadata": {"subject": relay_subject}},
            "outbox": {"kind": "bindings", "type": "local.dir", "metadata": {"root": str(tmp_path / "outbox")}},
        }
        sidecar = await app_sidecar(make_sidecar, nats_server, app, components)
        await delivering(sidecar, "orders")
        await nc.publish(comp["metadata"]["subject"], b"o-7")
        await nc.flush()
        msg = await relayed.next_msg(timeout=60)
        assert msg.data == b"forwarded:o-7"
        channel, stub = native_stub(sidecar)
        async with channel:
            # The app's own key prefix, as its SaveState would have put it.
            got = await stub.GetState(pb.GetStateRequest(store_name="statestore", key="got-o-7"))
        assert got.data == b"O-7"
        outbox = tmp_path / "outbox"

        def written() -> list[Path]:
            found = [p for p in outbox.rglob("*") if p.is_file()]
            return [p for p in found if not p.relative_to(outbox).parts[0].startswith(".l8")]

        files = await until(written, "the outbox file")
        assert files[0].read_bytes() == b"forwarded:o-7"
        assert len(app.app.seen) == 1
    finally:
        await nc.close()


async def test_an_answer_that_can_never_be_carried_out_is_logged_and_the_event_settled(
    nats_server: Server, make_sidecar: SidecarFactory, apps: Any, request: pytest.FixtureRequest, caplog: Any
) -> None:
    def answer(req: Any, before: int) -> Any:
        return ac.BindingEventResponse(store_name="nowhere", states=[{"key": "k", "value": b"v"}])

    comp = source("nats.jetstream", request)
    app = await apps(["bad-answer"], answer)
    sidecar = await app_sidecar(make_sidecar, nats_server, app, {"bad-answer": comp})
    await delivering(sidecar, "bad-answer")
    send, close = await sender("nats.jetstream", comp["metadata"], request)
    nc = await nats.connect(nats_server.url)
    try:
        with caplog.at_level(logging.ERROR, logger="l8.runtime.bindings"):
            await send(b"once", {})
            await app.app.wait_for(lambda a: len(a.seen) == 1, "the event")
            await until(lambda: any("'nowhere'" in r.getMessage() for r in caplog.records), "the ERROR")
        durable = durable_name(sidecar.config.app.id, "bind-bad-answer")

        async def settled() -> Any:
            info = await nc.jetstream().consumer_info(comp["metadata"]["stream"], durable)
            return info if info.num_ack_pending == 0 and info.delivered.consumer_seq == 1 else None

        info = await until(settled, "the event settled with the stream")
        assert info.num_redelivered == 0 and len(app.app.seen) == 1
    finally:
        await close()
        await nc.close()


@pytest.mark.parametrize("kind", ["kafka"])
async def test_apps_that_name_one_consumer_group_share_the_events_of_a_kafka_binding(
    kind: str, request: pytest.FixtureRequest, nats_server: Server, make_sidecar: SidecarFactory, apps: Any
) -> None:
    comp = source(kind, request, consumerGroup=unique("group"))
    ns = unique("ns")
    both = [await apps(["grouped"]) for _ in range(2)]
    for app in both:
        await delivering(await app_sidecar(make_sidecar, nats_server, app, {"grouped": comp}, namespace=ns), "grouped")
    send, close = await sender(kind, comp["metadata"], request)
    try:
        for i in range(10):
            await send(f"g{i}".encode(), {})
    finally:
        await close()
    expected = {f"g{i}".encode() for i in range(10)}
    await until(lambda: {s.data for a in both for s in a.app.ok()} == expected, "the group gets every event")
    assert sum(len(a.app.ok()) for a in both) == 10, "an event went to both apps of the group"


# ---- cron ----


async def test_cron_fires_each_tick_once_for_an_app_whatever_the_number_of_its_sidecars(
    nats_server: Server, make_sidecar: SidecarFactory, apps: Any
) -> None:
    comp = {"kind": "bindings", "type": "cron", "metadata": {"schedule": "@every 1s"}}
    ns, app_id = unique("ns"), unique("ticker")
    replicas = [await apps(["tick"]) for _ in range(3)]
    sidecars = [
        await app_sidecar(make_sidecar, nats_server, r, {"tick": comp}, app_id=app_id, namespace=ns) for r in replicas
    ]
    for sidecar in sidecars:
        await delivering(sidecar, "tick")

    def ticks() -> list[str]:
        return [s.metadata["readTimeUTC"] for r in replicas for s in r.app.ok()]

    await until(lambda: len(ticks()) >= 4, "four ticks")
    seen = ticks()
    assert len(seen) == len(set(seen)), f"a tick went to two sidecars: {sorted(seen)}"
    one = replicas[0].app.ok() or replicas[1].app.ok() or replicas[2].app.ok()
    assert (
        one[0].data == b""
        and one[0].metadata["timeZone"] == "UTC"
        and set(one[0].metadata)
        == {
            "timeZone",
            "readTimeUTC",
        }
    )
    assert all(t.endswith(".000Z") for t in seen), "ticks fall on whole seconds"


async def test_a_cron_binding_has_no_operations_and_a_bad_schedule_stops_l8_naming_it(
    nats_server: Server, make_sidecar: SidecarFactory
) -> None:
    sidecar = await make_sidecar(
        sidecar_config(
            nats_server.url, {"tick": {"kind": "bindings", "type": "cron", "metadata": {"schedule": "@hourly"}}}
        )
    )
    channel, stub = native_stub(sidecar)
    async with channel:
        with pytest.raises(Exception) as info:
            await stub.InvokeBinding(pb.InvokeBindingRequest(name="tick", operation="create"))
    assert "input binding only" in str(info.value)
    for schedule, why in (
        ("61 * * * *", "not a cron schedule"),
        ("@every 10ms", "at least one second"),
        ("* * *", "fields"),
    ):
        with pytest.raises(ComponentError) as failed:
            await make_sidecar(
                sidecar_config(
                    nats_server.url, {"tick": {"kind": "bindings", "type": "cron", "metadata": {"schedule": schedule}}}
                )
            )
        assert why in str(failed.value) and "'tick'" in str(failed.value)


# ---- what l8 refuses ----


async def test_an_input_binding_l8_cannot_deliver_is_listed_with_the_reason_and_the_rest_flow(
    nats_server: Server, make_sidecar: SidecarFactory, apps: Any, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    comp = source("nats", request)
    app = await apps(["good", "outbox", "missing"])
    components = {
        "good": comp,
        "outbox": {"kind": "bindings", "type": "local.dir", "metadata": {"root": str(tmp_path)}},
    }
    sidecar = await app_sidecar(make_sidecar, nats_server, app, components)
    await delivering(sidecar, "good")

    async def reasons() -> Any:
        _status, body = await http_json(sidecar, "/v1.0/metadata")
        rows = {r["name"]: r for r in body["inputBindings"]}
        return rows if {"outbox", "missing"} <= set(rows) else None

    rows = await until(reasons, "the refused bindings")
    assert rows["outbox"]["state"] == "failing" and "output only" in rows["outbox"]["reason"]
    assert "not configured" in rows["missing"]["reason"]
    _status, body = await http_json(sidecar, "/v1.0/metadata")
    assert all(s["pubsubname"] not in ("good", "outbox") for s in body["subscriptions"])


async def test_a_frame_that_is_no_binding_event_is_refused_and_the_sidecar_keeps_serving(
    nats_server: Server, make_sidecar: SidecarFactory, apps: Any, request: pytest.FixtureRequest
) -> None:
    comp = source("nats", request)
    app = await apps(["feed"])
    sidecar = await app_sidecar(make_sidecar, nats_server, app, {"feed": comp})
    await delivering(sidecar, "feed")
    assert sidecar.bus is not None
    subject = f"l8.{sidecar.config.namespace}.app.{sidecar.config.app.id}.binding.feed.feed"
    for garbage in (b"\xff\xff\xff", b""):
        with pytest.raises(RemoteError) as info:
            await sidecar.bus.exchange(subject, garbage, timeout=10, headers=request_headers(10, None))
        assert info.value.code == "INVALID_ARGUMENT"
    send, close = await sender("nats", comp["metadata"], request)
    try:
        await send(b"still", {})
    finally:
        await close()
    await app.app.wait_for(lambda a: [s.data for s in a.ok()] == [b"still"], "an event after the garbage")


async def test_the_kafka_output_binding_writes_partition_key_as_the_message_key(
    nats_server: Server, make_sidecar: SidecarFactory, kafka_server: KafkaServer
) -> None:
    topic = unique("keyed")
    meta = {"brokers": kafka_server.url, "publishTopic": topic, **TANSU}
    sidecar = await make_sidecar(
        sidecar_config(nats_server.url, {"out": {"kind": "bindings", "type": "kafka", "metadata": meta}})
    )
    channel, stub = native_stub(sidecar)
    async with channel:
        await stub.InvokeBinding(
            pb.InvokeBindingRequest(
                name="out", operation="create", data=b"v", metadata={"partitionKey": "cust-9", "h": "1"}
            )
        )
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_server.url, auto_offset_reset="earliest", group_id=unique("g")
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), 60)
    finally:
        await consumer.stop()
    assert record.key == b"cust-9" and record.value == b"v"
    assert dict(record.headers) == {"h": b"1"}, "partitionKey is the key, not a header"


def test_cron_schedules_read_as_daprs_cron_binding_reads_them() -> None:
    from bridges.cron.schedule import Schedule

    at = 1_700_000_000.5  # 2023-11-14T22:13:20.5Z, a Tuesday
    assert Schedule.parse("*/15 * * * * *").next_after(at) == 1_700_000_010.0  # six fields: seconds first
    assert Schedule.parse("0 * * * *").next_after(at) == 1_700_002_800.0  # five: minutes first
    assert Schedule.parse("@hourly").next_after(at) == 1_700_002_800.0
    assert Schedule.parse("@every 1h30m").next_after(at) == 1_700_001_000.0  # whole multiples since the epoch
    assert Schedule.parse("@every 2s").next_after(1_700_000_000.0) == 1_700_000_002.0
    ny = Schedule.parse("CRON_TZ=America/New_York 0 30 4 * * *")
    assert ny.zone == "America/New_York" and ny.next_after(at) == 1_700_040_600.0  # 04:30 EST
    for bad, why in (
        ("", "empty"),
        ("TZ=Mars/Olympus * * * * *", "time zone"),
        ("@every soon", "not a duration"),
        ("* * * * * * 2030", "7 fields"),
        ("0 0 32 * *", "not a cron schedule"),
    ):
        with pytest.raises(ValueError, match=why):
            Schedule.parse(bad)


async def test_on_the_embedded_bus_an_app_behind_a_front_only_sidecar_gets_its_input_binding_events(
    tmp_path: Path, apps: Any
) -> None:
    """The bus's permissions (bus/permissions.py) let a worker read a NATS binding's subject and a
    sidecar its app's binding events; here a worker publishes, another app's front asks it to."""
    from runtime.config import Config

    ns, data_dir = unique("ns"), str(tmp_path / "data")
    components = {"feed": {"kind": "bindings", "type": "nats", "metadata": {"subject": f"in.{uuid.uuid4().hex[:8]}"}}}
    ports = {"grpc": "127.0.0.1:0", "http": "127.0.0.1:0"}
    host = Sidecar(
        Config.model_validate(
            {
                "app": {"id": unique("host")},
                "namespace": ns,
                "data_dir": data_dir,
                "server": ports,
                "components": components,
            }
        )
    )
    await host.start()
    front = None
    try:
        assert host.embedded is not None
        app = await apps(["feed"])
        front = Sidecar(
            Config.model_validate(
                {
                    "app": {"id": unique("front"), "callback": app.address},
                    "namespace": ns,
                    "data_dir": data_dir,
                    "bus": {"url": host.embedded.url},
                    "workers": "none",
                    "server": ports,
                    "components": components,
                }
            )
        )
        await front.start()
        await delivering(front, "feed")
        channel, stub = native_stub(front)
        async with channel:
            await stub.InvokeBinding(pb.InvokeBindingRequest(name="feed", operation="publish", data=b"hello"))
        await app.app.wait_for(lambda a: [s.data for s in a.ok()] == [b"hello"], "the event on the embedded bus")
    finally:
        if front is not None:
            await front.stop()
        await host.stop()


async def test_an_http_app_gets_its_input_binding_events_posted_to_the_bindings_route(
    nats_server: Server, make_sidecar: SidecarFactory
) -> None:
    """The HTTP app channel (runtime/app_http.py) on the same road: OPTIONS finds the binding, each
    event is a POST /orders-in, a 2xx answer settles it."""
    from tests.test_app_http import start_app

    subject = f"ext.{uuid.uuid4().hex[:8]}"
    app = start_app(unique("fa"))
    try:
        comp = {"kind": "bindings", "type": "nats", "metadata": {"subject": subject, "stream": f"EXT_{subject[4:]}"}}
        sidecar = await make_sidecar(
            sidecar_config(nats_server.url, {"orders-in": comp}, app={"id": unique("http"), "callback": app.address})
        )
        await delivering(sidecar, "orders-in")
        nc = await nats.connect(nats_server.url)
        try:
            await nc.jetstream().publish(subject, b'{"order": 8}', headers={"source-id": "s8"})
        finally:
            await nc.close()
        [event] = await until(lambda: app.seen("binding"), "the POST")
        assert json.loads(event["body"]) == {"order": 8} and event["headers"]["source-id"] == "s8"
    finally:
        stop_pid(app.proc)
