"""One conformance suite for the Sequencer API, through the native gRPC API, against every bridge."""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc
from runtime.sidecar import Sidecar
from tests.conftest import SidecarFactory, native_stub, sidecar_config, unique
from tests.servers import Server

BRIDGES = ["nats.kv", "redis"]
WEAK = pb.SequencerOptions.WEAK
STRONG = pb.SequencerOptions.STRONG


def seq_components(bridge: str, redis_server: Server | None, **metadata: str) -> dict[str, Any]:
    meta = dict(metadata)
    if bridge == "redis":
        assert redis_server is not None
        meta["url"] = f"redis://127.0.0.1:{redis_server.port}"
    return {"sequencer": {"kind": "sequencer", "type": bridge, "metadata": meta}}


async def next_id(
    stub: runtime_pb2_grpc.RuntimeStub, key: str, mode: int = WEAK, store: str = "sequencer", **metadata: str
) -> int:
    resp = await stub.GetNextId(
        pb.GetNextIdRequest(
            store_name=store,
            key=key,
            options=pb.SequencerOptions(increment=mode),
            metadata=metadata,  # type: ignore[arg-type]
        )
    )
    return int(resp.next_id)


@dataclass
class Env:
    bridge: str
    redis_server: Server | None
    stub: runtime_pb2_grpc.RuntimeStub
    channel: grpc.aio.Channel


@pytest.fixture(params=BRIDGES)
async def env(request: pytest.FixtureRequest, nats_server: Server, make_sidecar: SidecarFactory) -> AsyncIterator[Env]:
    redis_server = request.getfixturevalue("redis_server") if request.param == "redis" else None
    sidecar = await make_sidecar(
        sidecar_config(nats_server.url, seq_components(request.param, redis_server, **{"biggerThan.order": "1000"}))
    )
    channel, stub = native_stub(sidecar)
    yield Env(request.param, redis_server, stub, channel)
    await channel.close()


async def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


@pytest.mark.parametrize("mode", [WEAK, STRONG])
async def test_sequential_ids_of_a_key_increase_and_keys_are_independent(env: Env, mode: int) -> None:
    ids = [await next_id(env.stub, "a", mode) for _ in range(20)]
    assert ids == sorted(set(ids)) and ids[0] >= 1
    if mode == STRONG:
        assert ids == list(range(1, 21)), "STRONG asks the store each call; alone on a key, there are no gaps"
    assert await next_id(env.stub, "b", mode) == 1


async def test_weak_and_strong_share_a_key_and_never_repeat_an_id(env: Env) -> None:
    seen = [await next_id(env.stub, "mixed", WEAK if i % 3 else STRONG) for i in range(30)]
    assert len(set(seen)) == len(seen)


async def test_bigger_than_from_the_component_metadata_sets_where_a_key_starts(env: Env) -> None:
    strong = await next_id(env.stub, "order", STRONG)
    weak = await next_id(env.stub, "order", WEAK)
    assert 1000 < strong < weak
    assert await next_id(env.stub, "other", STRONG) == 1, "biggerThan applies to the key it names"


@pytest.mark.parametrize(
    ("key", "mode", "fault"),
    [("", WEAK, "empty"), ("", STRONG, "empty"), ("a||b", WEAK, "||"), ("k", 7, "increment")],
)
async def test_bad_input_is_an_invalid_argument_that_changes_nothing(env: Env, key: str, mode: int, fault: str) -> None:
    code, message = await code_of(next_id(env.stub, key, mode))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fault in message
    if key == "k":
        assert await next_id(env.stub, "k", STRONG) == 1, "the rejected call took no id"


