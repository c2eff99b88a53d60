"""Health of the runtime and its components, as the actuator and gRPC health report it."""

from __future__ import annotations

import enum
from collections.abc import Callable
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
