"""The app's health check (``app.health_check``), as daprd runs it.

``AppHealth`` probes the app every ``interval`` seconds (an HTTP app: ``GET <path>``, 2xx healthy;
a Dapr gRPC app: ``AppCallbackHealthCheck/HealthCheck``), each probe bounded by ``timeout``. The app
is unhealthy until a probe succeeds, and again after ``threshold`` failed probes in a row. While it
is unhealthy, ``Gated`` channels refuse every call at once with ``AppUnavailable`` naming the last
failure: the app's subscriptions and input bindings are not read, events wait with the pub/sub
workers (nothing is lost; they come once the app is healthy), and invocations answer UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from runtime.app_channel import AppChannel, AppSubscription, AppUnavailable, BindingAnswer, BulkEntry, Metadata

if TYPE_CHECKING:
    from handlers.pubsub_envelope import Event

log = logging.getLogger("l8.runtime.app")


class AppHealth:
    """``start``/``stop`` are idempotent; ``stop`` closes the probing channel."""

    def __init__(self, channel: AppChannel, *, interval: float, timeout: float, threshold: int) -> None:
        self._channel = channel
        self._interval = interval
        self._timeout = timeout
        self._threshold = threshold
        self.healthy = False
        self.reason = "not probed yet"
        self._failures = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    async def start(self) -> None:
        if self._task is None and not self._stopped:
            self._task = asyncio.create_task(self._probing(), name="l8-app-health")

    async def stop(self) -> None:
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._channel.close()

    async def wait_healthy(self) -> None:
        while not self.healthy:
            self._changed.clear()
            await self._changed.wait()

    async def probe(self) -> None:
        """One probe, and what it changes."""
        try:
            ok, why = await asyncio.wait_for(self._channel.health(timeout=self._timeout), self._timeout + 1)
        except TimeoutError:
            ok, why = False, f"no answer within {self._timeout:.3f}s"
        if ok:
            self._failures = 0
            if not self.healthy:
                log.info("the app at %s is healthy", self._channel.address)
                self._set(True, "")
            return
        self._failures += 1
        self.reason = why
        if self.healthy and self._failures >= self._threshold:
            log.warning(
                "the app at %s is unhealthy after %d failed probes: %s", self._channel.address, self._failures, why
            )
            self._set(False, why)

    def _set(self, healthy: bool, reason: str) -> None:
        self.healthy = healthy
        self.reason = reason
        self._changed.set()

    async def _probing(self) -> None:
        while not self._stopped:
            with contextlib.suppress(Exception):
                await self.probe()
            await asyncio.sleep(self._interval)


class Gated:
    """``channel`` while ``health`` says the app is healthy; AppUnavailable at once otherwise."""

    def __init__(self, channel: AppChannel, health: AppHealth) -> None:
        self._channel = channel
        self._health = health

    @property
    def address(self) -> str:
        return self._channel.address

    @property
    def protocol(self) -> str:
        return self._channel.protocol

    def _app(self) -> AppChannel:
        if not self._health.healthy:
            raise AppUnavailable(f"the app at {self.address} is unhealthy: {self._health.reason}")
        return self._channel

    async def on_invoke(self, request: bytes, *, timeout: float, metadata: Metadata) -> tuple[bytes, Metadata]:
        return await self._app().on_invoke(request, timeout=timeout, metadata=metadata)

    async def call_grpc(
        self, method: str, request: bytes, *, timeout: float, metadata: Metadata
    ) -> tuple[bytes, Metadata]:
        return await self._app().call_grpc(method, request, timeout=timeout, metadata=metadata)

    async def health(self, *, timeout: float) -> tuple[bool, str]:
        return self._health.healthy, self._health.reason

    async def list_subscriptions(self, *, timeout: float) -> list[AppSubscription] | None:
        return await self._app().list_subscriptions(timeout=timeout)

    async def on_event(self, event: Event, path: str, *, timeout: float, metadata: Metadata) -> int:
        return await self._app().on_event(event, path, timeout=timeout, metadata=metadata)

    async def on_bulk_event(
        self, pubsub: str, topic: str, path: str, entries: Sequence[BulkEntry], *, timeout: float
    ) -> dict[str, int]:
        return await self._app().on_bulk_event(pubsub, topic, path, entries, timeout=timeout)

    async def list_input_bindings(self, *, timeout: float) -> list[str] | None:
        return await self._app().list_input_bindings(timeout=timeout)

    async def on_binding_event(
        self, name: str, data: bytes, metadata: dict[str, str], *, timeout: float
    ) -> BindingAnswer:
        return await self._app().on_binding_event(name, data, metadata, timeout=timeout)

    async def close(self) -> None:
        await self._channel.close()
