"""l8 on a 3-node NATS cluster (configs/cluster.yaml, JetStream R3): sidecars and workers started
together on a fresh cluster create their buckets and streams, and SIGKILL of the node that leads
the state bucket under write load loses no acknowledged write while service resumes. The same
for pub/sub: SIGKILL of the node that leads the event stream under publish load, every acknowledged
event delivered, delivery resuming. The time to resume is printed, not asserted (the machine is
shared); the tests only wait with a generous bound."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from handlers.proto import runtime_pb2 as pb
from runtime.config import load_config
from runtime.sidecar import Sidecar
from tests.conftest import native_stub, unique
from tests.pubsub_app import AppServer, RecordingApp
from tests.servers import Cluster, start_cluster

CONFIG = Path(__file__).parent.parent / "configs" / "cluster.yaml"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    cluster = start_cluster(3)
    try:
        yield cluster
    finally:
        cluster.stop()


def config(url: str, ns: str, app_id: str, **extra: Any) -> Any:
    overrides = {
        "app": {"id": app_id},
        "namespace": ns,
        "bus": {"url": url},
        "server": {"grpc": "127.0.0.1:0", "http": "127.0.0.1:0"},
        **extra,
    }
    return load_config(CONFIG, overrides)


@pytest.fixture
async def started() -> AsyncIterator[list[Sidecar]]:
    sidecars: list[Sidecar] = []
    yield sidecars
    await asyncio.gather(*(s.stop() for s in sidecars), return_exceptions=True)


async def test_sidecars_and_workers_started_together_on_a_fresh_cluster_create_their_buckets_and_streams(
    cluster: Cluster, started: list[Sidecar]
) -> None:
    ns, app_id = unique("ns"), unique("app")
    # One process per node (each learns the other nodes from the cluster), all at once.
    fronts = [Sidecar(config(url, ns, app_id)) for url in cluster.urls]
    workers = [Sidecar(config(url, ns, app_id, workers="all"), serve=False) for url in cluster.urls[:2]]
    started.extend(fronts + workers)
    await asyncio.gather(*(s.start() for s in started))
    for i, sidecar in enumerate(fronts):
        channel, stub = native_stub(sidecar)
        try:
            key = f"k{i}"
            await stub.SaveState(
                pb.SaveStateRequest(store_name="statestore", states=[pb.StateItem(key=key, value=b"v")])
            )
            for other in fronts:
                other_channel, other_stub = native_stub(other)
                try:
                    got = await other_stub.GetState(pb.GetStateRequest(store_name="statestore", key=key))
                    assert got.data == b"v"
                finally:
                    await other_channel.close()
            assert (
                await stub.TryLock(pb.TryLockRequest(store_name="lockstore", resource_id=key, lock_owner="o", expire=5))
            ).success
            assert (await stub.GetNextId(pb.GetNextIdRequest(store_name="sequencer", key=key))).next_id >= 1
        finally:
            await channel.close()


async def _leader(sidecar: Sidecar, bucket: str) -> str:
    assert sidecar.bus is not None
    info = json.loads((await sidecar.bus.nc.request(f"$JS.API.STREAM.INFO.KV_{bucket}", b"", timeout=5)).data)
    return str(info["cluster"]["leader"])


async def test_sigkill_of_the_leading_node_under_state_load_loses_no_acknowledged_write_and_service_resumes(
    cluster: Cluster, started: list[Sidecar]
) -> None:
    ns, app_id = unique("ns"), unique("app")
    sidecars = [Sidecar(config(url, ns, app_id)) for url in cluster.urls]
    started.extend(sidecars)
    await asyncio.gather(*(s.start() for s in sidecars))
    bucket = f"l8_{ns}_statestore"
    victim = int((await _leader(sidecars[0], bucket)).removeprefix("n"))
    acked: dict[str, bytes] = {}
    stop = asyncio.Event()
    killed_at: list[float] = []
    resumed: dict[int, float] = {}  # sidecar -> seconds from the kill to its first write begun after it
    after: dict[int, int] = {}  # sidecar -> writes begun after the kill and acknowledged

    async def writer(s: int, w: int) -> None:
        channel, stub = native_stub(sidecars[s])
        n = 0
        try:
            while not stop.is_set():
                key, value = f"s{s}-w{w}-{n}", str(n).encode()
                began = time.monotonic()
                try:
                    await stub.SaveState(
                        pb.SaveStateRequest(store_name="statestore", states=[pb.StateItem(key=key, value=value)]),
                        timeout=10,
                    )
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.05)  # failover: not acknowledged, so free to be lost
                else:
                    acked[key] = value
                    if killed_at and began > killed_at[0]:
                        after[s] = after.get(s, 0) + 1
                        resumed.setdefault(s, time.monotonic() - killed_at[0])
                n += 1
        finally:
            await channel.close()

    writers = [asyncio.create_task(writer(s, w)) for s in range(3) for w in range(3)]
    try:
        await asyncio.sleep(1.5)  # load before the kill
        before = len(acked)
        cluster.kill(victim)
        killed_at.append(time.monotonic())
        deadline = time.monotonic() + 90
        # Every sidecar, the one whose node died too (it moves to another node), writes again.
        while not all(after.get(s, 0) >= 20 for s in range(3)):
            assert time.monotonic() < deadline, f"service did not resume: {after}"
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.gather(*writers)
    print(f"node n{victim} (the bucket's leader) killed; writes acknowledged: {before} before, {len(acked)} in all")
    print("seconds from the kill to each sidecar's first acknowledged write begun after it:", resumed)
    cluster.start_node(victim)
    channel, stub = native_stub(sidecars[(victim + 1) % 3])
    try:
        for key, value in acked.items():
            got = await stub.GetState(pb.GetStateRequest(store_name="statestore", key=key), timeout=30)
            assert got.data == value, f"acknowledged write {key} lost"
    finally:
        await channel.close()


async def _stream_leader(sidecar: Sidecar, stream: str) -> str:
    assert sidecar.bus is not None
    info = json.loads((await sidecar.bus.nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=5)).data)
    return str(info["cluster"]["leader"])


async def test_sigkill_of_the_node_leading_the_event_stream_under_pubsub_load_loses_no_acknowledged_event(
    cluster: Cluster, started: list[Sidecar]
) -> None:
    ns, app_id, topic = unique("ns"), unique("app"), unique("orders")
    app = await AppServer(RecordingApp()).start()
    try:
        subscription = [{"pubsub": "pubsub", "topic": topic, "concurrency": 64}]
        sidecars = [
            Sidecar(config(url, ns, app_id, app={"id": app_id, "callback": app.address}, subscriptions=subscription))
            for url in cluster.urls
        ]
        started.extend(sidecars)
        await asyncio.gather(*(s.start() for s in sidecars))
        victim = int((await _stream_leader(sidecars[0], f"L8_EVT_{ns}_pubsub")).removeprefix("n"))
        acked: set[bytes] = set()
        after_kill: set[bytes] = set()
        stop = asyncio.Event()
        killed_at: list[float] = []
        delivered_at: dict[bytes, float] = {}

        async def record() -> None:
            seen = 0
            while True:
                async with app.app.changed:
                    await app.app.changed.wait_for(lambda n=seen: len(app.app.deliveries) > n)
                for d in app.app.deliveries[seen:]:
                    delivered_at.setdefault(d.data, time.monotonic())
                seen = len(app.app.deliveries)

        async def publisher(s: int) -> None:
            channel, stub = native_stub(sidecars[s])
            n = 0
            try:
                while not stop.is_set():
                    data = f"s{s}-{n}".encode()
                    began = time.monotonic()
                    try:
                        await stub.PublishEvent(
                            pb.PublishEventRequest(pubsub_name="pubsub", topic=topic, data=data), timeout=10
                        )
                    except grpc.aio.AioRpcError:
                        await asyncio.sleep(0.05)  # failover: not acknowledged, so free to be lost
                    else:
                        acked.add(data)
                        if killed_at and began > killed_at[0]:
                            after_kill.add(data)
                    n += 1
            finally:
                await channel.close()

        recorder = asyncio.create_task(record())
        publishers = [asyncio.create_task(publisher(s)) for s in range(3)]
        try:
            await asyncio.sleep(1.5)  # load before the kill
            cluster.kill(victim)
            killed_at.append(time.monotonic())
            deadline = time.monotonic() + 90
            while len([d for d in after_kill if delivered_at.get(d, 0) > killed_at[0]]) < 50:
                assert time.monotonic() < deadline, f"delivery did not resume: {len(after_kill)} published after"
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            await asyncio.gather(*publishers)
        deadline = time.monotonic() + 120
        while not acked <= set(delivered_at):
            assert time.monotonic() < deadline, f"acknowledged events never delivered: {len(acked - set(delivered_at))}"
            await asyncio.sleep(0.1)
        recorder.cancel()
        first = min(delivered_at[d] for d in after_kill) - killed_at[0]
        print(f"node n{victim} (the event stream's leader) killed; {len(acked)} events acknowledged, all delivered")
        print(f"seconds from the kill to the first delivery of an event published after it: {first:.2f}")
    finally:
        await asyncio.gather(*(s.stop() for s in started), return_exceptions=True)
        started.clear()
        await app.stop()
        cluster.start_node(victim)
