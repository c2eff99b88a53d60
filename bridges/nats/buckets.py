"""Opening the KV buckets of l8's NATS bridges: created on first use, checked after.

All need per-message TTLs (``allow_msg_ttl``) and direct gets; state and configuration also need
atomic batches (``allow_atomic``) for their transactions. None may have subject delete markers
(``subject_delete_marker_ttl``, the KV ``limit_marker_ttl``): with them an expired key leaves a
marker behind that reads as neither present nor absent, and a lock would never be free again
(python-ecosystem.md §2).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType

from bridges.errors import BackendUnavailable, EtagMismatch, FailedPrecondition
from bridges.nats.errors import check_pub_ack, map_nats_errors

HDR_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
HDR_TTL = "Nats-TTL"
HDR_OPERATION = "KV-Operation"
HDR_SEQUENCE = "Nats-Sequence"
HDR_STATUS = "Status"
DELETE_OPS = ("DEL", "PURGE")
JETSTREAM_NOT_READY = 10008  # "JetStream system temporarily unavailable"


# How long opening a bucket keeps trying while JetStream cannot answer yet: a fresh cluster has
# no meta leader for its first seconds, and a replicated stream is leaderless for a few seconds
# after its leader died; sidecars started together with such a cluster wait it out.
OPEN_PATIENCE = 60.0


async def open_bucket(
    nc: Client, bucket: str, replicas: int, timeout: float, what: str, *, atomic: bool = False
) -> None:
    await when_ready(
        lambda: _open_bucket(nc, bucket, replicas, timeout, what, atomic=atomic),
        f"{what}: opening bucket {bucket}",
        f"{what}: bucket {bucket}",
    )


async def when_ready(attempt: Callable[[], Awaitable[None]], doing: str, what: str) -> None:
    """Run ``attempt`` until JetStream answers it (for up to ``OPEN_PATIENCE`` seconds): while it
    has no meta leader yet, or a stream no leader, it says it is not ready or nobody answers."""
    deadline = time.monotonic() + OPEN_PATIENCE
    delay = 0.1
    while True:
        with map_nats_errors(doing):
            try:
                await attempt()
                return
            except nats.js.errors.APIError as exc:
                if exc.err_code != JETSTREAM_NOT_READY and exc.code != 503:
                    raise
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                pass
        if time.monotonic() + delay > deadline:
            raise BackendUnavailable(f"{what}: JetStream did not become available in {OPEN_PATIENCE:g}s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


async def _open_bucket(nc: Client, bucket: str, replicas: int, timeout: float, what: str, *, atomic: bool) -> None:
    js = nc.jetstream(timeout=timeout)
    try:
        await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        try:
            await js.create_key_value(
                KeyValueConfig(bucket=bucket, history=1, storage=StorageType.FILE, replicas=replicas, direct=True)
            )
        except nats.js.errors.BadRequestError:
            await js.key_value(bucket)  # another runtime created it first
    config = await _stream_config(nc, f"KV_{bucket}", timeout)
    if config.get("subject_delete_marker_ttl"):
        raise FailedPrecondition(
            f"{what}: bucket {bucket} has limit_marker_ttl set; expired keys would leave markers that "
            "never free them. Use a bucket without it."
        )
    needed = {"allow_msg_ttl": True, "allow_direct": True}
    if atomic:
        needed["allow_atomic"] = True
    if all(config.get(flag) for flag in needed):
        return
    config.update(needed)
    reply = json.loads(
        (await nc.request(f"$JS.API.STREAM.UPDATE.KV_{bucket}", json.dumps(config).encode(), timeout=timeout)).data
    )
    if "error" in reply:
        raise FailedPrecondition(
            f"{what}: bucket {bucket}: cannot enable {', '.join(needed)}: {reply['error'].get('description')}"
        )


async def ping(nc: Client, bucket: str, timeout: float, what: str) -> None:
    """One stream info request: it needs the stream's leader, so it fails while JetStream or the
    bucket's replicas cannot serve writes, not only while the connection is down."""
    with map_nats_errors(f"{what}: bucket {bucket}"):
        reply = json.loads((await nc.request(f"$JS.API.STREAM.INFO.KV_{bucket}", b"", timeout=timeout)).data)
    if "error" in reply:
        raise BackendUnavailable(f"{what}: bucket {bucket}: {reply['error'].get('description', 'unavailable')}")


async def _stream_config(nc: Client, stream: str, timeout: float) -> dict[str, Any]:
    info = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=timeout)).data)
    if "error" in info:
        nats.js.errors.APIError.from_error(info["error"])  # raises the error's class
    config: dict[str, Any] = info["config"]
    return config


@dataclass(slots=True, frozen=True)
class Last:
    """The last message of a key: its stream sequence, its data, and whether it marks a delete."""

    seq: int
    data: bytes
    deleted: bool


async def last_message(nc: Client, bucket: str, subject: str, timeout: float) -> Last | None:
    """The last message of ``subject`` in the KV bucket's stream, or None when it has none."""
    return await last_in_stream(nc, f"KV_{bucket}", subject, timeout)


async def last_in_stream(nc: Client, stream: str, subject: str, timeout: float) -> Last | None:
    """The last message of ``subject`` in ``stream`` (a direct get), or None when it has none."""
    msg = await nc.request(f"$JS.API.DIRECT.GET.{stream}.{subject}", b"", timeout=timeout)
    headers = msg.headers or {}
    status = headers.get(HDR_STATUS)
    if status is not None:
        if status == "404":
            return None
        raise BackendUnavailable(f"stream {stream}: direct get answered {status}")
    return Last(int(headers[HDR_SEQUENCE]), msg.data, headers.get(HDR_OPERATION) in DELETE_OPS)


async def publish(
    nc: Client, subject: str, data: bytes, headers: dict[str, str], timeout: float, what: str
) -> int | None:
    """Publish with JetStream's ack: the stream sequence, or None when the expected sequence was stale."""
    reply = await nc.request(subject, data, timeout=timeout, headers=headers)
    try:
        return check_pub_ack(reply.data, what)
    except EtagMismatch:
        return None
