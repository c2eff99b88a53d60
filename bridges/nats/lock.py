"""Locks on a JetStream KV bucket with per-key TTLs.

A held lock is the key's last message: the owner as data, ``Nats-TTL`` as the expiry, so the
server itself frees an expired lock. Every change is a publish with
``Nats-Expected-Last-Subject-Sequence``, a compare-and-set on the message a read just saw:
taking a free key, renewing (republishing the owner with a fresh TTL) and unlocking (a delete
marker) all fail when another writer got there first, and the read is then made again.
Delete markers carry a TTL too, so a resource that was locked once leaves nothing behind.
"""

from __future__ import annotations

from bridges.errors import BackendUnavailable
from bridges.nats import keys
from bridges.nats.buckets import HDR_EXPECTED_LAST, HDR_OPERATION, HDR_TTL, last_message, open_bucket, publish
from bridges.nats.errors import map_nats_errors
from bridges.protocols import LockStatus
from bridges.registry import BridgeEnv

_ATTEMPTS = 8  # reads and writes racing with other writers before giving up
_MARKER_TTL = "30s"


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

    def features(self) -> frozenset[str]:
        return frozenset({"TTL", "KEEPALIVE"})

    async def start(self) -> None:
        await open_bucket(self._nc, self.bucket, self._replicas, self._timeout, f"lock store {self.name!r}")

    async def stop(self) -> None:
        return None

    def _subject(self, resource: str) -> str:
        return f"$KV.{self.bucket}.{keys.encode(resource)}"

    async def try_lock(self, resource: str, owner: str, expire: int) -> bool:
        subject = self._subject(resource)
        what = f"lock store {self.name!r}: lock {resource!r}"
        with map_nats_errors(what):
            for _ in range(_ATTEMPTS):
                last = await last_message(self._nc, self.bucket, subject, self._timeout)
                if last is not None and not last.deleted:
                    return False
                expected = "0" if last is None else str(last.seq)
                headers = {HDR_EXPECTED_LAST: expected, HDR_TTL: f"{expire}s"}
                if await publish(self._nc, subject, owner.encode(), headers, self._timeout, what) is not None:
                    return True
                # Lost the race, or the delete marker we saw expired: look again.
        return False

    async def unlock(self, resource: str, owner: str) -> LockStatus:
        subject = self._subject(resource)
        what = f"lock store {self.name!r}: unlock {resource!r}"
        with map_nats_errors(what):
            for _ in range(_ATTEMPTS):
                last = await last_message(self._nc, self.bucket, subject, self._timeout)
                if last is None or last.deleted:
                    return LockStatus.UNEXIST
                if last.data != owner.encode():
                    return LockStatus.BELONGS_TO_OTHERS
                headers = {HDR_EXPECTED_LAST: str(last.seq), HDR_OPERATION: "DEL", HDR_TTL: _MARKER_TTL}
                if await publish(self._nc, subject, b"", headers, self._timeout, what) is not None:
                    return LockStatus.SUCCESS
        raise BackendUnavailable(f"{what}: the lock kept changing under {_ATTEMPTS} attempts")

    async def keep_alive(self, resource: str, owner: str, expire: int) -> LockStatus:
        subject = self._subject(resource)
        what = f"lock store {self.name!r}: renew {resource!r}"
        with map_nats_errors(what):
            for _ in range(_ATTEMPTS):
                last = await last_message(self._nc, self.bucket, subject, self._timeout)
                if last is None or last.deleted:
                    return LockStatus.UNEXIST
                if last.data != owner.encode():
                    return LockStatus.BELONGS_TO_OTHERS
                headers = {HDR_EXPECTED_LAST: str(last.seq), HDR_TTL: f"{expire}s"}
                if await publish(self._nc, subject, last.data, headers, self._timeout, what) is not None:
                    return LockStatus.SUCCESS
        raise BackendUnavailable(f"{what}: the lock kept changing under {_ATTEMPTS} attempts")
