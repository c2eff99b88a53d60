"""Functions at the host level: each guest's example, every host-call op through a real sidecar's
handlers on a real nats-server, the allow-list, the limits and the bad modules of the issue."""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from handlers.functions import INLINE_FUEL, Allow, Function, FunctionSpec, Limits, ModuleError, Verdict
from handlers.proto import runtime_pb2 as pb
from handlers.wasm.abi import Op, Status
from handlers.wasm.errors import FunctionAnswered, FunctionError, FunctionLimit, FunctionTimeout, FunctionUnavailable
from runtime.function_config import FunctionConfig
from runtime.functions import BusDispatcher, FunctionHost
from runtime.sidecar import Sidecar
from tests import wasm_modules as mods
from tests.conftest import native_stub, sidecar_config, unique
from tests.servers import Server

COMPONENTS = {
    "statestore": {"kind": "state", "type": "nats.kv"},
    "pubsub": {"kind": "pubsub", "type": "nats.jetstream"},
    "sequencer": {"kind": "sequencer", "type": "nats.kv"},
    "config": {"kind": "configuration", "type": "nats.kv"},
}
ORDERS_ALLOW = Allow(state=("statestore",), publish=("pubsub/order-audited",))
MakeFunction = Callable[..., Awaitable[Function]]


@pytest.fixture(scope="module")
def guests() -> dict[str, Path]:
    return mods.build_guests()


@pytest.fixture(scope="module")
async def sidecar(nats_server: Server) -> AsyncIterator[Sidecar]:
    sc = Sidecar(sidecar_config(nats_server.url, COMPONENTS))
    await sc.start()
    yield sc
    await sc.stop()


@pytest.fixture
async def make_function(sidecar: Sidecar, tmp_path: Path) -> AsyncIterator[MakeFunction]:
    made: list[Function] = []
    assert sidecar.bus is not None
    dispatcher = BusDispatcher(sidecar.bus, sidecar.config.namespace)

    async def make(
        wasm: bytes, *, allow: Allow | None = None, limits: Limits | None = None, name: str = ""
    ) -> Function:
        fn = Function(
            FunctionSpec(name or unique("fn"), invoke=True, limits=limits or Limits(), allow=allow or Allow()),
            dispatcher,
            cache_dir=tmp_path / "cache",
        )
        await fn.start()
        made.append(fn)
        await fn.load(wasm)
        return fn

    yield make
    await asyncio.gather(*(f.stop() for f in made))


async def probe(fn: Function, op: int, *fields: bytes, cap: int = 4096) -> tuple[int, bytes]:
    return mods.probe_answer(await fn.invoke({"method": "probe"}, mods.probe_input(op, *fields, cap=cap)))


def cloud_event(customer: str) -> tuple[dict[str, Any], bytes]:
    meta = {
        "id": unique("evt"),
        "source": "shop",
        "type": "com.dapr.event.sent",
        "specversion": "1.0",
        "datacontenttype": "application/json",
        "pubsubname": "pubsub",
        "topic": "orders",
        "metadata": {},
    }
    return meta, json.dumps({"customer": customer, "qty": 2}).encode()


@pytest.mark.parametrize("guest", mods.GUESTS)
async def test_each_guest_counts_orders_in_state_publishes_an_audit_and_answers_the_count(
    guest: str, guests: dict[str, Path], make_function: MakeFunction, sidecar: Sidecar
) -> None:
    fn = await make_function(guests[guest].read_bytes(), allow=ORDERS_ALLOW)
    customer = unique("cust")
    assert await fn.invoke({"method": "count"}, customer.encode()) == b"0"
    for _ in range(3):
        assert await fn.on_event(*cloud_event(customer)) == (Verdict.SUCCESS, b"")
    assert await fn.invoke({"method": "count"}, customer.encode()) == b"3"
    # The key is the function's own (prefixed with its name), not the sidecar app's.
    channel, stub = native_stub(sidecar)
    async with channel:
        mine = await stub.GetState(pb.GetStateRequest(store_name="statestore", key=f"count-{customer}"))
    assert mine.data == b""
    assert sidecar.bus is not None
    js = sidecar.bus.nc.jetstream()
    ns = sidecar.config.namespace
    last = await js.get_last_msg(f"L8_EVT_{ns}_pubsub", f"l8.{ns}.evt.pubsub.order-audited")
    event = json.loads(last.data or b"{}")
    assert event["source"] == fn.name
    assert event["data"] == {"customer": customer, "count": 3}


