"""One conformance suite for the State API, run through the native gRPC API against every bridge."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc
from runtime.sidecar import Sidecar
from tests.conftest import SidecarFactory, native_stub, sidecar_config, unique
from tests.servers import Server


def components(bridge: str, redis_server: Server | None, **metadata: str) -> dict[str, Any]:
    meta = dict(metadata)
    if bridge == "redis":
        assert redis_server is not None
        meta["url"] = f"redis://127.0.0.1:{redis_server.port}"
    return {
        "statestore": {"kind": "state", "type": bridge, "metadata": meta},
        "other": {"kind": "state", "type": bridge, "metadata": meta},
    }


class Store:
    """A thin client of one store through the native API."""

    def __init__(self, stub: runtime_pb2_grpc.RuntimeStub, name: str = "statestore") -> None:
        self.stub = stub
        self.name = name

    async def save(
        self,
        key: str,
        value: bytes,
        etag: str | None = None,
        *,
        first_write: bool = False,
        last_write: bool = False,
        metadata: dict[str, str] | None = None,
    ) -> None:
        await self.stub.SaveState(
            pb.SaveStateRequest(
                store_name=self.name,
                states=[self.item(key, value, etag, first_write=first_write, last_write=last_write, metadata=metadata)],
            )
        )

    @staticmethod
    def item(
        key: str,
        value: bytes = b"",
        etag: str | None = None,
        *,
        first_write: bool = False,
        last_write: bool = False,
        metadata: dict[str, str] | None = None,
    ) -> pb.StateItem:
        item = pb.StateItem(key=key, value=value, metadata=metadata or {})
        if etag is not None:
            item.etag.value = etag
        if first_write:
            item.options.concurrency = pb.StateOptions.CONCURRENCY_FIRST_WRITE
        if last_write:
            item.options.concurrency = pb.StateOptions.CONCURRENCY_LAST_WRITE
        return item

    async def get(self, key: str) -> pb.GetStateResponse:
        return await self.stub.GetState(pb.GetStateRequest(store_name=self.name, key=key))

    async def delete(self, key: str, etag: str | None = None) -> None:
        req = pb.DeleteStateRequest(store_name=self.name, key=key)
        if etag is not None:
            req.etag.value = etag
        await self.stub.DeleteState(req)

    async def transact(self, *ops: tuple[str, pb.StateItem]) -> None:
        await self.stub.ExecuteStateTransaction(
            pb.ExecuteStateTransactionRequest(
                storeName=self.name,
                operations=[pb.TransactionalStateOperation(operationType=kind, request=item) for kind, item in ops],
            )
        )


# Each bridge through the bus, and the default store again with in-process dispatch.
SETUPS = [("nats.kv", False), ("redis", False), ("nats.kv", True)]


@pytest.fixture(params=SETUPS, ids=lambda p: f"{p[0]}{'-local' if p[1] else ''}")
async def env(
    request: pytest.FixtureRequest, nats_server: Server, make_sidecar: SidecarFactory
) -> AsyncIterator[tuple[Sidecar, Store]]:
    bridge, local = request.param
    redis_server = request.getfixturevalue("redis_server") if bridge == "redis" else None
    bus = {"url": nats_server.url, "local_dispatch": local}
    sidecar = await make_sidecar(sidecar_config(nats_server.url, components(bridge, redis_server), bus=bus))
    channel, stub = native_stub(sidecar)
    yield sidecar, Store(stub)
    await channel.close()


async def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


async def test_strings_json_and_bytes_round_trip(env: tuple[Sidecar, Store]) -> None:
    _, store = env
    values = {"s": b"hello", "j": json.dumps({"a": [1, 2], "b": "c"}).encode(), "b": bytes(range(256))}
    for key, value in values.items():
        await store.save(key, value)
    for key, value in values.items():
        got = await store.get(key)
        assert got.data == value
        assert got.etag
    await store.delete("s")
    assert (await store.get("s")).data == b""


async def test_a_missing_key_reads_as_empty_data_without_error(env: tuple[Sidecar, Store]) -> None:
    _, store = env
    got = await store.get("never-written")
    assert got.data == b"" and got.etag == ""


async def test_bulk_get_set_and_delete(env: tuple[Sidecar, Store]) -> None:
    _, store = env
    await store.stub.SaveState(
        pb.SaveStateRequest(store_name="statestore", states=[Store.item(f"k{i}", f"v{i}".encode()) for i in range(5)])
    )
    resp = await store.stub.GetBulkState(
        pb.GetBulkStateRequest(store_name="statestore", keys=["k0", "k3", "missing"], parallelism=2)
    )
    by_key = {item.key: item for item in resp.items}
    assert by_key["k0"].data == b"v0" and by_key["k3"].data == b"v3" and by_key["k3"].etag
    assert by_key["missing"].data == b"" and by_key["missing"].error == ""
    await store.stub.DeleteBulkState(
        pb.DeleteBulkStateRequest(store_name="statestore", states=[Store.item("k0"), Store.item("k1")])
    )
    resp = await store.stub.GetBulkState(pb.GetBulkStateRequest(store_name="statestore", keys=["k0", "k1", "k2"]))
    assert [item.data for item in resp.items] == [b"", b"", b"v2"]


async def test_the_etag_rotates_on_every_write_and_a_stale_one_is_aborted(env: tuple[Sidecar, Store]) -> None:
    _, store = env
    await store.save("e", b"1")
    first = (await store.get("e")).etag
    await store.save("e", b"2", etag=first)
    second = (await store.get("e")).etag
    assert second != first
    code, message = await code_of(store.save("e", b"3", etag=first))
    assert code is grpc.StatusCode.ABORTED, message
    assert (await store.get("e")).data == b"2"
    code, _ = await code_of(store.delete("e", etag=first))
    assert code is grpc.StatusCode.ABORTED
    await store.delete("e", etag=second)
    assert (await store.get("e")).data == b""


async def test_an_etag_is_never_handed_out_twice_for_a_key(env: tuple[Sidecar, Store]) -> None:
    _, store = env
    await store.save("aba", b"1")
    old = (await store.get("aba")).etag
    await store.delete("aba")
    await store.save("aba", b"again")
    code, _ = await code_of(store.save("aba", b"x", etag=old))
    assert code is grpc.StatusCode.ABORTED


async def test_a_malformed_etag_is_an_invalid_argument(env: tuple[Sidecar, Store]) -> None:
    _, store = env
    await store.save("m", b"1")
    code, message = await code_of(store.save("m", b"2", etag="not-an-etag"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "etag" in message
    assert (await store.get("m")).data == b"1"


async def test_last_write_ignores_a_stale_etag(env: tuple[Sidecar, Store]) -> None:
    _, store = env
    await store.save("lw", b"1")
    stale = (await store.get("lw")).etag
    await store.save("lw", b"2")
    await store.save("lw", b"3", etag=stale, last_write=True)
    assert (await store.get("lw")).data == b"3"


async def test_first_write_without_an_etag_inserts_only(env: tuple[Sidecar, Store]) -> None:
    _, store = env
    await store.save("fw", b"1", first_write=True)
    code, _ = await code_of(store.save("fw", b"2", first_write=True))
    assert code is grpc.StatusCode.ABORTED
    assert (await store.get("fw")).data == b"1"
    etag = (await store.get("fw")).etag
    await store.save("fw", b"3", etag=etag, first_write=True)
    assert (await store.get("fw")).data == b"3"
    await store.delete("fw")
    await store.save("fw", b"after delete", first_write=True)
    assert (await store.get("fw")).data == b"after delete"


async def test_an_etag_of_zero_or_empty_means_no_etag_as_layotto_sdks_send_it(env: tuple[Sidecar, Store]) -> None:
    _, store = env
    await store.save("z", b"1", etag="0")
    await store.save("z", b"2", etag="0")
    await store.save("z", b"3", etag="")
    assert (await store.get("z")).data == b"3"
    await store.transact(("upsert", Store.item("z", b"4", etag="0")))
    assert (await store.get("z")).data == b"4"
    await store.save("z0", b"1", etag="0", first_write=True)
    code, _ = await code_of(store.save("z0", b"2", etag="0", first_write=True))
    assert code is grpc.StatusCode.ABORTED
    await store.delete("z", etag="0")
    assert (await store.get("z")).data == b""


async def test_transactions_apply_in_order(env: tuple[Sidecar, Store]) -> None:
    _, store = env
    await store.save("t1", b"old")
    await store.transact(
        ("delete", Store.item("t1")),
        ("upsert", Store.item("t1", b"new")),
        ("delete", Store.item("t2")),
        ("upsert", Store.item("t2", b"two")),
    )
    assert (await store.get("t1")).data == b"new"
    assert (await store.get("t2")).data == b"two"


async def test_a_transaction_with_a_stale_etag_changes_nothing(env: tuple[Sidecar, Store]) -> None:
    _, store = env
    await store.save("a1", b"a")
    await store.save("a2", b"b")
    stale = (await store.get("a2")).etag
    await store.save("a2", b"b2")
    code, _ = await code_of(
        store.transact(
            ("upsert", Store.item("a1", b"changed")),
            ("upsert", Store.item("a3", b"created")),
            ("upsert", Store.item("a2", b"x", etag=stale)),
        )
    )
    assert code is grpc.StatusCode.ABORTED
    assert (await store.get("a1")).data == b"a"
    assert (await store.get("a3")).data == b""
    assert (await store.get("a2")).data == b"b2"


async def test_a_transaction_with_a_bad_operation_type_changes_nothing(env: tuple[Sidecar, Store]) -> None:
    _, store = env
    code, message = await code_of(store.transact(("upsert", Store.item("b1", b"x")), ("merge", Store.item("b2", b"y"))))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "operations[1]" in message and "merge" in message
    assert (await store.get("b1")).data == b""


async def test_ttl_expires_a_key_and_reads_report_its_expiry(env: tuple[Sidecar, Store]) -> None:
    _, store = env
    await store.save("ttl", b"short", metadata={"ttlInSeconds": "1"})
    await store.save("ttl-long", b"long", metadata={"ttlInSeconds": "3600"})
    got = await store.get("ttl-long")
    expiry = datetime.strptime(got.metadata["ttlExpireTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs(expiry.timestamp() - (time.time() + 3600)) < 10
    assert (await store.get("ttl")).data == b"short"
    deadline = time.monotonic() + 30
    while (await store.get("ttl")).data and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert (await store.get("ttl")).data == b""
    await store.save("ttl-long", b"no more ttl", metadata={"ttlInSeconds": "-1"})
    assert "ttlExpireTime" not in (await store.get("ttl-long")).metadata


async def test_a_bad_ttl_is_an_invalid_argument(env: tuple[Sidecar, Store]) -> None:
    _, store = env
    for bad in ("soon", "0", "1.5"):
        code, message = await code_of(store.save("bt", b"x", metadata={"ttlInSeconds": bad}))
        assert code is grpc.StatusCode.INVALID_ARGUMENT, bad
        assert "ttlInSeconds" in message
    assert (await store.get("bt")).data == b""


async def test_bad_input_is_an_invalid_argument_that_says_why_and_changes_nothing(env: tuple[Sidecar, Store]) -> None:
    sidecar, store = env
    code, message = await code_of(store.save("", b"x"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "key is empty" in message
    code, message = await code_of(store.get("a||b"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "||" in message
    code, message = await code_of(Store(store.stub, "nope").get("k"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "'nope' is not configured" in message and "statestore" in message and "other" in message
    code, message = await code_of(Store(store.stub, "").get("k"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "empty" in message
    store_limit = sidecar.components.served[0].bridge.limits.max_value_bytes  # type: ignore[union-attr]
    big = b"x" * (store_limit + 1)
    code, message = await code_of(
        store.stub.SaveState(
            pb.SaveStateRequest(store_name="statestore", states=[Store.item("ok", b"1"), Store.item("big", big)])
        )
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "bytes" in message
    assert (await store.get("ok")).data == b""
    huge = b"x" * (2 << 20)
    code, message = await code_of(store.save("huge", huge))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "bytes" in message


async def test_key_prefixes_isolate_apps_and_follow_the_rule(nats_server: Server, make_sidecar: SidecarFactory) -> None:
    ns = unique("ns")

    def comps() -> dict[str, Any]:
        return {
            "statestore": {"kind": "state", "type": "nats.kv"},
            "byname": {"kind": "state", "type": "nats.kv", "metadata": {"keyPrefix": "name"}},
            "shared": {"kind": "state", "type": "nats.kv", "metadata": {"keyPrefix": "none"}},
            "literal": {"kind": "state", "type": "nats.kv", "metadata": {"keyPrefix": "team"}},
        }

    a = await make_sidecar(sidecar_config(nats_server.url, comps(), namespace=ns, app_id="alpha"))
    b = await make_sidecar(sidecar_config(nats_server.url, comps(), namespace=ns, app_id="beta"))
    ca, sa = native_stub(a)
    cb, sb = native_stub(b)
    try:
        await Store(sa).save("k", b"from alpha")
        assert (await Store(sb).get("k")).data == b""
        for name in ("byname", "shared", "literal"):
            await Store(sa, name).save("k", name.encode())
            assert (await Store(sb, name).get("k")).data == name.encode()
        # The same bucket seen without the prefix rule shows where the keys went.
        raw = native_stub(a)
        bridge = {s.name: s.bridge for s in a.components.served}  # type: ignore[union-attr]
        assert (await bridge["statestore"].get("alpha||k")).value == b"from alpha"
        assert (await bridge["byname"].get("byname||k")).value == b"byname"
        assert (await bridge["shared"].get("k")).value == b"shared"
        assert (await bridge["literal"].get("team||k")).value == b"literal"
        await raw[0].close()
    finally:
        await ca.close()
        await cb.close()
