"""The FaaS fleet as users run it: `l8 wasm deploy|list|rm` and two `l8 worker --wasm` processes on
a real nats-server; a sidecar (in process) serves the state the functions use, the callers'
InvokeService and PublishEvent, and its pub/sub worker delivers the functions' events."""

from __future__ import annotations

import asyncio
import json
import signal
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from bridges.protocols import StateStore
from handlers.proto import runtime_pb2 as pb
from runtime.sidecar import Sidecar
from tests import wasm_modules as mods
from tests.conftest import native_stub, sidecar_config, unique
from tests.process import L8, spawn
from tests.servers import Server


def l8(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([L8, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def guests() -> dict[str, Path]:
    return mods.build_guests()


@pytest.fixture(scope="module")
async def front(nats_server: Server) -> AsyncIterator[Sidecar]:
    components = {
        "statestore": {"kind": "state", "type": "nats.kv"},
        # Its pub/sub worker delivers the deployed functions' events to the workers.
        "pubsub": {"kind": "pubsub", "type": "nats.jetstream"},
    }
    config = sidecar_config(nats_server.url, components)
    sidecar = Sidecar(config)
    await sidecar.start()
    yield sidecar
    await sidecar.stop()


class Workers:
    def __init__(self, bus: str, namespace: str, data_dir: Path) -> None:
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        self._args = ["worker", "--wasm", "--bus", bus, "--namespace", namespace, "--data-dir", str(data_dir)]

    def start(self, n: int) -> None:
        for _ in range(n):
            self.procs.append(spawn(self._args))

    def logs(self) -> list[str]:
        return [path.read_text(errors="replace") for _, path in self.procs]

    def stop(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture
def workers(nats_server: Server, front: Sidecar, tmp_path: Path) -> Iterator[Workers]:
    group = Workers(nats_server.url, front.config.namespace, tmp_path / "data")
    yield group
    group.stop()


async def wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def invoke(front: Sidecar, name: str, data: bytes, timeout: float = 10.0) -> bytes:
    channel, stub = native_stub(front)
    async with channel:
        request = pb.InvokeServiceRequest(id=name, message=pb.CommonInvokeRequest(method="count"))
        request.message.data.value = data
        reply = await stub.InvokeService(request, timeout=timeout)
    out: bytes = reply.data.value
    return out


def deploy(
    nats_server: Server, front: Sidecar, name: str, path: Path, *extra: str, invoke: bool = True
) -> subprocess.CompletedProcess[str]:
    return l8(
        "wasm",
        "deploy",
        name,
        str(path),
        *(["--invoke"] if invoke else []),
        *extra,
        "--bus",
        nats_server.url,
        "--namespace",
        front.config.namespace,
    )


async def test_deploy_refuses_an_invalid_module_or_flag_with_the_reason(
    nats_server: Server, front: Sidecar, tmp_path: Path
) -> None:
    path = tmp_path / "bad.wasm"
    path.write_bytes(mods.BAD["unknown import"])
    out = await asyncio.to_thread(deploy, nats_server, front, "bad-fn", path)
    assert out.returncode == 1
    assert "is refused: it imports env.abort, which l8 does not provide" in out.stderr
    path.write_bytes(mods.BAD["initial memory over the cap"])
    out = await asyncio.to_thread(deploy, nats_server, front, "bad-fn", path, "--memory-mb", "16")
    assert out.returncode == 1 and "over the cap of 16 MiB" in out.stderr
    out = await asyncio.to_thread(deploy, nats_server, front, "bad-fn", path, "--allow-publish", "orders")
    assert out.returncode == 2 and "not PUBSUB/TOPIC" in out.stderr
    path.write_bytes(mods.ECHO)
    out = await asyncio.to_thread(deploy, nats_server, front, "bad-fn", path, "--subscribe", "pubsub/orders")
    assert out.returncode == 1 and "does not export 'l8_on_event', which its subscriptions need" in out.stderr
    out = await asyncio.to_thread(deploy, nats_server, front, "bad-fn", path, "--dead-letter-topic", "dead")
    assert out.returncode == 2 and "need --subscribe" in out.stderr
    listed = await asyncio.to_thread(
        l8, "wasm", "list", "--bus", nats_server.url, "--namespace", front.config.namespace
    )
    assert "bad-fn" not in listed.stdout


async def test_every_worker_serves_a_deploy_shares_its_invocations_swaps_a_redeploy_and_stops_on_rm(
    nats_server: Server, front: Sidecar, workers: Workers, guests: dict[str, Path], tmp_path: Path
) -> None:
    workers.start(2)
    name = unique("orders")
    out = await asyncio.to_thread(deploy, nats_server, front, name, guests["rust"], "--allow-state", "statestore")
    assert out.returncode == 0, out.stderr
    await wait_for(lambda: all(f"function {name} serves" in log for log in workers.logs()), "a worker did not serve")
    listed = await asyncio.to_thread(
        l8, "wasm", "list", "--bus", nats_server.url, "--namespace", front.config.namespace
    )
    assert name in listed.stdout and "triggers invoke" in listed.stdout
    assert await invoke(front, name, b"nobody") == b"0"

    # One worker killed while invocations run: the other keeps serving them.
    outcomes: list[object] = []

    async def hammer() -> None:
        for _ in range(60):
            try:
                outcomes.append(await invoke(front, name, b"c1", timeout=3))
            except grpc.aio.AioRpcError as exc:
                outcomes.append(exc.code())

    running = asyncio.create_task(hammer())
    await wait_for(lambda: len(outcomes) >= 10, "the invocations did not start")
    victim, _ = workers.procs[0]
    victim.kill()
    victim.wait()
    await running
    # Calls are sequential, so at most the one the killed worker held waits out its deadline.
    failed = [o for o in outcomes if o != b"0"]
    assert failed in ([], [grpc.StatusCode.DEADLINE_EXCEEDED]), failed
    assert outcomes[-20:] == [b"0"] * 20
    deadline = time.monotonic() + 60

    # A redeploy swaps the module on the live worker.
    new = tmp_path / "v2.wasm"
    new.write_bytes(mods.echo_version(2))
    out = await asyncio.to_thread(deploy, nats_server, front, name, new)
    assert out.returncode == 0, out.stderr

    async def redeployed() -> bool:
        return struct.unpack("<q", await invoke(front, name, b""))[0] == 2

    while not await redeployed():
        assert time.monotonic() < deadline, "the redeploy was not swapped in"
        await asyncio.sleep(0.05)

    out = await asyncio.to_thread(
        l8, "wasm", "rm", name, "--bus", nats_server.url, "--namespace", front.config.namespace
    )
    assert out.returncode == 0, out.stderr
    while True:
        try:
            await invoke(front, name, b"")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() is grpc.StatusCode.UNAVAILABLE
            break
        assert time.monotonic() < deadline, "rm did not stop the function"
        await asyncio.sleep(0.05)
    out = await asyncio.to_thread(
        l8, "wasm", "rm", name, "--bus", nats_server.url, "--namespace", front.config.namespace
    )
    assert out.returncode == 1 and f"no function named {name!r}" in out.stderr


async def publish(front: Sidecar, topic: str, *items: bytes) -> None:
    channel, stub = native_stub(front)
    async with channel:
        for data in items:
            await stub.PublishEvent(pb.PublishEventRequest(pubsub_name="pubsub", topic=topic, data=data), timeout=30)


def rows_of(nats_server: Server, front: Sidecar, name: str) -> list[dict[str, Any]]:
    out = l8("subscriptions", "--bus", nats_server.url, "--namespace", front.config.namespace, "--json")
    assert out.returncode == 0, out.stderr
    return [r for r in json.loads(out.stdout) if r["app"] == name]


async def test_workers_share_a_deployed_functions_events_and_one_killed_mid_event_hands_it_to_the_other(
    nats_server: Server, front: Sidecar, workers: Workers, tmp_path: Path
) -> None:
    workers.start(2)
    name, topic = unique("events"), unique("ticks")
    path = tmp_path / "verdict.wasm"
    path.write_bytes(mods.VERDICT)
    out = await asyncio.to_thread(
        deploy, nats_server, front, name, path, "--subscribe", f"pubsub/{topic}", invoke=False
    )
    assert out.returncode == 0, out.stderr

    async def announced_by_both() -> bool:
        rows = await asyncio.to_thread(rows_of, nats_server, front, name)
        return bool(rows) and len(rows[0]["instances"]) == 2 and rows[0]["state"] == "delivering"

    deadline = time.monotonic() + 60
    while not await announced_by_both():
        assert time.monotonic() < deadline, "the workers did not both announce the function"
        await asyncio.sleep(0.1)
    (row,) = await asyncio.to_thread(rows_of, nats_server, front, name)
    assert (row["origin"], row["topic"], row["target"]) == ("function", topic, "app")
    ticks = [f"ok-{i}".encode() for i in range(20)]
    await publish(front, topic, *ticks)

    def seen() -> list[set[str]]:
        return [{t.decode() for t in ticks if f"function {name}: {t.decode()}\n" in log} for log in workers.logs()]

    await wait_for(lambda: set().union(*seen()) == {t.decode() for t in ticks}, "every event reached a worker")
    assert all(seen()), "one worker got none of the events"
    doc = json.loads(
        (
            await asyncio.to_thread(
                l8, "asyncapi", "--deployed", "--bus", nats_server.url, "--namespace", front.config.namespace
            )
        ).stdout
    )
    assert any(f"function {name!r} by l8_on_event" in c.get("description", "") for c in doc["channels"].values())

    # A redeploy of the same name: a module that holds its first event until it is killed.
    hold = tmp_path / "hold.wasm"
    hold.write_bytes(mods.HOLD)
    extra = ("--subscribe", f"pubsub/{topic}", "--event-timeout-ms", "3000", "--timeout-ms", "120000")
    out = await asyncio.to_thread(
        deploy, nats_server, front, name, hold, *extra, "--allow-state", "statestore", invoke=False
    )
    assert out.returncode == 0, out.stderr
    await wait_for(
        lambda: all(log.count(f"function {name} serves") == 2 for log in workers.logs()), "the redeploy was not served"
    )
    await publish(front, topic, b"once")
    await wait_for(lambda: any(f"function {name}: held" in log for log in workers.logs()), "no worker holds it")
    (holder,) = [proc for (proc, _), log in zip(workers.procs, workers.logs(), strict=True) if f"{name}: held" in log]
    holder.kill()
    holder.wait()
    assert front.components is not None
    store = next(s.bridge for s in front.components.served if s.name == "statestore")
    assert isinstance(store, StateStore)
    deadline = time.monotonic() + 60
    while await store.get(f"{name}||done") is None:
        assert time.monotonic() < deadline, "the other worker did not finish the event"
        await asyncio.sleep(0.05)