@pytest.mark.parametrize("guest", mods.GUESTS)
async def test_an_event_without_a_customer_is_dropped_by_every_guest(
    guest: str, guests: dict[str, Path], make_function: MakeFunction
) -> None:
    fn = await make_function(guests[guest].read_bytes(), allow=ORDERS_ALLOW)
    meta, _ = cloud_event("x")
    assert await fn.on_event(meta, b'{"qty": 1}') == (Verdict.DROP, b"")


async def test_a_guest_denied_its_store_retries_the_event_and_the_host_logs_why(
    guests: dict[str, Path], make_function: MakeFunction, caplog: pytest.LogCaptureFixture
) -> None:
    fn = await make_function(guests["rust"].read_bytes(), allow=Allow(publish=("pubsub/*",)))
    assert await fn.on_event(*cloud_event(unique("c"))) == (Verdict.RETRY, b"")
    assert f"function {fn.name}: host call failed (-3): state.get: state store 'statestore'" in caplog.text


async def test_state_ops_set_get_and_delete_under_the_functions_name(make_function: MakeFunction) -> None:
    fn = await make_function(mods.PROBE, allow=Allow(state=("state*",)))
    key = unique("k").encode()
    assert await probe(fn, Op.STATE_GET, b"statestore", key) == (Status.NOT_FOUND, b"")
    assert await probe(fn, Op.STATE_SET, b"statestore", key, b"v1") == (0, b"")
    assert await probe(fn, Op.STATE_GET, b"statestore", key) == (2, b"v1")
    other = await make_function(mods.PROBE, allow=Allow(state=("statestore",)))
    assert await probe(other, Op.STATE_GET, b"statestore", key) == (Status.NOT_FOUND, b"")
    assert await probe(fn, Op.STATE_DELETE, b"statestore", key) == (0, b"")
    assert await probe(fn, Op.STATE_GET, b"statestore", key) == (Status.NOT_FOUND, b"")


async def test_a_response_larger_than_the_buffer_is_held_for_take_and_the_op_runs_once(
    make_function: MakeFunction,
) -> None:
    fn = await make_function(mods.PROBE, allow=Allow(state=("statestore",), sequencer=("sequencer",)))
    key = unique("k").encode()
    value = bytes(range(256)) * 40
    assert await probe(fn, Op.STATE_SET, b"statestore", key, value) == (0, b"")
    assert await probe(fn, Op.STATE_GET, b"statestore", key, cap=16) == (len(value), value)
    # next_id is not idempotent: an answer too big for its buffer must not take a second id.
    n1, id1 = await probe(fn, Op.NEXT_ID, b"sequencer", key, cap=0)
    n2, id2 = await probe(fn, Op.NEXT_ID, b"sequencer", key, cap=8)
    assert (n1, n2) == (8, 8)
    assert struct.unpack("<Q", id2)[0] == struct.unpack("<Q", id1)[0] + 1


async def test_publish_invoke_and_configuration_get_reach_their_building_blocks(
    make_function: MakeFunction, sidecar: Sidecar, tmp_path: Path
) -> None:
    assert sidecar.workers is not None and sidecar.bus is not None
    # The echo function answers invocations of its name on the sidecar's worker host, as an app's
    # sidecar does (here through local dispatch, the sidecar's default).
    target = FunctionHost(
        sidecar.workers,
        sidecar.config,
        FunctionConfig(name=unique("echo"), invoke=True),
        cache_dir=tmp_path / "cache",
    )
    await target.start()
    await target.function.load(mods.ECHO)
    await target.open()
    try:
        fn = await make_function(
            mods.PROBE,
            allow=Allow(publish=("pubsub/audit-*",), invoke=(target.name,), configuration=("config",)),
        )
        assert await probe(fn, Op.INVOKE, target.name.encode(), b"m", b"ping") == (4, b"ping")
        assert await probe(fn, Op.PUBLISH, b"pubsub", b"audit-1", b'{"a":1}') == (0, b"")
        js = sidecar.bus.nc.jetstream()
        ns = sidecar.config.namespace
        last = await js.get_last_msg(f"L8_EVT_{ns}_pubsub", f"l8.{ns}.evt.pubsub.audit-1")
        event = json.loads(last.data or b"{}")
        assert (event["source"], event["data"], event["datacontenttype"]) == (fn.name, {"a": 1}, "application/json")
        channel, stub = native_stub(sidecar)
        async with channel:
            await stub.SaveConfiguration(
                pb.SaveConfigurationRequest(
                    store_name="config", items=[pb.ConfigurationItem(key="greeting", content="hello")]
                )
            )
        assert await probe(fn, Op.CONFIGURATION_GET, b"config", b"greeting") == (5, b"hello")
        assert await probe(fn, Op.CONFIGURATION_GET, b"config", b"absent") == (Status.NOT_FOUND, b"")
    finally:
        await target.stop()


