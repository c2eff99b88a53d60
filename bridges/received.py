"""A received message seen through a wrapper that changes what it carries, not how it settles.

Input bindings hand the delivery loop their broker's messages with other data or headers (a
binding's frame, a tick's metadata); the broker's message still decides attempts, leases and
settling, so every such wrapper forwards those to it.
"""

from __future__ import annotations

from bridges.protocols import Received


class SettledThrough:
    """Forwards ``attempt``, ``ref``, ``touch`` and the settling calls to the wrapped message."""

    __slots__ = ("_received",)

    def __init__(self, received: Received) -> None:
        self._received = received

    @property
    def attempt(self) -> int:
        return self._received.attempt

    @property
    def ref(self) -> str:
        return self._received.ref

    async def touch(self) -> None:
        await self._received.touch()

    async def ack(self) -> None:
        await self._received.ack()

    async def retry(self, delay: float) -> None:
        await self._received.retry(delay)

    async def drop(self) -> None:
        await self._received.drop()
