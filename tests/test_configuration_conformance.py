"""One conformance suite for the Configuration API, run against every bridge, through the native
API and the Dapr gRPC service of an in-process sidecar whose handlers run in separate workers.

Subscribers never wait a fixed time: "nothing else arrived" is proven with a fence, a last write
to a key the subscriber watches. A store's watcher pushes changes in the order it sees them, so
once the fence arrives every earlier change for that subscriber has arrived too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from dapr.proto.runtime.v1 import configuration_pb2 as dpb
from dapr.proto.runtime.v1 import dapr_pb2_grpc

from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc
from runtime.sidecar import Sidecar
from tests.conftest import SidecarFactory, native_stub, sidecar_config, unique
from tests.proxy import Partition
from tests.servers import Server

BRIDGES = ["nats.kv", "redis"]
DEADLINE = 30.0  # generous: two shared cores, other suites running at the same time


def components(bridge: str, redis_server: Server | None) -> dict[str, Any]:
    meta: dict[str, str] = {}
    if bridge == "redis":
        assert redis_server is not None
        meta["url"] = f"redis://127.0.0.1:{redis_server.port}"
    return {"configstore": {"kind": "configuration", "type": bridge, "metadata": meta}}


class Env:
    def __init__(self, front: Sidecar, workers: list[Sidecar], redis_server: Server | None) -> None:
        self.front = front
        self.workers = workers
        self.redis_server = redis_server
        assert front.grpc is not None
        self.channel, self.stub = native_stub(front)
        self.dapr = dapr_pb2_grpc.DaprStub(self.channel)

    async def save(self, *items: pb.ConfigurationItem, store: str = "configstore") -> None:
        await self.stub.SaveConfiguration(pb.SaveConfigurationRequest(store_name=store, items=list(items)))

    async def put(self, key: str, content: str, group: str = "", **tags: str) -> None:
        await self.save(pb.ConfigurationItem(key=key, content=content, group=group, tags=tags))

    async def get(self, *keys: str, group: str = "", label: str = "") -> dict[str, pb.ConfigurationItem]:
        resp = await self.stub.GetConfiguration(
            pb.GetConfigurationRequest(store_name="configstore", keys=list(keys), group=group, label=label)
        )
        return {item.key: item for item in resp.items}

    async def delete(self, *keys: str, group: str = "") -> None:
        await self.stub.DeleteConfiguration(
            pb.DeleteConfigurationRequest(store_name="configstore", keys=list(keys), group=group)
        )

    def subscriptions(self) -> int:
        assert self.front.grpc is not None
        return self.front.grpc.configuration.subscriptions

    async def opened(self, count: int) -> None:
        """Wait until the front holds ``count`` live subscriptions (native streams send no
        acknowledgement: their responses are changes only)."""
        deadline = asyncio.get_running_loop().time() + DEADLINE
        while self.subscriptions() < count:
            assert asyncio.get_running_loop().time() < deadline, f"{self.subscriptions()} of {count} subscriptions"
            await asyncio.sleep(0.01)


class Watch:
    """One native SubscribeConfiguration stream; ``more`` adds subscriptions to it. With
    ``snapshot`` a subscription asks for the current items first."""

    def __init__(
        self,
        stub: runtime_pb2_grpc.RuntimeStub,
        *keys: str,
        group: str = "",
        store: str = "configstore",
        snapshot: bool = False,
    ):
        self._outgoing: asyncio.Queue[pb.SubscribeConfigurationRequest | None] = asyncio.Queue()
        self.more(*keys, group=group, store=store, snapshot=snapshot)
        self.responses: asyncio.Queue[pb.SubscribeConfigurationResponse] = asyncio.Queue()
        self.call = stub.SubscribeConfiguration(self._requests())
        self.error: grpc.aio.AioRpcError | None = None
        self.ended = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _requests(self) -> AsyncIterator[pb.SubscribeConfigurationRequest]:
        while True:
            req = await self._outgoing.get()
            if req is None:
                return
            yield req

    async def _read(self) -> None:
        try:
            async for resp in self.call:
                await self.responses.put(resp)
        except grpc.aio.AioRpcError as exc:
            self.error = exc
        finally:
            self.ended.set()

    def more(self, *keys: str, group: str = "", store: str = "configstore", snapshot: bool = False) -> None:
        metadata = {"snapshot": "true"} if snapshot else {}
        self._outgoing.put_nowait(
            pb.SubscribeConfigurationRequest(store_name=store, keys=list(keys), group=group, metadata=metadata)
        )

    async def next(self) -> pb.SubscribeConfigurationResponse:
        get = asyncio.create_task(self.responses.get())
        ended = asyncio.create_task(self.ended.wait())
        done, _ = await asyncio.wait({get, ended}, timeout=DEADLINE, return_when=asyncio.FIRST_COMPLETED)
        if get in done:
            ended.cancel()
            resp = get.result()
            assert resp.items, "a native subscription sent an empty response"
            return resp
        get.cancel()
        ended.cancel()
        raise AssertionError(f"no response within {DEADLINE}s (stream ended: {self.ended.is_set()}, {self.error})")

    async def until(self, fence: str) -> list[tuple[str, str]]:
        """Every (key, content) received until the item of key ``fence`` arrives, fence excluded."""
        seen: list[tuple[str, str]] = []
        while True:
            for item in (await self.next()).items:
                if item.key == fence:
                    return seen
                seen.append((item.key, item.content))

    async def close(self) -> None:
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class DaprWatch:
    """One Dapr SubscribeConfigurationAlpha1 stream."""

    def __init__(
        self, dapr: dapr_pb2_grpc.DaprStub, *keys: str, alpha: bool = True, store: str = "configstore"
    ) -> None:
        req = dpb.SubscribeConfigurationRequest(store_name=store, keys=list(keys))
        method = dapr.SubscribeConfigurationAlpha1 if alpha else dapr.SubscribeConfiguration
        self.call = method(req)
        self.responses: list[dpb.SubscribeConfigurationResponse] = []
        self.arrived = asyncio.Condition()
        self.error: grpc.aio.AioRpcError | None = None
        self.ended = False
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for resp in self.call:
                async with self.arrived:
                    self.responses.append(resp)
                    self.arrived.notify_all()
        except grpc.aio.AioRpcError as exc:
            self.error = exc
        finally:
            async with self.arrived:
                self.ended = True
                self.arrived.notify_all()

    async def wait_for(self, predicate: Any) -> None:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: predicate(self)), DEADLINE)

    async def id(self) -> str:
        await self.wait_for(lambda w: w.responses or w.ended)
        assert self.responses, self.error
        return self.responses[0].id

    def items(self) -> list[tuple[str, str]]:
        return [(k, v.value) for r in self.responses[1:] for k, v in sorted(r.items.items())]


async def _env(bridge: str, nats_server: Server, redis_server: Server | None, make: SidecarFactory) -> Env:
    """A front-only sidecar and a separate worker serving the configuration handlers, on one bus."""
    comps = components(bridge, redis_server)
    ns = unique("ns")
    front = await make(sidecar_config(nats_server.url, comps, namespace=ns, workers="none"))
    worker = await make(sidecar_config(nats_server.url, comps, namespace=ns, workers=["configuration"]), serve=False)
    return Env(front, [worker], redis_server)


@pytest.fixture(params=BRIDGES)
async def env(request: pytest.FixtureRequest, nats_server: Server, make_sidecar: SidecarFactory) -> AsyncIterator[Env]:
    redis_server = request.getfixturevalue("redis_server") if request.param == "redis" else None
    e = await _env(request.param, nats_server, redis_server, make_sidecar)
    yield e
    await e.channel.close()


@pytest.fixture
async def redis_env(nats_server: Server, redis_server: Server, make_sidecar: SidecarFactory) -> AsyncIterator[Env]:
    e = await _env("redis", nats_server, redis_server, make_sidecar)
    yield e
    await e.channel.close()


async def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


# ---- get, save, delete ----


async def test_get_returns_listed_keys_that_exist_and_leaves_out_unknown_ones(env: Env) -> None:
    await env.save(
        pb.ConfigurationItem(key="a", content="1", tags={"t": "x"}, metadata={"m": "y"}),
        pb.ConfigurationItem(key="b", content="2"),
        pb.ConfigurationItem(key="c", content="3"),
    )
    got = await env.get("a", "c", "missing")
    assert sorted(got) == ["a", "c"]
    a = got["a"]
    assert (a.content, dict(a.tags), dict(a.metadata)) == ("1", {"t": "x"}, {"m": "y"})
    assert (a.group, a.label) == ("default", "default")
    assert a.version


async def test_get_with_no_keys_returns_every_key_of_the_group_and_label(env: Env) -> None:
    await env.put("a", "1")
    await env.put("b", "2")
    await env.put("x", "other", group="g2")
    assert {k: i.content for k, i in (await env.get()).items()} == {"a": "1", "b": "2"}
    assert {k: i.content for k, i in (await env.get(group="g2")).items()} == {"x": "other"}
    assert await env.get(group="empty-group") == {}
    assert await env.get("missing") == {}


async def test_save_overwrites_and_rotates_the_version_and_delete_removes(env: Env) -> None:
    await env.put("k", "v1")
    first = (await env.get("k"))["k"]
    await env.put("k", "v2")
    second = (await env.get("k"))["k"]
    assert second.content == "v2" and second.version != first.version
    await env.delete("k", "never-existed")
    assert await env.get("k") == {}
    await env.put("k", "v3")
    await env.save(pb.ConfigurationItem(key="k", content=""))  # empty content deletes, as in Layotto
    assert await env.get("k") == {}


async def test_groups_and_labels_keep_items_of_the_same_key_apart(env: Env) -> None:
    await env.save(
        pb.ConfigurationItem(key="k", content="plain"),
        pb.ConfigurationItem(key="k", content="grouped", group="g"),
        pb.ConfigurationItem(key="k", content="labelled", group="g", label="canary"),
    )
    assert (await env.get("k"))["k"].content == "plain"
    assert (await env.get("k", group="g"))["k"].content == "grouped"
    assert (await env.get("k", group="g", label="canary"))["k"].content == "labelled"
    await env.delete("k", group="g")
    assert (await env.get("k", group="g", label="canary"))["k"].content == "labelled"
    assert await env.get("k", group="g") == {}


async def test_contents_with_unicode_and_keys_with_odd_characters_round_trip(env: Env) -> None:
    await env.save(pb.ConfigurationItem(key="a.b/c d*?", content="héllo ✓\nline", tags={"ü": "✓"}))
    got = await env.get("a.b/c d*?")
    assert got["a.b/c d*?"].content == "héllo ✓\nline"
    assert dict(got["a.b/c d*?"].tags) == {"ü": "✓"}
    assert "a.b/c d*?" in await env.get()


# ---- bad input ----


async def test_an_empty_store_name_is_invalid_and_names_the_configured_stores(env: Env) -> None:
    code, msg = await code_of(env.stub.GetConfiguration(pb.GetConfigurationRequest(store_name="", keys=["a"])))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "empty" in msg and "configstore" in msg


async def test_an_unknown_store_is_invalid_for_every_rpc(env: Env) -> None:
    calls = [
        env.stub.GetConfiguration(pb.GetConfigurationRequest(store_name="nope")),
        env.stub.SaveConfiguration(
            pb.SaveConfigurationRequest(store_name="nope", items=[pb.ConfigurationItem(key="a", content="1")])
        ),
        env.stub.DeleteConfiguration(pb.DeleteConfigurationRequest(store_name="nope", keys=["a"])),
        env.dapr.GetConfiguration(dpb.GetConfigurationRequest(store_name="nope")),
    ]
    for call in calls:
        code, msg = await code_of(call)
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert "'nope' is not configured" in msg and "configstore" in msg
    watch = Watch(env.stub, "a", store="nope")
    await watch.ended.wait()
    assert watch.error is not None and watch.error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "nope" in (watch.error.details() or "")
    dapr_watch = DaprWatch(env.dapr, "a", store="nope")
    await dapr_watch.wait_for(lambda w: w.ended)
    assert not dapr_watch.responses
    assert dapr_watch.error is not None and dapr_watch.error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "'nope' is not configured" in (dapr_watch.error.details() or "")


async def test_an_empty_key_in_a_save_is_invalid_names_the_item_and_changes_nothing(env: Env) -> None:
    code, msg = await code_of(
        env.stub.SaveConfiguration(
            pb.SaveConfigurationRequest(
                store_name="configstore",
                items=[pb.ConfigurationItem(key="good", content="1"), pb.ConfigurationItem(key="", content="2")],
            )
        )
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "items[1].key is empty" in msg
    assert await env.get("good") == {}


async def test_other_bad_input_is_invalid_says_what_is_wrong_and_changes_nothing(env: Env) -> None:
    await env.put("kept", "1")
    cases: list[tuple[Any, str]] = [
        (env.stub.SaveConfiguration(pb.SaveConfigurationRequest(store_name="configstore")), "items is empty"),
        (
            env.stub.SaveConfiguration(
                pb.SaveConfigurationRequest(
                    store_name="configstore",
                    items=[pb.ConfigurationItem(key="kept", content="2"), pb.ConfigurationItem(key="a||b", content="")],
                )
            ),
            "items[1].key 'a||b' contains '||'",
        ),
        (
            env.stub.SaveConfiguration(
                pb.SaveConfigurationRequest(
                    store_name="configstore",
                    items=[
                        pb.ConfigurationItem(key="kept", content="2"),
                        pb.ConfigurationItem(key="kept", content="3"),
                    ],
                )
            ),
            "appears twice",
        ),
        (env.stub.DeleteConfiguration(pb.DeleteConfigurationRequest(store_name="configstore")), "keys is empty"),
        (
            env.stub.DeleteConfiguration(pb.DeleteConfigurationRequest(store_name="configstore", keys=["kept", ""])),
            "keys[1] is empty",
        ),
        (
            env.stub.GetConfiguration(pb.GetConfigurationRequest(store_name="configstore", keys=["a"], group="x||y")),
            "group 'x||y'",
        ),
        (
            env.stub.GetConfiguration(pb.GetConfigurationRequest(store_name="configstore", subscribe_update=True)),
            "subscribe_update is not supported",
        ),
    ]
    for call, expected in cases:
        code, msg = await code_of(call)
        assert code is grpc.StatusCode.INVALID_ARGUMENT, msg
        assert expected in msg, msg
    assert (await env.get("kept"))["kept"].content == "1"
    watch = Watch(env.stub, "ok", "")
    await watch.ended.wait()
    assert watch.error is not None and watch.error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "keys[1] is empty" in (watch.error.details() or "")


# ---- subscriptions ----


async def test_three_subscribers_each_see_exactly_their_own_keys_updates_additions_and_deletes(env: Env) -> None:
    await env.put("k1a", "before")
    one = Watch(env.stub, "k1a", "k1b", "fence1", snapshot=True)
    two = Watch(env.stub, "k2a", "fence2", snapshot=True)  # nothing to send yet: no response
    three = Watch(env.stub, group="g3")  # every key of group g3
    first = await one.next()
    assert [(i.key, i.content) for i in first.items] == [("k1a", "before")]
    await env.opened(3)

    await env.put("k1a", "updated")
    await env.put("k2a", "added")
    await env.put("k1b", "added")
    await env.put("x", "added", group="g3")
    await env.put("k2a", "updated")
    await env.delete("k1a")
    await env.put("unwatched", "nobody")
    await env.delete("x", group="g3")
    await env.put("y", "added", group="g3")
    await env.put("k1a", "again")
    for fence, group in (("fence1", ""), ("fence2", ""), ("fence3", "g3")):
        await env.put(fence, "end", group=group)

    assert await one.until("fence1") == [("k1a", "updated"), ("k1b", "added"), ("k1a", ""), ("k1a", "again")]
    assert await two.until("fence2") == [("k2a", "added"), ("k2a", "updated")]
    assert await three.until("fence3") == [("x", "added"), ("x", ""), ("y", "added")]
    for watch in (one, two, three):
        await watch.close()


async def test_one_stream_holds_many_subscriptions_and_sends_current_items_only_to_those_that_ask(
    env: Env,
) -> None:
    await env.put("m1", "one")
    await env.put("m2", "two", group="gm")
    await env.put("m3", "three")
    watch = Watch(env.stub, "m1", snapshot=True)
    assert [(i.key, i.content) for i in (await watch.next()).items] == [("m1", "one")]
    watch.more(group="gm", snapshot=True)
    first = await watch.next()
    assert [(i.key, i.content, i.group) for i in first.items] == [("m2", "two", "gm")]
    watch.more("m3")  # no snapshot: its first response is its first change
    await env.opened(3)
    await env.put("m2", "changed", group="gm")
    await env.put("m1", "changed")
    await env.put("m3", "changed")
    seen = [(i.key, i.content) for _ in range(3) for i in (await watch.next()).items]
    assert seen == [("m2", "changed"), ("m1", "changed"), ("m3", "changed")]
    await watch.close()


async def test_a_cancelled_stream_does_not_end_the_other_subscriptions(env: Env) -> None:
    watches = [Watch(env.stub, "shared", f"fence{i}") for i in range(3)]
    await env.opened(3)
    await watches[1].close()
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while env.subscriptions() != 2:
        assert asyncio.get_running_loop().time() < deadline, "the cancelled subscription was not released"
        await asyncio.sleep(0.01)
    await env.put("shared", "after-cancel")
    for i in (0, 2):
        await env.put(f"fence{i}", "end")
        assert await watches[i].until(f"fence{i}") == [("shared", "after-cancel")]
        assert not watches[i].ended.is_set()
    for w in (watches[0], watches[2]):
        await w.close()


async def test_dapr_subscriptions_send_the_id_first_then_changes_with_deletes_as_empty_values(env: Env) -> None:
    await env.put("d1", "before")
    watch = DaprWatch(env.dapr, "d1", "d2")
    sub_id = await watch.id()
    assert sub_id and not watch.responses[0].items
    await env.put("d1", "after")
    await env.put("d2", "new")
    await env.delete("d1")
    await watch.wait_for(lambda w: len(w.items()) >= 3)
    assert watch.items() == [("d1", "after"), ("d2", "new"), ("d1", "")]
    assert all(r.id == sub_id for r in watch.responses)
    resp = await env.dapr.UnsubscribeConfigurationAlpha1(
        dpb.UnsubscribeConfigurationRequest(store_name="configstore", id=sub_id)
    )
    assert resp.ok
    await watch.wait_for(lambda w: w.ended)
    assert watch.error is None


async def test_nothing_arrives_after_unsubscribe_and_other_subscriptions_go_on(env: Env) -> None:
    gone = DaprWatch(env.dapr, "u1")
    stays = DaprWatch(env.dapr, "u1", "ufence", alpha=False)
    gone_id = await gone.id()
    await stays.id()
    await env.put("u1", "while-subscribed")
    await gone.wait_for(lambda w: len(w.items()) == 1)
    resp = await env.dapr.UnsubscribeConfiguration(dpb.UnsubscribeConfigurationRequest(store_name="", id=gone_id))
    assert resp.ok and not resp.message
    await env.put("u1", "after-unsubscribe")
    await env.delete("u1")
    await env.put("ufence", "end")
    await stays.wait_for(lambda w: ("ufence", "end") in w.items())
    assert stays.items() == [("u1", "while-subscribed"), ("u1", "after-unsubscribe"), ("u1", ""), ("ufence", "end")]
    await gone.wait_for(lambda w: w.ended)
    assert gone.items() == [("u1", "while-subscribed")]
    again = await env.dapr.UnsubscribeConfiguration(dpb.UnsubscribeConfigurationRequest(id=gone_id))
    assert not again.ok and "does not exist" in again.message
    stays.call.cancel()


async def test_dapr_get_configuration_translates_items_and_versions(env: Env) -> None:
    await env.save(pb.ConfigurationItem(key="g1", content="v", metadata={"m": "1"}))
    for method in (env.dapr.GetConfiguration, env.dapr.GetConfigurationAlpha1):
        resp = await method(dpb.GetConfigurationRequest(store_name="configstore", keys=["g1", "missing"]))
        assert list(resp.items) == ["g1"]
        assert resp.items["g1"].value == "v" and dict(resp.items["g1"].metadata) == {"m": "1"}
        assert resp.items["g1"].version == (await env.get("g1"))["g1"].version
    every = await env.dapr.GetConfiguration(dpb.GetConfigurationRequest(store_name="configstore"))
    assert "g1" in every.items


async def test_a_change_written_while_a_subscription_opens_is_neither_lost_nor_repeated(env: Env) -> None:
    """Writes race with the subscription's initial read; each write shows up exactly once, in the
    initial items or as a change, and the last one seen is the last one written."""
    writes = 40

    async def writer() -> None:
        for i in range(writes):
            await env.put("race", str(i))

    task = asyncio.create_task(writer())
    watch = Watch(env.stub, "race", snapshot=True)
    seen: list[str] = []
    await task
    while not seen or seen[-1] != str(writes - 1):
        seen += [i.content for i in (await watch.next()).items]
    numbers = [int(s) for s in seen]
    assert numbers == sorted(set(numbers)), numbers
    await watch.close()


async def test_two_workers_watching_one_store_deliver_each_change_once(
    env: Env, nats_server: Server, make_sidecar: SidecarFactory
) -> None:
    cfg = env.workers[0].config
    await make_sidecar(cfg.model_copy(), serve=False)
    watch = Watch(env.stub, "twice", "tfence")
    await env.opened(1)
    await env.put("twice", "1")
    await env.put("twice", "2")
    await env.delete("twice")
    await env.put("tfence", "end")
    assert await watch.until("tfence") == [("twice", "1"), ("twice", "2"), ("twice", "")]
    await watch.close()


async def test_subscriptions_survive_a_restart_of_the_worker(
    env: Env, nats_server: Server, make_sidecar: SidecarFactory
) -> None:
    watch = Watch(env.stub, "rw", "rfence")
    await env.opened(1)
    cfg = env.workers[0].config
    await env.workers[0].stop()
    await make_sidecar(cfg.model_copy(), serve=False)
    await env.put("rw", "after-restart")
    await env.put("rfence", "end")
    assert await watch.until("rfence") == [("rw", "after-restart")]
    await watch.close()


async def test_redis_watchers_resync_after_their_connection_is_killed(redis_env: Env) -> None:
    import redis.asyncio as aioredis

    env = redis_env
    assert env.redis_server is not None
    watch = Watch(env.stub, "lost", "lfence")
    await env.opened(1)
    admin = aioredis.Redis(port=env.redis_server.port)
    try:
        killed = await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        assert killed >= 1
        # Written right away: its notification may go to no one, and only the resync can find it.
        await env.put("lost", "while-reconnecting")
        await env.put("lfence", "end")
        seen = await watch.until("lfence")
        assert seen == [("lost", "while-reconnecting")]
    finally:
        await admin.aclose()
    await watch.close()


@pytest.mark.parametrize("bridge", BRIDGES)
async def test_a_front_cut_off_from_the_bus_catches_up_on_what_its_subscribers_missed(
    bridge: str, nats_server: Server, make_sidecar: SidecarFactory, request: pytest.FixtureRequest
) -> None:
    redis_server = request.getfixturevalue("redis_server") if bridge == "redis" else None
    comps = components(bridge, redis_server)
    ns = unique("ns")
    proxy = Partition(nats_server.port)
    await proxy.start()
    try:
        front = await make_sidecar(sidecar_config(proxy.url, comps, namespace=ns, workers="none"))
        await make_sidecar(sidecar_config(nats_server.url, comps, namespace=ns, workers=["configuration"]), serve=False)
        writer = Env(await make_sidecar(sidecar_config(nats_server.url, comps, namespace=ns, workers="none")), [], None)
        await writer.put("changed", "before")
        await writer.put("deleted", "before")
        cut_off = Env(front, [], None)
        watch = Watch(cut_off.stub, "changed", "deleted", "created", "cfence", snapshot=True)
        assert sorted((i.key, i.content) for i in (await watch.next()).items) == [
            ("changed", "before"),
            ("deleted", "before"),
        ]
        assert front.bus is not None
        proxy.cut()
        deadline = asyncio.get_running_loop().time() + DEADLINE
        while front.bus.connected:
            assert asyncio.get_running_loop().time() < deadline, "the front did not notice the cut"
            await asyncio.sleep(0.01)
        # Published while the front is off the bus: no event can reach it.
        await writer.put("changed", "during")
        await writer.delete("deleted")
        await writer.put("created", "during")
        proxy.heal()
        seen: set[tuple[str, str]] = set()
        while len(seen) < 3:
            seen |= {(i.key, i.content) for i in (await watch.next()).items}
        assert seen == {("changed", "during"), ("deleted", ""), ("created", "during")}
        await cut_off.put("cfence", "end")
        assert await watch.until("cfence") == []
        await watch.close()
        await cut_off.channel.close()
        await writer.channel.close()
    finally:
        await proxy.stop()


async def test_a_large_item_full_of_characters_that_json_escapes_reaches_subscribers_whole(env: Env) -> None:
    big = '"\\\n' * 200_000  # 600 kB; escaped as JSON it would not fit in one bus message
    watch = Watch(env.stub, "big")
    await env.opened(1)
    await env.put("big", big)
    assert [(i.key, i.content) for i in (await watch.next()).items] == [("big", big)]
    assert (await env.get("big"))["big"].content == big
    await watch.close()


@pytest.mark.parametrize("bridge", BRIDGES)
async def test_with_key_prefix_appid_each_app_sees_its_own_keys_unless_it_names_another_app(
    bridge: str, nats_server: Server, make_sidecar: SidecarFactory, request: pytest.FixtureRequest
) -> None:
    redis_server = request.getfixturevalue("redis_server") if bridge == "redis" else None
    comps = components(bridge, redis_server)
    comps["configstore"]["metadata"]["keyPrefix"] = "appid"
    ns = unique("ns")
    await make_sidecar(sidecar_config(nats_server.url, comps, namespace=ns, workers=["configuration"]), serve=False)
    orders = Env(await make_sidecar(sidecar_config(nats_server.url, comps, namespace=ns, app_id="orders")), [], None)
    billing = Env(await make_sidecar(sidecar_config(nats_server.url, comps, namespace=ns, app_id="billing")), [], None)
    await orders.put("limit", "10")
    await billing.put("limit", "99")
    assert (await orders.get("limit"))["limit"].content == "10"
    assert (await billing.get("limit"))["limit"].content == "99"
    assert list(await orders.get()) == ["limit"]
    other = await orders.stub.GetConfiguration(
        pb.GetConfigurationRequest(store_name="configstore", app_id="billing", keys=["limit"])
    )
    assert [(i.key, i.content) for i in other.items] == [("limit", "99")]
    watch = Watch(orders.stub, "limit", "pfence", snapshot=True)
    assert [i.content for i in (await watch.next()).items] == ["10"]
    await billing.put("limit", "100")
    await orders.put("limit", "11")
    await orders.put("pfence", "end")
    assert await watch.until("pfence") == [("limit", "11")]
    await watch.close()
    for e in (orders, billing):
        await e.channel.close()


async def test_a_subscription_without_a_worker_is_unavailable_and_names_the_missing_worker(
    nats_server: Server, make_sidecar: SidecarFactory
) -> None:
    front = await make_sidecar(sidecar_config(nats_server.url, components("nats.kv", None), workers="none"))
    e = Env(front, [], None)
    watch = Watch(e.stub, "k")
    await watch.ended.wait()
    assert watch.error is not None and watch.error.code() is grpc.StatusCode.UNAVAILABLE
    assert "no worker serves configuration store 'configstore'" in (watch.error.details() or "")
    assert e.subscriptions() == 0
    await e.channel.close()
