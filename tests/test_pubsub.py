"""Pub/sub semantics above the bridge: envelope, raw payloads, TTL, routing rules, the app's own
subscriptions, the Dapr front, and bad input that publishes nothing."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from dapr.proto.runtime.v1 import appcallback_pb2 as ac
from dapr.proto.runtime.v1 import dapr_pb2_grpc
from dapr.proto.runtime.v1 import pubsub_pb2 as dapr_pubsub

from handlers.proto import runtime_pb2 as pb
from handlers.pubsub_envelope import Event
from handlers.pubsub_rules import Routes, RuleError
from runtime.sidecar import Sidecar
from tests.conftest import SidecarFactory, native_stub, sidecar_config, unique
from tests.pubsub_app import AppServer, RecordingApp, subscription
from tests.servers import Server


@pytest.fixture
async def app() -> AsyncIterator[AppServer]:
    server = await AppServer(RecordingApp()).start()
    yield server
    await server.stop()


async def sidecar_with(
    make_sidecar: SidecarFactory, nats_server: Server, app: AppServer, subscriptions: list[dict[str, Any]], **meta: str
) -> Sidecar:
    config = sidecar_config(
        nats_server.url,
        {"pubsub": {"kind": "pubsub", "type": "nats.jetstream", "metadata": meta}},
        app={"id": unique("app"), "callback": app.address},
        subscriptions=[{"pubsub": "pubsub", **s} for s in subscriptions],
    )
    return await make_sidecar(config)


def event(**envelope: Any) -> Event:
    return Event(
        id=envelope.get("id", "1"),
        source=envelope.get("source", "s"),
        type=envelope.get("type", "t"),
        specversion="1.0",
        datacontenttype="application/json",
        data=json.dumps(envelope.get("data")).encode(),
        topic="topic",
        pubsubname="pubsub",
        envelope=envelope,
    )


def test_routing_rules_match_on_event_fields_first_match_wins_then_the_default() -> None:
    routes = Routes.of(
        [
            ('event.type == "widget" && event.data.size > 2', "/big-widgets"),
            ("event.type == 'widget' || event.source == \"legacy\"", "/widgets"),
            ("!(event.data.kind != 'x')", "/x"),
        ],
        "/default",
    )
    assert routes.route(event(type="widget", data={"size": 3})) == "/big-widgets"
    assert routes.route(event(type="widget", data={"size": 1})) == "/widgets"
    assert routes.route(event(type="other", source="legacy")) == "/widgets"
    assert routes.route(event(type="other", data={"kind": "x"})) == "/x"
    assert routes.route(event(type="other", data={"missing": 1})) == "/default"
    assert Routes.of([('event.type == "a"', "/a")], None).route(event(type="b")) is None


@pytest.mark.parametrize(
    "match",
    ["", "event.type ==", "__import__('os')", "event.type == 'a' ;", "other.type == 'a'", "(event.type == 'a'"],
)
def test_a_rule_the_evaluator_cannot_read_is_refused(match: str) -> None:
    with pytest.raises(RuleError):
        Routes.of([(match, "/p")], "")


async def test_the_envelope_carries_the_cloudevent_attributes_and_raw_payloads_travel_as_they_came(
    make_sidecar: SidecarFactory, nats_server: Server, app: AppServer
) -> None:
    topic = unique("env")
    sidecar = await sidecar_with(make_sidecar, nats_server, app, [{"topic": topic}])
    channel, stub = native_stub(sidecar)
    async with channel:
        await stub.PublishEvent(
            pb.PublishEventRequest(pubsub_name="pubsub", topic=topic, data=b"\x00\xffbin"),
            metadata=(("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),),
        )
        await stub.PublishEvent(
            pb.PublishEventRequest(
                pubsub_name="pubsub",
                topic=topic,
                data=b"\x01raw",
                data_content_type="application/octet-stream",
                metadata={"rawPayload": "true"},
            )
        )
        given = {"specversion": "1.0", "id": "mine", "source": "elsewhere", "type": "custom", "data": {"a": 1}}
        await stub.PublishEvent(
            pb.PublishEventRequest(
                pubsub_name="pubsub",
                topic=topic,
                data=json.dumps(given).encode(),
                data_content_type="application/cloudevents+json",
            )
        )
    got = await app.app.wait_for(lambda ds: len(ds) >= 3)
    binary = next(d for d in got if d.data == b"\x00\xffbin")
    assert binary.event.source == sidecar.config.app.id
    assert binary.event.spec_version == "1.0"
    assert binary.event.data_content_type == "text/plain"
    assert binary.event.extensions["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert binary.metadata["traceparent"] == binary.event.extensions["traceparent"]
    assert {"time", "topic", "pubsubname"} <= set(binary.event.extensions)
    raw = next(d for d in got if d.data == b"\x01raw")
    assert raw.event.data_content_type == "application/octet-stream"
    kept = next(d for d in got if d.id == "mine")
    assert (kept.event.source, kept.event.type, json.loads(kept.data)) == ("elsewhere", "custom", {"a": 1})


async def test_an_event_whose_ttl_passed_before_delivery_is_not_delivered(
    make_sidecar: SidecarFactory, nats_server: Server, app: AppServer
) -> None:
    topic = unique("ttl")
    config = sidecar_config(
        nats_server.url,
        {"pubsub": {"kind": "pubsub", "type": "nats.jetstream"}},
        app={"id": unique("app"), "callback": app.address},
    )
    publisher = await make_sidecar(config)
    channel, stub = native_stub(publisher)
    async with channel:
        await stub.PublishEvent(
            pb.PublishEventRequest(pubsub_name="pubsub", topic=topic, data=b"old", metadata={"ttlInSeconds": "1"})
        )
        await asyncio.sleep(1.5)  # the TTL is the thing under test: let it pass before anyone subscribes
        await stub.PublishEvent(pb.PublishEventRequest(pubsub_name="pubsub", topic=topic, data=b"fresh"))
    await publisher.stop()
    subscriber = await make_sidecar(
        config.model_copy(update={"subscriptions": [sub_config(topic)]}),
    )
    got = await app.app.wait_for(lambda ds: any(d.data == b"fresh" for d in ds))
    assert [d.data for d in got] == [b"fresh"]
    await subscriber.stop()


def sub_config(topic: str) -> Any:
    from runtime.config import SubscriptionConfig

    return SubscriptionConfig(pubsub="pubsub", topic=topic, concurrency=1)


async def test_subscriptions_the_app_lists_are_delivered_with_its_routing_rules_and_bulk_settings(
    make_sidecar: SidecarFactory, nats_server: Server, app: AppServer
) -> None:
    topic, bulk_topic = unique("listed"), unique("listed-bulk")
    app.app.subscriptions = [
        subscription(
            "pubsub",
            topic,
            routes=ac.TopicRoutes(rules=[ac.TopicRule(match='event.type == "special"', path="/special")], default="/d"),
        ),
        subscription(
            "pubsub",
            bulk_topic,
            bulk_subscribe=ac.BulkSubscribeConfig(enabled=True, max_messages_count=3, max_await_duration_ms=100),
        ),
    ]
    sidecar = await sidecar_with(make_sidecar, nats_server, app, [])
    channel, stub = native_stub(sidecar)
    async with channel:
        special = {"specversion": "1.0", "id": "s1", "source": "x", "type": "special"}
        await stub.PublishEvent(
            pb.PublishEventRequest(
                pubsub_name="pubsub",
                topic=topic,
                data=json.dumps(special).encode(),
                data_content_type="application/cloudevents+json",
            )
        )
        await stub.PublishEvent(pb.PublishEventRequest(pubsub_name="pubsub", topic=topic, data=b"plain"))
        for i in range(6):
            await stub.PublishEvent(pb.PublishEventRequest(pubsub_name="pubsub", topic=bulk_topic, data=b"%d" % i))
    got = await app.app.wait_for(lambda ds: len(ds) >= 8)
    paths = {d.data: d.path for d in got if d.topic == topic}
    assert paths == {b"": "/special", b"plain": "/d"}
    assert sorted(d.data for d in got if d.topic == bulk_topic) == [b"%d" % i for i in range(6)]
    assert all(size <= 3 for size in app.app.bulk_sizes)


async def test_with_concurrency_n_at_most_n_events_are_with_the_app_at_once(
    make_sidecar: SidecarFactory, nats_server: Server, app: AppServer
) -> None:
    topic = unique("conc")
    app.app.delay = 0.05
    sidecar = await sidecar_with(make_sidecar, nats_server, app, [{"topic": topic, "concurrency": 3}])
    channel, stub = native_stub(sidecar)
    async with channel:
        await stub.PublishBulkEvent(
            pb.BulkPublishRequest(
                pubsub_name="pubsub",
                topic=topic,
                entries=[pb.BulkPublishRequestEntry(entry_id=str(i), event=b"x") for i in range(30)],
            )
        )
    await app.app.wait_for(lambda ds: len(ds) >= 30)
    assert 1 < app.app.max_in_flight <= 3


async def test_the_dapr_front_publishes_and_bulk_publishes(
    make_sidecar: SidecarFactory, nats_server: Server, app: AppServer
) -> None:
    topic = unique("dapr")
    sidecar = await sidecar_with(make_sidecar, nats_server, app, [{"topic": topic}])
    assert sidecar.grpc is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc.port}") as channel:
        stub = dapr_pb2_grpc.DaprStub(channel)
        await stub.PublishEvent(dapr_pubsub.PublishEventRequest(pubsub_name="pubsub", topic=topic, data=b"one"))
        entries = [dapr_pubsub.BulkPublishRequestEntry(entry_id="a", event=b"two", content_type="text/plain")]
        resp = await stub.BulkPublishEvent(
            dapr_pubsub.BulkPublishRequest(pubsub_name="pubsub", topic=topic, entries=entries)
        )
        assert list(resp.failedEntries) == []
        entries = [dapr_pubsub.BulkPublishRequestEntry(entry_id="b", event=b"three", content_type="text/plain")]
        await stub.BulkPublishEventAlpha1(
            dapr_pubsub.BulkPublishRequest(pubsub_name="pubsub", topic=topic, entries=entries)
        )
    got = await app.app.wait_for(lambda ds: len(ds) >= 3)
    assert sorted(d.data for d in got) == [b"one", b"three", b"two"]


BAD = [
    (pb.PublishEventRequest(pubsub_name="", topic="t", data=b"x"), "name is empty"),
    (pb.PublishEventRequest(pubsub_name="nope", topic="t", data=b"x"), "'nope' is not configured"),
    (pb.PublishEventRequest(pubsub_name="pubsub", topic="", data=b"x"), "topic is empty"),
    (
        pb.PublishEventRequest(
            pubsub_name="pubsub", topic="t", data=b"{", data_content_type="application/cloudevents+json"
        ),
        "not JSON",
    ),
    (
        pb.PublishEventRequest(
            pubsub_name="pubsub",
            topic="t",
            data=b'{"specversion": "0.3"}',
            data_content_type="application/cloudevents+json",
        ),
        "specversion",
    ),
    (
        pb.PublishEventRequest(
            pubsub_name="pubsub", topic="t", data=b"[1]", data_content_type="application/cloudevents+json"
        ),
        "JSON object",
    ),
    (pb.PublishEventRequest(pubsub_name="pubsub", topic="t", data=b"{x", data_content_type="application/json"), "JSON"),
    (pb.PublishEventRequest(pubsub_name="pubsub", topic="t", data=b"x", metadata={"ttlInSeconds": "soon"}), "ttl"),
    (pb.PublishEventRequest(pubsub_name="pubsub", topic="t", data=b"x" * (2 << 20)), "bytes"),
]


@pytest.mark.parametrize(("request_", "says"), BAD, ids=[f"bad-{i}" for i in range(len(BAD))])
async def test_bad_publish_input_is_invalid_argument_and_publishes_nothing(
    make_sidecar: SidecarFactory, nats_server: Server, app: AppServer, request_: Any, says: str
) -> None:
    topic = unique("bad")
    sidecar = await sidecar_with(make_sidecar, nats_server, app, [{"topic": topic, "concurrency": 1}])
    request_ = pb.PublishEventRequest.FromString(request_.SerializeToString())
    if request_.topic == "t":
        request_.topic = topic
    channel, stub = native_stub(sidecar)
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.PublishEvent(request_)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert says.lower() in (err.value.details() or "").lower(), err.value.details()
        # A good event after the bad one is the first and only one to arrive.
        await stub.PublishEvent(pb.PublishEventRequest(pubsub_name="pubsub", topic=topic, data=b"good"))
    got = await app.app.wait_for(lambda ds: len(ds) >= 1)
    assert [d.data for d in got] == [b"good"]


async def test_a_bulk_publish_with_one_bad_entry_publishes_nothing(
    make_sidecar: SidecarFactory, nats_server: Server, app: AppServer
) -> None:
    topic = unique("badbulk")
    sidecar = await sidecar_with(make_sidecar, nats_server, app, [{"topic": topic, "concurrency": 1}])
    channel, stub = native_stub(sidecar)
    async with channel:
        for entries, says in [
            ([pb.BulkPublishRequestEntry(entry_id="a", event=b"1"), pb.BulkPublishRequestEntry(entry_id="a")], "twice"),
            (
                [
                    pb.BulkPublishRequestEntry(entry_id="a", event=b"1"),
                    pb.BulkPublishRequestEntry(entry_id="b", event=b"{", content_type="application/cloudevents+json"),
                ],
                "entries[1]",
            ),
            ([pb.BulkPublishRequestEntry(entry_id="", event=b"1")], "entry_id is empty"),
            ([], "at least one entry"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.PublishBulkEvent(pb.BulkPublishRequest(pubsub_name="pubsub", topic=topic, entries=entries))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert says in (err.value.details() or ""), err.value.details()
        await stub.PublishEvent(pb.PublishEventRequest(pubsub_name="pubsub", topic=topic, data=b"good"))
    got = await app.app.wait_for(lambda ds: len(ds) >= 1)
    assert [d.data for d in got] == [b"good"]


async def test_a_streaming_subscription_with_a_bad_first_message_is_refused(
    make_sidecar: SidecarFactory, nats_server: Server, app: AppServer
) -> None:
    sidecar = await sidecar_with(make_sidecar, nats_server, app, [])
    channel, stub = native_stub(sidecar)
    async with channel:
        for init, says in [
            (pb.SubscribeTopicEventsRequestInitial(pubsub_name="", topic="t"), "pubsubName is required"),
            (pb.SubscribeTopicEventsRequestInitial(pubsub_name="pubsub", topic=""), "topic is required"),
            (pb.SubscribeTopicEventsRequestInitial(pubsub_name="nope", topic="t"), "not configured"),
        ]:
            call = stub.SubscribeTopicEvents(iter([pb.SubscribeTopicEventsRequest(initial_request=init)]))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call.read()
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert says in (err.value.details() or "")


def test_data_base64_of_a_given_cloudevent_reaches_the_app_decoded() -> None:
    from handlers.pubsub_envelope import decode

    raw = json.dumps({"specversion": "1.0", "id": "1", "data_base64": base64.b64encode(b"\x00\x01").decode()})
    assert decode(raw.encode(), {}, "pubsub", "t").data == b"\x00\x01"


def test_l8_asyncapi_prints_the_configured_topics_and_subscriptions(tmp_path: Any) -> None:
    import subprocess

    from tests.process import L8, write_config

    path = write_config(
        tmp_path / "l8.yaml",
        {
            "app": {"id": "orders", "callback": "127.0.0.1:1"},
            "namespace": "shop",
            "components": {"pubsub": {"kind": "pubsub", "type": "nats.jetstream"}},
            "subscriptions": [
                {"pubsub": "pubsub", "topic": "orders", "deadLetterTopic": "dead", "concurrency": 1},
                {"pubsub": "pubsub", "topic": "a.b c", "bulk": {"enabled": True}},
            ],
        },
    )
    out = subprocess.run([L8, "asyncapi", "--config", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["asyncapi"] == "3.0.0"
    addresses = {c["address"] for c in doc["channels"].values()}
    assert {"l8.shop.evt.pubsub.orders", "l8.shop.evt.pubsub.>"} <= addresses
    orders = next(c for c in doc["channels"].values() if c["address"] == "l8.shop.evt.pubsub.orders")
    assert "ordered" in orders["description"] and "'dead'" in orders["description"]
    assert "CloudEvent" in doc["components"]["schemas"]


def test_a_subscription_on_an_unconfigured_pubsub_or_without_an_app_callback_stops_l8_at_start(tmp_path: Any) -> None:
    from runtime.config import ConfigError, load_config
    from tests.process import write_config

    base = {"components": {"pubsub": {"kind": "pubsub", "type": "nats.jetstream"}}}
    bad = write_config(
        tmp_path / "a.yaml",
        {**base, "app": {"callback": "127.0.0.1:1"}, "subscriptions": [{"pubsub": "nope", "topic": "t"}]},
    )
    with pytest.raises(ConfigError, match="'nope' is not a configured pub/sub component"):
        load_config(bad)
    no_app = write_config(tmp_path / "b.yaml", {**base, "subscriptions": [{"pubsub": "pubsub", "topic": "t"}]})
    with pytest.raises(ConfigError, match=r"app\.callback"):
        load_config(no_app)
    bad_rule = write_config(
        tmp_path / "c.yaml",
        {
            **base,
            "app": {"callback": "127.0.0.1:1"},
            "subscriptions": [{"pubsub": "pubsub", "topic": "t", "rules": [{"match": "os.system", "path": "/"}]}],
        },
    )
    with pytest.raises(ConfigError, match="rules"):
        load_config(bad_rule)


async def test_replicas_of_one_app_id_share_the_events_and_another_app_id_gets_its_own_copy(
    make_sidecar: SidecarFactory, nats_server: Server
) -> None:
    topic, ns = unique("shared"), unique("ns")
    apps = [await AppServer(RecordingApp()).start() for _ in range(3)]
    for app in apps:
        app.app.delay = 0.01  # long enough that one replica cannot take everything first
    try:
        sidecars = []
        for app, app_id in zip(apps, ["orders", "orders", "audit"], strict=True):
            config = sidecar_config(
                nats_server.url,
                {"pubsub": {"kind": "pubsub", "type": "nats.jetstream"}},
                app={"id": app_id, "callback": app.address},
                namespace=ns,
                subscriptions=[{"pubsub": "pubsub", "topic": topic, "concurrency": 2}],
            )
            sidecars.append(await make_sidecar(config))
        channel, stub = native_stub(sidecars[0])
        async with channel:
            await stub.PublishBulkEvent(
                pb.BulkPublishRequest(
                    pubsub_name="pubsub",
                    topic=topic,
                    entries=[pb.BulkPublishRequestEntry(entry_id=str(i), event=b"%d" % i) for i in range(60)],
                )
            )
        await apps[2].app.wait_for(lambda ds: len({d.data for d in ds}) == 60)
        deadline = asyncio.get_running_loop().time() + 60
        while len({d.data for a in apps[:2] for d in a.app.deliveries}) < 60:
            assert asyncio.get_running_loop().time() < deadline, "the replicas did not get every event"
            await asyncio.sleep(0.05)
        assert apps[0].app.deliveries and apps[1].app.deliveries, "one replica got no events"
    finally:
        for app in apps:
            await app.stop()


async def test_an_event_still_failing_after_max_deliveries_goes_to_the_dead_letter_topic(
    make_sidecar: SidecarFactory, nats_server: Server, app: AppServer
) -> None:
    from tests.pubsub_app import RETRY, SUCCESS

    topic, dlq = unique("max"), unique("max-dlq")
    app.app.decide = lambda e, _n: RETRY if e.topic == topic else SUCCESS
    subs = [
        {"topic": topic, "deadLetterTopic": dlq, "maxDeliveries": 3, "backoff": {"initial": 0.01, "max": 0.05}},
        {"topic": dlq},
    ]
    sidecar = await sidecar_with(make_sidecar, nats_server, app, subs)
    channel, stub = native_stub(sidecar)
    async with channel:
        await stub.PublishEvent(pb.PublishEventRequest(pubsub_name="pubsub", topic=topic, data=b"doomed"))
    got = await app.app.wait_for(lambda ds: any(d.topic == dlq for d in ds))
    assert [d.data for d in got if d.topic == topic] == [b"doomed"] * 3
    assert [d.data for d in got if d.topic == dlq] == [b"doomed"]


class UnimplementedFor(RecordingApp):
    """Answers UNIMPLEMENTED for one topic, as the Dapr SDK's App does for a topic it has no handler for."""

    def __init__(self, topic: str) -> None:
        super().__init__()
        self.topic = topic
        self.refused = 0

    async def OnTopicEvent(self, request: Any, context: Any) -> Any:
        if request.topic == self.topic:
            self.refused += 1
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no handler")
        return await super().OnTopicEvent(request, context)


