from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest

from handlers.proto import runtime_pb2_grpc
from runtime.config import Config
from runtime.sidecar import Sidecar
from tests.servers import KafkaServer, Server, running, start_nats, start_redis, start_tansu


@pytest.fixture(scope="session", autouse=True)
def wasm_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Compiled functions go to a cache of the session's own, not the user's (the l8 processes the
    tests start inherit it)."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture(scope="session")
def nats_server() -> Iterator[Server]:
    with running(start_nats()) as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Server]:
    with running(start_redis()) as server:
        yield server


@pytest.fixture(scope="session")
def kafka_server() -> Iterator[KafkaServer]:
    with running(start_tansu()) as server:
        yield server


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def sidecar_config(bus_url: str, components: dict[str, Any], **extra: Any) -> Config:
    overrides: dict[str, Any] = {
        "app": {"id": extra.pop("app_id", unique("app"))},
        "bus": extra.pop("bus", {"url": bus_url}),
        "server": {"grpc": "127.0.0.1:0", "http": "127.0.0.1:0"},
        "namespace": extra.pop("namespace", unique("ns")),
        "components": components,
    }
    overrides.update(extra)
    return Config.model_validate(overrides)


SidecarFactory = Callable[..., Awaitable[Sidecar]]


@pytest.fixture
async def make_sidecar() -> AsyncIterator[SidecarFactory]:
    started: list[Sidecar] = []

    async def make(config: Config, *, serve: bool = True) -> Sidecar:
        sidecar = Sidecar(config, serve=serve)
        await sidecar.start()
        started.append(sidecar)
        return sidecar

    yield make
    await asyncio.gather(*(s.stop() for s in started))


def native_stub(sidecar: Sidecar) -> tuple[grpc.aio.Channel, runtime_pb2_grpc.RuntimeStub]:
    assert sidecar.grpc is not None
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc.port}")
    return channel, runtime_pb2_grpc.RuntimeStub(channel)
