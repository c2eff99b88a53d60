"""State on a JetStream KV bucket.

The etag is the stream sequence of the key's last write, so it rotates on every write and never
repeats, even after a delete. Reads are direct gets, raw requests that skip the driver's JSON
layer; writes are raw publishes with ``Nats-Expected-Last-Subject-Sequence`` as compare-and-set;
transactions are JetStream atomic batches, so they apply whole or not at all.
"""

from __future__ import annotations

import logging
import time
import uuid

from nats.aio.client import Client

from bridges.errors import BackendUnavailable, EtagMismatch, InvalidEtag
from bridges.nats import buckets, keys
from bridges.nats.errors import check_pub_ack, map_nats_errors
from bridges.protocols import StateDelete, StateEntry, StateLimits, StateOp, StateSet
from bridges.registry import BridgeEnv

log = logging.getLogger("l8.bridges.nats.state")

HDR_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
HDR_TTL = "Nats-TTL"
HDR_EXPIRES = "L8-Expires"  # unix seconds; lets a read report ttlExpireTime without math on server clocks
HDR_OPERATION = "KV-Operation"
HDR_SEQUENCE = "Nats-Sequence"
HDR_STATUS = "Status"
_DELETE_OPS = ("DEL", "PURGE")


class NatsKvStateStore:
    """A ``StateStore`` on one KV bucket (metadata ``bucket``, default ``l8_<namespace>_<name>``)."""

    def __init__(self, name: str, metadata: dict[str, str], env: BridgeEnv) -> None:
        if env.nats is None:
            raise ValueError("the nats.kv state store needs the bus connection")
        self._nc: Client = env.nats
        self._request = env.request or env.nats.request
        self.name = name
        self.bucket = keys.bucket_name(metadata.get("bucket") or f"l8_{env.namespace}_{name}")
        self._stream = f"KV_{self.bucket}"
        self._timeout = float(metadata.get("timeoutSeconds", "5"))
        self._replicas = int(metadata.get("replicas", "1"))
        self._max_value = int(metadata.get("maxValueBytes", "0"))
        self.limits = StateLimits(features=frozenset({"ETAG", "TRANSACTIONAL", "TTL"}))

    def features(self) -> frozenset[str]:
        return self.limits.features

    async def ping(self) -> None:
        await buckets.ping(self._nc, self.bucket, self._timeout, f"state store {self.name!r}")

    async def start(self) -> None:
        what = f"state store {self.name!r}"
        await buckets.open_bucket(self._nc, self.bucket, self._replicas, self._timeout, what, atomic=True)
        # Leave room for headers and the request envelope under the server's payload limit.
        server_limit = self._nc.max_payload - 4096
        self.limits.max_value_bytes = min(self._max_value, server_limit) if self._max_value else server_limit

    async def stop(self) -> None:
        return None

    def _subject(self, key: str) -> str:
        return f"$KV.{self.bucket}.{keys.encode(key)}"

    async def _last(self, key: str) -> tuple[int, str | None, bytes, dict[str, str]] | None:
        """Sequence, KV operation, data and headers of the key's last message, or None."""
        msg = await self._request(f"$JS.API.DIRECT.GET.{self._stream}.{self._subject(key)}", b"", timeout=self._timeout)
        headers = msg.headers or {}
        status = headers.get(HDR_STATUS)
        if status is not None:
            if status == "404":
                return None
            # Not "no such key": the server could not answer (408, 503...). Safe to retry; no etag is wrong.
            raise BackendUnavailable(f"state store {self.name!r}: direct get answered {status}")
        return int(headers[HDR_SEQUENCE]), headers.get(HDR_OPERATION), msg.data, headers

    async def get(self, key: str) -> StateEntry | None:
        with map_nats_errors(f"state store {self.name!r}: get"):
            last = await self._last(key)
        if last is None or last[1] in _DELETE_OPS:
            return None
        seq, _op, data, headers = last
        expires = headers.get(HDR_EXPIRES)
        return StateEntry(value=data, etag=str(seq), expires_at=float(expires) if expires else None)

    async def set(self, op: StateSet) -> None:
        with map_nats_errors(f"state store {self.name!r}: set {op.key!r}"):
            await self._write(op.key, op.value, self._write_headers(op, await self._expected_for(op)))

    async def delete(self, op: StateDelete) -> None:
        headers = {HDR_OPERATION: "DEL"}
        if op.etag is not None:
            headers[HDR_EXPECTED_LAST] = _seq(op.etag)
        with map_nats_errors(f"state store {self.name!r}: delete {op.key!r}"):
            await self._write(op.key, b"", headers)

    async def transact(self, ops: list[StateOp]) -> None:
        if not ops:
            return
        what = f"state store {self.name!r}: transaction"
        with map_nats_errors(what):
            batch: list[tuple[str, bytes, dict[str, str]]] = []
            for op in ops:
                if isinstance(op, StateSet):
                    batch.append(
                        (self._subject(op.key), op.value, self._write_headers(op, await self._expected_for(op)))
                    )
                else:
                    headers = {HDR_OPERATION: "DEL"}
                    if op.etag is not None:
                        headers[HDR_EXPECTED_LAST] = _seq(op.etag)
                    batch.append((self._subject(op.key), b"", headers))
            if len(batch) == 1:
                subject, data, headers = batch[0]
                check_pub_ack((await self._request(subject, data, timeout=self._timeout, headers=headers)).data, what)
                return
            batch_id = uuid.uuid4().hex
            last = len(batch)
            for i, (subject, data, headers) in enumerate(batch, start=1):
                headers["Nats-Batch-Id"] = batch_id
                headers["Nats-Batch-Sequence"] = str(i)
                if i < last:
                    await self._nc.publish(subject, data, headers=headers)
                else:
                    headers["Nats-Batch-Commit"] = "1"
                    reply = await self._request(subject, data, timeout=self._timeout, headers=headers)
                    check_pub_ack(reply.data, what)

    async def _expected_for(self, op: StateSet) -> str | None:
        """The expected last sequence that makes this write a compare-and-set, if it is one."""
        if op.etag is not None:
            return _seq(op.etag)
        if not op.first_write:
            return None
        last = await self._last(op.key)
        if last is None:
            return "0"
        if last[1] in _DELETE_OPS:
            return str(last[0])  # a delete marker: the key is free, the marker is what we replace
        raise EtagMismatch(
            f"state store {self.name!r}: key {op.key!r} exists and FIRST_WRITE was asked without an etag"
        )

    def _write_headers(self, op: StateSet, expected: str | None) -> dict[str, str]:
        headers: dict[str, str] = {}
        if expected is not None:
            headers[HDR_EXPECTED_LAST] = expected
        if op.ttl is not None:
            headers[HDR_TTL] = f"{op.ttl}s"
            headers[HDR_EXPIRES] = f"{time.time() + op.ttl:.3f}"
        return headers

    async def _write(self, key: str, data: bytes, headers: dict[str, str]) -> None:
        reply = await self._request(self._subject(key), data, timeout=self._timeout, headers=headers or None)
        check_pub_ack(reply.data, f"state store {self.name!r}: write {key!r}")


def _seq(etag: str) -> str:
    if not etag.isdigit() or etag.startswith("0"):
        raise InvalidEtag(f"etag {etag!r} is malformed: this store's etags are positive whole numbers")
    return etag