async def test_an_event_the_app_answers_unimplemented_for_is_dead_lettered_not_redelivered(
    make_sidecar: SidecarFactory, nats_server: Server
) -> None:
    topic, dlq = unique("unimpl"), unique("unimpl-dlq")
    app = await AppServer(UnimplementedFor(topic)).start()
    try:
        subs = [{"topic": topic, "deadLetterTopic": dlq}, {"topic": dlq}]
        sidecar = await sidecar_with(make_sidecar, nats_server, app, subs)
        channel, stub = native_stub(sidecar)
        async with channel:
            await stub.PublishEvent(pb.PublishEventRequest(pubsub_name="pubsub", topic=topic, data=b"nobody"))
        got = await app.app.wait_for(lambda ds: any(d.topic == dlq for d in ds))
        assert [d.data for d in got] == [b"nobody"]
        assert isinstance(app.app, UnimplementedFor) and app.app.refused == 1
    finally:
        await app.stop()


async def test_with_concurrency_one_a_retried_event_keeps_its_place_in_the_order(
    make_sidecar: SidecarFactory, nats_server: Server, app: AppServer
) -> None:
    from tests.pubsub_app import RETRY, SUCCESS

    topic = unique("order")
    retried: set[bytes] = set()

    def decide(e: Any, _n: int) -> int:
        if e.data in (b"3", b"7") and e.data not in retried:
            retried.add(e.data)
            return RETRY
        return SUCCESS

    app.app.decide = decide
    sub = {"topic": topic, "concurrency": 1, "backoff": {"initial": 0.05, "max": 0.1}}
    sidecar = await sidecar_with(make_sidecar, nats_server, app, [sub])
    channel, stub = native_stub(sidecar)
    async with channel:
        for i in range(10):
            await stub.PublishEvent(pb.PublishEventRequest(pubsub_name="pubsub", topic=topic, data=b"%d" % i))
    got = await app.app.wait_for(lambda ds: len([d for d in ds if d.status == SUCCESS]) >= 10)
    assert [d.data for d in got if d.status == SUCCESS] == [b"%d" % i for i in range(10)]
    assert [d.data for d in got] == [b"0", b"1", b"2", b"3", b"3", b"4", b"5", b"6", b"7", b"7", b"8", b"9"]


