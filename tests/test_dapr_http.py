"""Dapr's HTTP API on l8's HTTP port: paths, JSON shapes, status codes, error bodies and codes, and
Dapr's rich error details, against one in-process sidecar on the session's nats-server. Every
route forwards to the same workers as gRPC, so what HTTP writes gRPC reads and the other way."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from dapr.proto.runtime.v1 import configuration_pb2 as dpb
from dapr.proto.runtime.v1 import dapr_pb2_grpc, metadata_pb2
from google.rpc import error_details_pb2, status_pb2

from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc
from runtime.sidecar import Sidecar
from tests.conftest import sidecar_config, unique
from tests.http_client import Answer, request
from tests.servers import Server

COMPONENTS = {
    "statestore": {"kind": "state", "type": "nats.kv"},
    "configstore": {"kind": "configuration", "type": "nats.kv"},
    "lockstore": {"kind": "lock", "type": "nats.kv"},
    "pubsub": {"kind": "pubsub", "type": "nats.jetstream"},
    "secretstore": {
        "kind": "secrets",
        "type": "env",
        "metadata": {"prefixes": "L8TEST_SECRET_", "deniedSecrets": "L8TEST_SECRET_HIDDEN"},
    },
}


class Env:
    def __init__(self, sidecar: Sidecar) -> None:
        assert sidecar.http is not None and sidecar.grpc is not None
        self.sidecar = sidecar
        self.port = sidecar.http.port
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc.port}")
        self.native = runtime_pb2_grpc.RuntimeStub(self.channel)
        self.dapr = dapr_pb2_grpc.DaprStub(self.channel)

    async def http(self, method: str, path: str, body: Any = b"", **headers: str) -> Answer:
        return await request(self.port, method, path, body, {k.replace("_", "-"): v for k, v in headers.items()})

    async def stored(self, key: str) -> bytes:
        got = await self.native.GetState(pb.GetStateRequest(store_name="statestore", key=key))
        return got.data


@pytest.fixture(scope="module")
async def env(nats_server: Server, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    os.environ.update(L8TEST_SECRET_A="alpha", L8TEST_SECRET_HIDDEN="never")
    disk = {"kind": "bindings", "type": "local.dir", "metadata": {"root": str(tmp_path_factory.mktemp("disk"))}}
    sidecar = Sidecar(sidecar_config(nats_server.url, {**COMPONENTS, "disk": disk}))
    await sidecar.start()
    e = Env(sidecar)
    yield e
    await e.channel.close()
    await sidecar.stop()


def error_of(answer: Answer, status: int, code: str, reason: str | None = None) -> str:
    assert answer.status == status, (answer.status, answer.body)
    body = answer.json()
    assert body["errorCode"] == code, body
    if reason is not None:
        [info, *_] = body["details"]
        assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
        assert (info["reason"], info["domain"]) == (reason, "dapr.io")
    message: str = body["message"]
    return message


# ---- state ----


async def test_state_is_saved_read_with_its_etag_and_a_missing_key_answers_204(env: Env) -> None:
    key = unique("s")
    saved = await env.http("POST", "/v1.0/state/statestore", [{"key": key, "value": {"qty": 3}}])
    assert saved.status == 204 and saved.body == b""
    got = await env.http("GET", f"/v1.0/state/statestore/{key}")
    assert got.status == 200 and json.loads(got.body) == {"qty": 3}
    assert got.headers["content-type"] == "application/json" and got.headers["etag"]
    assert await env.stored(key) == b'{"qty":3}'  # the same bytes a gRPC client reads
    missing = await env.http("GET", f"/v1.0/state/statestore/{unique('none')}")
    assert (missing.status, missing.body) == (204, b"")


async def test_etags_are_checked_on_save_and_delete_and_a_stale_one_is_409(env: Env) -> None:
    key = unique("e")
    await env.http("POST", "/v1.0/state/statestore", [{"key": key, "value": "one"}])
    etag = (await env.http("GET", f"/v1.0/state/statestore/{key}")).headers["etag"]
    ok = await env.http("POST", "/v1.0/state/statestore", [{"key": key, "value": "two", "etag": etag}])
    assert ok.status == 204
    stale = await env.http("POST", "/v1.0/state/statestore", [{"key": key, "value": "three", "etag": etag}])
    error_of(stale, 409, "ERR_STATE_SAVE", "DAPR_STATE_ETAG_MISMATCH")
    bad = await env.http("POST", "/v1.0/state/statestore", [{"key": key, "value": "x", "etag": "not-a-number"}])
    error_of(bad, 400, "ERR_STATE_SAVE", "DAPR_STATE_ETAG_INVALID")
    assert await env.stored(key) == b'"two"'
    error_of(await env.http("DELETE", f"/v1.0/state/statestore/{key}", if_match=etag), 409, "ERR_STATE_DELETE")
    current = (await env.http("GET", f"/v1.0/state/statestore/{key}")).headers["etag"]
    assert (await env.http("DELETE", f"/v1.0/state/statestore/{key}", if_match=current)).status == 204
    assert (await env.http("GET", f"/v1.0/state/statestore/{key}")).status == 204


async def test_first_write_concurrency_and_ttl_metadata_behave_as_on_grpc(env: Env) -> None:
    key = unique("f")
    first = [{"key": key, "value": 1, "options": {"concurrency": "first-write", "consistency": "strong"}}]
    assert (await env.http("POST", "/v1.0/state/statestore", first)).status == 204
    error_of(await env.http("POST", "/v1.0/state/statestore", first), 409, "ERR_STATE_SAVE")
    ttl = unique("t")
    saved = await env.http(
        "POST", "/v1.0/state/statestore", [{"key": ttl, "value": 1, "metadata": {"ttlInSeconds": "600"}}]
    )
    assert saved.status == 204
    got = await env.http("GET", f"/v1.0/state/statestore/{ttl}?metadata.partitionKey=p&consistency=strong")
    assert got.status == 200 and got.headers["metadata.ttlexpiretime"].endswith("Z")
    bad = await env.http("POST", "/v1.0/state/statestore", [{"key": ttl, "value": 1, "options": {"concurrency": "x"}}])
    error_of(bad, 400, "ERR_MALFORMED_REQUEST")


async def test_bulk_get_answers_each_key_with_json_text_or_nothing(env: Env) -> None:
    a, b, missing = unique("a"), unique("b"), unique("m")
    await env.http("POST", "/v1.0/state/statestore", [{"key": a, "value": {"n": 1}}])
    await env.native.SaveState(
        pb.SaveStateRequest(store_name="statestore", states=[pb.StateItem(key=b, value=b"raw text")])
    )
    got = await env.http("POST", "/v1.0/state/statestore/bulk", {"keys": [a, b, missing], "parallelism": 2})
    assert got.status == 200
    items = {i["key"]: i for i in got.json()}
    assert items[a]["data"] == {"n": 1} and items[a]["etag"]
    assert items[b]["data"] == "raw text"
    assert items[missing] == {"key": missing}


async def test_a_transaction_applies_in_order_and_an_unknown_operation_changes_nothing(env: Env) -> None:
    a, b = unique("ta"), unique("tb")
    await env.http("POST", "/v1.0/state/statestore", [{"key": b, "value": "old"}])
    ops = {
        "operations": [
            {"operation": "upsert", "request": {"key": a, "value": "new"}},
            {"operation": "delete", "request": {"key": b}},
        ],
        "metadata": {},
    }
    assert (await env.http("POST", "/v1.0/state/statestore/transaction", ops)).status == 204
    assert await env.stored(a) == b'"new"' and await env.stored(b) == b""
    bad = {
        "operations": [
            {"operation": "upsert", "request": {"key": b, "value": 1}},
            {"operation": "merge", "request": {"key": a}},
        ]
    }
    error_of(
        await env.http("POST", "/v1.0/state/statestore/transaction", bad), 400, "ERR_NOT_SUPPORTED_STATE_OPERATION"
    )
    assert await env.stored(b) == b""


async def test_an_unknown_store_and_an_illegal_key_carry_dapr_codes_and_reasons(env: Env) -> None:
    message = error_of(
        await env.http("GET", "/v1.0/state/nostore/k"), 400, "ERR_STATE_STORE_NOT_FOUND", "DAPR_STATE_NOT_FOUND"
    )
    assert "'nostore' is not configured; configured: statestore" in message
    illegal = await env.http("POST", "/v1.0/state/statestore", [{"key": "a||b", "value": 1}])
    error_of(illegal, 400, "ERR_MALFORMED_REQUEST", "DAPR_STATE_ILLEGAL_KEY")


async def test_grpc_errors_carry_the_same_error_info_the_dapr_sdk_reads(env: Env) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.dapr.SaveState(
            pb.SaveStateRequest(store_name="statestore", states=[pb.StateItem(key="bad||key", value=b"v")])
        )
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    trailers = dict(info.value.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert status.message == info.value.details()
    error = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(error)
    assert (error.reason, error.domain) == ("DAPR_STATE_ILLEGAL_KEY", "dapr.io")
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await env.native.GetState(pb.GetStateRequest(store_name="nostore", key="k"))
    status = status_pb2.Status.FromString(dict(unknown.value.trailing_metadata() or ())["grpc-status-details-bin"])
    assert status.details[0].Unpack(error) and error.reason == "DAPR_STATE_NOT_FOUND"
    where = error_details_pb2.ResourceInfo()
    assert status.details[1].Unpack(where) and (where.resource_type, where.resource_name) == ("state", "nostore")


async def test_an_encoded_slash_stays_inside_the_key(env: Env) -> None:
    assert (await env.http("POST", "/v1.0/state/statestore", [{"key": "dir/file", "value": 7}])).status == 204
    got = await env.http("GET", "/v1.0/state/statestore/dir%2Ffile")
    assert got.status == 200 and got.body == b"7"
    assert (await env.http("GET", "/v1.0/state/statestore/dir/file")).status == 404  # no such route


# ---- pub/sub ----


async def subscribe(env: Env, topic: str) -> tuple[Any, asyncio.Queue[pb.SubscribeTopicEventsRequest]]:
    outgoing: asyncio.Queue[pb.SubscribeTopicEventsRequest] = asyncio.Queue()
    outgoing.put_nowait(
        pb.SubscribeTopicEventsRequest(
            initial_request=pb.SubscribeTopicEventsRequestInitial(pubsub_name="pubsub", topic=topic)
        )
    )

    async def requests() -> AsyncIterator[pb.SubscribeTopicEventsRequest]:
        while True:
            yield await outgoing.get()

    stream = env.native.SubscribeTopicEvents(requests())
    first = await asyncio.wait_for(stream.read(), 30)
    assert first.HasField("initial_response")
    return stream, outgoing


async def next_event(stream: Any, outgoing: asyncio.Queue[pb.SubscribeTopicEventsRequest]) -> pb.TopicEventRequest:
    resp = await asyncio.wait_for(stream.read(), 30)
    event = resp.event_message
    outgoing.put_nowait(
        pb.SubscribeTopicEventsRequest(
            event_processed=pb.SubscribeTopicEventsRequestProcessed(
                id=event.id, status=pb.TopicEventResponse(status=pb.TopicEventResponse.SUCCESS)
            )
        )
    )
    return event


async def test_publish_sends_the_body_with_its_content_type_and_metadata(env: Env) -> None:
    topic = unique("orders")
    stream, outgoing = await subscribe(env, topic)
    try:
        sent = await env.http("POST", f"/v1.0/publish/pubsub/{topic}", {"id": 1})
        assert sent.status == 204
        event = await next_event(stream, outgoing)
        assert event.topic == topic and event.data_content_type == "application/json"
        assert json.loads(event.data) == {"id": 1}
        raw = await env.http(
            "POST",
            f"/v1.0/publish/pubsub/{topic}?metadata.rawPayload=true",
            b"\x00\x01",
            content_type="application/octet-stream",
        )
        assert raw.status == 204
        assert (await next_event(stream, outgoing)).data == b"\x00\x01"
    finally:
        stream.cancel()


async def test_bulk_publish_sends_every_entry_and_refuses_bad_entries_whole(env: Env) -> None:
    topic = unique("bulk")
    stream, outgoing = await subscribe(env, topic)
    try:
        entries = [
            {"entryId": "1", "event": {"n": 1}, "contentType": "application/json"},
            {"entryId": "2", "event": "two", "contentType": "text/plain", "metadata": {"k": "v"}},
        ]
        assert (await env.http("POST", f"/v1.0-alpha1/publish/bulk/pubsub/{topic}", entries)).status == 204
        got = {(await next_event(stream, outgoing)).data for _ in range(2)}
        assert got == {b'{"n":1}', b"two"}
        twice = [{"entryId": "1", "event": "a"}, {"entryId": "1", "event": "b"}]
        message = error_of(
            await env.http("POST", f"/v1.0-alpha1/publish/bulk/pubsub/{topic}", twice),
            400,
            "ERR_PUBSUB_EVENTS_SER",
            "DAPR_PUBSUB_UNMARSHAL_EVENTS",
        )
        assert "used twice" in message
    finally:
        stream.cancel()


async def test_an_unknown_pubsub_and_an_empty_topic_are_404_with_dapr_codes(env: Env) -> None:
    error_of(await env.http("POST", "/v1.0/publish/nope/t", "x"), 404, "ERR_PUBSUB_NOT_FOUND", "DAPR_PUBSUB_NOT_FOUND")
    error_of(
        await env.http("POST", "/v1.0/publish/pubsub/", "x"), 404, "ERR_TOPIC_EMPTY", "DAPR_PUBSUB_TOPIC_NAME_EMPTY"
    )


# ---- configuration ----


async def test_configuration_get_answers_items_by_key_and_unsubscribe_ends_a_grpc_subscription(env: Env) -> None:
    key = unique("c")
    await env.native.SaveConfiguration(
        pb.SaveConfigurationRequest(
            store_name="configstore", items=[pb.ConfigurationItem(key=key, content="blue", metadata={"m": "1"})]
        )
    )
    got = await env.http("GET", f"/v1.0/configuration/configstore?key={key}&key=missing")
    assert got.status == 200
    item = got.json()[key]
    assert item["value"] == "blue" and item["metadata"] == {"m": "1"} and item["version"]
    assert key in (await env.http("GET", "/v1.0-alpha1/configuration/configstore")).json()
    error_of(await env.http("GET", "/v1.0/configuration/nope"), 400, "ERR_CONFIGURATION_STORE_NOT_FOUND")

    stream = env.dapr.SubscribeConfigurationAlpha1(
        dpb.SubscribeConfigurationRequest(store_name="configstore", keys=[key])
    )
    sub_id = (await asyncio.wait_for(stream.read(), 30)).id
    done = await env.http("GET", f"/v1.0/configuration/configstore/{sub_id}/unsubscribe")
    assert done.status == 200 and done.json() == {"ok": True}
    assert await asyncio.wait_for(stream.read(), 30) is grpc.aio.EOF
    error_of(
        await env.http("GET", f"/v1.0/configuration/configstore/{sub_id}/unsubscribe"),
        500,
        "ERR_CONFIGURATION_UNSUBSCRIBE",
    )


async def test_configuration_subscribe_over_http_without_an_app_answers_that_there_is_no_app_channel(
    env: Env,
) -> None:
    message = error_of(
        await env.http("GET", "/v1.0/configuration/configstore/subscribe?key=a"), 500, "ERR_APP_CHANNEL_NIL"
    )
    assert "no app callback" in message
    error_of(await env.http("GET", "/v1.0/configuration/nope/subscribe"), 400, "ERR_CONFIGURATION_STORE_NOT_FOUND")


# ---- secrets ----


async def test_secrets_are_read_one_and_in_bulk_with_daprs_shapes(env: Env) -> None:
    got = await env.http("GET", "/v1.0/secrets/secretstore/L8TEST_SECRET_A")
    assert got.status == 200 and got.json() == {"L8TEST_SECRET_A": "alpha"}
    bulk = await env.http("GET", "/v1.0/secrets/secretstore/bulk")
    assert bulk.status == 200 and bulk.json()["L8TEST_SECRET_A"] == {"L8TEST_SECRET_A": "alpha"}
    assert "L8TEST_SECRET_HIDDEN" not in bulk.json()


async def test_secret_errors_answer_daprs_codes_and_statuses(env: Env) -> None:
    error_of(await env.http("GET", "/v1.0/secrets/nostore/x"), 401, "ERR_SECRET_STORE_NOT_FOUND")
    error_of(await env.http("GET", "/v1.0/secrets/secretstore/L8TEST_SECRET_HIDDEN"), 403, "ERR_PERMISSION_DENIED")
    error_of(await env.http("GET", "/v1.0/secrets/secretstore/L8TEST_SECRET_MISSING"), 500, "ERR_SECRET_GET")


# ---- output bindings ----


async def test_an_output_binding_is_invoked_with_data_metadata_and_operation(env: Env) -> None:
    name = unique("f") + ".json"
    created = await env.http(
        "POST", "/v1.0/bindings/disk", {"operation": "create", "data": {"a": 1}, "metadata": {"fileName": name}}
    )
    assert created.status == 200, created.body
    assert created.headers["metadata.filename"] == name
    got = await env.http("PUT", "/v1.0/bindings/disk", {"operation": "get", "metadata": {"fileName": name}})
    assert got.status == 200 and json.loads(got.body) == {"a": 1}


async def test_output_binding_errors_answer_daprs_codes(env: Env) -> None:
    error_of(await env.http("POST", "/v1.0/bindings/nope", {"operation": "create"}), 500, "ERR_INVOKE_OUTPUT_BINDING")
    error_of(await env.http("POST", "/v1.0/bindings/disk", b"[1, 2"), 400, "ERR_MALFORMED_REQUEST")
    error_of(await env.http("POST", "/v1.0/bindings/disk", {"operation": 7}), 400, "ERR_MALFORMED_REQUEST")
    error_of(await env.http("POST", "/v1.0/bindings/disk", {"operation": "fly"}), 400, "ERR_INVOKE_OUTPUT_BINDING")


# ---- lock ----


async def test_lock_and_unlock_answer_dapr_shapes_and_statuses(env: Env) -> None:
    resource = unique("r")
    lock = {"resourceId": resource, "lockOwner": "o1", "expiryInSeconds": 30}
    got = await env.http("POST", "/v1.0-alpha1/lock/lockstore", lock)
    assert got.status == 200 and got.json() == {"success": True}
    assert (await env.http("POST", "/v1.0-alpha1/lock/lockstore", {**lock, "lockOwner": "o2"})).json() == {
        "success": False
    }
    other = await env.http("POST", "/v1.0-alpha1/unlock/lockstore", {"resourceId": resource, "lockOwner": "o2"})
    assert other.json() == {"status": 2}
    assert (
        await env.http("POST", "/v1.0-alpha1/unlock/lockstore", {"resourceId": resource, "lockOwner": "o1"})
    ).json() == {"status": 0}
    assert (
        await env.http("POST", "/v1.0-alpha1/unlock/lockstore", {"resourceId": resource, "lockOwner": "o1"})
    ).json() == {"status": 1}
    error_of(
        await env.http("POST", "/v1.0-alpha1/lock/lockstore", {**lock, "expiryInSeconds": 0}),
        400,
        "ERR_EXPIRY_NOT_POSITIVE",
        "DAPR_LOCK_EXPIRY_NOT_POSITIVE",
    )
    error_of(
        await env.http("POST", "/v1.0-alpha1/lock/lockstore", {**lock, "resourceId": ""}), 400, "ERR_RESOURCE_ID_EMPTY"
    )
    error_of(
        await env.http("POST", "/v1.0-alpha1/lock/nolocks", lock),
        400,
        "ERR_LOCK_STORE_NOT_FOUND",
        "DAPR_LOCK_NOT_FOUND",
    )


# ---- metadata ----


async def test_metadata_lists_components_with_capabilities_and_attributes_from_either_api(env: Env) -> None:
    put = await env.http("PUT", "/v1.0/metadata/team", "payments")
    assert put.status == 204
    await env.dapr.SetMetadata(metadata_pb2.SetMetadataRequest(key="tier", value="gold"))
    got = (await env.http("GET", "/v1.0/metadata")).json()
    assert got["id"] == env.sidecar.config.app.id
    caps = {c["name"]: c["capabilities"] for c in got["components"]}
    assert caps["statestore"] == ["ETAG", "TRANSACTIONAL", "TTL"] and caps["lockstore"] == ["KEEPALIVE", "TTL"]
    assert got["extended"]["team"] == "payments" and got["extended"]["tier"] == "gold"
    grpc_view = await env.dapr.GetMetadata(metadata_pb2.GetMetadataRequest())
    assert grpc_view.extended_metadata["team"] == "payments"
    assert {c.name: list(c.capabilities) for c in grpc_view.registered_components}["statestore"] == caps["statestore"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.dapr.SetMetadata(metadata_pb2.SetMetadataRequest(key="", value="x"))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    error_of(await env.http("PUT", "/v1.0/metadata/namespace", "x"), 400, "ERR_METADATA_SET")


async def test_the_capabilities_declared_per_type_are_those_the_running_bridges_report(env: Env) -> None:
    from bridges import registry

    assert env.sidecar.components is not None
    for served in env.sidecar.components.served:
        comp = env.sidecar.config.components[served.name]
        assert registry.features_of(comp.kind, comp.type) == served.bridge.features(), served.name


async def test_an_unknown_route_is_404_and_a_wrong_method_is_405_with_allow(env: Env) -> None:
    error_of(await env.http("GET", "/v1.0/nothing"), 404, "ERR_NOT_FOUND")
    wrong = await env.http("PUT", "/v1.0/state/statestore")
    error_of(wrong, 405, "ERR_METHOD_NOT_ALLOWED")
    assert wrong.headers["allow"] == "POST"