async def test_the_allow_list_denies_by_default_and_names_what_was_denied(
    make_function: MakeFunction, caplog: pytest.LogCaptureFixture
) -> None:
    fn = await make_function(mods.PROBE)
    denied = [
        (Op.STATE_GET, (b"statestore", b"k")),
        (Op.STATE_SET, (b"statestore", b"k", b"v")),
        (Op.STATE_DELETE, (b"statestore", b"k")),
        (Op.PUBLISH, (b"pubsub", b"orders", b"{}")),
        (Op.INVOKE, (b"billing", b"m", b"")),
        (Op.NEXT_ID, (b"sequencer", b"k")),
        (Op.CONFIGURATION_GET, (b"config", b"k")),
    ]
    for op, fields in denied:
        assert await probe(fn, op, *fields) == (Status.DENIED, b""), op
    assert "topic pubsub/orders is not in the function's allow-list" in caplog.text
    assert "app 'billing' is not in the function's allow-list" in caplog.text
    narrow = await make_function(mods.PROBE, allow=Allow(publish=("pubsub/orders",)))
    assert await probe(narrow, Op.PUBLISH, b"pubsub", b"orders-2", b"{}") == (Status.DENIED, b"")


async def test_malformed_host_requests_answer_bad_request(make_function: MakeFunction) -> None:
    fn = await make_function(mods.PROBE, allow=Allow(state=("*",)))
    assert await probe(fn, 99, b"x") == (Status.BAD_REQUEST, b"")
    assert await probe(fn, Op.STATE_GET, b"statestore") == (Status.BAD_REQUEST, b"")
    assert await probe(fn, Op.STATE_GET, b"statestore", b"") == (Status.BAD_REQUEST, b"")
    assert await probe(fn, Op.STATE_GET, b"statestore", b"a||b") == (Status.BAD_REQUEST, b"")
    assert await probe(fn, Op.STATE_GET, b"nosuchstore", b"k") == (Status.FAILED, b"")


@pytest.mark.parametrize("case", sorted(mods.BAD))
async def test_a_bad_module_is_refused_at_load_with_the_reason(case: str, make_function: MakeFunction) -> None:
    reasons = {
        "invalid bytes": "not a valid WebAssembly module",
        "missing export": "does not export 'l8_alloc'",
        "unknown import": "imports env.abort, which l8 does not provide",
        "initial memory over the cap": "initial memory is 125 MiB, over the cap of 64 MiB",
    }
    with pytest.raises(ModuleError, match=reasons[case]):
        await make_function(mods.BAD[case])


@pytest.mark.parametrize("where", mods.WHERE)
async def test_a_trap_answers_an_error_naming_the_function_and_a_fresh_instance_serves_next(
    where: str, make_function: MakeFunction
) -> None:
    fn = await make_function(mods.limit_module("trap", where))
    for _ in range(3):
        with pytest.raises(FunctionError, match=f"function {fn.name} trapped: .*unreachable"):
            await fn.invoke({}, b"")
        assert fn.version is not None


@pytest.mark.parametrize("where", mods.WHERE)
async def test_an_infinite_loop_is_stopped_at_its_deadline_while_other_functions_serve(
    where: str, make_function: MakeFunction
) -> None:
    looping = await make_function(mods.limit_module("loop", where), limits=Limits(timeout_ms=300))
    echo = await make_function(mods.limit_module("echo", where))
    stuck = asyncio.create_task(looping.invoke({}, b""))
    # The echo function keeps answering while the loop runs on its own thread (an inline call
    # that runs out of its budget goes there).
    while not stuck.done():
        assert await echo.invoke({}, b"hi") == b"hi"
        await asyncio.sleep(0.01)
    with pytest.raises(FunctionTimeout, match="ran past its deadline"):
        await stuck


