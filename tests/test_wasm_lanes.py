"""Where a function's calls run: on its lanes (threads), or inline on the event loop's thread for a
module that can make no host call, under a fuel budget; and the lanes themselves."""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from handlers.functions import INLINE_FUEL, Function, FunctionSpec, Limits
from handlers.wasm.errors import FunctionError
from handlers.wasm.host import DispatchError
from handlers.wasm.lanes import Lanes
from tests import wasm_modules as mods
from tests.conftest import unique

MakeFunction = Callable[..., Awaitable[Function]]


class NoCalls:
    async def request(self, *args: object, **kwargs: object) -> bytes:
        raise DispatchError("FAILED_PRECONDITION", "no host calls here")

    async def invoke(self, *args: object, **kwargs: object) -> bytes:
        raise DispatchError("FAILED_PRECONDITION", "no host calls here")


@pytest.fixture
async def make_function(tmp_path: Path) -> AsyncIterator[MakeFunction]:
    made: list[Function] = []

    async def make(wasm: bytes, inline_fuel: int = INLINE_FUEL) -> Function:
        # One lane, so that the counts of its instance are the counts of the function.
        spec = FunctionSpec(unique("fn"), limits=Limits(concurrency=1))
        fn = Function(spec, NoCalls(), cache_dir=tmp_path, inline_fuel=inline_fuel)
        await fn.start()
        made.append(fn)
        await fn.load(wasm)
        return fn

    yield make
    await asyncio.gather(*(f.stop() for f in made))


def logging_module(*, inline: bool, spin: int = 0, trap_on: int = 0) -> bytes:
    """Logs "hello", spins ``spin`` rounds, answers its call count (a global); traps on call ``trap_on``."""
    return mods.invoke_module(
        f"""(local $i i64)
        (global.set $n (i64.add (global.get $n) (i64.const 1)))
        (call $log (i32.const 1) (i32.const 1024) (i32.const 5))
        (if (i64.eq (global.get $n) (i64.const {trap_on})) (then unreachable))
        (block $done (loop $spin
          (br_if $done (i64.ge_u (local.get $i) (i64.const {spin})))
          (local.set $i (i64.add (local.get $i) (i64.const 1)))
          (br $spin)))
        (i64.store (i32.const 0) (global.get $n)) (i64.const 8)""",
        extra='(global $n (mut i64) (i64.const 0)) (data (i32.const 1024) "hello")',
        inline=inline,
    )


async def count(fn: Function) -> int:
    (value,) = struct.unpack("<q", await fn.invoke({}, b""))
    return int(value)


def hello_threads(caplog: pytest.LogCaptureFixture) -> list[str]:
    threads = [r.threadName for r in caplog.records if r.getMessage().endswith(": hello")]
    caplog.clear()
    return threads


async def test_a_module_that_cannot_call_runs_inline_and_one_that_can_runs_on_a_lane(
    make_function: MakeFunction, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", "l8.wasm")
    pure = await make_function(logging_module(inline=True))
    calling = await make_function(logging_module(inline=False))
    assert [await count(pure) for _ in range(3)] == [1, 2, 3]
    assert hello_threads(caplog) == [threading.current_thread().name] * 3
    assert [await count(calling) for _ in range(3)] == [1, 2, 3]
    assert all(name.startswith(f"l8-fn-{calling.name}-") for name in hello_threads(caplog))


async def test_an_inline_budget_of_zero_runs_every_call_on_a_lane_and_is_the_configs_default_otherwise(
    make_function: MakeFunction, caplog: pytest.LogCaptureFixture
) -> None:
    from runtime.function_config import WasmConfig

    assert WasmConfig().inline_fuel == INLINE_FUEL
    caplog.set_level("INFO", "l8.wasm")
    fn = await make_function(logging_module(inline=True), inline_fuel=0)
    assert await count(fn) == 1
    assert hello_threads(caplog)[0].startswith(f"l8-fn-{fn.name}-")


async def test_a_call_past_the_inline_budget_runs_again_on_a_lane_once_and_later_calls_stay_there(
    make_function: MakeFunction, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", "l8")
    # Each round of the spin costs several units of fuel, so this needs more than the budget.
    fn = await make_function(logging_module(inline=True, spin=INLINE_FUEL))
    assert fn.version is not None and fn.version.inline_ready
    assert await count(fn) == 1  # answered by the lane's instance
    assert "needed more than the inline budget" in caplog.text
    # Its log line once, from the lane: the inline run's was dropped with it.
    threads = hello_threads(caplog)
    assert len(threads) == 1 and threads[0].startswith(f"l8-fn-{fn.name}-"), threads
    assert not fn.version.inline_ready
    assert await count(fn) == 2
    assert hello_threads(caplog)[0].startswith(f"l8-fn-{fn.name}-")


async def test_after_an_inline_trap_a_fresh_inline_instance_is_built_off_the_loop(
    make_function: MakeFunction, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", "l8.wasm")
    fn = await make_function(logging_module(inline=True, trap_on=2))
    assert await count(fn) == 1
    with pytest.raises(FunctionError, match="trapped"):
        await fn.invoke({}, b"")
    assert hello_threads(caplog) == [threading.current_thread().name] * 2  # a trapped call's lines are kept
    assert fn.version is not None
    deadline = time.monotonic() + 30
    while not fn.version.inline_ready:
        assert time.monotonic() < deadline, "no new inline instance"
        await asyncio.sleep(0.01)
    # A fresh instance: its count starts again.
    assert await count(fn) == 1
    assert hello_threads(caplog) == [threading.current_thread().name]


async def test_lanes_answer_results_and_errors_and_run_calls_at_once() -> None:
    lanes = Lanes("t", 2, asyncio.get_running_loop())
    try:
        assert await lanes.submit(lambda a, b: a + b, 2, 3) == 5
        with pytest.raises(ZeroDivisionError):
            await lanes.submit(lambda: 1 // 0)
        both = threading.Barrier(2, timeout=30)
        # Each call waits for the other: they finish only when two lanes run them together.
        assert await asyncio.gather(lanes.submit(both.wait), lanes.submit(both.wait)) in ([0, 1], [1, 0])
        many = await asyncio.gather(*(lanes.submit(lambda i=i: i * i) for i in range(200)))
        assert many == [i * i for i in range(200)]
    finally:
        await lanes.close()


async def test_closing_lanes_finishes_the_running_call_and_cancels_the_ones_no_lane_took() -> None:
    lanes = Lanes("t", 1, asyncio.get_running_loop())
    started, release = threading.Event(), threading.Event()

    def hold() -> bool:
        started.set()
        return release.wait(30)

    running = lanes.submit(hold)
    assert await asyncio.to_thread(started.wait, 30)
    waiting = lanes.submit(lambda: "never")
    closing = asyncio.create_task(lanes.close())
    await asyncio.sleep(0)
    assert waiting.cancelled()
    release.set()
    await closing
    assert await running is True
    with pytest.raises(RuntimeError, match="closed"):
        lanes.submit(lambda: None)
