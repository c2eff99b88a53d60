"""Handlers in separate `l8 worker` processes behind a front-only sidecar, over queue groups."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import grpc

from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc
from tests.conftest import unique
from tests.process import l8_running, start_worker, stop_all
from tests.servers import Server


def config(nats_server: Server) -> dict[str, Any]:
    return {
        "app": {"id": unique("app")},
        "namespace": unique("ns"),
        "bus": {"url": nats_server.url},
        "components": {"statestore": {"kind": "state", "type": "nats.kv"}},
    }


async def wait_served(stub: runtime_pb2_grpc.RuntimeStub, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await stub.GetState(pb.GetStateRequest(store_name="statestore", key="probe"), timeout=2)
            return
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise


async def test_a_front_without_workers_answers_unavailable_naming_the_missing_worker(nats_server: Server) -> None:
    with l8_running(config(nats_server), "--workers", "none") as l8:
        async with grpc.aio.insecure_channel(l8.grpc_address) as channel:
            stub = runtime_pb2_grpc.RuntimeStub(channel)
            began = time.monotonic()
            try:
                await stub.GetState(pb.GetStateRequest(store_name="statestore", key="k"), timeout=10)
                raise AssertionError("expected UNAVAILABLE")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() is grpc.StatusCode.UNAVAILABLE
                assert "no worker serves state store 'statestore'" in (exc.details() or "")
            assert time.monotonic() - began < 5, "no responders is immediate, not a timeout"


async def test_two_workers_share_the_load_and_killing_one_loses_no_acknowledged_write(nats_server: Server) -> None:
    cfg = config(nats_server)
    workers = [start_worker(cfg, nats_server.url, "state") for _ in range(2)]
    try:
        with l8_running(cfg, "--workers", "none") as l8:
            async with grpc.aio.insecure_channel(l8.grpc_address) as channel:
                stub = runtime_pb2_grpc.RuntimeStub(channel)
                await wait_served(stub)
                acked: dict[str, bytes] = {}
                overdue: list[float] = []
                deadline_s = 2.0
                stop_at = time.monotonic() + 6

                async def writer(n: int) -> None:
                    i = 0
                    while time.monotonic() < stop_at:
                        key, value = f"w{n}-{i}", f"{n}:{i}".encode()
                        began = time.monotonic()
                        try:
                            await stub.SaveState(
                                pb.SaveStateRequest(
                                    store_name="statestore", states=[pb.StateItem(key=key, value=value)]
                                ),
                                timeout=deadline_s,
                            )
                            acked[key] = value
                        except grpc.aio.AioRpcError as exc:
                            assert exc.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE), exc
                        took = time.monotonic() - began
                        if took > deadline_s + 1.0:
                            overdue.append(took)
                        i += 1

                async def killer() -> None:
                    await asyncio.sleep(2)
                    workers[0].send_signal(signal.SIGKILL)

                await asyncio.gather(*(writer(n) for n in range(16)), killer())
                assert workers[0].wait(5) == -signal.SIGKILL
                assert not overdue, f"requests hung past their deadline: {overdue[:5]}"
                assert len(acked) > 100
                for key, value in acked.items():
                    got = await stub.GetState(pb.GetStateRequest(store_name="statestore", key=key), timeout=5)
                    assert got.data == value, key
    finally:
        stop_all(workers)


async def test_a_worker_stops_cleanly_on_sigterm_and_its_queue_group_empties(nats_server: Server) -> None:
    cfg = config(nats_server)
    worker = start_worker(cfg, nats_server.url, "state")
    try:
        with l8_running(cfg, "--workers", "none") as l8:
            async with grpc.aio.insecure_channel(l8.grpc_address) as channel:
                stub = runtime_pb2_grpc.RuntimeStub(channel)
                await wait_served(stub)
                worker.send_signal(signal.SIGTERM)
                assert worker.wait(15) == 0
                try:
                    await stub.GetState(pb.GetStateRequest(store_name="statestore", key="k"), timeout=5)
                    raise AssertionError("expected UNAVAILABLE once the only worker is gone")
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        stop_all([worker])
