"""File API throughput through l8, beside the direct NATS Object Store client and plain disk I/O,
and l8's memory while a 200 MB file streams through it.

Run: ``.venv/bin/python -m bench.files`` (about a minute; ``--size MB`` per transfer, default 64). It
starts a nats-server and two ``l8 run`` subprocesses on that bus (one with ``bus.local_dispatch``,
the default, one without, so its file streams cross the nats-server), each with a
``nats.objectstore`` and a ``local.dir`` file store, measures, and stops them all by PID.

Rows, MB/s (MiB), the median of 3 rounds, the rows of a round measured one after another:
- l8 PutFile / GetFile → NATS Object Store, with and without local dispatch; the client sends
  Layotto's 100 KiB messages, l8 answers 128 KiB ones.
- direct: nats-py's ``ObjectStore.put`` / ``get`` on a bucket of the same server (128 KiB chunks).
- l8 PutFile / GetFile → local directory, beside plain disk I/O on the same file system: ``write``
  of 1 MiB blocks + ``fsync`` (what the bridge does before its rename) and ``read`` back.

Then memory: VmRSS of the local-dispatch l8 (its own process; the nats-server apart) before a
200 MB upload and download, and its peak (VmHWM) after both. The issue's target: it grows < 64 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc
import nats
import uvloop
from nats.js.api import ObjectStoreConfig, StorageType

from handlers.proto import runtime_pb2_grpc
from tests.file_client import MB, content, download, rss_mb, upload
from tests.process import L8Process, start_l8
from tests.servers import Server, start_nats

ROUNDS = 3


async def put_l8(stub: runtime_pb2_grpc.RuntimeStub, store: str, name: str, size: int) -> None:
    await upload(stub, store, name, size)


async def get_l8(stub: runtime_pb2_grpc.RuntimeStub, store: str, name: str) -> int:
    return (await download(stub, store, name))[0]


async def timed(fn: Callable[[], Awaitable[object]]) -> float:
    began = time.perf_counter()
    await fn()
    return time.perf_counter() - began


def config(nats_url: str, root: Path, local_dispatch: bool) -> dict[str, object]:
    return {
        "app": {"id": "bench-files"},
        "bus": {"url": nats_url, "local_dispatch": local_dispatch},
        "components": {
            "filestore": {"kind": "file", "type": "nats.objectstore", "metadata": {"bucket": "bench_l8"}},
            "disk": {"kind": "file", "type": "local.dir", "metadata": {"root": str(root)}},
        },
    }


async def throughput(nats_url: str, l8s: dict[str, L8Process], work: Path, size: int) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    direct = await js.create_object_store("bench_direct", ObjectStoreConfig(storage=StorageType.FILE))
    channels = {k: grpc.aio.insecure_channel(v.grpc_address) for k, v in l8s.items()}
    stubs = {k: runtime_pb2_grpc.RuntimeStub(c) for k, c in channels.items()}
    payload = b"".join([piece async for piece in content(size, MB)])
    disk_file = work / "plain.bin"

    def disk_write() -> None:
        with open(disk_file, "wb") as f:
            for i in range(0, size, MB):
                f.write(payload[i : i + MB])
            f.flush()
            os.fsync(f.fileno())

    def disk_read() -> None:
        with open(disk_file, "rb") as f:
            while f.read(MB):
                pass

    rows: dict[str, list[float]] = {}
    cases: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("l8 PutFile → Object Store (local dispatch)", lambda: put_l8(stubs["local"], "filestore", "f", size)),
        ("l8 GetFile ← Object Store (local dispatch)", lambda: get_l8(stubs["local"], "filestore", "f")),
        ("l8 PutFile → Object Store (over the bus)", lambda: put_l8(stubs["bus"], "filestore", "g", size)),
        ("l8 GetFile ← Object Store (over the bus)", lambda: get_l8(stubs["bus"], "filestore", "g")),
        ("direct nats-py ObjectStore.put", lambda: direct.put("f", payload)),
        ("direct nats-py ObjectStore.get", lambda: direct.get("f")),
        ("l8 PutFile → local dir (local dispatch)", lambda: put_l8(stubs["local"], "disk", "f", size)),
        ("l8 GetFile ← local dir (local dispatch)", lambda: get_l8(stubs["local"], "disk", "f")),
        ("plain disk write + fsync", lambda: asyncio.to_thread(disk_write)),
        ("plain disk read", lambda: asyncio.to_thread(disk_read)),
    ]
    for _ in range(ROUNDS):
        for name, fn in cases:
            rows.setdefault(name, []).append(size / MB / await timed(fn))
    print(f"File throughput, {size / MB:.0f} MB per transfer, MB/s (median of {ROUNDS})")
    for name, rates in rows.items():
        print(f"  {name:<46} {statistics.median(rates):8.1f}")
    for c in channels.values():
        await c.close()
    await js.delete_object_store("bench_direct")
    await nc.close()


async def memory(l8: L8Process, size: int) -> None:
    async with grpc.aio.insecure_channel(l8.grpc_address) as channel:
        stub = runtime_pb2_grpc.RuntimeStub(channel)
        await put_l8(stub, "filestore", "warm", 4 * MB)  # load every module the path needs first
        await get_l8(stub, "filestore", "warm")
        before = rss_mb(l8.proc.pid)
        began = time.perf_counter()
        await put_l8(stub, "filestore", "big", size)
        got = await get_l8(stub, "filestore", "big")
        took = time.perf_counter() - began
        peak = rss_mb(l8.proc.pid, "VmHWM")
    assert got == size
    print(f"Memory of l8 while {size / MB:.0f} MB goes up and back down ({2 * size / MB / took:.0f} MB/s overall)")
    print(f"  VmRSS before {before:6.1f} MB   VmHWM after {peak:6.1f} MB   grew {peak - before:5.1f} MB (target < 64)")


async def main(size_mb: int, big_mb: int) -> None:
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    work = Path(tempfile.mkdtemp(prefix="l8-bench-files-"))
    server: Server = start_nats(work / "nats")
    l8s: dict[str, L8Process] = {}
    try:
        for key, local in (("local", True), ("bus", False)):
            l8s[key] = start_l8(config(server.url, work / f"root-{key}", local), cwd=work)
        await throughput(server.url, l8s, work, size_mb * MB)
        await memory(l8s["local"], big_mb * MB)
    finally:
        for l8 in l8s.values():
            l8.stop()
        server.stop()
        print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", type=int, default=64, help="MB per transfer in the throughput rows")
    parser.add_argument("--big", type=int, default=200, help="MB of the file whose transfer the memory row watches")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    uvloop.run(main(args.size, args.big))
