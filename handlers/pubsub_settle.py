"""Settling a delivered message with its broker: ack, redeliver with backoff, or dead-letter then drop."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from bridges.errors import L8Error
from bridges.protocols import EventSource, Received

log = logging.getLogger("l8.handlers.pubsub")

# Told of every event a settler gives up on: (its bridge, its topic, "dead_lettered" or "dropped").
# The runtime's metrics set it when they are on; None costs nothing.
on_given_up: Callable[[EventSource, str, str], None] | None = None


class Verdict(enum.Enum):
    ACK = "ack"
    RETRY = "retry"
    DROP = "drop"


@dataclass(slots=True, frozen=True)
class Backoff:
    initial: float = 0.2
    maximum: float = 5.0

    def delay(self, attempt: int) -> float:
        return min(self.maximum, self.initial * float(2 ** max(0, min(attempt - 1, 30))))


class Settler:
    """Carries out a verdict on a message of one subscription."""

    def __init__(
        self,
        bridge: EventSource,
        *,
        dead_letter_topic: str | None,
        max_deliveries: int = 0,
        backoff: Backoff | None = None,
    ) -> None:
        self.bridge = bridge
        self.dead_letter_topic = dead_letter_topic or None
        self.max_deliveries = max_deliveries
        self.backoff = backoff or Backoff()

    async def settle(self, received: Received, verdict: Verdict, why: str = "") -> Verdict:
        """Returns what was done: a RETRY past max deliveries becomes a DROP (dead-lettered)."""
        if verdict is Verdict.ACK:
            await received.ack()
            return verdict
        if verdict is Verdict.RETRY:
            if self.max_deliveries and received.attempt >= self.max_deliveries:
                why = why or f"not processed after {received.attempt} deliveries"
                verdict = Verdict.DROP
            else:
                await received.retry(self.backoff.delay(received.attempt))
                return verdict
        if self.dead_letter_topic:
            headers = dict(received.headers)
            headers["l8-dead-letter-reason"] = " ".join(why.split())[:500] or "dropped"
            headers["l8-original-topic"] = received.topic
            try:
                await self.bridge.publish(self.dead_letter_topic, received.data, headers)
            except L8Error as exc:
                # Never lose it: without its dead-letter copy, it stays in the topic.
                log.warning("dead-lettering to %r failed, redelivering: %s", self.dead_letter_topic, exc)
                await received.retry(self.backoff.delay(received.attempt))
                return Verdict.RETRY
        await received.drop()
        if on_given_up is not None:
            on_given_up(self.bridge, received.topic, "dead_lettered" if self.dead_letter_topic else "dropped")
        return Verdict.DROP