@pytest.mark.parametrize("fuel", [1_000_000, INLINE_FUEL // 2])
@pytest.mark.parametrize("where", mods.WHERE)
async def test_fuel_stops_a_loop_when_set(where: str, fuel: int, make_function: MakeFunction) -> None:
    fn = await make_function(mods.limit_module("loop", where), limits=Limits(timeout_ms=60_000, fuel=fuel))
    for _ in range(2):
        with pytest.raises(FunctionLimit, match=f"used up its fuel \\(limits.fuel {fuel}\\)"):
            await fn.invoke({}, b"")


@pytest.mark.parametrize("where", mods.WHERE)
async def test_a_memory_bomb_stops_at_the_cap(where: str, make_function: MakeFunction) -> None:
    fn = await make_function(mods.limit_module("memory bomb", where), limits=Limits(memory_mb=8))
    with pytest.raises(FunctionError, match="of its cap of 8 MiB"):
        await fn.invoke({}, b"")


@pytest.mark.parametrize("where", mods.WHERE)
async def test_a_bogus_output_pointer_or_an_oversize_output_is_an_error_not_a_crash(
    where: str, make_function: MakeFunction
) -> None:
    bogus = await make_function(mods.limit_module("bogus pointer", where))
    with pytest.raises(FunctionError, match="out of its memory"):
        await bogus.invoke({}, b"")
    big = await make_function(mods.limit_module("oversize", where))
    with pytest.raises(FunctionLimit, match="over its output cap of 1024 KiB"):
        await big.invoke({}, b"")


async def test_a_host_call_with_an_out_of_range_pointer_answers_bad_request(make_function: MakeFunction) -> None:
    fn = await make_function(mods.HOST_BAD_POINTER, allow=Allow(state=("*",)))
    out = await fn.invoke({}, b"")
    assert struct.unpack("<q", out)[0] == Status.BAD_REQUEST


@pytest.mark.parametrize("where", mods.WHERE)
async def test_the_host_call_cap_stops_a_chatty_call(where: str, make_function: MakeFunction) -> None:
    fn = await make_function(mods.limit_module("chatty", where), limits=Limits(max_host_calls=10))
    with pytest.raises(FunctionLimit, match="more than 10 host calls"):
        await fn.invoke({}, b"")


async def test_a_negative_answer_to_an_invocation_is_an_error_to_the_caller(make_function: MakeFunction) -> None:
    fn = await make_function(mods.invoke_module("(i64.const -7)"))
    with pytest.raises(FunctionAnswered, match="answered error -7"):
        await fn.invoke({"method": "m"}, b"")


async def test_an_input_larger_than_the_memory_is_refused(make_function: MakeFunction) -> None:
    fn = await make_function(mods.ECHO)
    with pytest.raises(FunctionError, match="out of its memory"):
        await fn.invoke({}, b"x" * (300 * 1024))
    assert await fn.invoke({}, b"ok") == b"ok"


async def test_a_reload_swaps_versions_and_calls_in_flight_finish_on_the_old_one(make_function: MakeFunction) -> None:
    slow = mods.invoke_module(
        "(local $i i64) (loop $spin (local.set $i (i64.add (local.get $i) (i64.const 1)))"
        " (br_if $spin (i64.lt_u (local.get $i) (i64.const 200000000))))"
        " (i64.store (i32.const 0) (i64.const 1)) (i64.const 8)"
    )
    fn = await make_function(slow, limits=Limits(timeout_ms=60_000, concurrency=2))
    old = fn.digest
    first = asyncio.create_task(fn.invoke({}, b""))
    await fn.load(mods.echo_version(2))
    assert fn.digest != old
    assert struct.unpack("<q", await fn.invoke({}, b""))[0] == 2
    assert struct.unpack("<q", await first)[0] == 1


async def test_a_function_without_a_loaded_module_answers_unavailable_with_the_reason(sidecar: Sidecar) -> None:
    assert sidecar.bus is not None
    fn = Function(FunctionSpec("broken"), BusDispatcher(sidecar.bus, sidecar.config.namespace))
    await fn.start()
    try:
        with pytest.raises(ModuleError):
            await fn.load(b"junk")
        fn.fail("bad bytes")
        began = time.monotonic()
        with pytest.raises(FunctionUnavailable, match="function broken is not available: bad bytes"):
            await fn.invoke({}, b"")
        assert fn.status == "failed"
        assert time.monotonic() - began < 5  # answered at once, not at a deadline
    finally:
        await fn.stop()


@pytest.mark.parametrize("where", mods.WHERE)
async def test_instances_are_reused_per_thread(where: str, make_function: MakeFunction) -> None:
    counter = mods.invoke_module(
        "(global.set $n (i64.add (global.get $n) (i64.const 1)))"
        " (i64.store (i32.const 0) (global.get $n)) (i64.const 8)",
        extra="(global $n (mut i64) (i64.const 0))",
        inline=where == "inline",
    )
    fn = await make_function(counter, limits=Limits(concurrency=1))
    seen = [struct.unpack("<q", await fn.invoke({}, b""))[0] for _ in range(5)]
    assert seen == [1, 2, 3, 4, 5]


async def test_an_event_for_a_function_without_l8_on_event_is_unimplemented(make_function: MakeFunction) -> None:
    from bridges.errors import Unimplemented

    fn = await make_function(mods.ECHO)
    with pytest.raises(Unimplemented, match="does not export l8_on_event"):
        await fn.on_event({}, b"")
    assert await fn.invoke({}, b"still") == b"still"
