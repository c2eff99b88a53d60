"""Health of the runtime and its components, as the actuator and gRPC health report it."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


class Status(enum.StrEnum):
    INIT = "INIT"
    UP = "UP"
    DOWN = "DOWN"


@dataclass(slots=True)
class Indicator:
    status: Status = Status.INIT
    reason: str = ""


@dataclass
class Health:
    """``runtime_startup`` is INIT until every server listens, DOWN once shutdown begins."""

    indicators: dict[str, Indicator] = field(default_factory=lambda: {"runtime_startup": Indicator()})
    listeners: list[Callable[[Status], None]] = field(default_factory=list)

    def set(self, name: str, status: Status, reason: str = "") -> None:
        """Report ``name``'s state: the one hook for every part that has a health (components,
        the bus, supervised tasks, delivery loops). Listeners hear when the overall status changes."""
        current = self.indicators.get(name)
        if current is not None and current.status is status and current.reason == reason:
            return
        before = self.status
        self.indicators[name] = Indicator(status, reason)
        after = self.status
        if after is not before:
            for listener in self.listeners:
                listener(after)

    @property
    def status(self) -> Status:
        statuses = [i.status for i in self.indicators.values()]
        if Status.DOWN in statuses:
            return Status.DOWN
        if Status.INIT in statuses:
            return Status.INIT
        return Status.UP

    @property
    def ready(self) -> bool:
        return self.status is Status.UP

    def report(self) -> dict[str, object]:
        return {
            "status": self.status.value,
            "components": {
                name: {"status": i.status.value, **({"details": {"reason": i.reason}} if i.reason else {})}
                for name, i in self.indicators.items()
            },
        }


Ping = Callable[[], Awaitable[None]]


class HealthMonitor:
    """Probes each component's backend every ``interval`` seconds, and the bus connection.

    A probe is the bridge's ``ping()`` (a cheap round trip to its backend: a Redis PING, a
    JetStream stream info); one that fails or takes longer than ``timeout`` turns the component's
    indicator DOWN with the error as the reason, the next that passes turns it UP again. The bus
    indicator follows the connection's own events too (runtime/sidecar.py), so it flips at once.
    """

    def __init__(
        self,
        health: Health,
        probes: dict[str, Ping],
        *,
        bus: Callable[[], bool] | None = None,
        interval: float = 5.0,
        timeout: float = 2.0,
    ) -> None:
        self._health = health
        self._probes = probes
        self._bus = bus
        self.interval = interval
        self.timeout = timeout
        self.rounds = 0

    async def probe_once(self) -> None:
        if self._bus is not None and not self._bus():
            self._health.set("bus", Status.DOWN, "the bus is not connected")
        probes = dict(self._probes)  # components may come and go while the probes run (runtime/reload.py)
        results = await asyncio.gather(*(self._probe(name, ping) for name, ping in probes.items()))
        for name, reason in zip(probes, results, strict=True):
            if name not in self._probes:
                continue
            if self._bus is not None and not self._bus() and reason:
                reason = f"{reason} (the bus is not connected)"
            self._health.set(name, Status.DOWN if reason else Status.UP, reason or "")
        self.rounds += 1

    async def _probe(self, name: str, ping: Ping) -> str | None:
        try:
            async with asyncio.timeout(self.timeout):
                await ping()
        except TimeoutError:
            return f"its backend did not answer within {self.timeout:g}s"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"[:300]
        return None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.probe_once()
