"""The State API: get, bulk get, save, delete, bulk delete and transactions on a StateStore.

Semantics (DESIGN.md): a missing key reads as empty data; a given etag must match unless the
request asks LAST_WRITE explicitly (an etag "0" or "" is none, as in Layotto); FIRST_WRITE
without an etag inserts only; every write rotates the etag; ``ttlInSeconds`` expires a key and
reads report ``ttlExpireTime``. Each request is checked whole before anything is written, so bad
input changes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from bridges.errors import EtagMismatch, InvalidArgument, InvalidEtag, L8Error, Unimplemented, quote
from bridges.protocols import StateDelete, StateEntry, StateOp, StateSet, StateStore
from handlers import limits
from handlers.base import KeyPrefix, RequestInfo, parse_ttl
from handlers.proto import runtime_pb2 as pb

FIRST_WRITE = pb.StateOptions.CONCURRENCY_FIRST_WRITE
LAST_WRITE = pb.StateOptions.CONCURRENCY_LAST_WRITE
_EMPTY = b""
_MAX_PARALLELISM = 64
# Dapr's ErrorInfo reasons of state failures.
ILLEGAL_KEY = "DAPR_STATE_ILLEGAL_KEY"
_REASONS: dict[type[L8Error], str] = {
    InvalidEtag: "DAPR_STATE_ETAG_INVALID",
    EtagMismatch: "DAPR_STATE_ETAG_MISMATCH",
}


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
            raise Unimplemented(f"state has no operation {quote(op)}")
        try:
            return await fn(payload, ctx)
        except L8Error as exc:
            if not exc.reason:
                exc.reason = _REASONS.get(type(exc), "")
            raise

    async def get(self, payload: bytes, ctx: RequestInfo) -> bytes:
        req = pb.GetStateRequest.FromString(payload)
        if req.metadata:
            limits.check_map(req.metadata, "metadata")
        entry = await self.store.get(self.prefix.apply(req.key, ctx.app_id, reason=ILLEGAL_KEY))
        if entry is None:
            return _EMPTY
        data: bytes = _entry_response(entry).SerializeToString()
        return data

    async def bulk_get(self, payload: bytes, ctx: RequestInfo) -> bytes:
        req = pb.GetBulkStateRequest.FromString(payload)
        limits.check_count(req.keys, limits.BULK, "keys")
        limits.check_map(req.metadata, "metadata")
        stored = [self.prefix.apply(key, ctx.app_id, f"keys[{i}]", ILLEGAL_KEY) for i, key in enumerate(req.keys)]
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
        limits.check_count(req.states, limits.BULK, "states")
        ops = [self._set_op(item, ctx, f"states[{i}]") for i, item in enumerate(req.states)]
        await self._apply(ops)
        return _EMPTY

    async def delete(self, payload: bytes, ctx: RequestInfo) -> bytes:
        req = pb.DeleteStateRequest.FromString(payload)
        limits.check_map(req.metadata, "metadata")
        etag = _etag(req, "etag")
        if req.options.concurrency == LAST_WRITE:
            etag = None
        await self.store.delete(StateDelete(self.prefix.apply(req.key, ctx.app_id, reason=ILLEGAL_KEY), etag))
        return _EMPTY

    async def bulk_delete(self, payload: bytes, ctx: RequestInfo) -> bytes:
        req = pb.DeleteBulkStateRequest.FromString(payload)
        limits.check_count(req.states, limits.BULK, "states")
        ops = [self._delete_op(item, ctx, f"states[{i}]") for i, item in enumerate(req.states)]
        await self._apply(ops)
        return _EMPTY

    async def transaction(self, payload: bytes, ctx: RequestInfo) -> bytes:
        if "TRANSACTIONAL" not in self.store.features():
            raise Unimplemented(
                f"state store {self.component!r} does not support transactions",
                reason="DAPR_STATE_TRANSACTIONS_NOT_SUPPORTED",
            )
        req = pb.ExecuteStateTransactionRequest.FromString(payload)
        limit = min(self.store.limits.max_transaction_ops, limits.BULK)
        if len(req.operations) > limit:
            raise InvalidArgument(
                f"a transaction holds at most {limit} operations; got {len(req.operations)}",
                reason="DAPR_STATE_TOO_MANY_TRANSACTIONS",
            )
        limits.check_map(req.metadata, "metadata")
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
                    f"{where}: operationType {quote(operation.operationType)} is neither 'upsert' nor 'delete'"
                )
        await self.store.transact(ops)
        return _EMPTY

    def _set_op(self, item: pb.StateItem, ctx: RequestInfo, where: str) -> StateSet:
        key = self.prefix.apply(item.key, ctx.app_id, f"{where}.key", ILLEGAL_KEY)
        limit = self.store.limits.max_value_bytes
        if len(item.value) > limit:
            raise InvalidArgument(
                f"{where}: the value of key {quote(item.key)} is {len(item.value)} bytes; "
                f"state store {self.component!r} takes at most {limit}"
            )
        limits.check_map(item.metadata, f"{where}.metadata")
        etag = _etag(item, f"{where}.etag")
        concurrency = item.options.concurrency
        if concurrency == LAST_WRITE:
            etag = None
        ttl = parse_ttl(item.metadata, f"{where} (key {quote(item.key)})")
        return StateSet(key, item.value, etag, first_write=concurrency == FIRST_WRITE, ttl=ttl)

    def _delete_op(self, item: pb.StateItem, ctx: RequestInfo, where: str) -> StateDelete:
        key = self.prefix.apply(item.key, ctx.app_id, f"{where}.key", ILLEGAL_KEY)
        limits.check_map(item.metadata, f"{where}.metadata")
        etag = _etag(item, f"{where}.etag")
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


def _etag(item: pb.StateItem | pb.DeleteStateRequest, what: str) -> str | None:
    """The etag to check, if any. Layotto's SDKs send "0" for "no etag" (its Redis store reads
    version 0 as unconditional), and Dapr's an empty one; both mean no etag here too. A longer one
    than any store hands out is refused before it travels."""
    value: str = item.etag.value
    if value in ("", "0"):
        return None
    return limits.check_size(value, limits.ETAG, what)


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
