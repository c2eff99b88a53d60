"""Drives l8's State API with the official Dapr SDK, unchanged; run as a subprocess by the tests
with DAPR_GRPC_PORT and DAPR_HTTP_PORT set. Prints "ok" when every check held."""

from __future__ import annotations

import json

import grpc
from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError
from dapr.clients.grpc._request import TransactionalStateOperation, TransactionOperationType
from dapr.clients.grpc._state import Concurrency, StateItem, StateOptions


def expect_error(code: grpc.StatusCode, fn, *args, **kwargs) -> str:  # type: ignore[no-untyped-def]
    try:
        fn(*args, **kwargs)
    except DaprGrpcError as exc:
        assert exc.code() == code, (exc.code(), exc.details())
        return exc.details() or ""
    raise AssertionError(f"expected {code}")


with DaprClient() as d:
    d.save_state("statestore", "order", json.dumps({"qty": 1}))
    got = d.get_state("statestore", "order")
    assert json.loads(got.data) == {"qty": 1}, got.data
    etag = got.etag
    d.save_state("statestore", "order", json.dumps({"qty": 2}), etag=etag)
    assert d.get_state("statestore", "order").etag != etag
    expect_error(grpc.StatusCode.ABORTED, d.save_state, "statestore", "order", "x", etag=etag)
    msg = expect_error(grpc.StatusCode.INVALID_ARGUMENT, d.save_state, "statestore", "order", "x", etag="bad")
    assert "etag" in msg

    d.save_state("statestore", "fw", "1", options=StateOptions(concurrency=Concurrency.first_write))
    expect_error(
        grpc.StatusCode.ABORTED,
        d.save_state,
        "statestore",
        "fw",
        "2",
        options=StateOptions(concurrency=Concurrency.first_write),
    )

    d.save_bulk_state("statestore", [StateItem(key="b1", value="one"), StateItem(key="b2", value="two")])
    items = {i.key: i.data for i in d.get_bulk_state("statestore", ["b1", "b2", "none"]).items}
    assert items == {"b1": b"one", "b2": b"two", "none": b""}, items

    d.execute_state_transaction(
        "statestore",
        [
            TransactionalStateOperation(key="b1", data="", operation_type=TransactionOperationType.delete),
            TransactionalStateOperation(key="t", data="tx"),
        ],
    )
    assert d.get_state("statestore", "b1").data == b""
    assert d.get_state("statestore", "t").data == b"tx"

    d.save_state("statestore", "ttl", "x", state_metadata={"ttlInSeconds": "100"})
    assert d.get_state("statestore", "ttl").data == b"x"

    d.delete_state("statestore", "order")
    assert d.get_state("statestore", "order").data == b""

    msg = expect_error(grpc.StatusCode.INVALID_ARGUMENT, d.get_state, "nostore", "k")
    assert "statestore" in msg

    meta = d.get_metadata()
    assert meta.application_id, meta
    assert any(c.name == "statestore" for c in meta.registered_components), meta.registered_components
print("ok")
