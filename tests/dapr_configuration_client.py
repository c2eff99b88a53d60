"""Drives l8's Configuration API with the official Dapr SDK, unchanged; run as a subprocess by the
tests with DAPR_GRPC_PORT and DAPR_HTTP_PORT set. Items are written through the native API (Dapr
has no rpc for that). Prints "ok" when every check held."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import grpc
from dapr.clients import DaprClient
from dapr.clients.grpc._response import ConfigurationResponse

from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc

STORE = "configstore"
DEADLINE = 30.0

native = runtime_pb2_grpc.RuntimeStub(grpc.insecure_channel(f"127.0.0.1:{os.environ['DAPR_GRPC_PORT']}"))


def save(key: str, content: str) -> None:
    native.SaveConfiguration(
        pb.SaveConfigurationRequest(store_name=STORE, items=[pb.ConfigurationItem(key=key, content=content)])
    )


def delete(key: str) -> None:
    native.DeleteConfiguration(pb.DeleteConfigurationRequest(store_name=STORE, keys=[key]))


class Recorder:
    """The handler given to subscribe_configuration: records (key, value) in arrival order."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self.ids: set[str] = set()
        self._cond = threading.Condition()

    def __call__(self, sub_id: str, resp: ConfigurationResponse) -> None:
        with self._cond:
            self.ids.add(sub_id)
            self.items += [(k, v.value) for k, v in sorted(resp.items.items())]
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[tuple[str, str]]], bool]) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self.items), DEADLINE), self.items


with DaprClient() as d:
    save("greeting", "hello")
    save("color", "blue")
    got = d.get_configuration(STORE, ["greeting", "color", "missing"])
    assert {k: v.value for k, v in got.items.items()} == {"greeting": "hello", "color": "blue"}, got.items
    assert all(v.version for v in got.items.values())
    every = d.get_configuration(STORE, [])
    assert {"greeting", "color"} <= set(every.items), every.items

    a, b = Recorder(), Recorder()
    id_a = d.subscribe_configuration(STORE, ["greeting"], a)
    id_b = d.subscribe_configuration(STORE, ["greeting", "fence"], b)
    assert id_a and id_b and id_a != id_b, (id_a, id_b)

    save("greeting", "hi")
    save("color", "red")  # nobody watches it
    delete("greeting")
    a.wait_for(lambda items: len(items) >= 2)
    assert a.items == [("greeting", "hi"), ("greeting", "")], a.items
    assert a.ids == {id_a}

    assert d.unsubscribe_configuration(STORE, id_a) is True
    save("greeting", "after")
    save("fence", "end")
    b.wait_for(lambda items: ("fence", "end") in items)
    assert b.items == [("greeting", "hi"), ("greeting", ""), ("greeting", "after"), ("fence", "end")], b.items
    assert a.items == [("greeting", "hi"), ("greeting", "")], a.items
    assert d.unsubscribe_configuration(STORE, "no-such-id") is False
    assert d.unsubscribe_configuration(STORE, id_b) is True
print("ok")