async def test_dapr_get_metadata_lists_the_subscriptions_being_delivered(
    make_sidecar: SidecarFactory, nats_server: Server, app: AppServer
) -> None:
    from dapr.proto.runtime.v1 import metadata_pb2

    topic, listed = unique("meta"), unique("listed")
    app.app.subscriptions = [subscription("pubsub", listed)]
    sub = {"topic": topic, "deadLetterTopic": "dead", "rules": [{"match": 'event.type == "x"', "path": "/x"}]}
    sidecar = await sidecar_with(make_sidecar, nats_server, app, [sub])
    assert sidecar.grpc is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc.port}") as channel:
        stub = dapr_pb2_grpc.DaprStub(channel)
        for _ in range(600):  # the app's own subscriptions are listed once l8 has asked it
            resp = await stub.GetMetadata(metadata_pb2.GetMetadataRequest())
            if len(resp.subscriptions) == 2:
                break
            await asyncio.sleep(0.05)
    subs = {s.topic: s for s in resp.subscriptions}
    assert subs[topic].type == metadata_pb2.DECLARATIVE and subs[topic].dead_letter_topic == "dead"
    assert [(r.match, r.path) for r in subs[topic].rules.rules] == [('event.type == "x"', "/x"), ("", "")]
    assert subs[listed].type == metadata_pb2.PROGRAMMATIC
