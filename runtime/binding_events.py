"""Input bindings on the app's side: what a sidecar announces for them, where their events go, and
what it does with the app's answer.

An app declares the input bindings it takes (``ListInputBindings``); the sidecar announces each one
as a subscription of target kind ``binding`` to that binding's workers, who consume it like a
pub/sub topic (handlers/bindings_input.py) and route each event to
``l8.<ns>.app.<app>.binding.<name>.<key>``, answered by the app's sidecars in one queue group. The
sidecar hands the event to its app (``OnBindingEvent``), carries out the app's answer, and the
verdict goes back to the worker, which settles with the binding: an app error is retried with
backoff, an app that cannot be reached holds the event.

The answer (Dapr's ``BindingEventResponse``) may save ``states`` in ``store_name`` (with the app's
key prefix, as its own SaveState would) and send ``data`` to the output bindings ``to`` (operation
``create``, as Dapr does; one after another, or all at once when it asks ``PARALLEL``), all within
the event's deadline. A failure that may pass (a backend down, a timeout) has the event delivered
again; an answer that can never be carried out (an unknown store or binding, a bad key) is logged
at ERROR and the event settled, since asking the app again would give the same answer.
"""

from __future__ import annotations

import asyncio
import logging
import time

from bridges import registry
from bridges.errors import Code
from bus import subjects
from handlers import limits
from handlers.announcements import BINDING
from handlers.proto import runtime_pb2 as pb
from handlers.pubsub_delivery import Outcome
from handlers.pubsub_specs import Spec, SpecError, metadata_int
from runtime.app_channel import BindingAnswer
from runtime.config import Config
from runtime.event_router import register_target
from runtime.forward import Forwarder, FrontError

log = logging.getLogger("l8.runtime.bindings")

KIND = BINDING
register_target(KIND, lambda ns, spec: subjects.event_subject(ns, spec.app, spec.pubsub, spec.topic, KIND))

CREATE = "create"  # the operation Dapr sends an answer's data with
# An answer that fails with one of these cannot succeed when asked again.
_FINAL = frozenset(
    {
        Code.INVALID_ARGUMENT,
        Code.NOT_FOUND,
        Code.FAILED_PRECONDITION,
        Code.PERMISSION_DENIED,
        Code.UNIMPLEMENTED,
        Code.OUT_OF_RANGE,
        Code.ALREADY_EXISTS,
        Code.UNAUTHENTICATED,
    }
)


def spec_for_binding(config: Config, name: str) -> Spec:
    """The subscription that delivers input binding ``name`` to this sidecar's app; SpecError
    saying why the binding cannot be one. Its metadata may set l8's ``concurrency`` (events with
    the app at once, default 32; 1 keeps the order) and ``maxDeliveries`` (then the event is
    dropped; default 0, unlimited)."""
    comp = config.components.get(name)
    configured = [n for n, c in config.components.items() if c.kind == "bindings"]
    if comp is None or comp.kind != "bindings":
        raise SpecError(f"binding {name[:64]!r} is not configured; configured: {', '.join(configured) or 'none'}")
    source = registry.INPUTS.get(comp.type)
    if source is None:
        inputs = ", ".join(registry.INPUTS)
        raise SpecError(f"binding {name!r} is of type {comp.type!r}, which is output only; input types: {inputs}")
    if not comp.metadata.get(source) and source not in comp.secret_refs:
        raise SpecError(f"binding {name!r} has no metadata {source!r}, so it has no events to deliver")
    meta = comp.metadata
    return Spec(
        app=config.app.id,
        pubsub=name,
        topic=name,
        target=KIND,
        concurrency=metadata_int(meta, "concurrency", 32, 1, limits.MAX_IN_FLIGHT) or 32,
        max_deliveries=metadata_int(meta, "maxDeliveries", 0, 0, 1_000_000) or 0,
        timeout=config.delivery_timeout,
        origin="app",
    )


class BindingAnswers:
    """Carries out apps' answers to binding events through the fronts' path to the workers."""

    def __init__(self, forwarder: Forwarder) -> None:
        self._forwarder = forwarder

    async def carry_out(self, binding: str, answer: BindingAnswer, timeout: float) -> tuple[Outcome, str]:
        if not answer.states and not answer.to:
            return Outcome.SUCCESS, ""
        deadline = time.monotonic() + timeout
        try:
            self._check(answer)
            if answer.states:
                await self._save(answer, deadline)
            if answer.parallel:
                results = await asyncio.gather(
                    *(self._send(to, answer.data, deadline) for to in answer.to), return_exceptions=True
                )
                for result in results:
                    if isinstance(result, BaseException):
                        raise result
            else:
                for to in answer.to:
                    await self._send(to, answer.data, deadline)
        except FrontError as exc:
            why = f"the app's answer to binding {binding!r}: {exc.message}"
            if exc.code in _FINAL:
                log.error("%s; the event is settled, since the same answer would fail again", why)
                return Outcome.DROP, why
            return Outcome.RETRY, why
        return Outcome.SUCCESS, ""

    def _check(self, answer: BindingAnswer) -> None:
        if answer.states:
            self._forwarder.component("state", answer.store_name)
            if len(answer.states) > limits.BULK:
                raise FrontError(Code.INVALID_ARGUMENT, f"it saves {len(answer.states)} states; at most {limits.BULK}")
        if len(answer.to) > limits.BINDING_TARGETS:
            raise FrontError(
                Code.INVALID_ARGUMENT, f"it sends to {len(answer.to)} bindings; at most {limits.BINDING_TARGETS}"
            )
        for to in answer.to:
            self._forwarder.component("bindings", to)

    async def _save(self, answer: BindingAnswer, deadline: float) -> None:
        req = pb.SaveStateRequest(
            store_name=answer.store_name, states=[pb.StateItem(key=k, value=v) for k, v in answer.states]
        )
        await self._call("state", answer.store_name, "save", req.SerializeToString(), deadline)

    async def _send(self, to: str, data: bytes, deadline: float) -> None:
        req = pb.InvokeBindingRequest(name=to, data=data, operation=CREATE)
        await self._call("bindings", to, "invoke", req.SerializeToString(), deadline)

    async def _call(self, api: str, component: str, op: str, payload: bytes, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise FrontError(Code.DEADLINE_EXCEEDED, "the event's deadline passed")
        await self._forwarder.call(
            self._forwarder.subject(api, component, op),
            payload,
            timeout=left,
            what=f"{'state store' if api == 'state' else 'binding'} {component!r}",
            resource=(api, component),
        )
