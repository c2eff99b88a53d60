"""The Configuration API: get, save, delete and subscribe on a ConfigurationStore.

Identity: an item is (group, label, key); a blank group or label means the component's default
(``defaultGroup`` / ``defaultLabel``, both ``default`` unless configured), as in Layotto. Keys are
stored as-is by default (``keyPrefix: none``), as Dapr does: configuration is usually written by
operators and read by many apps. ``keyPrefix: appid`` scopes keys per app, and then a request's
``app_id`` names the app whose keys it addresses (the caller's by default).

The stored key is ``[<prefix>||]<group>||<label>||<key>``; the part before the key is the
"scope", so "all keys" of a group and label is a prefix of the store.

Subscriptions are held by the fronts: the ``subscribe`` op only checks a request and answers
what the front needs to hold it (its scope, its keys and their current entries). Changes reach
the fronts through ``watch``: the store's watcher pushes every change, and the runtime publishes
them for every front to filter per subscription (runtime/configuration.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bridges.errors import InvalidArgument, Unimplemented, quote
from bridges.protocols import ConfigChange, ConfigEntry, ConfigurationStore
from handlers import limits
from handlers.base import SEPARATOR, KeyPrefix, RequestInfo
from handlers.proto import runtime_pb2 as pb

log = logging.getLogger("l8.handlers.configuration")

Publish = Callable[[bytes], Awaitable[None]]

_EMPTY = b""
# One change event stays well under the bus's payload limit; bigger batches are split.
_EVENT_BYTES = 256 * 1024


@dataclass(slots=True, frozen=True)
class Change:
    """A change as it travels to the fronts: the stored key, its parts and its new state."""

    stored: str
    key: str
    group: str
    label: str
    version: int
    deleted: bool
    content: str = ""
    tags: Mapping[str, str] | None = None
    metadata: Mapping[str, str] | None = None

    def head(self, content_bytes: int) -> dict[str, Any]:
        out: dict[str, Any] = {"s": self.stored, "k": self.key, "g": self.group, "l": self.label, "v": self.version}
        if self.deleted:
            out["d"] = True
        else:
            out["n"] = content_bytes
            if self.tags:
                out["t"] = dict(self.tags)
            if self.metadata:
                out["m"] = dict(self.metadata)
        return out

    @classmethod
    def from_head(cls, raw: Mapping[str, Any], content: str) -> Change:
        return cls(
            stored=str(raw["s"]),
            key=str(raw["k"]),
            group=str(raw["g"]),
            label=str(raw["l"]),
            version=int(raw["v"]),
            deleted=bool(raw.get("d", False)),
            content=content,
            tags=raw.get("t") or None,
            metadata=raw.get("m") or None,
        )

    def item(self) -> pb.ConfigurationItem:
        """The native item; a delete is an item with empty content."""
        item = pb.ConfigurationItem(key=self.key, group=self.group, label=self.label, version=str(self.version))
        if not self.deleted:
            item.content = self.content
            item.tags.update(self.tags or {})
            item.metadata.update(self.metadata or {})
        return item


def _pack(head: dict[str, Any], changes: Sequence[Change]) -> bytes:
    """A JSON head line, then the contents as raw UTF-8: contents are not escaped, so an item
    takes as many bytes on the bus as it does in the store."""
    contents = [b"" if c.deleted else c.content.encode() for c in changes]
    head["changes"] = [c.head(len(body)) for c, body in zip(changes, contents, strict=True)]
    return json.dumps(head, separators=(",", ":")).encode() + b"\n" + b"".join(contents)


def _unpack(data: bytes) -> tuple[dict[str, Any], list[Change]]:
    line, _, body = data.partition(b"\n")
    head: dict[str, Any] = json.loads(line)
    changes = []
    at = 0
    for raw in head.pop("changes"):
        size = int(raw.get("n", 0))
        changes.append(Change.from_head(raw, body[at : at + size].decode()))
        at += size
    if at != len(body):
        raise ValueError(f"the change event holds {len(body)} content bytes; its head accounts for {at}")
    return head, changes


def encode_changes(changes: Sequence[Change]) -> bytes:
    return _pack({}, changes)


def decode_changes(data: bytes) -> list[Change]:
    return _unpack(data)[1]


@dataclass(slots=True, frozen=True)
class SubscribeReply:
    """What the front needs to hold a subscription: where its keys live and their current state."""

    scope: str
    keys: list[str] | None  # stored keys, or None for every key of the scope
    items: list[Change]

    def encode(self) -> bytes:
        return _pack({"scope": self.scope, "keys": self.keys}, self.items)

    @classmethod
    def decode(cls, data: bytes) -> SubscribeReply:
        raw, items = _unpack(data)
        keys = raw.get("keys")
        return cls(scope=str(raw["scope"]), keys=None if keys is None else [str(k) for k in keys], items=items)

    def matches(self, stored: str) -> bool:
        if self.keys is not None:
            return stored in self.keys
        return stored.startswith(self.scope) and SEPARATOR not in stored[len(self.scope) :]


def split_stored(stored: str) -> tuple[str, str, str] | None:
    """(group, label, key) of a stored key, or None for a key this API did not write."""
    parts = stored.rsplit(SEPARATOR, 3)
    if len(parts) < 3:
        return None
    return parts[-3], parts[-2], parts[-1]


def change_of(change: ConfigChange) -> Change | None:
    parts = split_stored(change.key)
    if parts is None:
        return None
    group, label, key = parts
    entry = change.entry
    if entry is None:
        return Change(change.key, key, group, label, change.version, True)
    return Change(
        change.key, key, group, label, change.version, False, entry.content, entry.tags or None, entry.metadata or None
    )


def _entry_change(entry: ConfigEntry) -> Change | None:
    return change_of(ConfigChange(entry.key, entry.version, entry))


class ConfigurationHandler:
    """Serves one configuration component; ops are the last token of the request subject."""

    def __init__(self, component: str, store: ConfigurationStore, metadata: dict[str, str]) -> None:
        self.component = component
        self.store = store
        self.prefix = KeyPrefix(metadata.get("keyPrefix", "none"), component)
        self.default_group = metadata.get("defaultGroup", "default")
        self.default_label = metadata.get("defaultLabel", "default")
        for what, value in (("defaultGroup", self.default_group), ("defaultLabel", self.default_label)):
            if SEPARATOR in value:
                raise ValueError(f"{what} {value!r} may not contain {SEPARATOR!r}")
        self._ops: dict[str, Callable[[bytes, RequestInfo], Awaitable[bytes]]] = {
            "get": self.get,
            "save": self.save,
            "delete": self.delete,
            "subscribe": self.subscribe,
            "versions": self.versions,
        }

    async def __call__(self, op: str, payload: bytes, ctx: RequestInfo) -> bytes:
        fn = self._ops.get(op)
        if fn is None:
            raise Unimplemented(f"configuration has no operation {quote(op)}")
        return await fn(payload, ctx)

    async def watch(self, publish: Publish) -> None:
        """Publish every change the store sees, in events of bounded size."""

        async def sink(changes: list[ConfigChange]) -> None:
            batch: list[Change] = []
            size = 0
            for raw in changes:
                change = change_of(raw)
                if change is None:
                    continue
                batch.append(change)
                size += len(change.content) + len(change.stored) + 64
                if size >= _EVENT_BYTES:
                    await self._publish(publish, batch)
                    batch, size = [], 0
            if batch:
                await self._publish(publish, batch)

        await self.store.watch(sink)

    async def _publish(self, publish: Publish, batch: list[Change]) -> None:
        try:
            await publish(encode_changes(batch))
        except Exception as exc:
            # The fronts cannot be told; a resync or the next change of the key brings them level.
            log.warning("configuration store %r: could not publish %d changes: %s", self.component, len(batch), exc)

    # ---- ops ----

    async def get(self, payload: bytes, ctx: RequestInfo) -> bytes:
        req = pb.GetConfigurationRequest.FromString(payload)
        limits.check_map(req.metadata, "metadata")
        if req.subscribe_update:
            raise InvalidArgument("subscribe_update is not supported: use SubscribeConfiguration to watch changes")
        scope = self._scope(req.app_id or ctx.app_id, req.group, req.label)
        if req.keys:
            stored = self._stored_keys(scope, req.keys)
            found = {e.key: e for e in await self.store.get(list(dict.fromkeys(stored)))}
            entries = [found[k] for k in dict.fromkeys(stored) if k in found]
        else:
            entries = sorted(await self.store.list_scope(scope), key=lambda e: e.key)
        resp = pb.GetConfigurationResponse()
        for entry in entries:
            change = _entry_change(entry)
            if change is not None:
                resp.items.append(change.item())
        data: bytes = resp.SerializeToString()
        return data

    async def save(self, payload: bytes, ctx: RequestInfo) -> bytes:
        req = pb.SaveConfigurationRequest.FromString(payload)
        if not req.items:
            raise InvalidArgument("items is empty: a save names at least one item")
        limits.check_count(req.items, limits.BULK, "items")
        limits.check_map(req.metadata, "metadata")
        app = req.app_id or ctx.app_id
        limit = self.store.limits.max_value_bytes
        sets: list[ConfigEntry] = []
        deletes: list[str] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(req.items):
            where = f"items[{i}]"
            scope = self._scope(app, item.group, item.label, where)
            stored = self._stored_key(scope, item.key, f"{where}.key")
            if stored in seen:
                raise InvalidArgument(
                    f"{where}: key {quote(item.key)} appears twice (also items[{seen[stored]}]) "
                    "in the same group and label"
                )
            seen[stored] = i
            size = len(item.content.encode())
            if size > limit:
                raise InvalidArgument(
                    f"{where}: the content of key {quote(item.key)} is {size} bytes; "
                    f"configuration store {self.component!r} takes at most {limit}"
                )
            limits.check_map(item.tags, f"{where}.tags")
            limits.check_map(item.metadata, f"{where}.metadata")
            if item.content:
                sets.append(ConfigEntry(stored, item.content, dict(item.tags), dict(item.metadata)))
            else:
                # Layotto's rule: saving empty content deletes, the way a change stream reports deletes.
                deletes.append(stored)
        await self.store.write(sets, deletes)
        return _EMPTY

    async def delete(self, payload: bytes, ctx: RequestInfo) -> bytes:
        req = pb.DeleteConfigurationRequest.FromString(payload)
        limits.check_map(req.metadata, "metadata")
        if not req.keys:
            raise InvalidArgument("keys is empty: a delete names the keys to delete")
        scope = self._scope(req.app_id or ctx.app_id, req.group, req.label)
        stored = self._stored_keys(scope, req.keys)
        await self.store.write([], list(dict.fromkeys(stored)))
        return _EMPTY

    async def versions(self, payload: bytes, ctx: RequestInfo) -> bytes:
        """``subscribe`` without contents, for subscriptions that only need to know what is there."""
        reply = SubscribeReply.decode(await self.subscribe(payload, ctx))
        reply.items[:] = [dataclasses.replace(c, content="", tags=None, metadata=None) for c in reply.items]
        return reply.encode()

    async def subscribe(self, payload: bytes, ctx: RequestInfo) -> bytes:
        req = pb.SubscribeConfigurationRequest.FromString(payload)
        limits.check_map(req.metadata, "metadata")
        scope = self._scope(req.app_id or ctx.app_id, req.group, req.label)
        if req.keys:
            keys: list[str] | None = list(dict.fromkeys(self._stored_keys(scope, req.keys)))
            entries = await self.store.get(keys or [])
        else:
            keys = None
            entries = await self.store.list_scope(scope)
        items = [c for c in (_entry_change(e) for e in sorted(entries, key=lambda e: e.key)) if c is not None]
        return SubscribeReply(scope, keys, items).encode()

    # ---- keys ----

    def _scope(self, app_id: str, group: str, label: str, where: str = "") -> str:
        at = f"{where}." if where else ""
        group = group or self.default_group
        label = label or self.default_label
        for what, value in (("group", group), ("label", label)):
            limits.check_size(value, limits.GROUP, f"{at}{what}")
            if SEPARATOR in value:
                raise InvalidArgument(f"{at}{what} {quote(value)} contains {SEPARATOR!r}, which l8 reserves")
        return f"{self.prefix.scope(app_id)}{group}{SEPARATOR}{label}{SEPARATOR}"

    @staticmethod
    def _stored_key(scope: str, key: str, what: str) -> str:
        if not key:
            raise InvalidArgument(f"{what} is empty")
        limits.check_size(key, limits.KEY, what)
        if SEPARATOR in key:
            raise InvalidArgument(f"{what} {quote(key)} contains {SEPARATOR!r}, which l8 reserves for key prefixes")
        return scope + key

    def _stored_keys(self, scope: str, keys: Sequence[str]) -> list[str]:
        limits.check_count(keys, limits.BULK, "keys")
        return [self._stored_key(scope, key, f"keys[{i}]") for i, key in enumerate(keys)]
