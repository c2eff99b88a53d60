"""The FaaS fleet: ``l8 wasm deploy|list|rm`` and the functions an ``l8 worker --wasm`` serves.

A deploy checks the module the way a worker will load it (exports, imports, the ABI, an
instantiation under its limits) and refuses an invalid one with the reason. It stores the module
in the NATS Object Store bucket ``l8_<ns>_wasm`` as ``<name>.<sha256 prefix>`` and the function's
spec (its config, the object's name and sha256) under ``<name>`` in the KV bucket
``l8_<ns>_functions``; the old version's object is deleted once the new spec is in place.

Every worker watches the KV bucket: a put fetches the object, verifies its sha256 against the
spec, loads it (through the compile cache) and serves it; a redeploy of the same config swaps the
module in place (calls in flight finish on the old version), a changed config replaces the
function; a delete stops it. Invocations of a function are shared by its workers in one queue
group.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError

from bus import Bus, WorkerHost
from runtime.config import Config
from runtime.function_config import FunctionConfig
from runtime.functions import FunctionHost

log = logging.getLogger("l8.fleet")

DEL_OPS = ("DEL", "PURGE")


def buckets(namespace: str) -> tuple[str, str]:
    """The Object Store bucket of the modules and the KV bucket of the specs."""
    return f"l8_{namespace}_wasm", f"l8_{namespace}_functions"


def cache_dir(config: Config) -> Path:
    return config.wasm.cache_path()


async def _open(bus: Bus, namespace: str, *, create: bool) -> tuple[Any, Any]:
    js = bus.nc.jetstream()
    obj_name, kv_name = buckets(namespace)
    try:
        obs = await js.object_store(obj_name)
    except BucketNotFoundError:
        if not create:
            raise
        obs = await js.create_object_store(obj_name)
    try:
        kv = await js.key_value(kv_name)
    except BucketNotFoundError:
        if not create:
            raise
        kv = await js.create_key_value(bucket=kv_name, history=1)
    return obs, kv


class DeployError(Exception):
    """A deploy, list or rm that cannot be done; the message says why."""


async def check(wasm: bytes, config: FunctionConfig, cache: Path | None) -> str:
    """Load ``wasm`` as a worker would, without serving it: its sha256, or ModuleError saying why not."""
    from handlers.functions import Function
    from handlers.wasm.host import DispatchError

    class _NoCalls:
        async def request(self, *args: Any, **kwargs: Any) -> bytes:
            raise DispatchError("FAILED_PRECONDITION", "no host calls while a module is checked")

        async def invoke(self, *args: Any, **kwargs: Any) -> bytes:
            raise DispatchError("FAILED_PRECONDITION", "no host calls while a module is checked")

    fn = Function(config.spec(), _NoCalls(), cache_dir=cache)
    await fn.start()
    try:
        version = await fn.load(wasm)
        return version.digest
    finally:
        await fn.stop()


async def deploy(bus: Bus, namespace: str, config: FunctionConfig, wasm: bytes, cache: Path | None) -> dict[str, Any]:
    """Check, store and publish a function; the stored spec. ModuleError for an invalid module."""
    sha = await check(wasm, config, cache)
    obs, kv = await _open(bus, namespace, create=True)
    old = await _spec(kv, config.name)
    obj = f"{config.name}.{sha[:32]}"
    await obs.put(obj, wasm)
    spec = {
        "config": config.model_dump(exclude={"module"}),
        "object": obj,
        "sha256": sha,
        "size": len(wasm),
    }
    revision = await kv.put(config.name, json.dumps(spec).encode())
    if old is not None and old.get("object") != obj:
        with contextlib.suppress(ObjectNotFoundError, NotFoundError):
            await obs.delete(old["object"])
    return {**spec, "revision": revision}


async def _spec(kv: Any, name: str) -> dict[str, Any] | None:
    try:
        entry = await kv.get(name)
    except (NotFoundError, KeyError):
        return None
    if entry.value is None or entry.operation in DEL_OPS:
        return None
    spec: dict[str, Any] = json.loads(entry.value)
    return spec


async def listing(bus: Bus, namespace: str) -> list[dict[str, Any]]:
    try:
        _obs, kv = await _open(bus, namespace, create=False)
    except BucketNotFoundError:
        return []
    try:
        names = await kv.keys()
    except NotFoundError:
        return []
    specs = [await _spec(kv, name) for name in sorted(names)]
    return [s for s in specs if s is not None]


async def remove(bus: Bus, namespace: str, name: str) -> None:
    try:
        obs, kv = await _open(bus, namespace, create=False)
    except BucketNotFoundError:
        raise DeployError(f"no function named {name!r} is deployed (namespace {namespace!r})") from None
    spec = await _spec(kv, name)
    if spec is None:
        raise DeployError(f"no function named {name!r} is deployed (namespace {namespace!r})")
    await kv.delete(name)
    with contextlib.suppress(ObjectNotFoundError, NotFoundError):
        await obs.delete(spec["object"])


@dataclass(slots=True)
class _Served:
    host: FunctionHost
    config: dict[str, Any]


class FleetWorker:
    """Serves every deployed function of a namespace; ``start``/``stop`` are idempotent."""

    def __init__(self, config: Config, workers: WorkerHost) -> None:
        self._config = config
        self._workers = workers
        self._bus = workers.bus
        self._ns = config.namespace
        self._cache = cache_dir(config)
        self._served: dict[str, _Served] = {}
        self._task: asyncio.Task[None] | None = None
        self._watcher: Any = None
        self._obs: Any = None
        self._state = "new"

    @property
    def names(self) -> list[str]:
        return sorted(self._served)

    async def start(self) -> None:
        if self._state != "new":
            return
        self._state = "running"
        self._obs, kv = await _open(self._bus, self._ns, create=True)
        self._watcher = await kv.watchall()
        self._task = asyncio.create_task(self._watch(), name="l8-fleet-watch")

    async def stop(self) -> None:
        if self._state != "running":
            self._state = "stopped"
            return
        self._state = "stopped"
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        served, self._served = list(self._served.values()), {}
        await asyncio.gather(*(s.host.stop() for s in served))

    async def _watch(self) -> None:
        async for entry in self._watcher:
            if entry is None:
                continue  # the end of the initial values
            try:
                if entry.operation in DEL_OPS or not entry.value:
                    await self._remove(entry.key)
                else:
                    await self._apply(entry.key, json.loads(entry.value))
            except Exception:
                log.exception("function %s: applying its deploy failed", entry.key)

    async def _remove(self, name: str) -> None:
        served = self._served.pop(name, None)
        if served is not None:
            await served.host.stop()
            log.info("function %s removed", name)

    async def _apply(self, name: str, spec: dict[str, Any]) -> None:
        from handlers.functions import ModuleError
        from handlers.wasm.engine import digest

        config = FunctionConfig.model_validate(spec["config"])
        try:
            wasm = (await self._obs.get(spec["object"])).data
        except (ObjectNotFoundError, NotFoundError):
            log.warning("function %s: module %s is gone (a newer deploy replaced it)", name, spec["object"])
            return
        if digest(wasm) != spec["sha256"]:
            log.error("function %s: module %s does not match its sha256; not served", name, spec["object"])
            return
        served = self._served.get(name)
        replace = served is None or served.config != spec["config"]
        host = served.host if served is not None and not replace else self._new_host(config)
        if replace:
            await host.start()
        try:
            version = await host.function.load(wasm)
        except ModuleError as exc:
            log.error("function %s: the deployed module is refused: %s", name, exc)
            if replace:
                await host.stop()
            return
        if replace:
            await host.open()
            self._served[name] = _Served(host, spec["config"])
            if served is not None:
                await served.host.stop()
        log.info(
            "function %s serves sha256 %s (%s)", name, version.digest[:12], "cached" if version.cached else "compiled"
        )

    def _new_host(self, config: FunctionConfig) -> FunctionHost:
        return FunctionHost(self._workers, self._config, config, cache_dir=self._cache)
