"""The shutdown order of a sidecar or worker (runtime/sidecar.py): which of its parts stop, in which
order, each step given what is left of the ``shutdown_timeout`` budget.

A module of its own because the order is the contract (the announcement is withdrawn and the
deliveries hand back before the fronts close; the bus goes last but for tracing) and reads best as
one list, apart from how the parts start.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from handlers.pubsub_registry import Deliveries
    from runtime.app_channel import AppChannel
    from runtime.sidecar import Sidecar

Step = Callable[[float], Awaitable[None]]


def shutdown_steps(sidecar: Sidecar) -> list[tuple[str, Step]]:
    """The shutdown in order; each step gets the time left in the budget."""
    steps: list[tuple[str, Step]] = [("the config watch", lambda left: sidecar.live.stop())]
    if (announcer := sidecar.announcer) is not None:
        steps.append(("the subscriptions' announcement", lambda left: announcer.stop()))
    # Deliveries next: stop fetching, let the targets answer what is in flight, hand back the rest.
    steps.extend((f"deliveries of {d.component}", functools.partial(_stop_deliveries, d)) for d in sidecar.deliveries)
    if (events := sidecar.events) is not None:
        steps.append(("the app's events", lambda left: events.stop(min(10.0, left))))
    if (grpc_server := sidecar.grpc) is not None:
        steps.append(("the gRPC server", lambda left: grpc_server.stop(min(5.0, left))))
    if sidecar.ops.plugins:
        steps.append(("plugins", lambda left: sidecar.ops.stop_plugins()))
    if (http := sidecar.http) is not None:
        steps.append(("the HTTP server", lambda left: http.stop()))
    if (push := sidecar.config_push) is not None:
        steps.append(("configuration changes to the app", lambda left: push.stop()))
    if (host := sidecar.workers) is not None and (invocations := sidecar.invocations) is not None:
        steps.append(("invocations", lambda left: host.leave(invocations, min(10.0, left))))
    if (functions := sidecar.functions) is not None:
        steps.append(("functions", lambda left: functions.stop()))
    if (workers := sidecar.workers) is not None:
        steps.append(("the worker host", lambda left: workers.stop(min(10.0, left))))
    steps.append(("supervised tasks", lambda left: sidecar.supervisor.stop(min(5.0, left))))
    if (app_health := sidecar.app_health) is not None:
        steps.append(("the app's health check", lambda left: app_health.stop()))
    if (components := sidecar.components) is not None:
        steps.append(("components", lambda left: components.stop()))
    steps.extend(
        ("an app channel", functools.partial(_close, c)) for c in (sidecar.app_channel, sidecar.event_channel) if c
    )
    if (bus := sidecar.bus) is not None:
        steps.append(("the bus connection", lambda left: bus.stop(min(5.0, left))))
    if (embedded := sidecar.embedded) is not None:
        steps.append(("the embedded nats-server", lambda left: embedded.stop(min(5.0, left))))
    # Last: the spans of the shutdown itself are exported too.
    steps.append(("tracing, metrics and the dump", lambda left: sidecar.ops.stop(min(5.0, left))))
    return steps


async def _stop_deliveries(deliveries: Deliveries, left: float) -> None:
    await deliveries.stop(timeout=min(10.0, left))


async def _close(channel: AppChannel, left: float) -> None:
    await channel.close()
