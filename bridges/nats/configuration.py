"""Configuration on a JetStream KV bucket, watched with an ordered consumer.

An item's content is the KV value, its tags and metadata travel as JSON in message headers, so
``nats kv put`` can write a plain item too. The version is the stream sequence of the key's last
message, delete markers included, so it orders every change of a key.

The watcher is one ordered consumer on the whole bucket that delivers the last message of every
key first, then every new message: the snapshot and the changes come from one sequence, so no
change falls between them, and the driver resumes it from the last sequence after a reconnect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from bridges.errors import BackendUnavailable
from bridges.nats import buckets, keys
from bridges.nats.errors import check_pub_ack, map_nats_errors
from bridges.protocols import ChangeSink, ConfigChange, ConfigEntry, ConfigurationLimits
from bridges.registry import BridgeEnv

log = logging.getLogger("l8.bridges.nats.configuration")

HDR_TAGS = "L8-Tags"
HDR_METADATA = "L8-Metadata"
HDR_OPERATION = "KV-Operation"
HDR_SEQUENCE = "Nats-Sequence"
HDR_SUBJECT = "Nats-Subject"
HDR_STATUS = "Status"
_DELETE_OPS = ("DEL", "PURGE")


class NatsKvConfigurationStore:
    """A ``ConfigurationStore`` on one KV bucket (metadata ``bucket``, default ``l8_<namespace>_<name>``)."""

    def __init__(self, name: str, metadata: dict[str, str], env: BridgeEnv) -> None:
        if env.nats is None:
            raise ValueError("the nats.kv configuration store needs the bus connection")
        self._nc: Client = env.nats
        self.name = name
        self.bucket = keys.bucket_name(metadata.get("bucket") or f"l8_{env.namespace}_{name}")
        self._stream = f"KV_{self.bucket}"
        self._prefix = f"$KV.{self.bucket}."
        self._timeout = float(metadata.get("timeoutSeconds", "5"))
        self._replicas = int(metadata.get("replicas", "1"))
        self._max_value = int(metadata.get("maxValueBytes", "0"))
        self.limits = ConfigurationLimits(features=frozenset({"WATCH"}))
        self._watch_sub: Any = None
        self._watch_cb: Any = None
        self._watch_lock = asyncio.Lock()
        self._on_reopen = env.on_reopen
        self._stopped = False

    def features(self) -> frozenset[str]:
        return self.limits.features

    async def ping(self) -> None:
        await buckets.ping(self._nc, self.bucket, self._timeout, f"configuration store {self.name!r}")

    async def start(self) -> None:
        what = f"configuration store {self.name!r}"
        await buckets.open_bucket(self._nc, self.bucket, self._replicas, self._timeout, what, atomic=True)
        server_limit = self._nc.max_payload - 8192
        self.limits.max_value_bytes = min(self._max_value, server_limit) if self._max_value else server_limit

    async def stop(self) -> None:
        async with self._watch_lock:
            self._stopped = True
            sub, self._watch_sub = self._watch_sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # the connection may already be draining
                log.debug("configuration watcher of %r: unsubscribe failed: %s", self.name, exc)

    def _subject(self, key: str) -> str:
        return self._prefix + keys.encode(key)

    # ---- reads ----

    async def _last(self, key: str) -> Msg | None:
        msg = await self._nc.request(
            f"$JS.API.DIRECT.GET.{self._stream}.{self._subject(key)}", b"", timeout=self._timeout
        )
        status = (msg.headers or {}).get(HDR_STATUS)
        if status is not None:
            if status == "404":
                return None
            raise BackendUnavailable(f"configuration store {self.name!r}: direct get answered {status}")
        return msg

    async def get(self, wanted: list[str]) -> list[ConfigEntry]:
        with map_nats_errors(f"configuration store {self.name!r}: get"):
            found = await asyncio.gather(*(self._last(k) for k in wanted))
        out = []
        for key, msg in zip(wanted, found, strict=True):
            if msg is None:
                continue
            headers = msg.headers or {}
            if headers.get(HDR_OPERATION) in _DELETE_OPS:
                continue
            out.append(_entry(key, msg.data, headers, int(headers[HDR_SEQUENCE])))
        return out

    async def list_scope(self, scope: str) -> list[ConfigEntry]:
        """The last message of each key under the scope, read with a short-lived ordered consumer."""
        filter_subject = self._subject(scope.removesuffix("||")) + ".*" if scope else self._prefix + ">"
        entries: dict[str, ConfigEntry] = {}
        with map_nats_errors(f"configuration store {self.name!r}: list"):
            js = self._nc.jetstream()
            sub = await js.subscribe(
                filter_subject,
                stream=self._stream,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                inactive_threshold=30.0,
            )
            try:
                info = await sub.consumer_info()
                if info.num_pending == 0 and (info.delivered is None or not info.delivered.consumer_seq):
                    return []
                while True:
                    msg = await sub.next_msg(timeout=self._timeout)
                    key = keys.decode(msg.subject[len(self._prefix) :])
                    headers = msg.headers or {}
                    if headers.get(HDR_OPERATION) in _DELETE_OPS:
                        entries.pop(key, None)
                    else:
                        entries[key] = _entry(key, msg.data, headers, msg.metadata.sequence.stream)
                    if msg.metadata.num_pending == 0:
                        break
            finally:
                await sub.unsubscribe()
        return [e for k, e in entries.items() if "||" not in k[len(scope) :]]

    # ---- writes ----

    async def write(self, sets: list[ConfigEntry], deletes: list[str]) -> None:
        what = f"configuration store {self.name!r}: write"
        with map_nats_errors(what):
            # A delete marker on an absent key would reach subscribers as a change; skip those keys.
            present = await asyncio.gather(*(self._last(k) for k in deletes))
            batch: list[tuple[str, bytes, dict[str, str]]] = [
                (self._subject(e.key), e.content.encode(), _write_headers(e)) for e in sets
            ]
            for key, msg in zip(deletes, present, strict=True):
                if msg is not None and (msg.headers or {}).get(HDR_OPERATION) not in _DELETE_OPS:
                    batch.append((self._subject(key), b"", {HDR_OPERATION: "DEL"}))
            if not batch:
                return
            if len(batch) == 1:
                subject, data, headers = batch[0]
                reply = await self._nc.request(subject, data, timeout=self._timeout, headers=headers or None)
                check_pub_ack(reply.data, what)
                return
            batch_id = uuid.uuid4().hex
            for i, (subject, data, headers) in enumerate(batch, start=1):
                headers["Nats-Batch-Id"] = batch_id
                headers["Nats-Batch-Sequence"] = str(i)
                if i < len(batch):
                    await self._nc.publish(subject, data, headers=headers)
                else:
                    headers["Nats-Batch-Commit"] = "1"
                    reply = await self._nc.request(subject, data, timeout=self._timeout, headers=headers)
                    check_pub_ack(reply.data, what)

    # ---- watch ----

    async def watch(self, sink: ChangeSink) -> None:
        async with self._watch_lock:
            if self._watch_sub is not None or self._stopped:
                return

            async def on_msg(msg: Msg) -> None:
                key = keys.decode(msg.subject[len(self._prefix) :])
                headers = msg.headers or {}
                seq = msg.metadata.sequence.stream
                if headers.get(HDR_OPERATION) in _DELETE_OPS:
                    change = ConfigChange(key, seq, None)
                else:
                    change = ConfigChange(key, seq, _entry(key, msg.data, headers, seq))
                try:
                    await sink([change])
                except Exception:
                    log.exception("configuration watcher of %r: the sink failed", self.name)

            self._watch_cb = on_msg
            await self._subscribe_watch()
            if self._on_reopen is not None:
                self._on_reopen(self._rewatch)

    async def _subscribe_watch(self) -> None:
        with map_nats_errors(f"configuration store {self.name!r}: watch"):
            self._watch_sub = await self._nc.jetstream().subscribe(
                self._prefix + ">",
                stream=self._stream,
                cb=self._watch_cb,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                idle_heartbeat=2.0,
                inactive_threshold=60.0,
            )

    async def _rewatch(self) -> None:
        """The connection was opened anew and the consumer went with the old one: watch again from
        the last message of every key, which covers whatever changed meanwhile (readers drop what
        they have seen by version)."""
        async with self._watch_lock:
            if self._stopped or self._watch_cb is None:
                return
            await self._subscribe_watch()


def _entry(key: str, data: bytes, headers: dict[str, str], version: int) -> ConfigEntry:
    return ConfigEntry(
        key=key,
        content=data.decode(errors="replace"),
        tags=ConfigEntry.string_map(headers.get(HDR_TAGS)),
        metadata=ConfigEntry.string_map(headers.get(HDR_METADATA)),
        version=version,
    )


def _write_headers(entry: ConfigEntry) -> dict[str, str]:
    headers: dict[str, str] = {}
    # ensure_ascii keeps header values one line of ASCII, as NATS headers must be.
    if entry.tags:
        headers[HDR_TAGS] = json.dumps(entry.tags, ensure_ascii=True, separators=(",", ":"))
    if entry.metadata:
        headers[HDR_METADATA] = json.dumps(entry.metadata, ensure_ascii=True, separators=(",", ":"))
    return headers
