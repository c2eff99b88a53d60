"""Routing events to their targets over the bus: the pub/sub workers' ``Router``.

A subscription names a kind of target; ``TARGETS`` resolves each kind to the bus subject its events
go to: ``app`` (an app's sidecars, which push them to the app), ``stream`` (the sidecars holding a
streaming subscription of the app). Other kinds of target register their own resolver
(``register_target``), and from then on subscriptions of that kind are delivered to whoever
answers the subject it names, with the same settling rules. Local dispatch serves a target in the
same process as its worker without the server round trip, with the bus path's limits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from bus import Bus, BusError, subjects
from bus.errors import BusClosed, BusTimeout, NoResponders, PayloadTooLarge, RemoteError
from handlers.pubsub_delivery import Delivery, Outcome
from handlers.pubsub_specs import Spec
from runtime import event_frames, observe

log = logging.getLogger("l8.runtime.events")

# (namespace, spec) -> the subject its events are delivered on
TargetResolver = Callable[[str, Spec], str]

TARGETS: dict[str, TargetResolver] = {
    "app": lambda ns, spec: subjects.event_subject(ns, spec.app, spec.pubsub, spec.topic, "event"),
    "stream": lambda ns, spec: subjects.event_subject(ns, spec.app, spec.pubsub, spec.topic, "stream"),
}


def register_target(kind: str, resolver: TargetResolver) -> None:
    """Deliver subscriptions whose target is ``kind`` to the subject ``resolver`` names."""
    if not subjects.TOKEN.match(kind):
        raise ValueError(f"a target kind is one subject token, not {kind!r}")
    TARGETS[kind] = resolver


class BusRouter:
    def __init__(self, bus: Bus, namespace: str) -> None:
        self._bus = bus
        self._ns = namespace
        self._subjects: dict[tuple[str, str, str, str], str] = {}

    def subject(self, spec: Spec) -> str:
        key = (spec.target, spec.app, spec.pubsub, spec.topic)
        subject = self._subjects.get(key)
        if subject is None:
            resolver = TARGETS.get(spec.target)
            if resolver is None:
                raise LookupError(f"no kind of target is called {spec.target!r}; known: {', '.join(TARGETS)}")
            if len(self._subjects) > 10_000:
                self._subjects.clear()  # a bound, not a cache policy: subjects are cheap to build
            subject = self._subjects[key] = resolver(self._ns, spec)
        return subject

    async def deliver(self, spec: Spec, batch: Sequence[Delivery]) -> list[tuple[Outcome, str]]:
        try:
            subject = self.subject(spec)
        except LookupError as exc:
            return [(Outcome.UNREACHABLE, str(exc))] * len(batch)
        payload, headers = event_frames.request(batch, spec.topic, spec.timeout, spec.bulk)
        if observe.OBSERVER is not None:
            observe.inject(headers)  # the delivery's span (runtime/observe.py), parent of the target's
        try:
            reply = await self._bus.exchange(subject, payload, timeout=spec.timeout, headers=headers)
        except NoResponders:
            return _all(batch, Outcome.UNREACHABLE, f"nothing serves {spec.target} {spec.app!r} (on {subject})")
        except BusTimeout:
            return _all(batch, Outcome.RETRY, f"{spec.target} {spec.app!r} gave no answer within {spec.timeout:g}s")
        except BusClosed:
            return _all(batch, Outcome.UNREACHABLE, "the bus is not connected")
        except PayloadTooLarge as exc:
            if len(batch) > 1:
                half = len(batch) // 2
                return [*await self.deliver(spec, batch[:half]), *await self.deliver(spec, batch[half:])]
            return _all(batch, Outcome.DROP, f"the event cannot cross the bus: {exc}")
        except RemoteError as exc:
            return _all(batch, _outcome_of_code(exc.code), f"{spec.target} {spec.app!r}: {exc.code}: {exc.message}")
        except BusError as exc:
            return _all(batch, Outcome.UNREACHABLE, str(exc))
        found = event_frames.outcomes_of(reply.data, reply.headers, len(batch))
        if found is None:
            return _all(batch, Outcome.RETRY, f"{spec.target} {spec.app!r} answered something that is not a verdict")
        return found


def _all(batch: Sequence[Delivery], outcome: Outcome, why: str) -> list[tuple[Outcome, str]]:
    return [(outcome, why)] * len(batch)


def _outcome_of_code(code: str) -> Outcome:
    if code == "UNAVAILABLE":
        return Outcome.UNREACHABLE
    if code in ("UNIMPLEMENTED", "INVALID_ARGUMENT"):
        # The target cannot take this event at all (a frame it cannot read, a topic it does not
        # serve): redelivering it would not help.
        return Outcome.DROP
    return Outcome.RETRY
