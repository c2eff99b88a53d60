"""A sidecar's subscriptions, announced on the bus for the pub/sub workers to deliver.

They come from three places: the config's ``subscriptions``, the app's own declaration (asked at
start, again and again until the app answers, and then now and then, so an app that restarts with
other subscriptions is heard), and streaming subscriptions opened through the fronts. The app's
input bindings (``list_input_bindings``, asked with its subscriptions) are announced the same way,
to each binding's workers, as subscriptions of target kind ``binding`` (runtime/binding_events.py).
The ``Announcer`` sends each component's workers the full list of this sidecar's subscriptions
on it (op ``announce``, idempotent) whenever it changes and before its lease on the registry runs
out, and withdraws it on stop. A subscription l8 cannot use is logged at ERROR and listed with the
reason, never dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import orjson

from bridges.errors import InvalidArgument
from bus.subjects import request_subject
from handlers.pubsub_specs import MAX_CONCURRENCY as MAX_SPEC_CONCURRENCY
from handlers.pubsub_specs import Spec, SpecError, dead_letter_default, metadata_int
from runtime.app_channel import AppCallError, AppChannel, AppSubscription
from runtime.binding_events import spec_for_binding
from runtime.config import Config, SubscriptionConfig
from runtime.forward import Forwarder, FrontError

log = logging.getLogger("l8.runtime.subscriptions")

LEASE = 15.0  # seconds an announcement outlives this sidecar (the workers' board lease)
_RENEW = LEASE / 3
_ASK_AGAIN = (0.2, 2.0)  # backoff while the app does not answer its subscriptions
_REFRESH = 10.0  # then how often the app is asked again
_CALL_TIMEOUT = 2.0


def spec_from_config(sub: SubscriptionConfig, app_id: str, timeout: float) -> Spec:
    return Spec(
        app=app_id,
        pubsub=sub.pubsub,
        topic=sub.topic,
        rules=tuple((r.match, r.path) for r in sub.rules),
        default_route=sub.route,
        dead_letter_topic=sub.deadLetterTopic or None,
        bulk=sub.bulk.enabled,
        bulk_max_messages=sub.bulk.maxMessages,
        bulk_max_await_ms=sub.bulk.maxAwaitMs,
        concurrency=sub.concurrency,
        max_deliveries=dead_letter_default(sub.maxDeliveries, sub.deadLetterTopic),
        backoff_initial=sub.backoff.initial,
        backoff_max=sub.backoff.max,
        timeout=timeout,
        origin="config",
    )


def spec_from_app(sub: AppSubscription, app_id: str, timeout: float) -> Spec:
    """The app's declaration; its metadata may carry l8's ``concurrency`` and ``maxDeliveries``."""
    meta = sub.metadata
    rules = tuple(sub.rules)
    return Spec(
        app=app_id,
        pubsub=sub.pubsub,
        topic=sub.topic,
        rules=rules,
        # An app's rules without a default leave unmatched events undelivered, as in Dapr.
        default_route=sub.default_route if sub.default_route or not rules else None,
        dead_letter_topic=sub.dead_letter_topic or None,
        bulk=sub.bulk,
        bulk_max_messages=sub.bulk_max_messages or 100,
        bulk_max_await_ms=sub.bulk_max_await_ms or 1000,
        concurrency=metadata_int(meta, "concurrency", 32, 1, MAX_SPEC_CONCURRENCY) or 32,
        max_deliveries=dead_letter_default(
            metadata_int(meta, "maxDeliveries", None, 0, 1_000_000), sub.dead_letter_topic
        ),
        timeout=timeout,
        origin="app",
    )


def spec_for_stream(
    pubsub: str, topic: str, dead_letter_topic: str | None, max_in_flight: int, app_id: str, timeout: float
) -> Spec:
    return Spec(
        app=app_id,
        pubsub=pubsub,
        topic=topic,
        target="stream",
        dead_letter_topic=dead_letter_topic,
        concurrency=max_in_flight,
        max_deliveries=dead_letter_default(None, dead_letter_topic),
        timeout=timeout,
        origin="stream",
    )


class Announcer:
    """``start``/``stop`` are idempotent. A sidecar's announces for its app; with ``app_id`` and
    ``specs`` one announces those specs for that app id instead (a function's, under its name)."""

    def __init__(
        self,
        config: Config,
        forwarder: Forwarder,
        app: AppChannel | None,
        *,
        app_id: str | None = None,
        specs: Sequence[Spec] | None = None,
    ) -> None:
        self._config = config
        self._forwarder = forwarder
        self._app = app
        self._bindings = frozenset(forwarder.components("bindings"))
        self.app_id = app_id or config.app.id
        self._given = None if specs is None else list(specs)
        self.instance = uuid.uuid4().hex[:16]
        self._timeout = config.delivery_timeout
        # origin -> (pubsub, target, topic) -> spec; "binding": the app's input bindings
        self._specs: dict[str, dict[tuple[str, str, str], Spec]] = {"config": {}, "app": {}, "binding": {}}
        self._announced: set[str] = set()  # every component announced to, withdrawn from on stop
        self._streams: dict[tuple[str, str, str], tuple[Spec, int]] = {}  # -> (spec, open streams)
        self.rejected: dict[tuple[str, str, str], dict[str, str]] = {}  # (origin, pubsub, topic) -> row
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._unserved: dict[str, str] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._stopped = False

    # ---- what is announced ----

    def specs(self) -> list[Spec]:
        found: dict[tuple[str, str, str], Spec] = {}
        for origin in ("binding", "app", "config"):  # the config's declaration wins over the app's
            found.update(self._specs[origin])
        for key, (spec, _n) in self._streams.items():
            found.setdefault(key, spec)
        return list(found.values())

    def _pubsubs(self) -> set[str]:
        return {spec.pubsub for spec in self.specs()}

    def _reject(self, origin: str, pubsub: str, topic: str, why: str) -> None:
        key = (origin, pubsub, topic)
        if self.rejected.get(key, {}).get("reason") != why:
            log.error("the %s's subscription to %s/%s is not usable: %s", origin, pubsub, topic[:64], why)
        self.rejected[key] = {"pubsub": pubsub, "topic": topic, "origin": origin, "reason": why}

    def _set(self, origin: str, specs: list[Spec]) -> None:
        before = self._specs[origin]
        after = {(s.pubsub, s.target, s.topic): s for s in specs}
        if after == before:
            return
        self._specs[origin] = after
        self._dirty |= {s.pubsub for s in before.values()} | {s.pubsub for s in after.values()}
        self._wake.set()

    def _accept(self, origin: str, sub: Any) -> Spec | None:
        configured = self._forwarder.components("pubsub")
        try:
            if isinstance(sub, SubscriptionConfig):
                spec = spec_from_config(sub, self.app_id, self._timeout)
            else:
                if sub.pubsub not in configured:
                    raise SpecError(
                        f"pub/sub {sub.pubsub[:64]!r} is not configured; configured: {', '.join(configured) or 'none'}"
                    )
                spec = spec_from_app(sub, self.app_id, self._timeout)
        except SpecError as exc:
            self._reject(origin, sub.pubsub, sub.topic, str(exc))
            return None
        self.rejected.pop((origin, spec.pubsub, spec.topic), None)
        return spec

    def open_stream(self, pubsub: str, topic: str, dead_letter_topic: str | None, max_in_flight: int) -> Spec:
        """Announce a streaming subscription; InvalidArgument when it cannot be one."""
        key = (pubsub, "app", topic)
        if any(key in self._specs[o] for o in ("config", "app")):
            raise InvalidArgument(f"app {self.app_id!r} already subscribes to topic {topic[:64]!r} of {pubsub!r}")
        try:
            spec = spec_for_stream(pubsub, topic, dead_letter_topic, max_in_flight, self.app_id, self._timeout)
        except SpecError as exc:
            raise InvalidArgument(str(exc)) from None
        skey = (pubsub, "stream", topic)
        known = self._streams.get(skey)
        # Streams of one topic share one announcement; the first one's settings hold for all.
        self._streams[skey] = (known[0] if known else spec, (known[1] if known else 0) + 1)
        if known is None:
            self._dirty.add(pubsub)
            self._wake.set()
        return self._streams[skey][0]

    def close_stream(self, spec: Spec) -> None:
        skey = (spec.pubsub, "stream", spec.topic)
        known = self._streams.get(skey)
        if known is None:
            return
        if known[1] > 1:
            self._streams[skey] = (known[0], known[1] - 1)
            return
        del self._streams[skey]
        self._dirty.add(spec.pubsub)
        self._wake.set()

    # ---- lifecycle ----

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self._given is not None:
            specs = self._given
        else:
            specs = [s for s in (self._accept("config", sub) for sub in self._config.subscriptions) if s is not None]
        self._set("config", specs)
        self._tasks.append(asyncio.create_task(self._announcing(), name="l8-announce-subscriptions"))
        if self._app is not None:
            self._tasks.append(asyncio.create_task(self._discovering(), name="l8-list-topic-subscriptions"))

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if not self._started:
            return
        payload = orjson.dumps({"instance": self.instance})
        for component in sorted({*self._forwarder.components("pubsub"), *self._pubsubs(), *self._announced}):
            with contextlib.suppress(FrontError):
                await self._call(component, "withdraw", payload, timeout=1.0)

    async def _call(self, component: str, op: str, payload: bytes, timeout: float = _CALL_TIMEOUT) -> bytes:
        # Component names are unique across kinds: an input binding's are the bindings api's. The
        # announcer's app id is the caller token: workers take the subscriptions' owner from it.
        api, noun = ("bindings", "binding") if component in self._bindings else ("pubsub", "pub/sub component")
        subject = request_subject(self._forwarder.namespace, api, component, op, self.app_id)
        return await self._forwarder.call(subject, payload, timeout=timeout, what=f"{noun} {component!r}")

    async def _announce(self, pubsub: str) -> bool:
        specs = [s.to_dict() for s in self.specs() if s.pubsub == pubsub]
        payload = orjson.dumps({"instance": self.instance, "specs": specs})
        self._announced.add(pubsub)
        try:
            await self._call(pubsub, "announce", payload)
        except FrontError as exc:
            if self._unserved.get(pubsub) != exc.message:
                log.warning("subscriptions on pub/sub %r wait for a worker to take them: %s", pubsub, exc.message)
            self._unserved[pubsub] = exc.message
            return False
        if self._unserved.pop(pubsub, None) is not None:
            log.info("subscriptions on pub/sub %r are announced", pubsub)
        return True

    async def _announcing(self) -> None:
        renew_at = 0.0
        while not self._stopped:
            now = time.monotonic()
            if now >= renew_at:
                self._dirty |= self._pubsubs() | set(self._unserved)
                renew_at = now + _RENEW
            dirty, self._dirty = self._dirty, set()
            failed = {p for p in await asyncio.gather(*(self._one(p) for p in dirty)) if p is not None}
            self._dirty |= failed
            self._wake.clear()
            wait = 1.0 if self._dirty else max(0.0, renew_at - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _one(self, pubsub: str) -> str | None:
        return None if await self._announce(pubsub) else pubsub

    async def _discovering(self) -> None:
        assert self._app is not None
        delay = _ASK_AGAIN[0]
        while not self._stopped:
            try:
                found = await self._app.list_subscriptions(timeout=5.0)
                bindings = await self._app.list_input_bindings(timeout=5.0)
            except AppCallError as exc:
                log.debug("the app's subscriptions: %s; asking again in %.1fs", exc.message, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _ASK_AGAIN[1])
                continue
            delay = _ASK_AGAIN[0]
            specs = [s for s in (self._accept("app", sub) for sub in found or ()) if s is not None]
            self._set("app", specs)
            self._set("binding", [s for s in (self._accept_binding(name) for name in bindings or ()) if s is not None])
            await asyncio.sleep(_REFRESH)

    def _accept_binding(self, name: str) -> Spec | None:
        try:
            spec = spec_for_binding(self._config, name)
        except SpecError as exc:
            self._reject("binding", name, name, str(exc))
            return None
        self.rejected.pop(("binding", name, name), None)
        return spec

    # ---- what metadata shows ----

    async def report(self) -> list[dict[str, Any]]:
        """Every subscription of this sidecar with what the workers say of it."""
        rows: list[dict[str, Any]] = []
        statuses: dict[str, dict[str, Any]] = {}
        for pubsub in sorted(self._pubsubs()):
            try:
                statuses[pubsub] = orjson.loads(await self._call(pubsub, "status", b"{}", timeout=1.0))
            except (FrontError, orjson.JSONDecodeError) as exc:
                statuses[pubsub] = {"error": getattr(exc, "message", str(exc))}
        for spec in sorted(self.specs(), key=lambda s: (s.pubsub, s.topic)):
            row: dict[str, Any] = {**spec.to_dict(), "state": "announced", "reason": "", "workers": []}
            status = statuses.get(spec.pubsub, {})
            if "error" in status:
                row["state"], row["reason"] = "waiting", f"no pub/sub worker answers: {status['error']}"
            elif spec.pubsub in self._unserved:
                row["state"], row["reason"] = "waiting", self._unserved[spec.pubsub]
            for worker, report in (status.get("workers") or {}).items():
                loop = (report.get("loops") or {}).get(f"{spec.target}:{spec.topic}")
                if loop is not None:
                    row["workers"].append(worker)
                    row["state"], row["reason"] = _worse((row["state"], row["reason"]), loop)
            rows.append(row)
        rows.extend({**rejected, "state": "failing", "workers": []} for rejected in self.rejected.values())
        return rows


_RANK = {"failing": 4, "unreachable": 3, "starting": 2, "delivering": 1}


def _worse(current: tuple[str, str], loop: dict[str, Any]) -> tuple[str, str]:
    """Of the workers' reports, the one that needs attention; any delivering worker beats "announced"."""
    state, reason = str(loop.get("state", "")), str(loop.get("reason", ""))
    if _RANK.get(state, 0) > _RANK.get(current[0], 0):
        return state, reason
    return current
