"""One conformance suite for Pub/Sub, through the native API and the app callback, over every
pub/sub bridge type in bridges/registry.py (configured by tests/pubsub_backends.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc
from runtime.sidecar import Sidecar
from tests import pubsub_backends
from tests.conftest import SidecarFactory, native_stub, sidecar_config, unique
from tests.pubsub_app import DROP, RETRY, SUCCESS, AppServer, RecordingApp
from tests.servers import Server


@pytest.fixture(params=pubsub_backends.types())
def bridge(request: pytest.FixtureRequest) -> tuple[str, Server | None]:
    fixture = pubsub_backends.SERVERS.get(request.param)
    server = request.getfixturevalue(fixture) if fixture else None
    return request.param, server


@pytest.fixture
async def app() -> AsyncIterator[AppServer]:
    server = await AppServer(RecordingApp()).start()
    yield server
    await server.stop()


async def start(
    make_sidecar: SidecarFactory,
    nats_server: Server,
    bridge: tuple[str, Server | None],
    app: AppServer,
    subscriptions: list[dict[str, Any]],
) -> tuple[Sidecar, grpc.aio.Channel, runtime_pb2_grpc.RuntimeStub]:
    type_, server = bridge
    config = sidecar_config(
        nats_server.url,
        {"pubsub": pubsub_backends.component(type_, server)},
        app={"id": unique("app"), "callback": app.address},
        subscriptions=[{"pubsub": "pubsub", "backoff": {"initial": 0.05, "max": 0.5}, **s} for s in subscriptions],
    )
    sidecar = await make_sidecar(config)
    channel, stub = native_stub(sidecar)
    return sidecar, channel, stub


async def publish(stub: runtime_pb2_grpc.RuntimeStub, topic: str, data: Any, **metadata: str) -> None:
    await stub.PublishEvent(
        pb.PublishEventRequest(
            pubsub_name="pubsub",
            topic=topic,
            data=json.dumps(data).encode(),
            data_content_type="application/json",
            metadata=metadata,
        )
    )


async def test_ten_sequenced_events_arrive_in_order(make_sidecar, nats_server, bridge, app) -> None:
    topic = unique("seq")
    _, channel, stub = await start(make_sidecar, nats_server, bridge, app, [{"topic": topic, "concurrency": 1}])
    async with channel:
        for i in range(10):
            await publish(stub, topic, {"seq": i})
    got = await app.app.wait_for(lambda ds: len(ds) >= 10)
    assert [json.loads(d.data)["seq"] for d in got] == list(range(10))
    assert all(d.event.type == "com.dapr.event.sent" and d.event.pubsub_name == "pubsub" for d in got)


async def test_a_handler_failing_the_first_two_and_every_fifth_delivery_still_sees_every_event(
    make_sidecar, nats_server, bridge, app
) -> None:
    topic = unique("flaky")
    app.app.decide = lambda _e, n: RETRY if n < 2 or (n + 1) % 5 == 0 else SUCCESS
    _, channel, stub = await start(make_sidecar, nats_server, bridge, app, [{"topic": topic, "concurrency": 4}])
    async with channel:
        for i in range(20):
            await publish(stub, topic, {"n": i})
    got = await app.app.wait_for(
        lambda ds: {json.loads(d.data)["n"] for d in ds if d.status == SUCCESS} == set(range(20))
    )
    assert any(d.status == RETRY for d in got)


async def test_a_dropped_event_goes_to_the_dead_letter_topic(make_sidecar, nats_server, bridge, app) -> None:
    topic, dlq = unique("drop"), unique("dlq")
    app.app.decide = lambda e, _n: DROP if e.topic == topic else SUCCESS
    subs = [{"topic": topic, "deadLetterTopic": dlq, "route": "/main"}, {"topic": dlq, "route": "/dead"}]
    _, channel, stub = await start(make_sidecar, nats_server, bridge, app, subs)
    async with channel:
        for i in range(3):
            await publish(stub, topic, {"i": i})
    await app.app.wait_for(lambda ds: len([d for d in ds if d.topic == dlq]) >= 3)
    dead = app.app.of(dlq)
    assert sorted(json.loads(d.data)["i"] for d in dead) == [0, 1, 2]
    assert {d.path for d in dead} == {"/dead"}
    assert len(app.app.of(topic, DROP)) == 3


async def test_two_topics_reach_the_right_handlers(make_sidecar, nats_server, bridge, app) -> None:
    a, b = unique("a"), unique("b")
    subs = [{"topic": a, "route": "/on-a"}, {"topic": b, "route": "/on-b"}]
    _, channel, stub = await start(make_sidecar, nats_server, bridge, app, subs)
    async with channel:
        for i in range(5):
            await publish(stub, a, {"a": i})
            await publish(stub, b, {"b": i})
    got = await app.app.wait_for(lambda ds: len(ds) >= 10)
    for d in got:
        assert d.path == ("/on-a" if d.topic == a else "/on-b")
        assert next(iter(json.loads(d.data))) == ("a" if d.topic == a else "b")
    assert len(app.app.of(a)) == len(app.app.of(b)) == 5


async def _stream(stub: runtime_pb2_grpc.RuntimeStub, topic: str) -> tuple[Any, asyncio.Queue[Any]]:
    outbox: asyncio.Queue[Any] = asyncio.Queue()
    await outbox.put(
        pb.SubscribeTopicEventsRequest(
            initial_request=pb.SubscribeTopicEventsRequestInitial(pubsub_name="pubsub", topic=topic)
        )
    )

    async def requests() -> AsyncIterator[Any]:
        while True:
            item = await outbox.get()
            if item is None:
                return
            yield item

    call = stub.SubscribeTopicEvents(requests())
    first = await call.read()
    assert first.WhichOneof("subscribe_topic_events_response_type") == "initial_response"
    return call, outbox


async def _take(call: Any, outbox: asyncio.Queue[Any], n: int) -> list[Any]:
    got = []
    while len(got) < n:
        msg = await asyncio.wait_for(call.read(), 60)
        event = msg.event_message
        got.append(event)
        await outbox.put(
            pb.SubscribeTopicEventsRequest(
                event_processed=pb.SubscribeTopicEventsRequestProcessed(
                    id=event.id, status=pb.TopicEventResponse(status=pb.TopicEventResponse.SUCCESS)
                )
            )
        )
    return got


async def test_a_cancelled_subscription_receives_nothing_more(make_sidecar, nats_server, bridge, app) -> None:
    topic = unique("cancel")
    _, channel, stub = await start(make_sidecar, nats_server, bridge, app, [])
    async with channel:
        call, outbox = await _stream(stub, topic)
        await publish(stub, topic, {"phase": 1})
        first = await _take(call, outbox, 1)
        assert json.loads(first[0].data) == {"phase": 1}
        call.cancel()
        for i in range(3):
            await publish(stub, topic, {"phase": 2, "i": i})
        # The events were published and wait for the group: a new subscription gets all of them.
        # (The first event may come again: its ack raced the cancel, and delivery is at-least-once.)
        again, outbox2 = await _stream(stub, topic)
        later: set[int] = set()
        while len(later) < 3:
            event = (await _take(again, outbox2, 1))[0]
            body = json.loads(event.data)
            if body["phase"] == 2:
                later.add(body["i"])
        assert later == {0, 1, 2}
        assert call.done()
        again.cancel()


async def test_bulk_publish_and_bulk_delivery(make_sidecar, nats_server, bridge, app) -> None:
    topic = unique("bulk")
    subs = [{"topic": topic, "bulk": {"enabled": True, "maxMessages": 5, "maxAwaitMs": 200}}]
    _, channel, stub = await start(make_sidecar, nats_server, bridge, app, subs)
    async with channel:
        resp = await stub.PublishBulkEvent(
            pb.BulkPublishRequest(
                pubsub_name="pubsub",
                topic=topic,
                entries=[
                    pb.BulkPublishRequestEntry(
                        entry_id=str(i), event=json.dumps({"i": i}).encode(), content_type="application/json"
                    )
                    for i in range(20)
                ],
            )
        )
    assert list(resp.failed_entries) == []
    got = await app.app.wait_for(lambda ds: len(ds) >= 20)
    assert sorted(json.loads(d.data)["i"] for d in got) == list(range(20))
    assert all(0 < size <= 5 for size in app.app.bulk_sizes)
    assert max(app.app.bulk_sizes) > 1
