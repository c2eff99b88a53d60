"""Dapr's Shutdown, over HTTP (``POST /v1.0/shutdown``) and gRPC: `l8 run` answers, then stops as
on SIGTERM, finishing what it has in flight, and exits 0."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from dapr.proto.runtime.v1 import dapr_pb2, dapr_pb2_grpc

from tests.conftest import unique
from tests.http_client import request
from tests.process import alive, children_of, start_l8
from tests.servers import Server


def config(nats_server: Server) -> dict[str, object]:
    return {
        "app": {"id": unique("bye")},
        "namespace": unique("ns"),
        "bus": {"url": nats_server.url},
        "components": {"statestore": {"kind": "state", "type": "nats.kv"}},
    }


@pytest.mark.parametrize("how", ["http", "grpc"])
async def test_shutdown_stops_l8_run_cleanly(nats_server: Server, how: str) -> None:
    l8 = start_l8(config(nats_server))
    try:
        if how == "http":
            answer = await request(l8.http_port, "POST", "/v1.0/shutdown")
            assert answer.status == 204
        else:
            async with grpc.aio.insecure_channel(l8.grpc_address) as channel:
                await dapr_pb2_grpc.DaprStub(channel).Shutdown(dapr_pb2.ShutdownRequest(), timeout=30)
        code = await asyncio.to_thread(l8.proc.wait, 30)
        assert code == 0, l8.log()
        assert "stopping: finishing calls in flight" in l8.log()
        assert not any(alive(pid) for pid in children_of(l8.proc.pid))
    finally:
        l8.stop()
