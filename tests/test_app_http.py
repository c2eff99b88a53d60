"""HTTP apps (Dapr's default app channel): an app written with FastAPI and the ``dapr`` package's
``dapr.ext.fastapi.DaprApp`` (tests/apps/fastapi_app.py) behind an l8 sidecar that learns by itself
that it speaks HTTP: ``/dapr/subscribe``, CloudEvents POSTed to their routes, Dapr's answer mapping,
bulk events, invocations both ways in, configuration subscriptions over HTTP, input bindings and
the app health check."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from handlers.proto import runtime_pb2 as pb
from handlers.pubsub_envelope import decode
from runtime.app_channel import DROP, RETRY, SUCCESS, AppCallError, AppUnavailable
from runtime.app_http import HttpApp
from runtime.sidecar import Sidecar
from tests.conftest import native_stub, sidecar_config, unique
from tests.servers import Server, free_port, stop_pid, wait_port
from tests.test_event_routing import until

APP = Path(__file__).parent / "apps" / "fastapi_app.py"
COMPONENTS = {
    "pubsub": {"kind": "pubsub", "type": "nats.jetstream"},
    "configstore": {"kind": "configuration", "type": "nats.kv"},
    "orders-in": {"kind": "bindings", "type": "nats", "metadata": {"subject": "ext.orders"}},
}


@dataclass
class FastApiApp:
    proc: subprocess.Popen[bytes]
    port: int
    topic: str

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def call(self, method: str, path: str) -> Any:
        req = urllib.request.Request(f"http://{self.address}{path}", method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    async def seen(self, kind: str) -> list[Any]:
        found: dict[str, list[Any]] = await asyncio.to_thread(self.call, "GET", "/seen")
        return found.get(kind, [])


def start_app(topic: str) -> FastApiApp:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(APP)],
        env={**os.environ, "APP_PORT": str(port), "TOPIC": topic},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, timeout=30, proc=proc)
    return FastApiApp(proc, port, topic)


@pytest.fixture(scope="module")
def fastapi_app() -> Iterator[FastApiApp]:
    app = start_app(unique("fa"))
    yield app
    stop_pid(app.proc)


@pytest.fixture(scope="module")
async def sidecar(nats_server: Server, fastapi_app: FastApiApp) -> AsyncIterator[Sidecar]:
    topic = fastapi_app.topic
    config = sidecar_config(
        nats_server.url,
        COMPONENTS,
        app={"id": unique("http-app"), "callback": fastapi_app.address},  # no protocol: l8 learns it
        subscriptions=[
            {
                "pubsub": "pubsub",
                "topic": f"{topic}-bulk",
                "route": "/bulk-orders",
                "bulk": {"enabled": True, "maxMessages": 10, "maxAwaitMs": 100},
            }
        ],
    )
    sidecar = Sidecar(config)
    await sidecar.start()
    yield sidecar
    await sidecar.stop()


def _request(url: str, method: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


async def http(
    sidecar: Sidecar, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    assert sidecar.http is not None
    url = f"http://127.0.0.1:{sidecar.http.port}{path}"
    return await asyncio.to_thread(_request, url, method, body, {k.replace("_", "-"): v for k, v in headers.items()})


async def publish(sidecar: Sidecar, topic: str, value: Any) -> None:
    channel, stub = native_stub(sidecar)
    async with channel:
        await stub.PublishEvent(
            pb.PublishEventRequest(
                pubsub_name="pubsub", topic=topic, data=json.dumps(value).encode(), data_content_type="application/json"
            ),
            timeout=30,
        )


async def delivering(sidecar: Sidecar, topic: str) -> None:
    async def ready() -> bool:
        status, _, body = await http(sidecar, "GET", "/v1.0/metadata")
        rows = json.loads(body)["subscriptions"] if status == 200 else []
        return any(r["topic"] == topic and r["state"] == "delivering" for r in rows)

    await until(ready, f"subscription {topic} delivering")


async def test_l8_learns_the_app_speaks_http_and_announces_its_dapr_subscribe_subscriptions(
    sidecar: Sidecar, fastapi_app: FastApiApp
) -> None:
    await delivering(sidecar, f"{fastapi_app.topic}-ok")
    status, _, body = await http(sidecar, "GET", "/v1.0/metadata")
    meta = json.loads(body)
    assert status == 200 and meta["appConnectionProperties"]["protocol"] == "http"
    rows = {r["topic"]: r for r in meta["subscriptions"]}
    assert rows[f"{fastapi_app.topic}-ok"]["type"] == "PROGRAMMATIC"
    assert rows[f"{fastapi_app.topic}-drop"]["deadLetterTopic"] == f"{fastapi_app.topic}-dead"


async def test_an_event_is_posted_to_its_route_as_a_cloudevent_and_success_acknowledges_it(
    sidecar: Sidecar, fastapi_app: FastApiApp
) -> None:
    topic = f"{fastapi_app.topic}-ok"
    await delivering(sidecar, topic)
    await publish(sidecar, topic, {"n": 1})
    [got] = await until(lambda: fastapi_app.seen("ok"), "the event at /orders")
    event = got["event"]
    assert got["content_type"] == "application/cloudevents+json"
    assert event["data"] == {"n": 1} and event["datacontenttype"] == "application/json"
    assert event["topic"] == topic and event["pubsubname"] == "pubsub" and event["specversion"] == "1.0"
    assert event["source"] == sidecar.config.app.id and event["id"]


async def test_retry_delivers_again_and_drop_goes_to_the_dead_letter_topic(
    sidecar: Sidecar, fastapi_app: FastApiApp
) -> None:
    prefix = fastapi_app.topic
    for topic in ("retry", "drop", "dead"):
        await delivering(sidecar, f"{prefix}-{topic}")
    await publish(sidecar, f"{prefix}-retry", {"again": True})
    retried = await until(lambda: _at_least(fastapi_app.seen("retry"), 2), "the retried event twice")
    assert retried[0] == retried[1]
    await publish(sidecar, f"{prefix}-drop", {"drop": True})
    [dead] = await until(lambda: fastapi_app.seen("dead"), "the dropped event on the dead-letter topic")
    assert dead["id"] == (await fastapi_app.seen("drop"))[0] and dead["topic"] == f"{prefix}-dead"


async def test_an_error_status_retries_and_an_empty_2xx_answer_is_success(
    sidecar: Sidecar, fastapi_app: FastApiApp
) -> None:
    topic = f"{fastapi_app.topic}-fail"
    await delivering(sidecar, topic)
    await publish(sidecar, topic, {"fail": "first"})
    failed = await until(lambda: _at_least(fastapi_app.seen("fail"), 2), "the event again after HTTP 500")
    assert failed[0] == failed[1]


async def test_bulk_events_come_in_daprs_bulk_envelope_and_each_entry_is_settled_by_its_status(
    sidecar: Sidecar, fastapi_app: FastApiApp
) -> None:
    topic = f"{fastapi_app.topic}-bulk"
    await delivering(sidecar, topic)
    for value in ({"n": 1}, {"n": 2, "retry": True}, {"n": 3}):
        await publish(sidecar, topic, value)

    async def taken() -> list[Any]:
        batches = await fastapi_app.seen("bulk")
        ns = [e["event"]["data"]["n"] for b in batches for e in b["entries"]]
        return batches if sorted(ns) == [1, 2, 2, 3] else []

    batches = await until(taken, "every entry, the retried one twice")
    first = batches[0]
    assert first["type"] == "com.dapr.event.sent.bulk" and first["topic"] == topic and first["pubsubname"] == "pubsub"
    entry = first["entries"][0]
    assert entry["contentType"] == "application/cloudevents+json" and entry["entryId"] and entry["event"]["id"]


async def test_an_http_invocation_reaches_the_app_with_verb_path_query_headers_and_body(
    sidecar: Sidecar, fastapi_app: FastApiApp
) -> None:
    app_id = sidecar.config.app.id
    status, headers, body = await http(
        sidecar,
        "PUT",
        f"/v1.0/invoke/{app_id}/method/echo/a%20b/c?x=1&y=two",
        b"hello",
        content_type="text/plain",
        x_custom="custom-value",
    )
    assert status == 200, body
    echoed = json.loads(body)
    assert echoed["verb"] == "PUT" and echoed["path"] == "/echo/a b/c" and echoed["query"] == "x=1&y=two"
    assert echoed["body"] == "hello" and echoed["headers"]["content-type"] == "text/plain"
    assert echoed["headers"]["x-custom"] == "custom-value"
    assert echoed["headers"]["dapr-caller-app-id"] == app_id and echoed["headers"]["dapr-callee-app-id"] == app_id
    assert headers["content-type"] == "application/json" and headers["x-echoed"] == "yes"
    assert "dapr-http-status" not in headers


async def test_the_apps_http_status_and_body_come_back_to_an_http_caller(sidecar: Sidecar) -> None:
    app_id = sidecar.config.app.id
    status, _, body = await http(sidecar, "DELETE", f"/v1.0/invoke/{app_id}/method/echo/gone?status=404")
    assert status == 404 and json.loads(body)["verb"] == "DELETE"
    status, _, _ = await http(sidecar, "GET", f"/v1.0/invoke/{app_id}/method/no-such-route")
    assert status == 404


async def test_a_grpc_invocation_of_an_http_app_gets_its_answer_and_its_error_status_as_daprd_maps_it(
    sidecar: Sidecar,
) -> None:
    app_id = sidecar.config.app.id
    channel, stub = native_stub(sidecar)
    async with channel:
        # No verb (a gRPC caller's usual call) is sent as POST.
        message = pb.CommonInvokeRequest(method="plain", content_type="text/plain")
        message.data.value = b"over grpc"
        call = stub.InvokeService(pb.InvokeServiceRequest(id=app_id, message=message), timeout=30)
        reply = await call
        assert reply.content_type.startswith("text/x-words") and reply.data.value == b"plain words: over grpc"
        assert ("dapr-http-status", "200") in list(await call.initial_metadata())
        message = pb.CommonInvokeRequest(
            method="echo/x", http_extension=pb.HTTPExtension(verb=pb.HTTPExtension.GET, querystring="status=409")
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.InvokeService(pb.InvokeServiceRequest(id=app_id, message=message), timeout=30)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS and caught.value.details() == "Conflict"


async def test_configuration_subscribed_over_http_sends_each_change_to_the_app(
    sidecar: Sidecar, fastapi_app: FastApiApp
) -> None:
    key = unique("color")
    status, _, body = await http(sidecar, "GET", f"/v1.0/configuration/configstore/subscribe?key={key}")
    assert status == 200, body
    sub_id = json.loads(body)["id"]
    channel, stub = native_stub(sidecar)
    async with channel:
        item = pb.ConfigurationItem(key=key, content="red")
        await stub.SaveConfiguration(pb.SaveConfigurationRequest(store_name="configstore", items=[item]), timeout=30)

    async def delivered() -> list[Any]:
        return [c for c in await fastapi_app.seen("configuration") if c["key"] == key]

    [change] = await until(delivered, "the change at /configuration/configstore/<key>")
    assert change["store"] == "configstore" and change["update"]["id"] == sub_id
    assert change["update"]["items"][key]["value"] == "red" and change["update"]["items"][key]["version"]
    hub = sidecar.grpc.configuration if sidecar.grpc else None
    assert hub is not None
    before = hub.subscriptions
    status, _, body = await http(sidecar, "GET", f"/v1.0/configuration/configstore/{sub_id}/unsubscribe")
    assert status == 200 and json.loads(body) == {"ok": True} and hub.subscriptions == before - 1


async def test_an_http_apps_input_bindings_are_found_with_options_and_their_events_posted(
    sidecar: Sidecar, fastapi_app: FastApiApp
) -> None:
    app = sidecar.event_channel
    assert app is not None
    assert await app.list_input_bindings(timeout=10) == ["orders-in"]
    answer = await app.on_binding_event("orders-in", b'{"order": 7}', {"source-id": "s1"}, timeout=10)
    assert answer.states == () and answer.to == ()
    [event] = await until(lambda: fastapi_app.seen("binding"), "the binding event")
    assert json.loads(event["body"]) == {"order": 7}
    assert event["headers"]["source-id"] == "s1" and event["headers"]["content-type"] == "application/json"


async def _at_least(found: Any, n: int) -> Any:
    items = await found
    return items if len(items) >= n else None


# ---- the answer mapping, one call at a time against the same app ----


def event_for(topic: str, data: bytes = b'{"x": 1}') -> Any:
    envelope = {
        "id": unique("ev"),
        "source": "tester",
        "type": "com.dapr.event.sent",
        "specversion": "1.0",
        "datacontenttype": "application/json",
        "data": json.loads(data),
    }
    return decode(json.dumps(envelope).encode(), {}, "pubsub", topic)


async def test_daprs_answer_mapping_for_events(fastapi_app: FastApiApp) -> None:
    app = HttpApp(fastapi_app.address)
    prefix = fastapi_app.topic
    try:
        assert await app.on_event(event_for(f"{prefix}-ok"), "/orders", timeout=10, metadata=[]) == SUCCESS
        assert (
            await app.on_event(event_for(f"{prefix}-drop"), f"/events/pubsub/{prefix}-drop", timeout=10, metadata=[])
            == DROP
        )
        # 404, from the app's handler or for a route the app does not have: drop, as daprd does.
        assert await app.on_event(event_for("x"), f"/events/pubsub/{prefix}-missing", timeout=10, metadata=[]) == DROP
        assert await app.on_event(event_for("x"), "/no-such-route", timeout=10, metadata=[]) == DROP
        # 405 (a route that takes no POST) is an error: retry.
        with pytest.raises(AppCallError) as caught:
            await app.on_event(event_for("x"), "/seen", timeout=10, metadata=[])
        assert "HTTP 405" in caught.value.message
        statuses = await app.on_bulk_event("pubsub", "t", "/no-such-route", [], timeout=10)
        assert statuses == {}
    finally:
        await app.close()
    assert RETRY == 1


async def test_an_app_that_is_not_listening_is_unavailable_and_a_reply_over_the_limit_is_refused(
    fastapi_app: FastApiApp,
) -> None:
    down = HttpApp(f"127.0.0.1:{free_port()}")
    small = HttpApp(fastapi_app.address, max_message_bytes=16)
    try:
        with pytest.raises(AppUnavailable):
            await down.on_event(event_for("x"), "/orders", timeout=5, metadata=[])
        message = pb.CommonInvokeRequest(method="echo/big", http_extension=pb.HTTPExtension(verb=pb.HTTPExtension.GET))
        with pytest.raises(AppCallError) as caught:
            await small.on_invoke(message.SerializeToString(), timeout=10, metadata=[])
        assert caught.value.code.value == "RESOURCE_EXHAUSTED"
        bad = pb.CommonInvokeRequest(method="echo/\nx")
        with pytest.raises(AppCallError) as caught:
            await small.on_invoke(bad.SerializeToString(), timeout=10, metadata=[])
        assert caught.value.code.value == "INVALID_ARGUMENT"
    finally:
        await down.close()
        await small.close()


# ---- the app health check ----


async def test_an_unhealthy_app_gets_no_calls_and_its_events_wait_until_it_is_healthy_again(
    nats_server: Server,
) -> None:
    app = start_app(unique("health"))
    config = sidecar_config(
        nats_server.url,
        COMPONENTS,
        app={
            "id": unique("health-app"),
            "callback": app.address,
            "protocol": "http",
            "health_check": {"enabled": True, "interval": 0.1, "timeout": 2, "threshold": 1},
        },
    )
    sidecar = Sidecar(config)
    try:
        await sidecar.start()
        health = sidecar.app_health
        assert health is not None
        await until(lambda: health.healthy, "the app healthy")
        topic = f"{app.topic}-ok"
        await delivering(sidecar, topic)
        await asyncio.to_thread(app.call, "POST", "/set-health/down")
        await until(lambda: not health.healthy, "the app unhealthy")
        status, _, body = await http(sidecar, "GET", f"/v1.0/invoke/{config.app.id}/method/echo/x")
        assert status == 503 and b"unhealthy" in body
        await publish(sidecar, topic, {"while": "unhealthy"})
        await asyncio.to_thread(app.call, "POST", "/set-health/up")
        [got] = await until(lambda: app.seen("ok"), "the event once the app is healthy")
        assert got["event"]["data"] == {"while": "unhealthy"}
        status, _, body = await http(sidecar, "GET", "/v1.0/metadata")
        assert json.loads(body)["appConnectionProperties"]["health"]["healthCheckPath"] == "/healthz"
    finally:
        await sidecar.stop()
        stop_pid(app.proc)
