"""`l8 dump replay FILE... --target HOST:PORT --rate N`: send the requests of dump files to a
sidecar, as they were recorded (method, metadata, bytes), and report the status counts and the
latency.

Replays carry metadata ``l8-replay: 1``, so a sidecar that dumps does not record them again. The
dump holds no tokens; a target that wants one gets ``DAPR_API_TOKEN`` from the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import sys
import time
from pathlib import Path
from typing import Any

from runtime.dump import REPLAY_KEY
from runtime.dump_format import Record, read


def add_dump_parser(sub: Any) -> None:
    dump = sub.add_parser("dump", help="work with request dumps (config `dump`)")
    dump_sub = dump.add_subparsers(dest="dump_command", required=True)
    replay = dump_sub.add_parser("replay", help="send the requests of dump files to a sidecar")
    replay.add_argument("files", nargs="+", help="dump files (l8-dump-*.bin), replayed in the order given")
    replay.add_argument("--target", required=True, help="the sidecar's gRPC address, host:port")
    replay.add_argument("--rate", type=float, default=0.0, help="requests per second; 0 (default): as fast as allowed")
    replay.add_argument("--concurrency", type=int, default=16, help="requests in flight at once (default 16)")
    replay.add_argument("--timeout", type=float, default=10.0, help="seconds each request may take (default 10)")


def _records(paths: list[str]) -> list[Record]:
    found: list[Record] = []
    for name in paths:
        with open(name, "rb") as stream:
            found.extend(read(stream))
    return found


def _percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def replay(records: list[Record], target: str, rate: float, concurrency: int, timeout: float) -> dict[str, Any]:
    import grpc

    token = os.environ.get("DAPR_API_TOKEN") or os.environ.get("L8_API_TOKEN")
    codes: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    gate = asyncio.Semaphore(max(1, concurrency))
    began = time.monotonic()
    async with grpc.aio.insecure_channel(target) as channel:
        calls: dict[str, Any] = {}

        async def send(record: Record) -> None:
            call = calls.get(record.method)
            if call is None:
                call = calls[record.method] = channel.unary_unary(record.method)
            metadata = [*record.metadata, (REPLAY_KEY, "1")]
            if token:
                metadata.append(("dapr-api-token", token))
            started = time.perf_counter()
            try:
                await call(record.body, timeout=timeout, metadata=metadata)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1
            finally:
                latencies.append(time.perf_counter() - started)
                gate.release()

        tasks = []
        for i, record in enumerate(records):
            if rate > 0:
                wait = began + i / rate - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            await gate.acquire()
            tasks.append(asyncio.create_task(send(record)))
        await asyncio.gather(*tasks)
    return {"codes": codes, "latencies": latencies, "seconds": time.monotonic() - began}


def run_dump(args: argparse.Namespace) -> int:
    try:
        records = _records(args.files)
    except OSError as exc:
        print(f"l8: cannot read {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if args.rate < 0 or args.concurrency < 1 or args.timeout <= 0:
        print("l8: --rate must be 0 or more, --concurrency 1 or more, --timeout above 0", file=sys.stderr)
        return 2
    recorded = collections.Counter(r.code for r in records)
    from runtime.cli import _run_loop

    found = _run_loop(replay(records, args.target, args.rate, args.concurrency, args.timeout))
    seconds, latencies, codes = found["seconds"], found["latencies"], found["codes"]
    per_second = len(records) / seconds if seconds > 0 else 0.0
    files = len(args.files)
    print(
        f"replayed {len(records)} requests from {files} file{'s' if files != 1 else ''} "
        f"to {args.target} in {seconds:.2f}s ({per_second:.1f}/s)"
    )
    print("status:   " + (", ".join(f"{code} {n}" for code, n in codes.most_common()) or "none"))
    print("recorded: " + (", ".join(f"{code} {n}" for code, n in recorded.most_common()) or "none"))
    ms = [x * 1000 for x in latencies]
    print(
        f"latency ms: p50 {_percentile(ms, 0.5):.2f}, p90 {_percentile(ms, 0.9):.2f}, "
        f"p99 {_percentile(ms, 0.99):.2f}, max {max(ms, default=0.0):.2f}"
    )
    return 0


def newest(directory: str | Path) -> list[Path]:
    """The dump files in ``directory``, oldest first."""
    return sorted(Path(directory).glob("l8-dump-*.bin"))
