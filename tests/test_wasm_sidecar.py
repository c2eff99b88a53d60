"""Functions from a sidecar's config: invoked through the Dapr SDK (gRPC and HTTP) and the HTTP
route, a module that fails to load, hot reload, and the metadata rows."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from runtime.sidecar import Sidecar
from tests import wasm_modules as mods
from tests.conftest import SidecarFactory, sidecar_config, unique
from tests.servers import Server

HERE = Path(__file__).parent
COMPONENTS = {
    "statestore": {"kind": "state", "type": "nats.kv"},
    "pubsub": {"kind": "pubsub", "type": "nats.jetstream"},
}


def dapr_calls(sidecar: Sidecar, calls: list[dict[str, Any]], protocol: str) -> list[dict[str, Any]]:
    assert sidecar.grpc is not None and sidecar.http is not None
    env = {
        **os.environ,
        "DAPR_GRPC_PORT": str(sidecar.grpc.port),
        "DAPR_HTTP_PORT": str(sidecar.http.port),
        "DAPR_API_METHOD_INVOCATION_PROTOCOL": protocol,
    }
    out = subprocess.run(
        [sys.executable, str(HERE / "dapr_invoke_client.py"), json.dumps(calls)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    results: list[dict[str, Any]] = json.loads(out.stdout.strip().splitlines()[-1].removeprefix("RESULTS "))
    return results


def http_get(sidecar: Sidecar, path: str) -> Any:
    assert sidecar.http is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{sidecar.http.port}{path}", timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def guests() -> dict[str, Path]:
    return mods.build_guests()


async def test_the_dapr_sdk_invokes_a_function_over_grpc_and_http_and_a_broken_one_answers_at_once(
    nats_server: Server,
    make_sidecar: SidecarFactory,
    guests: dict[str, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = tmp_path / "broken.wasm"
    broken.write_bytes(mods.BAD["missing export"])
    config = sidecar_config(
        nats_server.url,
        COMPONENTS,
        functions=[
            {"name": "orders-fn", "module": str(guests["go"]), "invoke": True, "allow": {"state": ["statestore"]}},
            {"name": "broken-fn", "module": str(broken), "invoke": True},
        ],
        data_dir=str(tmp_path / "data"),
    )
    sidecar = await make_sidecar(config)
    assert sidecar.functions is not None
    orders = sidecar.functions.hosts[0].function
    customer = unique("cust")
    for _ in range(2):
        await orders.on_event({"id": "e"}, json.dumps({"customer": customer}).encode())
    calls = [
        {"app": "orders-fn", "method": "count", "data": customer},
        {"app": "broken-fn", "method": "count", "data": customer},
    ]
    over_grpc = await asyncio.to_thread(dapr_calls, sidecar, calls, "grpc")
    over_http = await asyncio.to_thread(dapr_calls, sidecar, calls, "http")
    assert over_grpc[0] == {"ok": True, "text": "2", "content_type": "application/json"}
    assert over_http[0]["ok"] and over_http[0]["text"] == "2"
    assert over_grpc[1]["code"] == "UNAVAILABLE"
    assert "function broken-fn is not available" in over_grpc[1]["message"]
    assert "does not export 'l8_alloc'" in over_grpc[1]["message"]
    assert over_http[1]["status"] == 503
    assert "function broken-fn failed to load" in caplog.text
    rows = {r["name"]: r for r in (await asyncio.to_thread(http_get, sidecar, "/v1.0/metadata"))["functions"]}
    assert rows["orders-fn"]["status"] == "ok" and rows["orders-fn"]["digest"] == orders.digest
    assert rows["broken-fn"]["status"] == "failed" and "does not export 'l8_alloc'" in rows["broken-fn"]["reason"]


async def test_a_function_answers_the_http_route_with_verb_querystring_and_the_callers_metadata_in_its_meta(
    nats_server: Server, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    # This function answers the meta JSON of its input: what the host gave it.
    meta_echo = mods.invoke_module(
        "(i64.or (i64.shl (i64.extend_i32_u (i32.add (local.get $p) (i32.const 4))) (i64.const 32))"
        " (i64.extend_i32_u (i32.load (local.get $p))))"
    )
    path = tmp_path / "meta.wasm"
    path.write_bytes(meta_echo)
    sidecar = await make_sidecar(
        sidecar_config(
            nats_server.url, COMPONENTS, functions=[{"name": "meta-fn", "module": str(path), "invoke": True}]
        )
    )
    assert sidecar.http is not None
    url = f"http://127.0.0.1:{sidecar.http.port}/v1.0/invoke/meta-fn/method/orders/list?page=2"
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    headers = {"content-type": "application/json", "x-tenant": "acme", "traceparent": traceparent}
    request = urllib.request.Request(url, data=b"{}", method="PUT", headers=headers)

    def call() -> Any:
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.loads(r.read())

    meta = await asyncio.to_thread(call)
    assert meta["method"] == "orders/list"
    assert (meta["verb"], meta["querystring"], meta["content_type"]) == ("PUT", "page=2", "application/json")
    # The caller's metadata, as an app's OnInvoke would get it.
    assert meta["metadata"] == {
        "x-tenant": "acme",
        "dapr-callee-app-id": "meta-fn",
        "dapr-caller-app-id": sidecar.config.app.id,
        "traceparent": traceparent,
    }
    # gRPC metadata from the Dapr SDK reaches it the same way.
    (answer,) = await asyncio.to_thread(
        dapr_calls, sidecar, [{"app": "meta-fn", "method": "m", "metadata": [["x-tenant", "globex"]]}], "grpc"
    )
    assert answer["ok"], answer
    metadata = json.loads(answer["text"])["metadata"]
    assert metadata["x-tenant"] == "globex" and metadata["dapr-caller-app-id"] == sidecar.config.app.id


async def test_a_changed_module_file_is_swapped_in_and_a_bad_one_is_refused_while_the_old_serves(
    nats_server: Server, make_sidecar: SidecarFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "fn.wasm"
    path.write_bytes(mods.echo_version(1))
    sidecar = await make_sidecar(
        sidecar_config(
            nats_server.url,
            COMPONENTS,
            functions=[{"name": "reload-fn", "module": str(path), "invoke": True}],
            wasm={"reload_interval": 0.05},
        )
    )
    assert sidecar.functions is not None
    fn = sidecar.functions.hosts[0].function

    async def answer() -> int:
        (value,) = struct.unpack("<q", await fn.invoke({}, b""))
        return int(value)

    assert await answer() == 1
    path.write_bytes(b"\x00asm broken")
    deadline = time.monotonic() + 30
    while "the new" not in caplog.text:
        assert time.monotonic() < deadline, "the bad module was not refused"
        assert await answer() == 1
        await asyncio.sleep(0.05)
    assert "reload-fn: the new" in caplog.text and "not a valid WebAssembly module" in caplog.text
    path.write_bytes(mods.echo_version(2))
    while await answer() != 2:
        assert time.monotonic() < deadline, "the new module was not swapped in"
        await asyncio.sleep(0.05)


def test_a_function_config_is_checked_at_load() -> None:
    from runtime.config import ConfigError, load_config

    bad = [
        ({"name": "a.b", "module": "x.wasm", "invoke": True}, "function name 'a.b'"),
        ({"name": "f", "module": "x.wasm", "invoke": True, "limits": {"memoryMb": 0}}, "limits.memoryMb"),
        ({"name": "f", "module": "x.wasm", "invoke": True, "allow": {"publish": ["orders"]}}, "not PUBSUB/TOPIC"),
        ({"name": "f", "module": "x.wasm"}, "has no trigger"),
        ({"name": "f", "module": "x.wasm", "invoke": True, "extra": 1}, "unknown field"),
    ]
    for i, (function, message) in enumerate(bad):
        path = Path(f"/tmp/l8-fn-config-{os.getpid()}-{i}.yaml")
        path.write_text(json.dumps({"functions": [function]}))
        try:
            with pytest.raises(ConfigError, match=message):
                load_config(path)
        finally:
            path.unlink()
