"""l8 as a user runs it: `l8 run` as a subprocess, driven by the Dapr SDK and the native API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc
from tests.conftest import unique
from tests.process import L8, alive, children_of, l8_running, spawn, start_l8
from tests.servers import DEFAULT_PORTS, Server, wait_free

HERE = Path(__file__).parent


def state_config(nats_server: Server) -> dict[str, object]:
    return {
        "app": {"id": unique("e2e")},
        "namespace": unique("ns"),
        "bus": {"url": nats_server.url},
        "components": {"statestore": {"kind": "state", "type": "nats.kv"}},
    }


def dapr_env(grpc_port: int, http_port: int) -> dict[str, str]:
    return {
        **os.environ,
        "DAPR_GRPC_PORT": str(grpc_port),
        "DAPR_HTTP_PORT": str(http_port),
        "DAPR_HEALTH_TIMEOUT": "20",
    }


def test_l8_run_with_no_arguments_serves_the_default_ports_and_stops_cleanly_on_sigint() -> None:
    cwd = Path(tempfile.mkdtemp(prefix="l8-default-"))
    wait_free(DEFAULT_PORTS)
    proc, log = spawn(["run"], cwd)
    try:
        began = time.monotonic()
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen("http://127.0.0.1:34999/v1.0/healthz/outbound", timeout=1) as r:
                    if r.status == 204:
                        break
            except OSError:
                pass
            assert time.monotonic() - began < 20, log.read_text()
            time.sleep(0.02)
        out = subprocess.run(
            [sys.executable, str(HERE.parent / "examples" / "state_dapr.py")],
            env={**os.environ, "DAPR_GRPC_PORT": "34904", "DAPR_HTTP_PORT": "34999"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith('{"qty": 3}')
        assert (cwd / ".l8" / "nats" / "jetstream").is_dir()
        servers = children_of(proc.pid)
        assert servers, "the embedded nats-server runs as l8's child"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0, log.read_text()
        assert not any(alive(pid) for pid in servers)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_dapr_sdk_drives_state_end_to_end(nats_server: Server) -> None:
    with l8_running(state_config(nats_server)) as l8:
        out = subprocess.run(
            [sys.executable, str(HERE / "dapr_state_client.py")],
            env=dapr_env(l8.grpc_port, l8.http_port),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr + l8.log()
        assert out.stdout.strip() == "ok"


def test_the_native_api_drives_state_end_to_end_and_health_and_reflection_answer(nats_server: Server) -> None:
    with l8_running(state_config(nats_server)) as l8, grpc.insecure_channel(l8.grpc_address) as channel:
        stub = runtime_pb2_grpc.RuntimeStub(channel)
        stub.SaveState(pb.SaveStateRequest(store_name="statestore", states=[pb.StateItem(key="k", value=b"v")]))
        got = stub.GetState(pb.GetStateRequest(store_name="statestore", key="k"))
        assert got.data == b"v" and got.etag
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            stub.GetSecret(pb.GetSecretRequest(store_name="secrets", key="k"))
        assert unknown.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert "'secrets' is not configured" in (unknown.value.details() or "")  # type: ignore[attr-defined]
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for a in answers for s in a.list_services_response.service}
        assert {
            "spec.proto.runtime.v1.Runtime",
            "spec.proto.runtime.v1.Lifecycle",
            "dapr.proto.runtime.v1.Dapr",
            "grpc.health.v1.Health",
        } <= names
        # Reflection and the Dapr messages load on first use: each service must still be described.
        for symbol in ("spec.proto.runtime.v1.Runtime", "dapr.proto.runtime.v1.Dapr"):
            answers = reflect.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)])
            )
            files = [f for a in answers for f in a.file_descriptor_response.file_descriptor_proto]
            assert files, f"reflection does not describe {symbol}"


def test_the_actuator_reports_health_info_and_metadata(nats_server: Server) -> None:
    with l8_running(state_config(nats_server)) as l8:
        base = f"http://127.0.0.1:{l8.http_port}"
        for path in ("/actuator/health/liveness", "/actuator/health/readiness"):
            with urllib.request.urlopen(base + path) as r:
                body = json.loads(r.read())
                assert r.status == 200 and body["status"] == "UP"
        with urllib.request.urlopen(base + "/actuator/health/readiness") as r:
            assert json.loads(r.read())["components"]["statestore"]["status"] == "UP"
        with urllib.request.urlopen(base + "/actuator/info") as r:
            assert json.loads(r.read())["app"]["name"] == "l8"
        with urllib.request.urlopen(base + "/v1.0/metadata") as r:
            meta = json.loads(r.read())
            assert meta["components"] == [
                {
                    "name": "statestore",
                    "type": "state.nats.kv",
                    "version": "v1",
                    "capabilities": ["ETAG", "TRANSACTIONAL", "TTL"],
                }
            ]
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(base + "/nope")
        assert missing.value.code == 404


def test_readiness_stays_down_while_a_component_cannot_start_and_l8_exits_non_zero() -> None:
    config = {
        "components": {"cache": {"kind": "state", "type": "redis", "metadata": {"url": "redis://127.0.0.1:1"}}},
    }
    l8 = start_l8(config, wait=False)
    code = l8.proc.wait(20)
    assert code != 0
    assert "component 'cache' (state redis) failed to start" in l8.log()
    assert not any(alive(pid) for pid in children_of(l8.proc.pid))


def test_sigterm_stops_l8_and_its_embedded_server(tmp_path: Path) -> None:
    l8 = start_l8(None, "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    servers = children_of(l8.proc.pid)
    assert servers
    assert l8.stop(signal.SIGTERM) == 0
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in servers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in servers)
    assert (tmp_path / "data" / "nats").is_dir()


def test_sigkill_of_l8_takes_its_embedded_server_down_too(tmp_path: Path) -> None:
    l8 = start_l8(None, cwd=tmp_path)
    servers = children_of(l8.proc.pid)
    l8.stop(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in servers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in servers)


def test_acknowledged_writes_survive_a_restart_of_l8(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with l8_running(None, "--data-dir", str(data), cwd=tmp_path) as l8, grpc.insecure_channel(l8.grpc_address) as ch:
        stub = runtime_pb2_grpc.RuntimeStub(ch)
        for i in range(50):
            stub.SaveState(
                pb.SaveStateRequest(store_name="statestore", states=[pb.StateItem(key=f"k{i}", value=b"%d" % i)])
            )
    l8b = start_l8(None, "--data-dir", str(data), cwd=tmp_path)
    try:
        l8b.stop(signal.SIGKILL)  # no graceful shutdown this time
        l8c = start_l8(None, "--data-dir", str(data), cwd=tmp_path)
        with grpc.insecure_channel(l8c.grpc_address) as ch:
            stub = runtime_pb2_grpc.RuntimeStub(ch)
            for i in range(50):
                assert stub.GetState(pb.GetStateRequest(store_name="statestore", key=f"k{i}")).data == b"%d" % i
        l8c.stop()
    finally:
        l8b.stop(signal.SIGKILL)


def test_l8_version_prints_the_version() -> None:
    out = subprocess.run([L8, "version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("l8 ")