async def test_an_unknown_sequencer_is_an_invalid_argument_naming_the_configured_ones(env: Env) -> None:
    code, message = await code_of(next_id(env.stub, "k", store="nope"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "nope" in message and "sequencer" in message


async def test_sequences_are_scoped_per_app_id(env: Env, nats_server: Server, make_sidecar: SidecarFactory) -> None:
    assert await next_id(env.stub, "shared", STRONG) == 1
    other_app = await make_sidecar(sidecar_config(nats_server.url, seq_components(env.bridge, env.redis_server)))
    channel, stub = native_stub(other_app)
    try:
        assert await next_id(stub, "shared", STRONG) == 1
    finally:
        await channel.close()


@dataclass(frozen=True)
class Call:
    caller: int
    began: float
    ended: float
    id: int


@pytest.mark.parametrize("mode", [WEAK, STRONG], ids=["weak", "strong"])
@pytest.mark.parametrize("bridge", BRIDGES)
async def test_a_hundred_callers_through_two_sidecars_and_two_workers_get_unique_ids_in_order(
    request: pytest.FixtureRequest, nats_server: Server, make_sidecar: SidecarFactory, bridge: str, mode: int
) -> None:
    redis_server = request.getfixturevalue("redis_server") if bridge == "redis" else None
    app_id, ns = unique("app"), unique("ns")
    # A small segment makes the fronts come back for segments many times during the run.
    comps = seq_components(bridge, redis_server, segmentSize="50")
    workers = [
        await make_sidecar(sidecar_config(nats_server.url, comps, app_id=unique("worker"), namespace=ns), serve=False)
        for _ in range(2)
    ]
    fronts: list[Sidecar] = [
        await make_sidecar(sidecar_config(nats_server.url, comps, app_id=app_id, namespace=ns, workers="none"))
        for _ in range(2)
    ]
    assert all(w.workers is not None and w.workers.routes for w in workers)
    assert all(f.workers is not None and not f.workers.routes for f in fronts)
    pairs = [native_stub(f) for f in fronts]
    calls: list[Call] = []

    async def caller(i: int) -> None:
        stub = pairs[i % 2][1]
        for _ in range(10):
            began = time.monotonic()
            got = await next_id(stub, "orders", mode)
            calls.append(Call(i, began, time.monotonic(), got))

    try:
        await asyncio.gather(*(caller(i) for i in range(100)))
    finally:
        for channel, _ in pairs:
            await channel.close()

    ids = [c.id for c in calls]
    assert len(ids) == 1000 and len(set(ids)) == 1000, "ids are unique across sidecars and workers"
    for i in range(100):
        mine = [c.id for c in calls if c.caller == i]
        assert mine == sorted(mine), f"caller {i} (one sidecar) saw its ids go back: {mine}"
    if mode == STRONG:
        # Each id is greater than every id returned before its call began.
        by_end = sorted(calls, key=lambda c: c.ended)
        ends = [c.ended for c in by_end]
        best_so_far: list[int] = []
        for c in by_end:
            best_so_far.append(max(best_so_far[-1], c.id) if best_so_far else c.id)
        for c in calls:
            before = bisect.bisect_left(ends, c.began)
            if before:
                assert c.id > best_so_far[before - 1], f"{c} is not above the ids returned before it began"
        assert sorted(ids) == list(range(1, 1001)), "STRONG reserves one id per call: no gaps"


async def test_without_workers_weak_and_strong_answer_unavailable_and_recover_once_one_starts(
    nats_server: Server, make_sidecar: SidecarFactory
) -> None:
    app_id, ns = unique("app"), unique("ns")
    comps = seq_components("nats.kv", None)
    front = await make_sidecar(sidecar_config(nats_server.url, comps, app_id=app_id, namespace=ns, workers="none"))
    channel, stub = native_stub(front)
    try:
        for mode in (WEAK, STRONG):
            code, message = await code_of(next_id(stub, "k", mode))
            assert code == grpc.StatusCode.UNAVAILABLE
            assert "sequencer" in message and "l8 worker" in message
        await make_sidecar(sidecar_config(nats_server.url, comps, app_id=unique("w"), namespace=ns), serve=False)
        weak = [await next_id(stub, "k", WEAK) for _ in range(3)]
        assert weak == sorted(weak) and len(set(weak)) == 3
        assert await next_id(stub, "k", STRONG) > weak[-1]
    finally:
        await channel.close()


@pytest.mark.parametrize(
    ("metadata", "fault"),
    [
        ({"biggerThan.order": "ten"}, "biggerThan.order"),
        ({"biggerThan.": "5"}, "biggerThan."),
        ({"segmentSize": "0"}, "segmentSize"),
    ],
)
async def test_bad_sequencer_metadata_stops_the_start_with_a_message_naming_it(
    nats_server: Server, metadata: dict[str, str], fault: str
) -> None:
    from runtime.components import ComponentError

    sidecar = Sidecar(sidecar_config(nats_server.url, seq_components("nats.kv", None, **metadata)))
    with pytest.raises(ComponentError, match="sequencer") as info:
        await sidecar.start()
    assert fault in str(info.value)
