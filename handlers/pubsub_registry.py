"""The subscription registry as a pub/sub worker keeps it, and the delivery loops it drives.

Sidecars announce their subscriptions to the workers of each pub/sub component (the ``announce``
op); a worker posts each announcement on the registry, a leased board on the bus, under
``decl.<app>.<component>.<instance>``. Every worker of the component watches the board and runs one
delivery loop per announced (target kind, target, topic): an announcement that is withdrawn or
whose lease runs out (its sidecar died) stops its loops unless another instance of the app still
announces them. Workers post what their loops are doing under ``status.<app>.<component>.<worker>``,
leased too, so a dead worker's status goes with it; sidecars read both through the ``status`` op.

A loop that fails (the broker refuses the subscription, a bug) is logged, reported as failing, and
started again with backoff; health shows the component as down meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from bridges.protocols import EventSource
from handlers.pubsub_delivery import DeliveryLoop, Router
from handlers.pubsub_specs import Spec, SpecError

log = logging.getLogger("l8.handlers.pubsub.registry")

_RESTART = (1.0, 30.0)
_STATUS_DEBOUNCE = 0.2


class Board(Protocol):
    """A leased notice board (the runtime gives the bus's, bus/board.py)."""

    lease: float

    async def post(self, key: str, value: bytes) -> None: ...

    async def remove(self, key: str) -> None: ...

    async def watch(self, pattern: str, sink: Callable[[str, bytes | None], None]) -> Any:
        """Returns an object with ``async stop()``."""
        ...


# (name, up, reason): how a component's deliveries show in health.
HealthHook = Callable[[str, bool, str], None]


def decl_key(app: str, component: str, instance: str) -> str:
    return f"decl.{app}.{component}.{instance}"


def status_key(app: str, component: str, worker: str) -> str:
    return f"status.{app}.{component}.{worker}"


@dataclass(slots=True)
class _State:
    state: str
    reason: str
    since: float


@dataclass(slots=True)
class _Running:
    loop: DeliveryLoop
    task: asyncio.Task[None]


class Deliveries:
    """The delivery loops of one pub/sub component in this worker; ``start``/``stop`` are idempotent."""

    def __init__(
        self,
        component: str,
        bridge: EventSource,
        router: Router,
        board: Board,
        worker_id: str,
        health: HealthHook | None = None,
    ) -> None:
        self.component = component
        self.board = board
        self.worker_id = worker_id
        self._bridge = bridge
        self._router = router
        self._health = health
        self._decls: dict[tuple[str, str], tuple[float, list[Spec]]] = {}  # (app, instance) -> (at, specs)
        self._statuses: dict[tuple[str, str], dict[str, Any]] = {}  # (app, worker) -> posted status
        self._loops: dict[tuple[str, str, str], _Running] = {}
        self._states: dict[tuple[str, str, str], _State] = {}
        self._conflicts: dict[tuple[str, str, str], str] = {}
        self._watch: Any = None
        self._changed = asyncio.Event()
        self._status_dirty: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._started = False

    # ---- what sidecars ask ----

    def declared(self, app: str) -> list[dict[str, Any]]:
        """Every instance's announced subscriptions of ``app``, newest first."""
        out = []
        for (found_app, instance), (at, specs) in sorted(self._decls.items(), key=lambda kv: -kv[1][0]):
            if found_app == app:
                out.append({"instance": instance, "at": at, "specs": [s.to_dict() for s in specs]})
        return out

    def statuses(self, app: str) -> dict[str, dict[str, Any]]:
        """What each worker reports of ``app``'s loops: worker id -> {topic: {state, reason, since}}."""
        return {worker: status for (found, worker), status in self._statuses.items() if found == app}

    # ---- lifecycle ----

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._tasks.append(asyncio.create_task(self._reconciler(), name=f"l8-deliveries-{self.component}"))
        self._tasks.append(asyncio.create_task(self._poster(), name=f"l8-delivery-status-{self.component}"))
        self._watch = await self.board.watch(f"*.*.{self.component}.*", self._notice)

    async def stop(self, timeout: float = 30.0) -> None:
        if not self._started or self._stopping:
            self._stopping = True
            return
        self._stopping = True
        if self._watch is not None:
            await self._watch.stop()
        running = list(self._loops.values())
        self._loops.clear()
        for r in running:
            r.loop.stop()
        if running:
            _done, pending = await asyncio.wait([r.task for r in running], timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for app in {k[1] for k in self._states}:
            try:
                await self.board.remove(status_key(app, self.component, self.worker_id))
            except Exception as exc:  # the bus may be gone; the lease ends it anyway
                log.debug("removing the delivery status of %s: %s", app, exc)

    # ---- the board ----

    def _notice(self, key: str, value: bytes | None) -> None:
        parts = key.split(".")
        if len(parts) != 4:
            return
        kind, app, _component, owner = parts
        if kind == "decl":
            if value is None:
                self._decls.pop((app, owner), None)
            else:
                parsed = _parse_decl(value, app, self.component)
                if parsed is None:
                    return
                self._decls[(app, owner)] = parsed
            self._changed.set()
        elif kind == "status":
            if value is None:
                self._statuses.pop((app, owner), None)
            else:
                try:
                    self._statuses[(app, owner)] = orjson.loads(value)
                except orjson.JSONDecodeError:
                    return

    def _desired(self) -> dict[tuple[str, str, str], Spec]:
        """One spec per loop: the newest announcement's, a push subscription before a stream."""
        desired: dict[tuple[str, str, str], Spec] = {}
        self._conflicts.clear()
        for _at, specs in sorted(self._decls.values(), key=lambda v: v[0]):
            for spec in specs:
                desired[spec.key] = spec
        # One consumer group per (app, component, topic): a push subscription and a stream of the
        # same app on the same topic would split its events, so the push one wins.
        for key in [k for k in desired if k[0] != "app" and ("app", k[1], k[2]) in desired]:
            self._conflicts[key] = f"app {key[1]!r} already has a push subscription to topic {key[2]!r}"
            del desired[key]
        return desired

    async def _reconciler(self) -> None:
        while not self._stopping:
            await self._changed.wait()
            self._changed.clear()
            try:
                await self._reconcile()
            except Exception:
                log.exception("pub/sub %r: updating its deliveries failed", self.component)

    async def _reconcile(self) -> None:
        desired = self._desired()
        for key, why in self._conflicts.items():
            self._set_state(key, "failing", why)
        gone = [k for k, r in self._loops.items() if desired.get(k) != r.loop.spec]
        stopping = [self._loops.pop(key) for key in gone]
        for running in stopping:
            running.loop.stop()
        await asyncio.gather(*(r.task for r in stopping), return_exceptions=True)
        for key in gone:
            if key not in desired:
                self._states.pop(key, None)
                self._status_dirty.add(key[1])
        for key, spec in desired.items():
            if key not in self._loops and not self._stopping:
                loop = DeliveryLoop(self.component, spec, self._bridge, self._router, self._report)
                task = asyncio.create_task(self._supervise(loop), name=f"l8-deliver-{self.component}-{spec.topic}")
                self._loops[key] = _Running(loop, task)
        self._update_health()

    async def _supervise(self, loop: DeliveryLoop) -> None:
        delay = _RESTART[0]
        while not loop.stopping:
            began = time.monotonic()
            try:
                await loop.run()
            except Exception as exc:
                log.error(
                    "pub/sub %r: delivering topic %r to %s %r failed, starting again in %.0fs: %s",
                    self.component,
                    loop.spec.topic,
                    loop.spec.target,
                    loop.spec.app,
                    delay,
                    exc,
                    exc_info=not _expected(exc),
                )
                self._report(loop.spec, "failing", f"{type(exc).__name__}: {exc}")
                if time.monotonic() - began > _RESTART[1]:
                    delay = _RESTART[0]  # it ran a good while: a new fault, not the same one
                await loop.wait_stopping(delay)
                delay = min(delay * 2, _RESTART[1])

    # ---- status ----

    def _report(self, spec: Spec, state: str, reason: str) -> None:
        key = spec.key
        if state == "stopped":
            return
        current = self._states.get(key)
        if current is not None and current.state == state and current.reason == reason:
            return
        self._set_state(key, state, reason)

    def _set_state(self, key: tuple[str, str, str], state: str, reason: str) -> None:
        self._states[key] = _State(state, reason[:500], time.time())
        self._status_dirty.add(key[1])
        self._update_health()

    def _update_health(self) -> None:
        if self._health is None:
            return
        failing = [(k, s) for k, s in self._states.items() if s.state == "failing" and k in self._loops]
        name = f"{self.component}-delivery"
        if failing:
            key, state = failing[0]
            self._health(name, False, f"topic {key[2]!r} for {key[1]!r}: {state.reason}")
        else:
            self._health(name, True, "")

    def _status_of(self, app: str) -> bytes:
        loops = {
            f"{k[0]}:{k[2]}": {"target": k[0], "topic": k[2], "state": s.state, "reason": s.reason, "since": s.since}
            for k, s in self._states.items()
            if k[1] == app
        }
        return orjson.dumps({"worker": self.worker_id, "loops": loops})

    async def _poster(self) -> None:
        """Post changed statuses soon, and every status before its lease runs out."""
        renew_at = time.monotonic() + self.board.lease / 3
        while not self._stopping:
            await asyncio.sleep(_STATUS_DEBOUNCE)
            due = time.monotonic() >= renew_at
            apps = {k[1] for k in self._states} if due else set(self._status_dirty)
            self._status_dirty.clear()
            if due:
                renew_at = time.monotonic() + self.board.lease / 3
            for app in apps:
                try:
                    await self.board.post(status_key(app, self.component, self.worker_id), self._status_of(app))
                except Exception as exc:
                    log.debug("posting the delivery status of %s failed: %s", app, exc)
                    self._status_dirty.add(app)


def _parse_decl(value: bytes, app: str, component: str) -> tuple[float, list[Spec]] | None:
    try:
        raw = orjson.loads(value)
        at = float(raw.get("at", 0.0))
        specs = [Spec.from_dict(s) for s in raw.get("specs", [])]
    except (orjson.JSONDecodeError, SpecError, AttributeError, TypeError, ValueError) as exc:
        log.warning("an unreadable announcement of app %s on pub/sub %r is ignored: %s", app, component, exc)
        return None
    return at, [s for s in specs if s.app == app and s.pubsub == component]


def _expected(exc: BaseException) -> bool:
    from bridges.errors import L8Error

    return isinstance(exc, L8Error | OSError)
