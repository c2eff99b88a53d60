"""Layotto's published Node SDK (npm ``layotto``, installed by scripts/test) runs unchanged against
`l8 run`: hello, state, publish, invoke, configuration, lock and sequencer. The invocation target
is an app written with the Dapr SDK's ``App`` (Layotto apps come with the app channels)."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
from collections.abc import Iterator
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
CLIENT = HERE / "node" / "layotto_client.js"
APP = HERE / "apps" / "echo_app.py"


@pytest.fixture(scope="module")
def l8(nats_server: Server) -> Iterator[L8Process]:
    app_id = unique("layotto")
    app_port = free_port()
    components = {
        "statestore": {"kind": "state", "type": "nats.kv"},
        "configstore": {"kind": "configuration", "type": "nats.kv"},
        "lockstore": {"kind": "lock", "type": "nats.kv"},
        "sequencer": {"kind": "sequencer", "type": "nats.kv"},
        "pubsub": {"kind": "pubsub", "type": "nats.jetstream"},
        "helloworld": {"kind": "hello", "type": "helloworld"},
    }
    config = {
        "app": {"id": app_id},
        "namespace": unique("ns"),
        "bus": {"url": nats_server.url},
        "components": components,
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


def run(l8: L8Process, scenario: str, **env: str) -> Any:
    out = subprocess.run(
        ["node", str(CLIENT), scenario],
        env={**os.environ, "runtime_GRPC_PORT": str(l8.grpc_port), **env},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode == 0, f"{out.stderr}\n{l8.log()[-3000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_say_hello_answers_from_the_helloworld_component(l8: L8Process) -> None:
    assert run(l8, "hello") == {"plain": "greetings", "named": "greetings, layotto"}


def test_state_saves_reads_bulk_reads_transacts_and_deletes(l8: L8Process) -> None:
    seen = run(l8, "state")
    assert seen["a"] == "alpha-2" and seen["etag"]
    assert seen["missing"] is None
    assert seen["bulk"] == [["js-a", "alpha-2"], ["js-b", "beta"]]
    assert seen["t"] == "in-transaction" and seen["b"] is None
    assert seen["stale"] == grpc.StatusCode.ABORTED.value[0]
    assert seen["deleted"] is None
    with grpc.insecure_channel(l8.grpc_address) as channel:
        got = runtime_pb2_grpc.RuntimeStub(channel).GetState(pb.GetStateRequest(store_name="statestore", key="js-keep"))
    assert got.data == b"kept"


def test_an_event_published_by_the_sdk_reaches_a_subscriber(l8: L8Process) -> None:
    topic = unique("js-topic")
    outgoing: queue.Queue[pb.SubscribeTopicEventsRequest | None] = queue.Queue()
    outgoing.put(
        pb.SubscribeTopicEventsRequest(
            initial_request=pb.SubscribeTopicEventsRequestInitial(pubsub_name="pubsub", topic=topic)
        )
    )

    def requests() -> Iterator[pb.SubscribeTopicEventsRequest]:
        while (req := outgoing.get()) is not None:
            yield req

    with grpc.insecure_channel(l8.grpc_address) as channel:
        stream = runtime_pb2_grpc.RuntimeStub(channel).SubscribeTopicEvents(requests(), timeout=60)
        assert next(stream).HasField("initial_response")
        run(l8, "publish", TOPIC=topic)
        event = next(stream).event_message
        outgoing.put(
            pb.SubscribeTopicEventsRequest(
                event_processed=pb.SubscribeTopicEventsRequestProcessed(
                    id=event.id, status=pb.TopicEventResponse(status=pb.TopicEventResponse.SUCCESS)
                )
            )
        )
        outgoing.put(None)
        stream.cancel()
    assert event.topic == topic and event.pubsub_name == "pubsub"
    assert event.data_content_type == "application/json"
    assert json.loads(event.data) == {"from": "layotto", "n": 1}


def test_invoke_reaches_the_target_app_and_an_unknown_app_is_unavailable(l8: L8Process) -> None:
    seen = run(l8, "invoke", TARGET=l8.extra["app_id"])
    assert seen["json"]["contentType"] == "application/json"
    assert seen["json"]["content"]["data"] == '{"hello":"app"}'
    assert seen["json"]["content"]["content_type"] == "application/json"
    assert seen["text"]["content"]["data"] == "plain words"
    assert seen["unknown"] == grpc.StatusCode.UNAVAILABLE.value[0]


def test_configuration_saves_gets_deletes_and_subscribes_to_changes_only(l8: L8Process) -> None:
    seen = run(l8, "configuration")
    assert seen["got"] == [["js-color", "red", "default"]]
    assert seen["changes"] == [["js-color", "red"], ["js-color", ""]]
    assert seen["empty"] == 0 and not seen["endedEarly"]


def test_lock_is_exclusive_and_unlock_reports_layottos_statuses(l8: L8Process) -> None:
    seen = run(l8, "lock")
    assert seen == {
        "first": True,
        "second": False,
        "byOther": pb.UnlockResponse.LOCK_BELONG_TO_OTHERS,
        "byOwner": pb.UnlockResponse.SUCCESS,
        "again": pb.UnlockResponse.LOCK_UNEXIST,
        "invalid": grpc.StatusCode.INVALID_ARGUMENT.value[0],
    }


def test_sequencer_ids_grow_weak_and_strong(l8: L8Process) -> None:
    seen = run(l8, "sequencer")
    ids = [int(i) for i in seen["ids"]]
    assert ids == sorted(set(ids)) and int(seen["strong"]) > ids[-1]
