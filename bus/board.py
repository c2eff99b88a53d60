"""A leased notice board on the bus: keys that live only while someone renews them, and watchers
that see every key come, change and go.

It is a JetStream KV bucket created with per-message TTLs and subject delete markers: a notice is
published with a TTL (its lease); renewing it is publishing it again; when its holder dies and the
lease runs out, the server places a marker that every watcher receives as a removal. Watchers are
ordered consumers that get the last notice of every key first, then every change, from one
sequence, so nothing falls between the snapshot and the changes, and the driver resumes them
after a reconnect. When the server closed the connection and the bus opened it anew, the
consumers went with it: each watch starts again from the last notice of every key and reports as
removed every key it had that is gone now. The board moves bytes under keys; what the notices
mean is its users' business (the pub/sub workers keep the subscription registry on it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy, KeyValueConfig, StorageType

from bus.connection import Bus
from bus.errors import BusClosed, BusError

log = logging.getLogger("l8.bus.board")

HDR_OPERATION = "KV-Operation"
HDR_MARKER = "Nats-Marker-Reason"
_REMOVALS = ("DEL", "PURGE")
_NOT_READY = 10008  # "JetStream system temporarily unavailable"
OPEN_PATIENCE = 60.0

Sink = Callable[[str, "bytes | None"], None]


class Board:
    """One bucket; ``lease`` seconds is how long a notice outlives its last renewal."""

    def __init__(self, bus: Bus, bucket: str, *, lease: float = 15.0, replicas: int = 1, timeout: float = 5.0) -> None:
        self._bus = bus
        self.bucket = bucket
        self.lease = lease
        self._replicas = replicas
        self._timeout = timeout
        self._prefix = f"$KV.{bucket}."
        self._opened = False
        self._lock = asyncio.Lock()
        self._watches: set[Watch] = set()
        self._listening = False

    async def open(self) -> None:
        """Create the bucket unless it exists; idempotent. A fresh cluster has no JetStream meta
        leader for its first seconds, so this waits up to ``OPEN_PATIENCE`` for one."""
        async with self._lock:
            if self._opened:
                return
            deadline = time.monotonic() + OPEN_PATIENCE
            delay = 0.1
            while True:
                try:
                    await self._open()
                    break
                except nats.js.errors.APIError as exc:
                    if exc.err_code != _NOT_READY and exc.code != 503:
                        raise BusError(f"the notice board {self.bucket}: {exc}") from None
                    problem: Exception = exc
                except (nats.errors.NoRespondersError, nats.errors.TimeoutError, TimeoutError) as exc:
                    problem = exc
                except nats.errors.Error as exc:
                    raise BusError(f"the notice board {self.bucket}: {type(exc).__name__}: {exc}") from None
                if time.monotonic() + delay > deadline:
                    raise BusError(f"the notice board {self.bucket}: JetStream did not answer: {problem}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            self._opened = True

    async def _open(self) -> None:
        js = self._bus.nc.jetstream(timeout=self._timeout)
        try:
            await js.key_value(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            config = KeyValueConfig(
                bucket=self.bucket,
                history=1,
                storage=StorageType.FILE,
                replicas=self._replicas,
                # Expired leases leave a marker that watchers see; it goes itself after a while.
                limit_marker_ttl=max(60.0, self.lease * 4),
            )
            try:
                await js.create_key_value(config)
            except nats.js.errors.BadRequestError:
                await js.key_value(self.bucket)  # another process created it first

    async def post(self, key: str, value: bytes) -> None:
        """Post or renew ``key``; it lives ``lease`` seconds after the last post."""
        await self.open()
        try:
            await self._bus.nc.jetstream(timeout=self._timeout).publish(
                self._prefix + key, value, msg_ttl=max(1, int(self.lease))
            )
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"posting {key} on {self.bucket}: {type(exc).__name__}: {exc}") from None

    async def remove(self, key: str) -> None:
        await self.open()
        try:
            kv = await self._bus.nc.jetstream(timeout=self._timeout).key_value(self.bucket)
            await kv.delete(key)
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"removing {key} from {self.bucket}: {type(exc).__name__}: {exc}") from None

    async def watch(self, pattern: str, sink: Sink) -> Watch:
        """Call ``sink(key, value)`` for every notice under ``pattern`` (``*`` and ``>`` wildcards),
        the current ones first, and ``sink(key, None)`` when one is removed or its lease ends."""
        await self.open()
        watch = Watch(self, pattern, sink)
        await watch.start()
        self._watches.add(watch)
        if not self._listening:
            self._listening = True
            self._bus.add_reopen_listener(self._reopened)
        return watch

    async def _reopened(self) -> None:
        for watch in list(self._watches):
            if watch.stopped:
                self._watches.discard(watch)
                continue
            try:
                await watch.restart()
            except BusError as exc:
                log.warning("%s; its notices may be stale until the next reopen", exc)

    async def snapshot(self, pattern: str) -> dict[str, bytes]:
        """The notices under ``pattern`` now."""
        found: dict[str, bytes] = {}
        done = asyncio.Event()

        def sink(key: str, value: bytes | None) -> None:
            if value is None:
                found.pop(key, None)
            else:
                found[key] = value

        watch = Watch(self, pattern, sink, on_current=done.set)
        await self.open()
        await watch.start()
        try:
            async with asyncio.timeout(self._timeout):
                await done.wait()
        finally:
            await watch.stop()
        return found


class Watch:
    def __init__(self, board: Board, pattern: str, sink: Sink, on_current: Callable[[], None] | None = None) -> None:
        self._board = board
        self._pattern = pattern
        self._sink = sink
        self._on_current = on_current
        self._sub: Any = None
        self._present: set[str] = set()  # the keys whose last notice was a value
        self._fresh: set[str] | None = None  # keys seen since a restart, until it caught up
        self.stopped = False

    def _caught_up(self) -> None:
        fresh, self._fresh = self._fresh, None
        if fresh is not None:
            for key in self._present - fresh:
                self._present.discard(key)
                self._deliver(key, None)
        if self._on_current is not None:
            self._on_current()

    def _deliver(self, key: str, value: bytes | None) -> None:
        try:
            self._sink(key, value)
        except Exception:
            log.exception("a watcher of %s failed on %s", self._board.bucket, key)

    async def start(self) -> None:
        board = self._board
        js = board._bus.nc.jetstream(timeout=board._timeout)
        prefix = board._prefix

        async def on_msg(msg: Msg) -> None:
            headers = msg.headers or {}
            key = msg.subject[len(prefix) :]
            removed = headers.get(HDR_OPERATION) in _REMOVALS or HDR_MARKER in headers
            if removed:
                self._present.discard(key)
            else:
                self._present.add(key)
                if self._fresh is not None:
                    self._fresh.add(key)
            self._deliver(key, None if removed else msg.data)
            if msg.metadata.num_pending == 0:
                self._caught_up()

        try:
            self._sub = await js.subscribe(
                prefix + self._pattern,
                stream=f"KV_{board.bucket}",
                cb=on_msg,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                idle_heartbeat=2.0,
                inactive_threshold=60.0,
            )
            if self._on_current is not None or self._fresh is not None:
                info = await self._sub.consumer_info()
                if info.num_pending == 0 and not info.delivered.stream_seq:
                    self._caught_up()
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"watching {self._pattern} on {board.bucket}: {type(exc).__name__}: {exc}") from None

    async def restart(self) -> None:
        """Watch again on a connection opened anew: the last notice of every key comes again, and
        the keys that were there before and are not now are reported as removed."""
        self._sub = None
        self._fresh = set()
        await self.start()

    async def stop(self) -> None:
        self.stopped = True
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except (nats.errors.Error, BusClosed) as exc:
                log.debug("unwatching %s: %s", self._pattern, exc)
