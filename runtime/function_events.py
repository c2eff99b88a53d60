"""A function as an event target: its events arrive as an app's do, and its answer settles them.

A function acts under its own name as app id, so it subscribes as that app id: its process
announces the function's subscriptions (``functions[].subscribe``, ``l8 wasm deploy --subscribe``)
through the pub/sub workers' ``announce`` op exactly as a sidecar announces its app's
(runtime/subscriptions.py), and the workers route its events to
``l8.<ns>.app.<name>.event.<pubsub>.<topic key>``. Every process serving the function answers that
subject in one queue group (the subject's stem, as an app's sidecars do), so its workers share its
events, and local dispatch serves a worker in the same process. Nothing on the pub/sub workers'
side knows functions: any worker delivers to them, with the same settling rules as to an app.

Each event runs ``l8_on_event``; its answer becomes the delivery's outcome, which the worker's
delivery loop settles with the broker: ``r >= 0`` SUCCESS (ack), ``-1`` RETRY (redelivered with
backoff, dead-lettered after ``maxDeliveries`` when there is a dead-letter topic), ``-2`` DROP
(dead-letter topic or dropped). A trap or a limit (deadline, fuel, memory, output, host calls) is a
RETRY, as an app's error answer is; a module without ``l8_on_event`` (UNIMPLEMENTED) a DROP; a
function with no loaded version cannot take the event, which the worker holds and offers again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from bridges.errors import Unimplemented
from bus import Reply, RequestContext, Route, subjects
from handlers.functions import Function, Verdict
from handlers.pubsub_delivery import Outcome
from handlers.pubsub_envelope import Event
from handlers.wasm.errors import FunctionError, FunctionUnavailable
from runtime import event_frames, observe

# Envelope attributes that have a place of their own in the function's meta.
_IN_META = frozenset({"topic", "pubsubname", "traceparent"})
_OUTCOMES = {Verdict.SUCCESS: Outcome.SUCCESS, Verdict.RETRY: Outcome.RETRY, Verdict.DROP: Outcome.DROP}


def event_meta(event: Event) -> dict[str, Any]:
    """The meta JSON of ``l8_on_event`` (docs/wasm-abi.md): the CloudEvent's attributes, and in
    ``metadata`` its other attributes (extensions) as strings, plus its traceparent."""
    metadata: dict[str, str] = {}
    for key, value in event.extensions.items():
        if key in _IN_META or value is None:
            continue
        metadata[key] = value if isinstance(value, str) else orjson.dumps(value).decode()
    if event.traceparent:
        metadata["traceparent"] = event.traceparent
    return {
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "specversion": event.specversion,
        "datacontenttype": event.datacontenttype,
        "pubsubname": event.pubsubname,
        "topic": event.topic,
        "metadata": metadata,
    }


class FunctionEvents:
    """The route of one function's events on the process's worker host."""

    def __init__(self, function: Function, namespace: str, gate: asyncio.Semaphore) -> None:
        self.function = function
        self._ns = namespace
        self._gate = gate

    def route(self) -> Route:
        """Every process serving the function joins one queue group per function, as an app's
        sidecars do; ``gate`` is the function's bound on calls at once (shared with its invocations)."""
        stem = subjects.event_stem(self._ns, self.function.name, "event")
        observer = observe.OBSERVER
        handler = self.serve if observer is None else observer.route(self._span, self.serve)
        return Route(
            f"{stem}.*.*",
            stem,
            handler,
            f"events of function {self.function.name}",
            local=stem,
            caller_in_subject=False,
            gate=self._gate,
        )

    def _span(self, ctx: RequestContext) -> str:
        # l8.<ns>.app.<name>.event.<pubsub>.<topic key>
        _, pubsub, topic = ctx.subject.rsplit(".", 2)
        return f"function/{self.function.name}/events/{pubsub}/{topic}"

    async def serve(self, op: str, payload: bytes, ctx: RequestContext) -> Reply:
        frame = event_frames.read_request(payload, ctx)
        outcomes: list[Outcome] = []
        reasons: list[str] = []
        # A bulk batch (functions announce none, but a worker may be told otherwise) runs in order.
        for event in frame.events:
            outcome, why = await self.run(event, ctx.deadline)
            outcomes.append(outcome)
            if why:
                reasons.append(why)
        return Reply(*event_frames.answer(outcomes, "; ".join(dict.fromkeys(reasons))))

    async def run(self, event: Event, deadline: float) -> tuple[Outcome, str]:
        """One event through ``l8_on_event``: its outcome and, unless it succeeded, why."""
        name = self.function.name
        if time.monotonic() >= deadline:
            return Outcome.RETRY, f"function {name} got the event after its delivery deadline"
        try:
            verdict, _ = await self.function.on_event(event_meta(event), event.data, deadline=deadline)
        except FunctionUnavailable as exc:
            return Outcome.UNREACHABLE, str(exc)
        except Unimplemented as exc:
            return Outcome.DROP, str(exc)
        except FunctionError as exc:
            return Outcome.RETRY, str(exc)
        if verdict is Verdict.SUCCESS:
            return Outcome.SUCCESS, ""
        return _OUTCOMES[verdict], f"function {name} answered {verdict.value}"
