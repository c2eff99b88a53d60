"""Drives l8's secrets and output bindings with the official Dapr SDK, unchanged; run as a
subprocess by the tests with DAPR_GRPC_PORT and DAPR_HTTP_PORT set. Prints "ok" when every check held."""

from __future__ import annotations

import json

import grpc
from dapr.clients import DaprClient

with DaprClient() as d:
    got = d.get_secret("secretstore", "SECRET_DB_PASSWORD")
    assert got.secret == {"SECRET_DB_PASSWORD": "pg-pass-42"}, got.secret
    bulk = d.get_bulk_secret("secretstore").secrets
    assert bulk["SECRET_API_KEY"] == {"SECRET_API_KEY": "key-7"} and "HOME" not in bulk, bulk
    try:
        d.get_secret("secretstore", "SECRET_MISSING")
        raise AssertionError("a missing secret must fail")
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND, exc  # type: ignore[attr-defined]

    made = d.invoke_binding("disk", "create", data="hello", binding_metadata={"fileName": "greeting.txt"})
    assert made.binding_metadata == {"fileName": "greeting.txt"}, made.binding_metadata
    assert d.invoke_binding("disk", "get", binding_metadata={"fileName": "greeting.txt"}).text() == "hello"
    assert json.loads(d.invoke_binding("disk", "list").data) == ["greeting.txt"]
    try:
        d.invoke_binding("disk", "explode")
        raise AssertionError("an unknown operation must fail")
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc  # type: ignore[attr-defined]
        assert "create, get, list, delete" in (exc.details() or "")  # type: ignore[attr-defined]
print("ok")
