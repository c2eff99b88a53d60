"""The official Dapr JS SDK (npm ``@dapr/dapr``, installed by scripts/test) as a client of `l8 run`,
over HTTP (its default) and over gRPC: state, publish and bulk publish, invoke, lock, metadata,
and configuration over gRPC (the SDK has no HTTP configuration)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import unique
from tests.process import L8Process
from tests.sdk_env import l8_with_app, run_node, take_events
from tests.servers import Server

PROTOCOLS = ["http", "grpc"]


@pytest.fixture(scope="module")
def l8(nats_server: Server) -> Iterator[L8Process]:
    with l8_with_app(nats_server, "dapr-js") as sidecar:
        yield sidecar


def run(l8: L8Process, protocol: str, scenario: str, **env: str) -> Any:
    ports = {"DAPR_HTTP_PORT": str(l8.http_port), "DAPR_GRPC_PORT": str(l8.grpc_port)}
    return run_node(l8, "dapr_client.js", protocol, scenario, **ports, **env)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_state_saves_reads_bulk_reads_transacts_and_deletes(l8: L8Process, protocol: str) -> None:
    seen = run(l8, protocol, "state")
    prefix = f"js-{protocol}"
    assert seen["a"] == {"qty": 1}
    assert seen["bulk"] == [[f"{prefix}-a", {"qty": 1}], [f"{prefix}-b", "text"]]
    assert seen["t"] == "in-tx" and seen["b"] is None and seen["gone"] is None


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_published_events_reach_a_subscriber(l8: L8Process, protocol: str) -> None:
    topic = unique(f"js-{protocol}")
    events = take_events(l8, topic, 3, lambda: run(l8, protocol, "publish", TOPIC=topic))
    assert sorted(json.loads(e.data)["n"] for e in events) == [1, 2, 3]
    assert all(e.data_content_type == "application/json" for e in events)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_invoke_reaches_the_app_through_its_sidecar(l8: L8Process, protocol: str) -> None:
    res = run(l8, protocol, "invoke", TARGET=l8.extra["app_id"])["res"]
    assert res["app"] == l8.extra["app_id"]
    assert json.loads(res["data"]) == {"hello": protocol}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_lock_is_exclusive_and_unlock_reports_each_status(l8: L8Process, protocol: str) -> None:
    assert run(l8, protocol, "lock") == {
        "first": True,
        "second": False,
        "byOther": True,
        "byOwner": True,
        "again": True,
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_metadata_shows_the_components_with_capabilities_and_an_attribute_it_set(l8: L8Process, protocol: str) -> None:
    seen = run(l8, protocol, "metadata")
    assert seen["id"] == l8.extra["app_id"]
    assert seen["attr"] == "set-by-js"
    assert ["statestore", "state.nats.kv", ["ETAG", "TRANSACTIONAL", "TTL"]] in seen["components"]


def test_configuration_gets_and_subscribes_over_grpc(l8: L8Process) -> None:
    seen = run(l8, "grpc", "configuration")
    assert seen == {"got": [["js-grpc-color", True]], "changed": True}
