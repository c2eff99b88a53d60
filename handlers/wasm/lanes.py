"""The threads that run a function's calls off the event loop, each keeping its own instances.

A ``concurrent.futures`` pool costs a call two futures chained across the loop and a lock on each;
here a call is one tuple on a ``SimpleQueue`` (a C queue: one futex wake when a thread waits) and
one ``call_soon_threadsafe`` back. A thread that finds more calls waiting when it finishes one runs
them before it wakes the loop and settles them all in one wakeup, until the batch has run for
``BATCH_WAIT``: under load the loop wakes once per batch instead of once per call, and an answer
waits at most that long (plus one call) for the calls after it.

wasm runs with the GIL released, so ``n`` lanes run ``n`` calls at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

BATCH_WAIT = 0.0002  # seconds the first answer of a batch may wait for the calls after it

_Job = tuple["asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...], contextvars.Context]
_Done = list[tuple["asyncio.Future[Any]", Any, BaseException | None]]


class Lanes:
    """``n`` threads named after the function; ``close`` is idempotent and joins them."""

    def __init__(self, name: str, n: int, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._serve, name=f"l8-fn-{name}-{i}", daemon=True) for i in range(n)]
        self._closed = False
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` on a lane; the future settles on the loop."""
        if self._closed:
            raise RuntimeError("the lanes are closed")
        future: asyncio.Future[Any] = self._loop.create_future()
        # The caller's context goes along, so the host calls a call makes carry its trace context.
        self._queue.put((future, fn, args, contextvars.copy_context()))
        return future

    async def close(self) -> None:
        """Cancel the calls no lane has taken yet, let the running ones finish, end the threads."""
        if self._closed:
            return
        self._closed = True
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        for _ in self._threads:
            self._queue.put(None)
        await asyncio.to_thread(self._join)

    def _join(self) -> None:
        for thread in self._threads:
            thread.join()

    def _serve(self) -> None:
        jobs, loop = self._queue, self._loop
        while True:
            job = jobs.get()
            if job is None:
                return
            done: _Done = []
            began = time.perf_counter()
            while True:
                future, fn, args, context = job
                try:
                    done.append((future, context.run(fn, *args), None))
                except BaseException as exc:  # handed to the caller, who decides what it means
                    done.append((future, None, exc))
                if time.perf_counter() - began > BATCH_WAIT:
                    break
                try:
                    next_job = jobs.get_nowait()
                except queue.Empty:
                    break
                if next_job is None:
                    _wake(loop, done)
                    return
                job = next_job
            _wake(loop, done)


def _wake(loop: asyncio.AbstractEventLoop, done: _Done) -> None:
    # A closed loop raises RuntimeError: nobody waits for these answers any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_settle, done)


def _settle(done: _Done) -> None:
    for future, result, exc in done:
        if future.done():  # the caller gave up
            continue
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)
