"""Health tells the truth: readiness goes DOWN with a reason when the bus or a backend is gone and
UP again when it is back; /v1.0/healthz and gRPC health follow; `l8 worker --http-port` serves the
same probes; the supervisor restarts a crashed task and marks it DOWN meanwhile."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtime.health import Health, Status
from runtime.sidecar import Sidecar
from runtime.supervisor import Budget, Supervisor
from tests.conftest import SidecarFactory, sidecar_config, unique
from tests.process import spawn
from tests.servers import Server, free_port, start_nats, start_redis, stop_pid

FAST = {"interval": 0.1, "timeout": 1.0}


def probe(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            body = resp.read()
            return resp.status, json.loads(body) if body else None
    except urllib.error.HTTPError as exc:
        body = exc.read()
        return exc.code, json.loads(body) if body else None


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.05)


async def grpc_serving(sidecar: Sidecar) -> int:
    assert sidecar.grpc is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc.port}") as channel:
        return int((await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())).status)


async def test_readiness_goes_down_naming_an_unreachable_backend_and_up_when_it_is_back(
    nats_server: Server, make_sidecar: SidecarFactory
) -> None:
    redis = start_redis()
    port = redis.port
    components = {"cache": {"kind": "state", "type": "redis", "metadata": {"url": f"redis://127.0.0.1:{port}"}}}
    sidecar = await make_sidecar(sidecar_config(nats_server.url, components, health=FAST))
    assert sidecar.http is not None
    http = sidecar.http.port

    async def readiness() -> tuple[int, Any]:
        return await asyncio.to_thread(probe, http, "/actuator/health/readiness")

    try:
        assert (await readiness())[0] == 200
        redis.stop()

        async def down() -> bool:
            status, report = await readiness()
            cache = report["components"]["cache"]
            return status == 503 and cache["status"] == "DOWN" and "redis" in cache["details"]["reason"]

        await until(down)
        assert (await asyncio.to_thread(probe, http, "/v1.0/healthz"))[0] == 500
        assert await grpc_serving(sidecar) == health_pb2.HealthCheckResponse.NOT_SERVING
        redis = start_redis(port)

        async def up() -> bool:
            return (await readiness())[0] == 200

        await until(up)
        assert (await asyncio.to_thread(probe, http, "/v1.0/healthz"))[0] == 204
        await until(lambda: _equals(grpc_serving(sidecar), health_pb2.HealthCheckResponse.SERVING))
    finally:
        redis.stop()


async def _equals(value: Awaitable[Any], expected: Any) -> bool:
    return bool(await value == expected)


async def test_readiness_goes_down_while_the_bus_is_disconnected_and_up_after_it_reconnects(
    make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    nats = start_nats(tmp_path / "js")
    components = {"statestore": {"kind": "state", "type": "nats.kv"}}
    sidecar = await make_sidecar(sidecar_config(nats.url, components, health=FAST))
    assert sidecar.http is not None
    http = sidecar.http.port
    try:
        nats.kill()

        async def bus_down() -> bool:
            status, report = await asyncio.to_thread(probe, http, "/actuator/health/readiness")
            return status == 503 and report["components"]["bus"]["status"] == "DOWN"

        await until(bus_down)
        nats = start_nats(tmp_path / "js", port=nats.port)

        async def ready() -> bool:
            return (await asyncio.to_thread(probe, http, "/v1.0/healthz"))[0] == 204

        await until(ready)
    finally:
        nats.stop()


def test_l8_worker_serves_the_same_probes_on_its_http_port(nats_server: Server, tmp_path: Path) -> None:
    port = free_port()
    config = {
        "app": {"id": unique("w")},
        "namespace": unique("ns"),
        "components": {"statestore": {"kind": "state", "type": "nats.kv"}},
    }
    (tmp_path / "worker.yaml").write_text(json.dumps(config))
    proc, log_path = spawn(
        ["worker", "--config", str(tmp_path / "worker.yaml"), "--bus", nats_server.url, "--handlers", "state",
         "--http-port", str(port)], tmp_path,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, report = probe(port, "/actuator/health/readiness")
                if status == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        assert report["components"]["statestore"]["status"] == "UP"
        assert report["components"]["bus"]["status"] == "UP"
        assert probe(port, "/v1.0/healthz")[0] == 204
        assert probe(port, "/actuator/health/liveness")[0] == 200
    finally:
        stop_pid(proc)
    assert proc.returncode == 0


async def test_the_supervisor_restarts_a_crashed_task_and_marks_it_down_until_it_works() -> None:
    health = Health()
    supervisor = Supervisor(health, backoff=0.01, max_backoff=0.05)
    runs: list[int] = []
    healthy = asyncio.Event()

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise RuntimeError(f"crash {len(runs)}")
        health.set("flaky", Status.UP)
        healthy.set()
        await asyncio.Event().wait()

    seen: list[Status] = []
    health.listeners.append(seen.append)
    supervisor.spawn("flaky", flaky)
    await asyncio.wait_for(healthy.wait(), 30)
    assert Status.DOWN in seen
    assert len(runs) == 3 and supervisor.crashes["flaky"] == 2
    assert health.indicators["flaky"].status is Status.UP
    await supervisor.stop()
    assert supervisor.names == []


async def test_the_shutdown_budget_cuts_a_step_that_overruns_and_runs_the_next() -> None:
    budget = Budget(0.2)
    done: list[str] = []

    async def hangs(left: float) -> None:
        await asyncio.Event().wait()

    async def quick(left: float) -> None:
        done.append("quick")

    await budget.step("a hanging step", hangs)
    await budget.step("a quick step", quick)
    assert done == ["quick"]
