"""The ops through which sidecars tell a component's workers what to deliver: ``announce``,
``withdraw`` and ``status``. Pub/sub components and input bindings both serve them, each on its
own subjects, over the one registry board (handlers/pubsub_registry.py).

An announcement is an instance's full list of subscriptions (``Spec``s) on the component, posted
on the board under its app and instance and replaced by the next; only the caller's own app may be
announced, and only subscriptions of this component. Until ``deliveries`` are attached (the
process does not deliver this component's events) the ops answer UNIMPLEMENTED.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from bridges.errors import BackendUnavailable, InvalidArgument, PermissionDenied, Unimplemented
from handlers.base import TOKEN, RequestInfo
from handlers.pubsub_registry import Deliveries, decl_key
from handlers.pubsub_specs import Spec, SpecError

_EMPTY = b""
MAX_ANNOUNCED = 1000
BINDING = "binding"  # the target kind of an input binding's subscriptions
_INSTANCE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Announcements:
    """The registry ops of one component; ``binding`` says it is an input binding, whose only
    subscriptions are of target kind ``binding`` (a pub/sub component takes every other kind)."""

    def __init__(self, component: str, noun: str, *, binding: bool = False) -> None:
        self.component = component
        self.noun = noun
        self.binding = binding
        self.deliveries: Deliveries | None = None
        self.ops: dict[str, Callable[[bytes, RequestInfo], Awaitable[bytes]]] = {
            "announce": self.announce,
            "withdraw": self.withdraw,
            "status": self.status,
        }

    def _registry(self) -> Deliveries:
        if self.deliveries is None:
            raise Unimplemented(f"{self.noun} {self.component!r} delivers no events in this worker")
        return self.deliveries

    def _check(self, spec: Spec, i: int, app: str) -> None:
        if spec.app != app:
            raise PermissionDenied(f"specs[{i}]: app {app!r} cannot announce subscriptions of {spec.app[:64]!r}")
        if spec.pubsub != self.component:
            raise InvalidArgument(f"specs[{i}]: it is for {spec.pubsub[:64]!r}, not {self.noun} {self.component!r}")
        if (spec.target == BINDING) is not self.binding:
            raise InvalidArgument(f"specs[{i}]: {self.noun} {self.component!r} takes no {spec.target!r} subscriptions")
        if self.binding and spec.topic != self.component:
            raise InvalidArgument(f"specs[{i}]: an input binding's subscription is named after the binding")

    async def announce(self, payload: bytes, ctx: RequestInfo) -> bytes:
        """Post the caller's subscriptions on this component, replacing what that instance posted before."""
        deliveries = self._registry()
        app = _caller(ctx)
        body = _json_object(payload, "an announcement")
        instance = _instance(body)
        raw_specs = body.get("specs")
        if not isinstance(raw_specs, list) or len(raw_specs) > MAX_ANNOUNCED:
            raise InvalidArgument(f"an announcement's specs must be a list of at most {MAX_ANNOUNCED} subscriptions")
        specs = []
        for i, raw in enumerate(raw_specs):
            try:
                spec = Spec.from_dict(raw)
            except SpecError as exc:
                raise InvalidArgument(f"specs[{i}]: {exc}") from None
            self._check(spec, i, app)
            specs.append(spec.to_dict())
        notice = orjson.dumps({"instance": instance, "at": time.time(), "specs": specs})
        await _posting(deliveries.board.post(decl_key(app, self.component, instance), notice))
        return _EMPTY

    async def withdraw(self, payload: bytes, ctx: RequestInfo) -> bytes:
        deliveries = self._registry()
        instance = _instance(_json_object(payload, "a withdrawal"))
        await _posting(deliveries.board.remove(decl_key(_caller(ctx), self.component, instance)))
        return _EMPTY

    async def status(self, payload: bytes, ctx: RequestInfo) -> bytes:
        """What is announced for the caller's app and what every worker reports of its deliveries."""
        deliveries = self._registry()
        app = _caller(ctx)
        return orjson.dumps({"declared": deliveries.declared(app), "workers": deliveries.statuses(app)})


def _caller(ctx: RequestInfo) -> str:
    if not TOKEN.match(ctx.app_id):
        raise InvalidArgument("the caller has no usable app id")
    return ctx.app_id


def _json_object(payload: bytes, what: str) -> dict[str, Any]:
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise InvalidArgument(f"{what} must be a JSON object") from None
    if not isinstance(body, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    return body


def _instance(body: dict[str, Any]) -> str:
    instance = body.get("instance")
    if not isinstance(instance, str) or not _INSTANCE.match(instance):
        raise InvalidArgument("instance must be 1 to 64 letters, digits, '_' or '-'")
    return instance


async def _posting(op: Awaitable[None]) -> None:
    try:
        await op
    except Exception as exc:
        raise BackendUnavailable(f"the subscription registry: {exc}") from None
