"""Metrics, flow control and the actuator as an operator uses them: `l8 run` with `metrics` and
`flow_control` in its config, scraped and called over its ports."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc
from tests.conftest import unique
from tests.process import L8Process, start_l8
from tests.pubsub_app import DROP, RETRY, SUCCESS, AppServer, RecordingApp
from tests.servers import Server

SAY = "/spec.proto.runtime.v1.Runtime/SayHello"
SAVE = "/spec.proto.runtime.v1.Runtime/SaveState"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def request(url: str, body: bytes | None = None, method: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(l8: L8Process) -> Samples:
    status, body = request(f"http://127.0.0.1:{l8.http_port}/metrics")
    assert status == 200
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def l8(nats_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[L8Process]:
    config = {
        "app": {"id": unique("metered")},
        "namespace": unique("ns"),
        "bus": {"url": nats_server.url},
        "components": {
            "statestore": {"kind": "state", "type": "nats.kv"},
            "helloworld": {"kind": "hello", "type": "helloworld"},
        },
        "metrics": {"enabled": True},
        "flow_control": {
            "rules": [
                # One call per 100 s after a burst of 3: the test's calls cannot earn a new token.
                {"resource": SAY, "threshold": 0.01, "burst": 3},
                {"resource": "/dapr.proto.runtime.v1.Dapr/GetState", "threshold": 20, "burst": 1, "max_wait_ms": 2000},
                {"resource": "GET /v1.0/state/{store}/{key}", "threshold": 0.01, "burst": 1},
                {"resource": SAVE, "threshold": 1, "app": "some-other-app"},
            ]
        },
    }
    found = start_l8(config, cwd=tmp_path_factory.mktemp("metered"))
    yield found
    found.stop()
    assert "Traceback" not in found.log()


def test_calls_are_counted_per_method_and_code_with_sub_millisecond_buckets_and_bounded_series(l8: L8Process) -> None:
    before = scrape(l8)
    with grpc.insecure_channel(l8.grpc_address) as channel:
        stub = runtime_pb2_grpc.RuntimeStub(channel)
        for i in range(7):
            stub.SaveState(pb.SaveStateRequest(store_name="statestore", states=[pb.StateItem(key=f"k{i}", value=b"v")]))
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetState(pb.GetStateRequest(store_name="nope", key="k"))
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        get = "/spec.proto.runtime.v1.Runtime/GetState"

        def counted(samples: Samples) -> bool:
            saved = value(samples, "l8_grpc_server_handled_total", method=SAVE, code="OK")
            refusals = value(samples, "l8_grpc_server_handled_total", method=get, code="INVALID_ARGUMENT")
            return refusals >= 1 and saved - value(before, "l8_grpc_server_handled_total", method=SAVE, code="OK") >= 7

        # A call is counted as its handler returns, which may come just after its answer reached us.
        after = scrape_until(l8, counted)
        # The rule naming another app does not apply to this sidecar's SaveState.
        assert (
            value(after, "l8_grpc_server_handled_total", method=SAVE, code="OK")
            - value(before, "l8_grpc_server_handled_total", method=SAVE, code="OK")
            == 7
        )
        assert (
            value(after, "l8_grpc_server_handling_seconds_count", method=SAVE)
            - value(before, "l8_grpc_server_handling_seconds_count", method=SAVE)
            == 7
        )
        assert ("l8_grpc_server_handling_seconds_bucket", (("le", "0.0005"), ("method", SAVE))) in after
        assert value(after, "l8_bus_requests_total", api="state", component="statestore", code="OK") >= 7
        assert value(after, "l8_worker_handled_total", api="state", component="statestore", code="OK") >= 7
        assert value(after, "l8_bus_request_seconds_count", api="state", component="statestore") >= 7
        # A thousand keys add no series: keys are never labels.
        for i in range(1000):
            stub.SaveState(
                pb.SaveStateRequest(store_name="statestore", states=[pb.StateItem(key=f"many{i}", value=b"v")])
            )
        later = scrape(l8)
        assert not [labels for _, labels in later if any("many" in v for _, v in labels)]
        assert len(state_series(later)) == len(state_series(after))


def scrape_until(l8: L8Process, ready: Any, timeout: float = 60.0) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(l8)
        if ready(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.02)


def state_series(samples: Samples) -> list[Any]:
    # The series of the state calls; other series (health checks, renewals) may come and go.
    return [key for key in samples if ("method", SAVE) in key[1] or ("api", "state") in key[1]]


def test_a_rule_refuses_calls_over_its_threshold_naming_it_and_leaves_other_methods_alone(l8: L8Process) -> None:
    with grpc.insecure_channel(l8.grpc_address) as channel:
        stub = runtime_pb2_grpc.RuntimeStub(channel)
        codes: list[grpc.StatusCode] = []
        messages: list[str] = []
        for _ in range(20):
            try:
                stub.SayHello(pb.SayHelloRequest(service_name="helloworld", name="x"))
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
                messages.append(exc.details())
        assert codes.count(grpc.StatusCode.OK) == 3
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 17
        assert f"flow control rule 0 ({SAY}: 0.01 calls per second, burst 3)" in messages[0]
        # Other methods are not limited.
        for i in range(10):
            stub.SaveState(pb.SaveStateRequest(store_name="statestore", states=[pb.StateItem(key=f"f{i}", value=b"v")]))
    samples = scrape(l8)
    assert value(samples, "l8_flow_control_rejected_total", resource=SAY) == 17
    assert value(samples, "l8_grpc_server_handled_total", method=SAY, code="RESOURCE_EXHAUSTED") == 17


def test_a_rule_with_a_wait_queues_calls_for_their_turn_and_http_routes_answer_429(l8: L8Process) -> None:
    from dapr.proto.runtime.v1 import dapr_pb2_grpc, state_pb2

    with grpc.insecure_channel(l8.grpc_address) as channel:
        stub = dapr_pb2_grpc.DaprStub(channel)

        def get(_: int) -> int:
            return len(stub.GetState(state_pb2.GetStateRequest(store_name="statestore", key="k0")).data)

        with ThreadPoolExecutor(5) as pool:
            assert list(pool.map(get, range(5))) == [1] * 5
    assert value(scrape(l8), "l8_flow_control_queued_total", resource="/dapr.proto.runtime.v1.Dapr/GetState") >= 1
    url = f"http://127.0.0.1:{l8.http_port}/v1.0/state/statestore/k0"
    answers = [request(url) for _ in range(3)]
    assert [s for s, _ in answers] == [200, 429, 429]
    body = json.loads(answers[1][1])
    assert body["errorCode"] == "ERR_TOO_MANY_REQUESTS"
    assert "flow control rule 2 (GET /v1.0/state/{store}/{key}" in body["message"]
    # Another verb of the route, and other routes, are not limited.
    assert (
        request(f"http://127.0.0.1:{l8.http_port}/v1.0/state/statestore", b'[{"key":"h","value":1}]', "POST")[0] == 204
    )
    samples = scrape(l8)
    assert value(samples, "l8_http_server_handled_total", route="GET /v1.0/state/{store}/{key}", status="429") == 2


def test_the_actuator_changes_the_log_level_and_tells_layottos_info(l8: L8Process) -> None:
    base = f"http://127.0.0.1:{l8.http_port}/actuator"
    status, body = request(f"{base}/info")
    assert status == 200
    info = json.loads(body)["app"]
    assert info["name"] == "l8" and info["version"] and info["compiled"]
    assert request(f"{base}/logger", b'{"component": "l8", "level": "bogus"}', "POST")[0] == 400
    assert request(f"{base}/logger", b'{"component": "other.lib", "level": "debug"}', "POST")[0] == 400
    assert request(f"{base}/logger", b"not json", "POST")[0] == 400
    marker = "are not a valid request"
    assert marker not in l8.log()
    status, body = request(f"{base}/logger", b'{"component": "l8", "level": "debug"}', "POST")
    assert status == 200, body
    # Bytes that are no SaveStateRequest: the worker logs them at DEBUG, now shown.
    with grpc.insecure_channel(l8.grpc_address) as channel, pytest.raises(grpc.RpcError):
        channel.unary_unary(SAVE)(b"\x0a\x0astatestore\x12\x03\xff\xff\xff")
    deadline = time.monotonic() + 30
    while marker not in l8.log():
        assert time.monotonic() < deadline, l8.log()[-2000:]
        time.sleep(0.05)
    assert request(f"{base}/logger", b'{"component": "l8", "level": "info"}', "POST")[0] == 200


async def test_events_are_counted_in_and_out_by_status_with_redeliveries_and_dead_letters(
    nats_server: Server, tmp_path: Path
) -> None:
    answers: dict[str, list[int]] = {"retry-once": [RETRY, SUCCESS], "drop": [DROP]}
    seen: dict[str, int] = {}

    def decide(event: Any, _n: int) -> int:
        key = json.loads(event.data)["case"]
        n = seen[key] = seen.get(key, 0) + 1
        plan = answers[key]
        return plan[min(n, len(plan)) - 1]

    app = RecordingApp(decide=decide)
    server = await AppServer(app).start()
    config = {
        "app": {"id": unique("events"), "callback": server.address},
        "namespace": unique("ns"),
        "bus": {"url": nats_server.url},
        "components": {"pubsub": {"kind": "pubsub", "type": "nats.jetstream"}},
        "subscriptions": [{"pubsub": "pubsub", "topic": "orders", "deadLetterTopic": "orders-dead",
                           "backoff": {"initial": 0.05, "max": 0.1}}],
        "metrics": {"enabled": True},
    }  # fmt: skip
    l8: L8Process = await asyncio.to_thread(start_l8, config, cwd=tmp_path)
    try:
        async with grpc.aio.insecure_channel(l8.grpc_address) as channel:
            stub = runtime_pb2_grpc.RuntimeStub(channel)
            for case in ("retry-once", "drop"):
                data = json.dumps({"case": case}).encode()
                await stub.PublishEvent(
                    pb.PublishEventRequest(
                        pubsub_name="pubsub", topic="orders", data=data, data_content_type="application/json"
                    )
                )
            await stub.PublishEvent(pb.PublishEventRequest(pubsub_name="pubsub", topic="unlisted", data=b"x"))
        await app.wait_for(lambda d: len(d) >= 3)

        def counted() -> dict[Any, float]:
            deadline = time.monotonic() + 60
            while True:
                samples = scrape(l8)
                if value(samples, "l8_pubsub_dead_letters_total", component="pubsub", topic="orders",
                         status="dead_lettered") >= 1 and value(samples, "l8_pubsub_events_out_total",
                         component="pubsub", topic="orders", status="success") >= 1:  # fmt: skip
                    return samples
                assert time.monotonic() < deadline, "the events were not counted in time"
                time.sleep(0.1)

        samples = await asyncio.to_thread(counted)
        assert value(samples, "l8_pubsub_events_in_total", component="pubsub", topic="orders", status="success") == 2
        assert value(samples, "l8_pubsub_events_in_total", component="pubsub", topic="_other", status="success") == 1
        out = {s: value(samples, "l8_pubsub_events_out_total", component="pubsub", topic="orders", status=s)
               for s in ("success", "retry", "drop")}  # fmt: skip
        assert out == {"success": 1, "retry": 1, "drop": 1}
        assert value(samples, "l8_pubsub_redeliveries_total", component="pubsub", topic="orders") == 1
        assert value(samples, "l8_pubsub_deliveries_in_flight", component="pubsub") == 0
    finally:
        await asyncio.to_thread(l8.stop)
        await server.stop()
    assert "Traceback" not in l8.log()
