"""Locks on a JetStream KV bucket with per-key TTLs.

A held lock is the key's last message: the owner as data, ``Nats-TTL`` as the expiry, so the
server itself frees an expired lock. Every change is a publish with
``Nats-Expected-Last-Subject-Sequence``, a compare-and-set on the one message it expects to
replace: taking a free key, renewing (republishing the owner with a fresh TTL) and unlocking (a
delete marker) all fail when anything else was written or expired in between, and the key is then
read again. Delete markers carry a TTL too, so a resource that was locked once leaves nothing behind.

The process remembers the last message it wrote per resource. When that is still the key's last
message, a compare-and-set against it alone is correct (the message says who holds the lock, or
that it is free), which saves the read; when it is not, the write fails and the read follows.
"""

from __future__ import annotations

from bridges.errors import BackendUnavailable
from bridges.nats import buckets, keys
from bridges.nats.buckets import HDR_EXPECTED_LAST, HDR_OPERATION, HDR_TTL, last_message, open_bucket, publish
from bridges.nats.errors import map_nats_errors
from bridges.protocols import LockStatus
from bridges.registry import BridgeEnv

_ATTEMPTS = 8  # reads and writes racing with other writers before giving up
_MARKER_TTL = "30s"
_REMEMBERED = 10_000  # resources whose last written message is kept; beyond that the memory starts again
_FREE = b""  # the data of a delete marker


class NatsKvLockStore:
    """A ``LockStore`` on one KV bucket (metadata ``bucket``, default ``l8_<namespace>_<name>``)."""

    def __init__(self, name: str, metadata: dict[str, str], env: BridgeEnv) -> None:
        if env.nats is None:
            raise ValueError("the nats.kv lock store needs the bus connection")
        self._nc = env.nats
        self.name = name
        self.bucket = keys.bucket_name(metadata.get("bucket") or f"l8_{env.namespace}_{name}")
        self._timeout = float(metadata.get("timeoutSeconds", "5"))
        self._replicas = int(metadata.get("replicas", "1"))
        self._written: dict[str, tuple[int, bytes]] = {}  # resource -> (sequence, data) this process wrote

    def features(self) -> frozenset[str]:
        return frozenset({"TTL", "KEEPALIVE"})

    async def ping(self) -> None:
        await buckets.ping(self._nc, self.bucket, self._timeout, f"lock store {self.name!r}")

    async def start(self) -> None:
        await open_bucket(self._nc, self.bucket, self._replicas, self._timeout, f"lock store {self.name!r}")

    async def stop(self) -> None:
        self._written.clear()

    def _subject(self, resource: str) -> str:
        return f"$KV.{self.bucket}.{keys.encode(resource)}"

    async def _write(self, resource: str, data: bytes, headers: dict[str, str], what: str) -> bool:
        seq = await publish(self._nc, self._subject(resource), data, headers, self._timeout, what)
        if seq is None:
            self._written.pop(resource, None)
            return False
        if len(self._written) >= _REMEMBERED:
            self._written.clear()
        self._written[resource] = (seq, data)
        return True

    async def try_lock(self, resource: str, owner: str, expire: int) -> bool:
        what = f"lock store {self.name!r}: lock {resource!r}"
        take = {HDR_TTL: f"{expire}s"}
        with map_nats_errors(what):
            written = self._written.get(resource)
            if (
                written is not None
                and written[1] == _FREE
                and await self._write(resource, owner.encode(), {**take, HDR_EXPECTED_LAST: str(written[0])}, what)
            ):
                return True
            for _ in range(_ATTEMPTS):
                last = await last_message(self._nc, self.bucket, self._subject(resource), self._timeout)
                if last is not None and not last.deleted:
                    return False
                expected = "0" if last is None else str(last.seq)
                if await self._write(resource, owner.encode(), {**take, HDR_EXPECTED_LAST: expected}, what):
                    return True
                # Lost the race, or the delete marker we saw expired: look again.
        return False

    async def unlock(self, resource: str, owner: str) -> LockStatus:
        what = f"lock store {self.name!r}: unlock {resource!r}"
        return await self._replace(resource, owner, _FREE, {HDR_OPERATION: "DEL", HDR_TTL: _MARKER_TTL}, what)

    async def keep_alive(self, resource: str, owner: str, expire: int) -> LockStatus:
        what = f"lock store {self.name!r}: renew {resource!r}"
        return await self._replace(resource, owner, owner.encode(), {HDR_TTL: f"{expire}s"}, what)

    async def _replace(self, resource: str, owner: str, data: bytes, headers: dict[str, str], what: str) -> LockStatus:
        """Replace the lock's message with ``data`` if ``owner`` holds it."""
        mine = owner.encode()
        with map_nats_errors(what):
            written = self._written.get(resource)
            if (
                written is not None
                and written[1] == mine
                and await self._write(resource, data, {**headers, HDR_EXPECTED_LAST: str(written[0])}, what)
            ):
                return LockStatus.SUCCESS
            for _ in range(_ATTEMPTS):
                last = await last_message(self._nc, self.bucket, self._subject(resource), self._timeout)
                if last is None or last.deleted:
                    return LockStatus.UNEXIST
                if last.data != mine:
                    return LockStatus.BELONGS_TO_OTHERS
                if await self._write(resource, data, {**headers, HDR_EXPECTED_LAST: str(last.seq)}, what):
                    return LockStatus.SUCCESS
        raise BackendUnavailable(f"{what}: the lock kept changing under {_ATTEMPTS} attempts")
