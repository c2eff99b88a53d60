"""Dapr's state routes: ``/v1.0/state/{store}`` save, get, bulk get, delete and transaction.

Values travel as Dapr stores them: a saved JSON ``value`` is stored as its compact JSON, and a get
answers the stored bytes as they are, with the etag in ``ETag`` and the item's metadata as
``metadata.<name>`` headers; a missing key answers 204. ``If-Match`` carries an etag on delete.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, TypeVar

import orjson

from handlers.proto import runtime_pb2 as pb
from runtime.dapr_http import body as b
from runtime.dapr_http.errors import HttpError, malformed
from runtime.dapr_http.front import HttpFront
from runtime.dapr_http.router import Params, Route, route
from runtime.http import Request, Response

API = "state"
T = TypeVar("T")
_CONCURRENCY = {
    "": pb.StateOptions.CONCURRENCY_UNSPECIFIED,
    "first-write": pb.StateOptions.CONCURRENCY_FIRST_WRITE,
    "last-write": pb.StateOptions.CONCURRENCY_LAST_WRITE,
}
_CONSISTENCY = {
    "": pb.StateOptions.CONSISTENCY_UNSPECIFIED,
    "eventual": pb.StateOptions.CONSISTENCY_EVENTUAL,
    "strong": pb.StateOptions.CONSISTENCY_STRONG,
}
_OPERATIONS = ("upsert", "delete")


def _choice(table: Mapping[str, T], value: str, what: str) -> T:
    found = table.get(value)
    if found is None:
        choices = ", ".join(repr(k) for k in table if k)
        raise malformed(f"{what} {b.short(value)} is not one of {choices}")
    return found


def _options(value: Any, where: str) -> pb.StateOptions:
    if value is None:
        return pb.StateOptions()
    obj = b.json_object(value, where)
    return pb.StateOptions(
        concurrency=_choice(_CONCURRENCY, b.string(obj, "concurrency", where), f"{where}.concurrency"),
        consistency=_choice(_CONSISTENCY, b.string(obj, "consistency", where), f"{where}.consistency"),
    )


def state_item(value: Any, where: str, *, with_value: bool = True) -> pb.StateItem:
    obj = b.json_object(value, where)
    key = b.string(obj, "key", where, required=True)
    if not key:
        raise malformed(f"{where}.key is empty", "DAPR_STATE_ILLEGAL_KEY")
    item = pb.StateItem(key=key, metadata=b.string_map(b.get(obj, "metadata"), f"{where}.metadata"))
    if with_value and b.get(obj, "value") is not None:
        item.value = b.encode(b.get(obj, "value"))
    etag = b.get(obj, "etag")
    if etag is not None:
        if not isinstance(etag, str):
            raise malformed(f"{where}.etag must be a string; got {type(etag).__name__}", "DAPR_STATE_ETAG_INVALID")
        item.etag.value = etag
    item.options.CopyFrom(_options(b.get(obj, "options"), f"{where}.options"))
    return item


class StateRoutes:
    def __init__(self, front: HttpFront) -> None:
        self._front = front

    def routes(self) -> list[Route]:
        return [
            route("POST", "/v1.0/state/{store}", self.save),
            route("POST", "/v1.0/state/{store}/bulk", self.bulk_get),
            route("POST", "/v1.0/state/{store}/transaction", self.transaction),
            route("GET", "/v1.0/state/{store}/{key}", self.get),
            route("DELETE", "/v1.0/state/{store}/{key}", self.delete),
        ]

    async def save(self, request: Request, params: Params) -> Response:
        store = self._front.component(API, params["store"], "ERR_STATE_SAVE")
        items = b.json_list(request.body, "the body")
        req = pb.SaveStateRequest(store_name=store, states=[state_item(v, f"[{i}]") for i, v in enumerate(items)])
        await self._front.call(API, store, "save", req.SerializeToString(), request, "ERR_STATE_SAVE")
        return Response(204)

    async def get(self, request: Request, params: Params) -> Response:
        store = self._front.component(API, params["store"], "ERR_STATE_GET")
        consistency = _choice(_CONSISTENCY, b.query_value(request.query, "consistency"), "consistency")
        req = pb.GetStateRequest(
            store_name=store,
            key=params["key"],
            consistency=consistency,
            metadata=b.query_metadata(request.query),
        )
        if not req.key:
            raise malformed("the key is empty", "DAPR_STATE_ILLEGAL_KEY")
        data = await self._front.call(API, store, "get", req.SerializeToString(), request, "ERR_STATE_GET")
        got = pb.GetStateResponse.FromString(data)
        if not got.data and not got.etag:
            return Response(204)
        headers = {"content-type": "application/json"}
        if got.etag:
            headers["etag"] = got.etag
        headers.update({f"metadata.{k}": v for k, v in got.metadata.items()})
        return Response(200, got.data, headers)

    async def bulk_get(self, request: Request, params: Params) -> Response:
        store = self._front.component(API, params["store"], "ERR_STATE_BULK_GET")
        obj = b.json_object(b.json_body(request.body), "the body")
        keys = b.get(obj, "keys")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise malformed("keys must be a JSON array of strings")
        if len(keys) > b.MAX_ITEMS:
            raise malformed(f"keys has {len(keys)} entries; at most {b.MAX_ITEMS}")
        parallelism = b.integer(obj, "parallelism", "the body")
        if parallelism < 0:
            raise malformed(f"parallelism must not be negative; got {parallelism}")
        req = pb.GetBulkStateRequest(
            store_name=store, keys=keys, parallelism=parallelism, metadata=b.query_metadata(request.query)
        )
        data = await self._front.call(API, store, "bulkget", req.SerializeToString(), request, "ERR_STATE_BULK_GET")
        out = []
        for item in pb.GetBulkStateResponse.FromString(data).items:
            entry: dict[str, Any] = {"key": item.key}
            if item.data:
                entry["data"] = _data(item.data)
            if item.etag:
                entry["etag"] = item.etag
            if item.metadata:
                entry["metadata"] = dict(item.metadata)
            if item.error:
                entry["error"] = item.error
            out.append(entry)
        return Response(200, orjson.dumps(out), {"content-type": "application/json"})

    async def delete(self, request: Request, params: Params) -> Response:
        store = self._front.component(API, params["store"], "ERR_STATE_DELETE")
        req = pb.DeleteStateRequest(store_name=store, key=params["key"], metadata=b.query_metadata(request.query))
        if not req.key:
            raise malformed("the key is empty", "DAPR_STATE_ILLEGAL_KEY")
        etag = request.headers.get("if-match")
        if etag is not None:
            req.etag.value = etag
        req.options.concurrency = _choice(_CONCURRENCY, b.query_value(request.query, "concurrency"), "concurrency")
        req.options.consistency = _choice(_CONSISTENCY, b.query_value(request.query, "consistency"), "consistency")
        await self._front.call(API, store, "delete", req.SerializeToString(), request, "ERR_STATE_DELETE")
        return Response(204)

    async def transaction(self, request: Request, params: Params) -> Response:
        store = self._front.component(API, params["store"], "ERR_STATE_TRANSACTION")
        obj = b.json_object(b.json_body(request.body), "the body")
        operations = b.get(obj, "operations")
        if not isinstance(operations, list):
            raise malformed("operations must be a JSON array")
        if len(operations) > b.MAX_ITEMS:
            raise malformed(f"operations has {len(operations)} entries; at most {b.MAX_ITEMS}")
        req = pb.ExecuteStateTransactionRequest(
            storeName=store, metadata=b.string_map(b.get(obj, "metadata"), "metadata")
        )
        for i, op in enumerate(operations):
            where = f"operations[{i}]"
            op_obj = b.json_object(op, where)
            kind = b.string(op_obj, "operation", where, required=True)
            if kind not in _OPERATIONS:
                raise HttpError(
                    400, "ERR_NOT_SUPPORTED_STATE_OPERATION", f"{where}: operation type {b.short(kind)} not supported"
                )
            item = state_item(b.get(op_obj, "request"), f"{where}.request", with_value=kind == "upsert")
            req.operations.add(operationType=kind, request=item)
        await self._front.call(API, store, "transaction", req.SerializeToString(), request, "ERR_STATE_TRANSACTION")
        return Response(204)


def _data(raw: bytes) -> Any:
    """Stored bytes in a bulk answer: JSON as it is, else text, else base64."""
    try:
        return orjson.Fragment(raw) if _is_json(raw) else raw.decode()
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode()


def _is_json(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True
