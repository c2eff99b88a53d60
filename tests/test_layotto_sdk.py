"""Layotto's published Node SDK (npm ``layotto``, installed by scripts/test) runs unchanged against
`l8 run`: hello, state, publish, invoke, configuration, lock and sequencer. The invocation target
is an app written with the Dapr SDK's ``App``; the SDK's subscriber ``Server`` as an app is in
tests/test_app_sdks.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc
from tests.conftest import unique
from tests.process import L8Process
from tests.sdk_env import l8_with_app, run_node, take_events
from tests.servers import Server


@pytest.fixture(scope="module")
def l8(nats_server: Server) -> Iterator[L8Process]:
    with l8_with_app(nats_server, "layotto") as sidecar:
        yield sidecar


def run(l8: L8Process, scenario: str, **env: str) -> Any:
    return run_node(l8, "layotto_client.js", scenario, runtime_GRPC_PORT=str(l8.grpc_port), **env)


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
    [event] = take_events(l8, topic, 1, lambda: run(l8, "publish", TOPIC=topic))
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
