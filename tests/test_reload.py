"""Live reconfiguration as an operator does it: edit the config file of a running `l8 run` (with
`reload.watch`), or call Layotto's Lifecycle.ApplyConfiguration; calls in flight finish on the old
component, a bad config is refused with the old one kept and a log line saying why."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from handlers.proto import lifecycle_pb2, lifecycle_pb2_grpc, runtime_pb2_grpc
from handlers.proto import runtime_pb2 as pb
from tests.conftest import unique
from tests.process import L8Process, start_l8
from tests.servers import Server, free_port


class Backend:
    """An HTTP server answering its name; with ``hold`` set, a request waits until released."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.hold = False
        self.release = threading.Event()
        self.arrived = threading.Event()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                backend.arrived.set()
                if backend.hold:
                    backend.release.wait(60)
                body = backend.name.encode()
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def backends() -> Iterator[dict[str, Backend]]:
    found = {name: Backend(name) for name in ("A", "B", "C")}
    yield found
    for backend in found.values():
        backend.stop()


def until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.05)


def invoke(l8: L8Process, name: str = "backend") -> bytes:
    with grpc.insecure_channel(l8.grpc_address) as channel:
        stub = runtime_pb2_grpc.RuntimeStub(channel)
        data: bytes = stub.InvokeBinding(pb.InvokeBindingRequest(name=name, operation="get"), timeout=60).data
        return data


def code_of(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_a_changed_config_file_swaps_adds_and_removes_components_while_calls_in_flight_finish_on_the_old(
    nats_server: Server, backends: dict[str, Backend], tmp_path: Path
) -> None:
    config: dict[str, Any] = {
        "app": {"id": unique("live")},
        "namespace": unique("ns"),
        "bus": {"url": nats_server.url},
        "components": {
            "backend": {"kind": "bindings", "type": "http", "metadata": {"url": backends["A"].url}},
            "lockstore": {"kind": "lock", "type": "nats.kv"},
        },
        "reload": {"watch": True, "interval": 0.1},
        "flow_control": {"rules": []},
    }
    l8 = start_l8(config, cwd=tmp_path)
    path = tmp_path / "l8.yaml"
    try:
        assert invoke(l8) == b"A"
        backends["A"].hold = True
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(invoke, l8)
            assert backends["A"].arrived.wait(60)
            changed = {**config, "components": {
                "backend": {"kind": "bindings", "type": "http", "metadata": {"url": backends["B"].url}},
                "cache": {"kind": "state", "type": "nats.kv"},
            }, "flow_control": {"rules": [{"resource": "/spec.proto.runtime.v1.Runtime/GetState", "threshold": 0.01,
                                           "burst": 1}]}}  # fmt: skip
            path.write_text(yaml.safe_dump(changed))
            until(
                lambda: "applied: changed backend, added cache, removed lockstore, flow control rules" in l8.log(),
                "the new config",
            )
            assert invoke(l8) == b"B"
            assert not in_flight.done()
            backends["A"].release.set()
            assert in_flight.result(60) == b"A"  # the call that was in flight, on the old component
        with grpc.insecure_channel(l8.grpc_address) as channel:
            stub = runtime_pb2_grpc.RuntimeStub(channel)
            stub.SaveState(pb.SaveStateRequest(store_name="cache", states=[pb.StateItem(key="k", value=b"v")]))
            assert stub.GetState(pb.GetStateRequest(store_name="cache", key="k")).data == b"v"
            # The reloaded rule: one GetState, then no more.
            get = pb.GetStateRequest(store_name="cache", key="k")
            assert code_of(lambda: stub.GetState(get)) is grpc.StatusCode.RESOURCE_EXHAUSTED
            lock = pb.TryLockRequest(store_name="lockstore", resource_id="r", lock_owner="o", expire=5)
            assert code_of(lambda: stub.TryLock(lock)) is grpc.StatusCode.INVALID_ARGUMENT

        # A file that is no valid config, and one whose new component cannot start: both refused.
        path.write_text("components: {backend: {kind: bindings, type: carrier-pigeon}}\n")
        until(lambda: "refused, the running config stays" in l8.log(), "the refusal")
        assert "unknown bindings type 'carrier-pigeon'" in l8.log()
        unreachable = {**changed, "components": {**changed["components"], "broken": {
            "kind": "state", "type": "redis", "metadata": {"url": f"redis://127.0.0.1:{free_port()}"}}}}  # fmt: skip
        path.write_text(yaml.safe_dump(unreachable))
        until(lambda: "component 'broken' (state redis) failed to start" in l8.log(), "the second refusal")
        assert invoke(l8) == b"B"
        with grpc.insecure_channel(l8.grpc_address) as channel:
            stub = runtime_pb2_grpc.RuntimeStub(channel)
            saved = stub.GetBulkState(pb.GetBulkStateRequest(store_name="cache", keys=["k"]))
            assert [i.data for i in saved.items] == [b"v"]
            assert code_of(lambda: stub.GetBulkState(pb.GetBulkStateRequest(store_name="broken", keys=["k"]))) is (
                grpc.StatusCode.INVALID_ARGUMENT
            )
    finally:
        l8.stop()
    assert "Traceback" not in l8.log()


def test_lifecycle_apply_configuration_rebuilds_a_component_with_its_new_metadata(
    nats_server: Server, backends: dict[str, Backend], tmp_path: Path
) -> None:
    config = {
        "app": {"id": unique("applied")},
        "namespace": unique("ns"),
        "bus": {"url": nats_server.url},
        "components": {"backend": {"kind": "bindings", "type": "http", "metadata": {"url": backends["A"].url}}},
    }
    l8 = start_l8(config, cwd=tmp_path)
    try:
        assert invoke(l8) == b"A"
        with grpc.insecure_channel(l8.grpc_address) as channel:
            lifecycle = lifecycle_pb2_grpc.LifecycleStub(channel)

            def apply(**metadata: str) -> None:
                request = lifecycle_pb2.DynamicConfiguration()
                request.component_config.kind = "bindings"
                request.component_config.name = "backend"
                request.component_config.metadata.update(metadata)
                lifecycle.ApplyConfiguration(request)

            apply(url=backends["C"].url)
            assert invoke(l8) == b"C"
            with pytest.raises(grpc.RpcError) as refused:
                apply(url="not a url")
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "the running configuration stays" in (refused.value.details() or "")
        assert invoke(l8) == b"C"
    finally:
        l8.stop()
    assert "Traceback" not in l8.log()
