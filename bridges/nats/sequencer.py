"""Sequences on a JetStream KV bucket: one key per sequence, holding the last id handed out.

A reservation is a compare-and-set (``Nats-Expected-Last-Subject-Sequence``) that raises the
value by the count asked. The last value and sequence seen are remembered per key, so a process
that is the only writer of a key pays one round trip per reservation; a stale memory costs one
failed write and one read. Handlers batch concurrent callers of a key into one reservation, which
keeps the writers of a key few.
"""

from __future__ import annotations

import asyncio
import random

from bridges.errors import BackendUnavailable, L8Error
from bridges.nats import buckets, keys
from bridges.nats.buckets import HDR_EXPECTED_LAST, last_message, open_bucket, publish
from bridges.nats.errors import map_nats_errors
from bridges.registry import BridgeEnv

_ATTEMPTS = 200
_REMEMBERED = 10_000  # keys whose last value is kept; beyond that the memory starts again


class NatsKvSequencer:
    """A ``Sequencer`` on one KV bucket (metadata ``bucket``, default ``l8_<namespace>_<name>``)."""

    def __init__(self, name: str, metadata: dict[str, str], env: BridgeEnv) -> None:
        if env.nats is None:
            raise ValueError("the nats.kv sequencer needs the bus connection")
        self._nc = env.nats
        self.name = name
        self.bucket = keys.bucket_name(metadata.get("bucket") or f"l8_{env.namespace}_{name}")
        self._timeout = float(metadata.get("timeoutSeconds", "5"))
        self._replicas = int(metadata.get("replicas", "1"))
        self._known: dict[str, tuple[int, int]] = {}  # key -> (stream sequence, value)

    def features(self) -> frozenset[str]:
        return frozenset({"SEGMENT"})

    async def ping(self) -> None:
        await buckets.ping(self._nc, self.bucket, self._timeout, f"sequencer {self.name!r}")

    async def start(self) -> None:
        await open_bucket(self._nc, self.bucket, self._replicas, self._timeout, f"sequencer {self.name!r}")

    async def stop(self) -> None:
        self._known.clear()

    async def reserve(self, key: str, count: int, floor: int) -> int:
        subject = f"$KV.{self.bucket}.{keys.encode(key)}"
        what = f"sequencer {self.name!r}: key {key!r}"
        known = self._known.get(key)
        with map_nats_errors(what):
            for attempt in range(_ATTEMPTS):
                if known is None:
                    known = await self._read(subject, what)
                seq, value = known
                new = max(value, floor) + count
                acked = await publish(
                    self._nc, subject, str(new).encode(), {HDR_EXPECTED_LAST: str(seq)}, self._timeout, what
                )
                if acked is not None:
                    if len(self._known) >= _REMEMBERED:
                        self._known.clear()
                    self._known[key] = (acked, new)
                    return new
                known = None
                # Another writer moved the key; spread the retries of racing writers apart.
                await asyncio.sleep(random.uniform(0, min(0.02, 0.0005 * (attempt + 1))))
        raise BackendUnavailable(f"{what}: {_ATTEMPTS} writers raced for the key; try again")

    async def _read(self, subject: str, what: str) -> tuple[int, int]:
        last = await last_message(self._nc, self.bucket, subject, self._timeout)
        if last is None:
            return 0, 0
        if last.deleted:
            return last.seq, 0
        try:
            return last.seq, int(last.data)
        except ValueError:
            raise L8Error(f"{what}: the stored value {last.data[:32]!r} is not a number") from None
