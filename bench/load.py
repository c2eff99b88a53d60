"""Load generation: sequential latency, closed-loop throughput with N workers, and a paced rate.

A call is any ``async () -> object`` that raises on failure; every row of the table is measured
with the same code, so the differences between rows are the servers', not the client's.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

Call = Callable[[], Awaitable[object]]


@dataclass(slots=True)
class Measured:
    """One row: sequential latency and throughput with ``workers`` calls in flight."""

    name: str
    seq_ms: list[float] = field(default_factory=list)
    seq_seconds: float = 0.0
    workers: int = 0
    round_rps: list[float] = field(default_factory=list)
    conc_ms: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""

    @property
    def seq_rps(self) -> float:
        return len(self.seq_ms) / self.seq_seconds if self.seq_seconds else float("nan")

    @property
    def conc_rps(self) -> float:
        """The median of the rounds' rates: a burst of other work on the machine moves one round only."""
        return statistics.median(self.round_rps) if self.round_rps else float("nan")

    @property
    def p50(self) -> float:
        return percentile(self.seq_ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.seq_ms, 99)


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


async def sequential(call: Call, n: int, warmup: int, row: Measured) -> None:
    """``warmup`` unmeasured calls, then ``n`` calls one after the other, each timed (added to the row)."""
    for _ in range(warmup):
        await call()
    began = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        row.seq_ms.append((time.perf_counter() - t0) * 1000)
    row.seq_seconds += time.perf_counter() - began


async def _closed_loop(call: Call, workers: int, duration: float, row: Measured, samples: list[float] | None) -> int:
    end = time.perf_counter() + duration
    done = 0

    async def worker() -> None:
        nonlocal done
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                return
            try:
                await call()
            except Exception as exc:
                row.errors += 1
                row.first_error = row.first_error or f"{type(exc).__name__}: {exc}"[:200]
                continue
            done += 1
            if samples is not None:
                samples.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return done


async def concurrent(call: Call, workers: int, duration: float, warmup: float, row: Measured) -> None:
    """``workers`` tasks call back to back: ``warmup`` seconds unmeasured, then ``duration`` counted.

    Adds one round to the row. Workers start no call after the end; the round's rate is the calls
    completed over the wall time until the last one finished (the tail adds about one latency).
    """
    if warmup > 0:
        await _closed_loop(call, workers, warmup, row, None)
    began = time.perf_counter()
    done = await _closed_loop(call, workers, duration, row, row.conc_ms)
    row.round_rps.append(done / (time.perf_counter() - began))
    row.workers = workers


@dataclass(slots=True)
class Run:
    """A fixed number of calls: how long they took and what failed."""

    calls: int
    seconds: float = 0.0
    errors: int = 0
    first_error: str = ""

    def failed(self, exc: Exception) -> None:
        self.errors += 1
        self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"[:300]


async def paced(call: Call, rate: float, n: int) -> Run:
    """Open loop: start one call every 1/rate seconds, ``n`` in all."""
    run = Run(n)
    tasks: set[asyncio.Task[None]] = set()

    async def one() -> None:
        try:
            await call()
        except Exception as exc:
            run.failed(exc)

    began = time.perf_counter()
    for i in range(n):
        delay = began + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    run.seconds = time.perf_counter() - began
    return run


async def fixed_count(call: Call, workers: int, n: int) -> Run:
    """Exactly ``n`` calls with ``workers`` in flight."""
    run = Run(n)
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            try:
                await call()
            except Exception as exc:
                run.failed(exc)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    run.seconds = time.perf_counter() - began
    return run
