"""The sidecar's supervisor: every long-running task of the process, and one budget for shutdown.

A supervised task that crashes is logged with its traceback and its health indicator goes DOWN
with the error as the reason; unless it was started with ``restart=False`` it is started again
after a backoff that doubles up to ``max_backoff``, and the task itself reports UP once it works
again (``Health.set``). Watchers, committers and keep-alives register here with ``spawn``. Delivery
loops do not: each pub/sub component's ``Deliveries`` (handlers/pubsub_registry.py) restarts its own
loops with backoff and reports them to the same ``Health`` (``<component>-delivery``), since a loop's
restart must follow the registry (a withdrawn subscription is not started again); they are stopped
first in the shutdown order (runtime/shutdown.py).

``Budget`` spreads one overall shutdown timeout over the steps of an ordered shutdown: each step
gets what is left, a step that overruns is cut and logged, and the next one still runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from runtime.health import Health, Status

log = logging.getLogger("l8.supervisor")

TaskFactory = Callable[[], Awaitable[None]]


class Supervisor:
    """Owns named tasks; ``stop()`` cancels and awaits them all. Idempotent."""

    def __init__(self, health: Health, *, backoff: float = 0.2, max_backoff: float = 10.0) -> None:
        self._health = health
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self.crashes: dict[str, int] = {}

    @property
    def names(self) -> list[str]:
        return sorted(self._tasks)

    def spawn(self, name: str, factory: TaskFactory, *, restart: bool = True) -> None:
        """Run ``factory()`` as task ``name`` until it returns, the supervisor stops, or (with
        ``restart=False``) it crashes once."""
        if self._stopping:
            raise RuntimeError("the supervisor is stopping")
        if name in self._tasks and not self._tasks[name].done():
            raise RuntimeError(f"task {name!r} is already running")
        self._tasks[name] = asyncio.get_running_loop().create_task(self._run(name, factory, restart), name=name)

    async def _run(self, name: str, factory: TaskFactory, restart: bool) -> None:
        delay = self._backoff
        while True:
            began = time.monotonic()
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.crashes[name] = self.crashes.get(name, 0) + 1
                log.exception("task %s crashed%s", name, "; restarting it" if restart else "")
                self._health.set(name, Status.DOWN, f"crashed: {type(exc).__name__}: {exc}"[:300])
                if not restart:
                    return
            if time.monotonic() - began > self._max_backoff:
                delay = self._backoff  # it ran well for a while: start the backoff over
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_backoff)

    async def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                log.warning("task %s did not stop within %.1fs", task.get_name(), timeout)
        self._tasks.clear()


class Budget:
    """One overall timeout for an ordered shutdown."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def left(self, at_most: float | None = None) -> float:
        left = max(self.deadline - time.monotonic(), 0.05)
        return left if at_most is None else min(left, at_most)

    async def step(self, name: str, stop: Callable[[float], Awaitable[None]]) -> None:
        """Run ``stop(seconds it may take)``; cut it when the budget runs out, and log any failure."""
        left = self.left()
        try:
            async with asyncio.timeout(left):
                await stop(left)
        except TimeoutError:
            log.warning("stopping %s took longer than the shutdown budget (%.1fs); going on", name, self.seconds)
        except Exception as exc:
            log.warning("stopping %s failed: %s: %s", name, type(exc).__name__, exc)
