"""Drives l8's Lock API with the official Dapr SDK, unchanged; run as a subprocess by the tests
with DAPR_GRPC_PORT and DAPR_HTTP_PORT set. Prints "ok" when every check held."""

from __future__ import annotations

import time
import uuid

from dapr.clients import DaprClient
from dapr.clients.grpc._response import UnlockResponseStatus

STORE = "lockstore"

with DaprClient() as d:
    me, other = uuid.uuid4().hex, uuid.uuid4().hex
    first = d.try_lock(STORE, "order-7", me, expiry_in_seconds=15)
    assert first.success
    assert not d.try_lock(STORE, "order-7", me, expiry_in_seconds=15).success, "not reentrant"
    assert not d.try_lock(STORE, "order-7", other, expiry_in_seconds=15).success
    assert d.unlock(STORE, "order-7", other).status == UnlockResponseStatus.lock_belongs_to_others
    assert d.unlock(STORE, "order-7", me).status == UnlockResponseStatus.success
    assert d.unlock(STORE, "order-7", me).status == UnlockResponseStatus.lock_does_not_exist

    # The SDK's context manager unlocks on exit.
    with d.try_lock(STORE, "order-8", me, expiry_in_seconds=15) as lock:
        assert lock.success
        assert not d.try_lock(STORE, "order-8", other, expiry_in_seconds=15).success
    assert d.try_lock(STORE, "order-8", other, expiry_in_seconds=15).success

    # A 3 s lock expires on its own and can be taken again.
    assert d.try_lock(STORE, "short", me, expiry_in_seconds=3).success
    deadline = time.monotonic() + 30
    while not d.try_lock(STORE, "short", other, expiry_in_seconds=15).success:
        assert time.monotonic() < deadline, "the expired lock was never freed"
        time.sleep(0.1)
print("ok")
