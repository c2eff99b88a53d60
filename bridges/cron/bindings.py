"""The cron input binding: an event for each app on every tick of ``schedule`` (bridges/cron/schedule.py).

Every worker that delivers the binding to an app computes the same ticks and publishes each one to
the app's subject of a JetStream stream on the bus (``L8_CRON_<ns>_<name>``, subjects
``l8.<ns>.cron.<name>.<app>``) under a message id naming the app and the tick, so the stream keeps
one copy whatever the number of workers; the app's durable consumer hands each tick to one worker,
which acknowledges it only after the app answered. So each tick reaches one of the app's replicas
once, a failed one is delivered again with backoff, and a tick held by a worker that dies goes to
another after ``ackWaitSeconds`` (default 30). Ticks are made only while someone delivers them;
ticks waiting for an app that does not answer are capped at ``maxPendingTicks`` (default 100; the
oldest go first) and kept at most a day.

An event carries no data; its metadata is ``timeZone`` (the schedule's, ``UTC`` by default) and
``readTimeUTC``, the tick's time in RFC 3339. Cron is input only: it has no operations.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from bridges.cron.schedule import Schedule
from bridges.errors import InvalidArgument, L8Error
from bridges.nats.errors import check_pub_ack, map_nats_errors
from bridges.nats.subscription import (
    JetStreamSubscription,
    Subscriptions,
    durable_name,
    ensure_stream,
    pull_subscription,
)
from bridges.protocols import BindingReply, Received
from bridges.received import SettledThrough
from bridges.registry import BridgeEnv

log = logging.getLogger("l8.bridges.cron")

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_DUPLICATE_WINDOW = 120.0  # seconds: workers' copies of one tick arrive well within it
_MAX_AGE = 86400.0
_NAP = 30.0  # the longest sleep between two looks at the clock
_METADATA = ("timeZone", "readTimeUTC")


def _int(metadata: dict[str, str], key: str, default: int, low: int, high: int, what: str) -> int:
    raw = metadata.get(key) or str(default)
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ValueError(f"{what}: metadata {key} must be a whole number from {low} to {high}, got {raw[:32]!r}")
    return int(raw)


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class CronBinding:
    def __init__(self, name: str, metadata: dict[str, str], env: BridgeEnv) -> None:
        self.name = name
        self._what = f"binding {name!r}"
        try:
            self.schedule = Schedule.parse(metadata.get("schedule", ""))
        except ValueError as exc:
            raise ValueError(f"{self._what}: metadata schedule: {exc}") from None
        if env.nats is None:
            raise ValueError(f"{self._what}: the cron binding needs the bus connection")
        self._nc: Client = env.nats
        self._request = env.request or env.nats.request
        self.stream = f"L8_CRON_{env.namespace}_{name}"
        self._root = f"l8.{env.namespace}.cron.{name}"
        self._ack_wait = float(_int(metadata, "ackWaitSeconds", 30, 1, 86400, self._what))
        self._max_pending = _int(metadata, "maxPendingTicks", 100, 1, 100_000, self._what)
        self._replicas = _int(metadata, "replicas", 1, 1, 5, self._what)
        self._timeout = float(_int(metadata, "timeoutSeconds", 5, 1, 3600, self._what))
        self.lease_seconds: float | None = self._ack_wait
        self._subs = Subscriptions(self._what, env.on_reopen)
        self._tickers: set[CronSubscription] = set()

    def features(self) -> frozenset[str]:
        return frozenset()

    def operations(self) -> tuple[str, ...]:
        return ()

    async def invoke(
        self, operation: str, data: bytes, metadata: dict[str, str], *, timeout: float, max_reply: int
    ) -> BindingReply:
        raise InvalidArgument(f"{self._what} is a cron schedule, an input binding only: it has no operations")

    async def start(self) -> None:
        config = StreamConfig(
            name=self.stream,
            subjects=[f"{self._root}.*"],
            storage=StorageType.FILE,
            num_replicas=self._replicas,
            max_age=_MAX_AGE,
            max_msgs_per_subject=self._max_pending,
            duplicate_window=_DUPLICATE_WINDOW,
        )
        await ensure_stream(self._nc, config, self._timeout, self._what)
        self._subs.listen()

    async def stop(self) -> None:
        for sub in list(self._tickers):
            await sub.close()
        self._tickers.clear()

    async def subscribe(self, group: str, *, max_in_flight: int, ordered: bool = False) -> CronSubscription:
        if not _TOKEN.match(group):
            raise InvalidArgument(f"{self._what}: group {group[:64]!r} is not 1 to 128 letters, digits, _ or -")
        subject = f"{self._root}.{group}"
        durable = durable_name(group, f"cron-{self.name}")
        config = ConsumerConfig(
            name=durable,
            durable_name=durable,
            description=f"l8 group {group} on cron binding {self.name}",
            filter_subject=subject,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait,
            max_deliver=-1,
            max_ack_pending=1 if ordered else max(1, max_in_flight),
            deliver_policy=DeliverPolicy.ALL,
        )
        pull = await pull_subscription(
            self._nc,
            self.stream,
            config,
            topic=self.name,
            owner=self._subs,
            timeout=self._timeout,
            what=f"{self._what}: subscribing {group!r}",
        )
        sub = CronSubscription(self, pull, subject, group)
        self._tickers.add(sub)
        sub.start()
        return sub

    async def tick(self, subject: str, group: str, at: float) -> None:
        """Put the tick of ``at`` in the stream; the copies other workers put there are dropped."""
        headers = {
            "Nats-Msg-Id": f"{group}.{int(at * 1000)}",
            "timeZone": self.schedule.zone,
            "readTimeUTC": rfc3339(at),
        }
        what = f"{self._what}: the tick of {rfc3339(at)}"
        with map_nats_errors(what):
            reply = await self._request(subject, b"", timeout=self._timeout, headers=headers)
            check_pub_ack(reply.data, what)


class CronSubscription:
    """The ticks of one group: the consumer that reads them and the ticker that makes them."""

    def __init__(self, binding: CronBinding, pull: JetStreamSubscription, subject: str, group: str) -> None:
        self._binding = binding
        self._pull = pull
        self._subject = subject
        self._group = group
        self._ticker: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._ticking(), name=f"l8-cron-{self._binding.name}-{self._group}")

    async def _ticking(self) -> None:
        schedule = self._binding.schedule
        due = schedule.next_after(time.time())
        while True:
            now = time.time()
            if now < due:
                await asyncio.sleep(min(due - now, _NAP))
                continue
            # After a pause (a suspended machine, a clock step) only the latest tick is made.
            latest = due
            while (after := schedule.next_after(latest)) <= now:
                latest = after
            try:
                await self._binding.tick(self._subject, self._group, latest)
            except L8Error as exc:
                log.warning("%s: a tick for %s was not stored: %s", self._binding.name, self._group, exc)
            due = schedule.next_after(latest)

    async def fetch(self, max_messages: int, timeout: float) -> list[Received]:
        return [_Tick(r) for r in await self._pull.fetch(max_messages, timeout)]

    async def keep_alive(self) -> None:
        await self._pull.keep_alive()

    async def close(self) -> None:
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        self._binding._tickers.discard(self)
        await self._pull.close()


class _Tick(SettledThrough):
    """A tick as the app gets it: its metadata without the stream's own headers."""

    __slots__ = ("headers",)

    def __init__(self, received: Received) -> None:
        super().__init__(received)
        self.headers = {k: v for k, v in received.headers.items() if k in _METADATA}

    @property
    def data(self) -> bytes:
        return b""

    @property
    def topic(self) -> str:
        return self._received.topic
