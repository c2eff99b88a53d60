"""One conformance suite for the Lock API, through the native gRPC API (and Dapr's rpcs), against
every bridge."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from dapr.proto.runtime.v1 import dapr_pb2_grpc
from dapr.proto.runtime.v1 import lock_pb2 as dapr_lock

from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc
from runtime.sidecar import Sidecar
from tests.conftest import SidecarFactory, native_stub, sidecar_config, unique
from tests.servers import Server

BRIDGES = ["nats.kv", "redis"]
SUCCESS = pb.UnlockResponse.SUCCESS
UNEXIST = pb.UnlockResponse.LOCK_UNEXIST
OTHERS = pb.UnlockResponse.LOCK_BELONG_TO_OTHERS


def lock_components(bridge: str, redis_server: Server | None, **metadata: str) -> dict[str, Any]:
    meta = dict(metadata)
    if bridge == "redis":
        assert redis_server is not None
        meta["url"] = f"redis://127.0.0.1:{redis_server.port}"
    return {"lockstore": {"kind": "lock", "type": bridge, "metadata": meta}}


class Locks:
    """A thin client of one lock store through the native API."""

    def __init__(self, stub: runtime_pb2_grpc.RuntimeStub, name: str = "lockstore") -> None:
        self.stub = stub
        self.name = name

    async def lock(self, resource: str, owner: str, expire: int = 30) -> bool:
        resp = await self.stub.TryLock(
            pb.TryLockRequest(store_name=self.name, resource_id=resource, lock_owner=owner, expire=expire)
        )
        return bool(resp.success)

    async def unlock(self, resource: str, owner: str) -> int:
        resp = await self.stub.Unlock(pb.UnlockRequest(store_name=self.name, resource_id=resource, lock_owner=owner))
        return int(resp.status)

    async def renew(self, resource: str, owner: str, expire: int) -> pb.LockKeepAliveResponse:
        return await self.stub.LockKeepAlive(
            pb.LockKeepAliveRequest(store_name=self.name, resource_id=resource, lock_owner=owner, expire=expire)
        )


@dataclass
class Env:
    bridge: str
    sidecars: list[Sidecar]
    locks: list[Locks]
    channels: list[grpc.aio.Channel]
    redis_server: Server | None


@pytest.fixture(params=BRIDGES)
async def env(request: pytest.FixtureRequest, nats_server: Server, make_sidecar: SidecarFactory) -> AsyncIterator[Env]:
    """Two sidecars of one app (same app id and namespace) on one bus, each with its workers."""
    redis_server = request.getfixturevalue("redis_server") if request.param == "redis" else None
    app_id, ns = unique("app"), unique("ns")
    sidecars = [
        await make_sidecar(
            sidecar_config(nats_server.url, lock_components(request.param, redis_server), app_id=app_id, namespace=ns)
        )
        for _ in range(2)
    ]
    pairs = [native_stub(s) for s in sidecars]
    yield Env(request.param, sidecars, [Locks(stub) for _, stub in pairs], [c for c, _ in pairs], redis_server)
    for channel, _ in pairs:
        await channel.close()


async def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


def owner() -> str:
    return uuid.uuid4().hex


async def wait_free(locks: Locks, resource: str, timeout: float = 30.0) -> str:
    """Poll until ``resource`` can be taken; returns the owner that took it."""
    deadline = time.monotonic() + timeout
    probe = owner()
    while not await locks.lock(resource, probe, expire=60):
        assert time.monotonic() < deadline, f"{resource} was not freed within {timeout}s"
        await asyncio.sleep(0.05)
    return probe


async def test_a_free_lock_is_taken_and_a_held_one_is_refused_even_to_its_owner(env: Env) -> None:
    a, b = env.locks
    first, second = owner(), owner()
    assert await a.lock("order-1", first)
    assert not await a.lock("order-1", first), "locks are not reentrant"
    assert not await b.lock("order-1", second)
    assert await b.lock("order-2", second), "another resource is its own lock"


async def test_unlock_answers_success_unexist_or_belongs_to_others(env: Env) -> None:
    a, b = env.locks
    holder, other = owner(), owner()
    assert await a.unlock("never-locked", holder) == UNEXIST
    assert await a.lock("res", holder)
    assert await b.unlock("res", other) == OTHERS
    assert not await b.lock("res", other), "a refused unlock leaves the lock held"
    assert await b.unlock("res", holder) == SUCCESS, "the owner may unlock through any sidecar"
    assert await a.unlock("res", holder) == UNEXIST
    assert await b.lock("res", other), "an unlocked resource is free"


async def test_an_expired_lock_is_free_again(env: Env) -> None:
    a, b = env.locks
    first = owner()
    assert await a.lock("short", first, expire=1)
    assert not await b.lock("short", owner())
    taker = await wait_free(b, "short")
    # The first owner's lock is gone, whatever a worker may remember of it.
    assert await a.unlock("short", first) == OTHERS
    assert (await a.renew("short", first, 30)).status == pb.LockKeepAliveResponse.LOCK_BELONG_TO_OTHERS
    assert await b.unlock("short", taker) == SUCCESS
    assert await a.unlock("short", first) == UNEXIST


async def test_keep_alive_really_moves_the_expiry(env: Env) -> None:
    a, b = env.locks
    holder = owner()
    assert await a.lock("renewed", holder, expire=1)
    resp = await b.renew("renewed", holder, expire=60)
    assert resp.status == pb.LockKeepAliveResponse.SUCCESS
    # A 1 s lock taken after the renewal: once it has expired, the first one's 1 s has passed too.
    assert await a.lock("reference", owner(), expire=1)
    await wait_free(a, "reference")
    assert not await b.lock("renewed", owner()), "the renewed lock outlived its first expiry"
    assert await a.unlock("renewed", holder) == SUCCESS


async def test_keep_alive_answers_unexist_and_belongs_to_others_and_changes_nothing(env: Env) -> None:
    a, b = env.locks
    holder = owner()
    gone = await a.renew("nothing", holder, expire=5)
    assert gone.status == pb.LockKeepAliveResponse.LOCK_UNEXIST
    assert await a.lock("nothing", owner()), "a refused renewal does not take the lock"
    assert await a.lock("held", holder, expire=1)
    other = await b.renew("held", owner(), expire=60)
    assert other.status == pb.LockKeepAliveResponse.LOCK_BELONG_TO_OTHERS
    await wait_free(b, "held")  # the stranger's renewal did not extend it


@pytest.mark.parametrize(
    ("request_", "fault"),
    [
        (pb.TryLockRequest(resource_id="r", lock_owner="o", expire=0), "expire"),
        (pb.TryLockRequest(resource_id="r", lock_owner="o", expire=-5), "expire"),
        (pb.TryLockRequest(resource_id="r", lock_owner="", expire=10), "lock_owner"),
        (pb.TryLockRequest(resource_id="", lock_owner="o", expire=10), "resource_id"),
        (pb.TryLockRequest(resource_id="a||b", lock_owner="o", expire=10), "||"),
        (pb.UnlockRequest(resource_id="r", lock_owner=""), "lock_owner"),
        (pb.UnlockRequest(resource_id="", lock_owner="o"), "resource_id"),
        (pb.LockKeepAliveRequest(resource_id="r", lock_owner="o", expire=0), "expire"),
        (pb.LockKeepAliveRequest(resource_id="r", lock_owner="", expire=3), "lock_owner"),
    ],
)
async def test_bad_input_is_an_invalid_argument_that_changes_nothing(env: Env, request_: Any, fault: str) -> None:
    a, _ = env.locks
    request_.store_name = "lockstore"
    rpc = {
        "TryLockRequest": a.stub.TryLock,
        "UnlockRequest": a.stub.Unlock,
        "LockKeepAliveRequest": a.stub.LockKeepAlive,
    }
    code, message = await code_of(rpc[type(request_).__name__](request_))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fault in message
    if request_.resource_id == "r":
        assert await a.lock("r", owner()), "the rejected request left the resource free"


async def test_an_unknown_lock_store_is_an_invalid_argument_naming_the_configured_ones(env: Env) -> None:
    a, _ = env.locks
    code, message = await code_of(Locks(a.stub, "nostore").lock("r", owner()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "nostore" in message and "lockstore" in message


async def test_locks_are_scoped_per_app_id(env: Env, nats_server: Server, make_sidecar: SidecarFactory) -> None:
    a, _ = env.locks
    assert await a.lock("shared-name", owner())
    other_app = await make_sidecar(sidecar_config(nats_server.url, lock_components(env.bridge, env.redis_server)))
    channel, stub = native_stub(other_app)
    try:
        assert await Locks(stub).lock("shared-name", owner()), "another app's resource of the same name is free"
    finally:
        await channel.close()


async def test_dapr_try_lock_and_unlock_alpha1_speak_dapr_statuses(env: Env) -> None:
    sidecar = env.sidecars[0]
    assert sidecar.grpc is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc.port}") as channel:
        dapr = dapr_pb2_grpc.DaprStub(channel)
        holder = owner()
        req = dapr_lock.TryLockRequest(store_name="lockstore", resource_id="d", lock_owner=holder, expiry_in_seconds=30)
        assert (await dapr.TryLockAlpha1(req)).success
        assert not (await dapr.TryLockAlpha1(req)).success
        unlock = dapr_lock.UnlockRequest(store_name="lockstore", resource_id="d", lock_owner="x")
        assert (await dapr.UnlockAlpha1(unlock)).status == dapr_lock.UnlockResponse.LOCK_BELONGS_TO_OTHERS
        unlock.lock_owner = holder
        assert (await dapr.UnlockAlpha1(unlock)).status == dapr_lock.UnlockResponse.SUCCESS
        assert (await dapr.UnlockAlpha1(unlock)).status == dapr_lock.UnlockResponse.LOCK_DOES_NOT_EXIST
        req.expiry_in_seconds = 0
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await dapr.TryLockAlpha1(req)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_fifty_clients_through_two_sidecars_never_hold_one_lock_at_once(env: Env) -> None:
    holder: list[str | None] = [None]
    overlaps: list[tuple[str | None, str]] = []
    held = 0
    # Only a bound against a hang: the clients back off, so 49 waiting ones do not flood a busy
    # machine with tries and every one gets its turns.
    deadline = time.monotonic() + 300

    async def client(i: int) -> None:
        nonlocal held
        locks = env.locks[i % 2]
        me = f"client-{i}-{uuid.uuid4().hex[:6]}"
        wins = 0
        backoff = 0.005
        while wins < 2 and time.monotonic() < deadline:
            if not await locks.lock("the-one", me, expire=30):
                await asyncio.sleep(random.uniform(0, backoff))
                backoff = min(backoff * 2, 0.2)
                continue
            backoff = 0.005
            if holder[0] is not None:
                overlaps.append((holder[0], me))
            holder[0] = me
            held += 1
            wins += 1
            # Hold it across a few round trips to the store, so another holder would have room to appear.
            for _ in range(3):
                renewed = await locks.renew("the-one", me, expire=30)
                assert renewed.status == pb.LockKeepAliveResponse.SUCCESS
            if holder[0] != me:
                overlaps.append((holder[0], me))
            holder[0] = None
            assert await locks.unlock("the-one", me) == SUCCESS

    await asyncio.gather(*(client(i) for i in range(50)))
    assert not overlaps, f"two holders at once: {overlaps[:5]}"
    assert held == 100, f"every client took the lock twice within the deadline; {held} acquisitions"
