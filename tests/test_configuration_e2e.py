"""The Configuration API as a user runs it: `l8 run` as a subprocess, alone or as a front-only
sidecar beside an `l8 worker`, driven by the official Dapr SDK in a client subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc
from tests.conftest import unique
from tests.process import l8_running, start_worker, stop_all, wait_until_served
from tests.servers import Server

HERE = Path(__file__).parent


def config(bus: str, components: dict[str, Any]) -> dict[str, Any]:
    return {"app": {"id": unique("cfg")}, "namespace": unique("ns"), "bus": {"url": bus}, "components": components}


def run_client(grpc_port: int, http_port: int, log: str) -> None:
    out = subprocess.run(
        [sys.executable, str(HERE / "dapr_configuration_client.py")],
        env={
            **os.environ,
            "DAPR_GRPC_PORT": str(grpc_port),
            "DAPR_HTTP_PORT": str(http_port),
            "DAPR_HEALTH_TIMEOUT": "20",
            "PYTHONPATH": str(HERE.parent),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr + log
    # The SDK's watcher thread of the stream unsubscribed just before the end may print "... watcher
    # for keys [...] stopped." as the client exits; the one unsubscribed long before ended cleanly.
    assert "ok" in out.stdout, out.stdout  # a thread's print may land on the same line
    assert "keys ['greeting'] stopped" not in out.stdout, out.stdout


def test_the_dapr_sdk_gets_subscribes_and_unsubscribes_through_l8_run(nats_server: Server) -> None:
    cfg = config(nats_server.url, {"configstore": {"kind": "configuration", "type": "nats.kv"}})
    with l8_running(cfg) as l8:
        run_client(l8.grpc_port, l8.http_port, l8.log())


@pytest.mark.parametrize("bridge", ["nats.kv", "redis"])
def test_subscriptions_work_when_the_handlers_run_in_a_separate_l8_worker(
    bridge: str, nats_server: Server, request: pytest.FixtureRequest
) -> None:
    meta: dict[str, str] = {}
    if bridge == "redis":
        meta["url"] = f"redis://127.0.0.1:{request.getfixturevalue('redis_server').port}"
    cfg = config(nats_server.url, {"configstore": {"kind": "configuration", "type": bridge, "metadata": meta}})
    worker = start_worker(cfg, nats_server.url, "configuration")
    try:
        with l8_running(cfg, "--workers", "none") as l8:
            wait_until_served(
                l8.grpc_address,
                lambda ch: runtime_pb2_grpc.RuntimeStub(ch).GetConfiguration(
                    pb.GetConfigurationRequest(store_name="configstore", keys=["probe"]), timeout=5
                ),
            )
            run_client(l8.grpc_port, l8.http_port, l8.log())
    finally:
        stop_all([worker])
