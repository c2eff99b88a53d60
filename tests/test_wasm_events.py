"""Functions as event targets in the sidecar: every guest on `orders` events, the answers settling
events as an app's do (dead-letter topic included), events waiting for a function whose module
failed to load, a sidecar killed mid-event, and the functions' subscriptions in `l8 subscriptions`,
`/v1.0/metadata` and `l8 asyncapi`."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bridges.protocols import StateStore
from handlers.proto import runtime_pb2 as pb
from runtime.sidecar import Sidecar
from tests import wasm_modules as mods
from tests.conftest import SidecarFactory, native_stub, sidecar_config, unique
from tests.process import L8, L8Process, start_l8, write_config
from tests.pubsub_app import AppServer, RecordingApp
from tests.servers import Server

STATE = {"kind": "state", "type": "nats.kv"}
PUBSUB = {"kind": "pubsub", "type": "nats.jetstream"}
ORDERS_ALLOW = {"state": ["statestore"], "publish": ["pubsub/order-audited"]}


@pytest.fixture(scope="module")
def guests() -> dict[str, Path]:
    return mods.build_guests()


@pytest.fixture
async def app() -> AsyncIterator[AppServer]:
    server = await AppServer(RecordingApp()).start()
    yield server
    await server.stop()


async def until(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if asyncio.iscoroutine(found):
            found = await found
        if found:
            return found
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        await asyncio.sleep(0.05)


async def publish(sidecar: Sidecar, topic: str, *items: bytes) -> None:
    channel, stub = native_stub(sidecar)
    async with channel:
        for data in items:
            await stub.PublishEvent(pb.PublishEventRequest(pubsub_name="pubsub", topic=topic, data=data), timeout=30)


async def invoke(sidecar: Sidecar, name: str, data: bytes) -> bytes:
    channel, stub = native_stub(sidecar)
    async with channel:
        request = pb.InvokeServiceRequest(id=name, message=pb.CommonInvokeRequest(method="count"))
        request.message.data.value = data
        reply = await stub.InvokeService(request, timeout=30)
    out: bytes = reply.data.value
    return out


def l8_json(*args: str) -> Any:
    out = subprocess.run([L8, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


async def listed(nats_server: Server, ns: str, app_id: str | None = None) -> list[dict[str, Any]]:
    """`l8 subscriptions --json` (in a thread: the sidecars under test run on this event loop)."""
    rows = await asyncio.to_thread(l8_json, "subscriptions", "--bus", nats_server.url, "--namespace", ns, "--json")
    return [r for r in rows if app_id is None or r["app"] == app_id]


async def metadata(sidecar: Sidecar) -> Any:
    import urllib.request

    assert sidecar.http is not None

    def get() -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{sidecar.http.port}/v1.0/metadata", timeout=10) as r:
            return json.loads(r.read())

    return await asyncio.to_thread(get)


def logged(caplog: pytest.LogCaptureFixture, name: str, text: str) -> int:
    """How often function ``name`` logged ``text`` through l8.log."""
    return sum(1 for r in caplog.records if r.getMessage() == f"function {name}: {text}")


async def test_every_guest_counts_orders_events_publishes_order_audited_and_is_listed_as_a_subscriber(
    make_sidecar: SidecarFactory, nats_server: Server, app: AppServer, guests: dict[str, Path]
) -> None:
    ns, topic = unique("ns"), unique("orders")
    names = {guest: unique(f"orders-{guest}") for guest in guests}
    functions = [
        {
            "name": names[guest],
            "module": str(path),
            "invoke": True,
            # One at a time: the example reads and writes its count without an etag.
            "subscribe": [{"pubsub": "pubsub", "topic": topic, "concurrency": 1}],
            "allow": ORDERS_ALLOW,
        }
        for guest, path in guests.items()
    ]
    sidecar = await make_sidecar(
        sidecar_config(
            nats_server.url,
            {"statestore": STATE, "pubsub": PUBSUB},
            app={"id": unique("auditor"), "callback": app.address},
            namespace=ns,
            subscriptions=[{"pubsub": "pubsub", "topic": "order-audited"}],
            functions=functions,
        )
    )
    await publish(sidecar, topic, b'{"customer":"c1"}', b'{"customer":"c2"}', b'{"customer":"c1"}')
    got = await app.app.wait_for(lambda ds: len(ds) == 3 * len(guests))
    audits: dict[str, list[dict[str, Any]]] = {}
    for delivery in got:
        audits.setdefault(delivery.event.source, []).append(json.loads(delivery.data))
    assert set(audits) == set(names.values())
    for name, seen in audits.items():
        assert sorted(seen, key=lambda a: (a["customer"], a["count"])) == [
            {"customer": "c1", "count": 1},
            {"customer": "c1", "count": 2},
            {"customer": "c2", "count": 1},
        ], name
        assert await invoke(sidecar, name, b"c1") == b"2"

    async def delivering() -> list[dict[str, Any]] | None:
        rows = [r for r in await listed(nats_server, ns) if r["origin"] == "function" and r["state"] == "delivering"]
        return rows if len(rows) == len(guests) else None

    rows = await until(delivering, "the functions' subscriptions listed as delivering")
    assert {r["app"] for r in rows} == set(names.values())
    assert all(r["topic"] == topic and r["pubsub"] == "pubsub" and r["target"] == "app" for r in rows)
    body = await metadata(sidecar)
    row = next(f for f in body["functions"] if f["name"] == names["rust"])
    assert row["status"] == "ok"
    assert row["subscriptions"] == [{"pubsubname": "pubsub", "topic": topic, "deadLetterTopic": ""}]


async def test_a_functions_answers_settle_its_events_as_an_apps_do_and_the_dead_letter_topic_gets_the_failures(
    make_sidecar: SidecarFactory,
    nats_server: Server,
    app: AppServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "l8.wasm")
    topic, dlq, name = unique("verdicts"), unique("dead"), unique("verdict")
    module = tmp_path / "verdict.wasm"
    module.write_bytes(mods.VERDICT)
    sidecar = await make_sidecar(
        sidecar_config(
            nats_server.url,
            {"pubsub": PUBSUB},
            app={"id": unique("app"), "callback": app.address},
            subscriptions=[{"pubsub": "pubsub", "topic": dlq}],
            functions=[
                {
                    "name": name,
                    "module": str(module),
                    "subscribe": [{"pubsub": "pubsub", "topic": topic, "deadLetterTopic": dlq, "maxDeliveries": 3}],
                }
            ],
        )
    )
    await publish(sidecar, topic, b"ok", b"drop", b"retry", b"trap")
    got = await app.app.wait_for(lambda ds: len(ds) == 3)
    assert sorted(d.data for d in got) == [b"drop", b"retry", b"trap"]
    assert all(d.event.source == sidecar.config.app.id for d in got)  # the publisher's, as for an app
    # DROP goes at once; RETRY and a trap are redelivered until maxDeliveries, then dead-lettered.
    await until(lambda: logged(caplog, name, "ok") == 1, "the event that succeeded")
    assert [logged(caplog, name, text) for text in ("ok", "drop", "retry", "trap")] == [1, 1, 3, 3]
    assert len(app.app.deliveries) == 3


async def test_events_wait_for_a_function_whose_module_failed_to_load_and_reach_the_fixed_module(
    make_sidecar: SidecarFactory, nats_server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "l8.wasm")
    ns, topic, name = unique("ns"), unique("held"), unique("late")
    module = tmp_path / "late.wasm"
    module.write_bytes(mods.ECHO)  # exports no l8_on_event, which its subscription needs
    sidecar = await make_sidecar(
        sidecar_config(
            nats_server.url,
            {"pubsub": PUBSUB},
            namespace=ns,
            functions=[{"name": name, "module": str(module), "subscribe": [{"pubsub": "pubsub", "topic": topic}]}],
            wasm={"reload_interval": 0.05},
        )
    )
    body = await metadata(sidecar)
    (row,) = body["functions"]
    assert row["status"] == "failed" and "does not export 'l8_on_event'" in row["reason"]
    await publish(sidecar, topic, b"kept")

    async def unreachable() -> list[dict[str, Any]]:
        return [r for r in await listed(nats_server, ns, name) if r["state"] == "unreachable"]

    rows = await until(unreachable, "the function shown unreachable")
    assert f"function {name} is not available" in rows[0]["reason"]
    module.write_bytes(mods.VERDICT)
    await until(lambda: logged(caplog, name, "kept") == 1, "the held event reached the fixed module")


def test_a_function_subscription_is_checked_at_load(tmp_path: Path) -> None:
    from runtime.config import ConfigError, load_config

    base = {"components": {"pubsub": PUBSUB}}
    sub = {"pubsub": "pubsub", "topic": "t"}
    bad = [
        ({"name": "f", "module": "f.wasm", "subscribe": [{**sub, "pubsub": "nope"}]}, "is not a configured pub/sub"),
        ({"name": "f", "module": "f.wasm", "subscribe": [sub, sub]}, "subscribed twice"),
        ({"name": "f", "module": "f.wasm", "subscribe": [{**sub, "topic": "x" * 300}]}, r"subscribe\[0\]: the topic"),
        ({"name": "f", "module": "f.wasm", "subscribe": [{**sub, "timeoutMs": 0}]}, "timeoutMs"),
        ({"name": "f", "module": "f.wasm", "subscribe": [{**sub, "pubsub": "a.b"}]}, "pub/sub name 'a.b'"),
    ]
    for i, (function, message) in enumerate(bad):
        path = write_config(tmp_path / f"{i}.yaml", {**base, "functions": [function]})
        with pytest.raises(ConfigError, match=message):
            load_config(path)
    # A function needs no app callback to subscribe.
    load_config(
        write_config(
            tmp_path / "ok.yaml", {**base, "functions": [{"name": "f", "module": "f.wasm", "subscribe": [sub]}]}
        )
    )


def test_l8_asyncapi_lists_a_functions_subscriptions(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "l8.yaml",
        {
            "namespace": "shop",
            "components": {"pubsub": PUBSUB},
            "functions": [
                {"name": "audit-fn", "module": "a.wasm", "subscribe": [{"pubsub": "pubsub", "topic": "orders"}]}
            ],
        },
    )
    doc = l8_json("asyncapi", "--config", str(path))
    orders = [c for c in doc["channels"].values() if c["address"] == "l8.shop.evt.pubsub.orders"]
    assert len(orders) == 1 and "function 'audit-fn' by l8_on_event" in orders[0]["description"]


async def state_of(sidecar: Sidecar, key: str) -> bytes | None:
    assert sidecar.components is not None
    store = next(s.bridge for s in sidecar.components.served if s.name == "statestore")
    assert isinstance(store, StateStore)
    entry = await store.get(key)
    return None if entry is None else entry.value


async def test_an_event_held_by_a_sidecar_killed_mid_event_reaches_the_function_in_another_sidecar(
    make_sidecar: SidecarFactory, nats_server: Server, tmp_path: Path
) -> None:
    ns, topic, name = unique("ns"), unique("held"), unique("hold")
    module = tmp_path / "hold.wasm"
    module.write_bytes(mods.HOLD)
    pubsub = {**PUBSUB, "metadata": {"ackWaitSeconds": "2"}}
    # Nothing but the broker's redelivery after its lease can end the first delivery.
    function = {
        "name": name,
        "module": str(module),
        "subscribe": [{"pubsub": "pubsub", "topic": topic, "timeoutMs": 120_000}],
        "limits": {"timeoutMs": 120_000},
        "allow": {"state": ["statestore"]},
    }

    def config(app_id: str) -> dict[str, Any]:
        return {
            "app": {"id": app_id},
            "namespace": ns,
            "bus": {"url": nats_server.url},
            "components": {"statestore": STATE, "pubsub": pubsub},
            "functions": [function],
            "log_level": "info",
        }

    # The test's own sidecar publishes and reads state, but delivers nothing: no pub/sub worker here.
    front = await make_sidecar(
        sidecar_config(nats_server.url, {"statestore": STATE, "pubsub": pubsub}, namespace=ns, workers=["state"])
    )
    procs: list[L8Process] = []
    try:
        procs = list(await asyncio.gather(*(asyncio.to_thread(start_l8, config(unique("host"))) for _ in range(2))))

        async def both() -> bool:
            rows = await listed(nats_server, ns, name)
            return bool(rows) and len(rows[0]["instances"]) == 2 and rows[0]["state"] == "delivering"

        await until(both, "both sidecars announce the function")
        await publish(front, topic, b"once")
        holder = await until(
            lambda: next((p for p in procs if f"function {name}: held" in p.log()), None), "a sidecar holds it"
        )
        holder.stop(signal.SIGKILL)
        await until(lambda: state_of(front, f"{name}||done"), "the other sidecar finished the event")
        (other,) = [p for p in procs if p is not holder]
        assert f"function {name}: held" not in other.log()
    finally:
        for proc in procs:
            proc.stop()


async def test_a_function_in_a_front_only_sidecar_on_the_embedded_bus_gets_its_events_as_its_own_identity(
    make_sidecar: SidecarFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The embedded bus enforces identities: the front's NATS user may announce and serve only as
    # its app and its functions, and may not touch JetStream; the other sidecar delivers.
    caplog.set_level(logging.INFO, "l8.wasm")
    ns, topic, name = unique("ns"), unique("own"), unique("own-fn")
    module = tmp_path / "verdict.wasm"
    module.write_bytes(mods.VERDICT)
    base: dict[str, Any] = {
        "namespace": ns,
        "data_dir": str(tmp_path / "data"),
        "server": {"grpc": "127.0.0.1:0", "http": "127.0.0.1:0"},
        "components": {"statestore": STATE, "pubsub": PUBSUB},
    }
    from runtime.config import Config

    delivering = await make_sidecar(Config.model_validate({**base, "app": {"id": unique("broker")}}))
    assert delivering.embedded is not None
    function = {"name": name, "module": str(module), "subscribe": [{"pubsub": "pubsub", "topic": topic}]}
    await make_sidecar(
        Config.model_validate(
            {
                **base,
                "app": {"id": unique("front")},
                "bus": {"url": delivering.embedded.url},
                "workers": "none",
                "functions": [function],
            }
        )
    )
    await publish(delivering, topic, b"ok-own")
    await until(lambda: logged(caplog, name, "ok-own") == 1, "the function got its event")
