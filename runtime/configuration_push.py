"""Configuration subscriptions whose changes go to the app (Dapr's HTTP subscribe,
``/v1.0/configuration/{store}/subscribe``), as daprd delivers them.

The subscription lives in the front's ConfigurationHub like a gRPC one (so unsubscribe, resync
after a reconnect and shutdown treat it the same). Each change is sent to the app as daprd sends
it: for every key of the change, an invocation of the app's method ``configuration/<store>/<key>``
(an HTTP app: ``POST /configuration/<store>/<key>``; a gRPC app: ``OnInvoke``) whose JSON body is
Dapr's update event ``{"id": <subscription>, "items": {<key>: {value, version, metadata}}}``, a
delete as an item with an empty value. One task per subscription sends its changes in order; an
app that fails or answers non-2xx is logged and the next change goes on, as daprd does.
"""

from __future__ import annotations

import asyncio
import logging

import orjson

from bridges.errors import Code
from handlers.configuration import Change
from handlers.proto import runtime_pb2 as pb
from runtime.app_channel import AppCallError, AppChannel
from runtime.configuration import ConfigurationHub, Outbox, Subscription
from runtime.invoke import http_status_of

log = logging.getLogger("l8.runtime.configuration")


def update_event(sub_id: str, changes: list[Change]) -> bytes:
    items = {
        c.key: {"value": "", "version": str(c.version), "metadata": {}}
        if c.deleted
        else {"value": c.content, "version": str(c.version), "metadata": dict(c.metadata or {})}
        for c in changes
    }
    return orjson.dumps({"id": sub_id, "items": items})


class AppPush:
    """``stop`` ends every subscription's task (the hub's own stop ends the subscriptions)."""

    def __init__(self, hub: ConfigurationHub, app: AppChannel, timeout: float) -> None:
        self._hub = hub
        self._app = app
        self._timeout = timeout
        self._tasks: set[asyncio.Task[None]] = set()

    async def subscribe(self, request: pb.SubscribeConfigurationRequest, traceparent: str | None) -> str:
        """Open a subscription; its id, or FrontError when the store refuses it."""
        outbox: Outbox[tuple[str, bytes]] = Outbox()

        def deliver(sub: Subscription, changes: list[Change], first: bool) -> None:
            if first or not changes:
                return  # Dapr's HTTP subscribe sends no snapshot: changes only
            body = update_event(sub.id, changes)
            for change in changes:
                outbox.push((change.key, body))

        def end(code: Code | None, message: str) -> None:
            outbox.close()

        sub = await self._hub.open(request, None, deliver, end, contents=False, traceparent=traceparent)
        task = asyncio.create_task(self._send(sub, outbox), name=f"l8-config-push-{sub.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return sub.id

    async def _send(self, sub: Subscription, outbox: Outbox[tuple[str, bytes]]) -> None:
        try:
            while (item := await outbox.get()) is not None:
                key, body = item
                request = pb.CommonInvokeRequest(
                    method=f"configuration/{sub.store_name}/{key}",
                    content_type="application/json",
                    http_extension=pb.HTTPExtension(verb=pb.HTTPExtension.POST),
                )
                request.data.value = body
                try:
                    _reply, answered = await self._app.on_invoke(
                        request.SerializeToString(), timeout=self._timeout, metadata=[]
                    )
                except AppCallError as exc:
                    log.warning("configuration change of %r for the app: %s", key[:64], exc.message)
                    continue
                status = http_status_of(answered)
                if status is not None and status != 200:
                    log.warning("configuration change of %r: the app answered HTTP %d", key[:64], status)
        finally:
            self._hub.close(sub)

    async def stop(self) -> None:
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
