"""Locks and ids end to end: `l8 run` (and `l8 worker`) as subprocesses, the Dapr SDK's try_lock and
unlock, and the native GetNextId."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc
from tests.conftest import unique
from tests.process import l8_running, start_worker, stop_all
from tests.servers import Server

HERE = Path(__file__).parent


def dapr_lock_client(grpc_port: int, http_port: int) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DAPR_GRPC_PORT": str(grpc_port),
        "DAPR_HTTP_PORT": str(http_port),
        "DAPR_HEALTH_TIMEOUT": "20",
    }
    return subprocess.run(
        [sys.executable, str(HERE / "dapr_lock_client.py")], env=env, capture_output=True, text=True, timeout=90
    )


def next_ids(address: str, key: str, mode: int, n: int) -> list[int]:
    with grpc.insecure_channel(address) as channel:
        stub = runtime_pb2_grpc.RuntimeStub(channel)
        req = pb.GetNextIdRequest(store_name="sequencer", key=key, options=pb.SequencerOptions(increment=mode))  # type: ignore[arg-type]
        return [stub.GetNextId(req).next_id for _ in range(n)]


def wait_for_workers(address: str, timeout: float = 30.0) -> None:
    """Poll until lock and sequencer workers answer (the workers start beside the sidecars)."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = runtime_pb2_grpc.RuntimeStub(channel)
        while True:
            try:
                stub.Unlock(pb.UnlockRequest(store_name="lockstore", resource_id="probe", lock_owner="probe"))
                stub.GetNextId(pb.GetNextIdRequest(store_name="sequencer", key="probe"))
                return
            except grpc.RpcError as exc:
                assert exc.code() is grpc.StatusCode.UNAVAILABLE, exc
                assert time.monotonic() < deadline, f"no workers after {timeout}s: {exc.details()}"
                time.sleep(0.1)


def test_the_default_config_serves_lockstore_to_the_dapr_sdk_and_sequencer_to_the_native_api() -> None:
    with l8_running() as l8:  # the packaged configs/default.yaml, on its embedded bus
        out = dapr_lock_client(l8.grpc_port, l8.http_port)
        assert out.returncode == 0, out.stderr + l8.log()
        assert out.stdout.strip() == "ok"
        strong = next_ids(l8.grpc_address, "invoice", pb.SequencerOptions.STRONG, 5)
        assert strong == [1, 2, 3, 4, 5]
        weak = next_ids(l8.grpc_address, "invoice", pb.SequencerOptions.WEAK, 5)
        assert weak == sorted(weak) and weak[0] > 5


def test_front_only_sidecars_and_separate_workers_share_locks_and_sequences(nats_server: Server) -> None:
    ns, app_id = unique("ns"), unique("app")
    components = {
        "lockstore": {"kind": "lock", "type": "nats.kv"},
        "sequencer": {"kind": "sequencer", "type": "nats.kv", "metadata": {"biggerThan.invoice": "100"}},
    }
    config = {"app": {"id": app_id}, "namespace": ns, "bus": {"url": nats_server.url}, "components": components}
    workers = [start_worker(config, nats_server.url, "lock,sequencer") for _ in range(2)]
    try:
        with (
            l8_running(config, "--workers", "none") as a,
            l8_running(config, "--workers", "none") as b,
        ):
            wait_for_workers(a.grpc_address)
            wait_for_workers(b.grpc_address)
            out = dapr_lock_client(a.grpc_port, a.http_port)
            assert out.returncode == 0, out.stderr + a.log()
            with ThreadPoolExecutor(8) as pool:
                jobs = [
                    pool.submit(next_ids, s.grpc_address, "invoice", mode, 25)
                    for s in (a, b)
                    for mode in (pb.SequencerOptions.WEAK, pb.SequencerOptions.STRONG)
                    for _ in range(2)
                ]
                runs = [j.result(timeout=60) for j in jobs]
            ids = [i for run in runs for i in run]
            assert len(ids) == len(set(ids)) == 200, "unique across both sidecars and both workers"
            assert min(ids) > 100, "biggerThan from the config"
            assert all(run == sorted(run) for run in runs)
    finally:
        stop_all(workers)
