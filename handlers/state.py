"""The State API: get, bulk get, save, delete, bulk delete and transactions on a StateStore.

Semantics (DESIGN.md): a missing key reads as empty data; a given etag must match unless the
request asks LAST_WRITE explicitly; FIRST_WRITE without an etag inserts only; every write rotates
the etag; ``ttlInSeconds`` expires a key and reads report ``ttlExpireTime``. Each request is
checked whole before anything is written, so bad input changes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from bridges.errors import InvalidArgument, L8Error, Unimplemented
from bridges.protocols import StateDelete, StateEntry, StateOp, StateSet, StateStore
from handlers.base import KeyPrefix, RequestInfo, parse_ttl
from handlers.proto import runtime_pb2 as pb

FIRST_WRITE = pb.StateOptions.CONCURRENCY_FIRST_WRITE
LAST_WRITE = pb.StateOptions.CONCURRENCY_LAST_WRITE
_EMPTY = b""
_MAX_PARALLELISM = 64


class StateHandler:
    """Serves one state component; ops are the last token of the request subject."""

    def __init__(self, component: str, store: StateStore, metadata: dict[str, str]) -> None:
        self.component = component
        self.store = store
        self.prefix = KeyPrefix(metadata.get("keyPrefix", "appid"), component)
        self._ops: dict[str, Callable[[bytes, RequestInfo], Awaitable[bytes]]] = {
            "get": self.get,
            "bulkget": self.bulk_get,
            "save": self.save,
            "delete": self.delete,
            "bulkdelete": self.bulk_delete,
            "transaction": self.transaction,
        }

    async def __call__(self, op: str, payload: bytes, ctx: RequestInfo) -> bytes:
        fn = self._ops.get(op)
        if fn is None:
            raise Unimplemented(f"state has no operation {op!r}")
        return await fn(payload, ctx)

    async def get(self, payload: bytes, ctx: RequestInfo) -> bytes:
        req = pb.GetStateRequest.FromString(payload)
        entry = await self.store.get(self.prefix.apply(req.key, ctx.app_id))
        if entry is None:
            return _EMPTY
        data: bytes = _entry_response(entry).SerializeToString()
        return data

    async def bulk_get(self, payload: bytes, ctx: RequestInfo) -> bytes:
        req = pb.GetBulkStateRequest.FromString(payload)
        stored = [self.prefix.apply(key, ctx.app_id, f"keys[{i}]") for i, key in enumerate(req.keys)]
        limit = asyncio.Semaphore(min(req.parallelism, _MAX_PARALLELISM) if req.parallelism > 0 else _MAX_PARALLELISM)

        async def one(key: str, full: str) -> pb.BulkStateItem:
            async with limit:
                try:
                    entry = await self.store.get(full)
                except L8Error as exc:
                    return pb.BulkStateItem(key=key, error=str(exc))
            if entry is None:
                return pb.BulkStateItem(key=key)
            item = pb.BulkStateItem(key=key, data=entry.value, etag=entry.etag)
            if entry.expires_at is not None:
                item.metadata["ttlExpireTime"] = _rfc3339(entry.expires_at)
            return item

        items = await asyncio.gather(*(one(k, f) for k, f in zip(req.keys, stored, strict=True)))
        data: bytes = pb.GetBulkStateResponse(items=items).SerializeToString()
        return data

    async def save(self, payload: bytes, ctx: RequestInfo) -> bytes:
        req = pb.SaveStateRequest.FromString(payload)
        ops = [self._set_op(item, ctx, f"states[{i}]") for i, item in enumerate(req.states)]
        await self._apply(ops)
        return _EMPTY

    async def delete(self, payload: bytes, ctx: RequestInfo) -> bytes:
        req = pb.DeleteStateRequest.FromString(payload)
        etag = req.etag.value if req.HasField("etag") and req.etag.value else None
        if req.options.concurrency == LAST_WRITE:
            etag = None
        await self.store.delete(StateDelete(self.prefix.apply(req.key, ctx.app_id), etag))
        return _EMPTY

    async def bulk_delete(self, payload: bytes, ctx: RequestInfo) -> bytes:
        req = pb.DeleteBulkStateRequest.FromString(payload)
        ops = [self._delete_op(item, ctx, f"states[{i}]") for i, item in enumerate(req.states)]
        await self._apply(ops)
        return _EMPTY

    async def transaction(self, payload: bytes, ctx: RequestInfo) -> bytes:
        if "TRANSACTIONAL" not in self.store.features():
            raise Unimplemented(f"state store {self.component!r} does not support transactions")
        req = pb.ExecuteStateTransactionRequest.FromString(payload)
        limit = self.store.limits.max_transaction_ops
        if len(req.operations) > limit:
            raise InvalidArgument(f"a transaction holds at most {limit} operations; got {len(req.operations)}")
        ops: list[StateOp] = []
        for i, operation in enumerate(req.operations):
            where = f"operations[{i}]"
            kind = operation.operationType.lower()
            if kind == "upsert":
                ops.append(self._set_op(operation.request, ctx, where))
            elif kind == "delete":
                ops.append(self._delete_op(operation.request, ctx, where))
            else:
                raise InvalidArgument(
                    f"{where}: operationType {operation.operationType!r} is neither 'upsert' nor 'delete'"
                )
        await self.store.transact(ops)
        return _EMPTY

    def _set_op(self, item: pb.StateItem, ctx: RequestInfo, where: str) -> StateSet:
        key = self.prefix.apply(item.key, ctx.app_id, f"{where}.key")
        limit = self.store.limits.max_value_bytes
        if len(item.value) > limit:
            raise InvalidArgument(
                f"{where}: the value of key {item.key!r} is {len(item.value)} bytes; "
                f"state store {self.component!r} takes at most {limit}"
            )
        etag = item.etag.value if item.HasField("etag") and item.etag.value else None
        concurrency = item.options.concurrency
        if concurrency == LAST_WRITE:
            etag = None
        ttl = parse_ttl(item.metadata, f"{where} (key {item.key!r})")
        return StateSet(key, item.value, etag, first_write=concurrency == FIRST_WRITE, ttl=ttl)

    def _delete_op(self, item: pb.StateItem, ctx: RequestInfo, where: str) -> StateDelete:
        key = self.prefix.apply(item.key, ctx.app_id, f"{where}.key")
        etag = item.etag.value if item.HasField("etag") and item.etag.value else None
        if item.options.concurrency == LAST_WRITE:
            etag = None
        return StateDelete(key, etag)

    async def _apply(self, ops: Sequence[StateOp]) -> None:
        """Apply independent writes; writes to one key keep their order."""
        if len(ops) == 1:
            await _one(self.store, ops[0])
            return
        if len({op.key for op in ops}) < len(ops):
            for op in ops:
                await _one(self.store, op)
            return
        results = await asyncio.gather(*(_one(self.store, op) for op in ops), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result


async def _one(store: StateStore, op: StateOp) -> None:
    if isinstance(op, StateSet):
        await store.set(op)
    else:
        await store.delete(op)


def _entry_response(entry: StateEntry) -> pb.GetStateResponse:
    resp = pb.GetStateResponse(data=entry.value, etag=entry.etag)
    if entry.expires_at is not None:
        resp.metadata["ttlExpireTime"] = _rfc3339(entry.expires_at)
    return resp


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
