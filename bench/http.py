"""Dapr's HTTP API benchmark: l8's HTTP GetState and publish beside the same calls over gRPC and
beside minimal HTTP servers that make the same backend call directly, all in one run.

Run with ``.venv/bin/python -m bench.http [--quick]``. Every server listens on loopback on a free
port, is started here and stopped by its PID before the bench exits. The HTTP rows use one client
for all: keep-alive HTTP/1.1 on asyncio sockets (one connection per worker), parsed by httptools;
the gRPC rows use bench/state.py's raw-bytes grpc.aio client. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import grpc
import httptools
import nats
import uvloop
from dapr.proto.runtime.v1 import pubsub_pb2
from nats.js.api import KeyValueConfig, StorageType, StreamConfig

from bench import procs
from bench.load import Call, Measured
from bench.servicers import NOOP_METHOD
from bench.state import KEY, STORE, VALUE, Cleanup, Settings, grpc_call, measure, start_nats, start_servicer
from handlers.proto import runtime_pb2 as pb

EVENT = b'{"orderId":"order-1","qty":3,"sku":"A-1000","note":"a publish of about one hundred bytes......"}'
PROFILES = {
    "full": Settings(2, 500, 50, 64, 1.0, 0.25, 0, 0, 0, 0),
    "quick": Settings(1, 100, 20, 64, 0.5, 0.1, 0, 0, 0, 0),
}


class HttpConn:
    """One keep-alive HTTP/1.1 connection; a call sends a request and reads its whole answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._status = 0
        self._done = False
        self._parser = httptools.HttpResponseParser(self)

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_message_complete(self) -> None:
        self._done = True

    async def call(self, data: bytes) -> int:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self._reader is not None
        self._done = False
        self._writer.write(data)
        while not self._done:
            chunk = await self._reader.read(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self._parser.feed_data(chunk)
        if self._status >= 300:
            raise RuntimeError(f"HTTP {self._status}")
        return self._status


def http_call(port: int, method: str, path: str, body: bytes = b"", content_type: str = "") -> Call:
    """A call on a pool of connections: each worker of the load takes its own (no sharing, no waits)."""
    head = f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {len(body)}\r\n"
    if content_type:
        head += f"content-type: {content_type}\r\n"
    data = (head + "\r\n").encode() + body
    free: list[HttpConn] = []

    async def call() -> object:
        conn = free.pop() if free else HttpConn(port)
        try:
            return await conn.call(data)
        finally:
            free.append(conn)

    return call


async def prepare_direct(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    kv = await js.create_key_value(KeyValueConfig(bucket="bench", history=1, storage=StorageType.FILE, direct=True))
    await kv.put(KEY, VALUE)
    await js.add_stream(StreamConfig(name="BENCH_EVT", subjects=["bench.evt.>"], storage=StorageType.FILE))
    await nc.close()


def l8_config(work: Path) -> tuple[Path, int, int]:
    grpc_port, http_port = procs.free_port(), procs.free_port()
    config = {
        "app": {"id": "bench"},
        "bus": {"url": "embedded"},
        "server": {"grpc": f"127.0.0.1:{grpc_port}", "http": f"127.0.0.1:{http_port}"},
        "data_dir": str(work / "l8"),
        "log_level": "warning",
        "components": {
            STORE: {"kind": "state", "type": "nats.kv"},
            "pubsub": {"kind": "pubsub", "type": "nats.jetstream"},
        },
    }
    path = work / "l8.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path, grpc_port, http_port


async def start_l8(work: Path, cleanup: Cleanup) -> tuple[int, int]:
    config, grpc_port, http_port = l8_config(work)
    proc = cleanup.add(procs.spawn([procs.venv_bin("l8"), "run", "--config", str(config)], work / "l8.log"))
    health = http_call(http_port, "GET", "/v1.0/healthz/outbound")
    deadline = time.monotonic() + 30
    while True:
        try:
            await health()
            break
        except (OSError, RuntimeError):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"l8 did not start; see {work / 'l8.log'}") from None
            await asyncio.sleep(0.01)
    for pid in procs.children(proc.pid):
        cleanup.add_pid(pid)  # the embedded nats-server, should l8 not stop it
    return grpc_port, http_port


async def run(s: Settings, work: Path, cleanup: Cleanup) -> list[Measured]:
    nats_url, _ = start_nats(work, cleanup)
    await prepare_direct(nats_url)
    noop_http = procs.free_port()
    get_http = procs.free_port()
    pub_http = procs.free_port()
    for kind, port in (("noop", noop_http), ("nats-get", get_http), ("nats-publish", pub_http)):
        args = [sys.executable, "-m", "bench.http_servers", kind, "--port", str(port), "--nats", nats_url]
        procs.wait_port(port, cleanup.add(procs.spawn(args, work / f"http-{kind}.log")))
    noop_grpc, _ = start_servicer("noop", work, cleanup)
    grpc_port, http_port = await start_l8(work, cleanup)

    l8 = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
    floor = grpc.aio.insecure_channel(f"127.0.0.1:{noop_grpc}")
    try:
        save = http_call(
            http_port,
            "POST",
            f"/v1.0/state/{STORE}",
            json.dumps([{"key": KEY, "value": json.loads(VALUE)}]).encode(),
            "application/json",
        )
        await save()
        get = pb.GetStateRequest(store_name=STORE, key=KEY).SerializeToString()
        publish = pb.PublishEventRequest(
            pubsub_name="pubsub", topic="orders", data=EVENT, data_content_type="application/json"
        ).SerializeToString()
        dapr_publish = pubsub_pb2.PublishEventRequest(
            pubsub_name="pubsub", topic="orders", data=EVENT, data_content_type="application/json"
        ).SerializeToString()
        targets: list[tuple[Measured, Call]] = [
            (Measured("HTTP no-op server (runtime/http.py)"), http_call(noop_http, "GET", "/")),
            (Measured("gRPC no-op servicer"), grpc_call(floor, NOOP_METHOD, b"")),
            (Measured("minimal HTTP server → NATS KV get"), http_call(get_http, "GET", f"/{KEY}")),
            (Measured("l8 Dapr HTTP GET /v1.0/state"), http_call(http_port, "GET", f"/v1.0/state/{STORE}/{KEY}")),
            (Measured("l8 Dapr gRPC GetState"), grpc_call(l8, "/dapr.proto.runtime.v1.Dapr/GetState", get)),
            (Measured("l8 native gRPC GetState"), grpc_call(l8, "/spec.proto.runtime.v1.Runtime/GetState", get)),
            (
                Measured("minimal HTTP server → JetStream publish"),
                http_call(pub_http, "POST", "/orders", EVENT, "application/json"),
            ),
            (
                Measured("l8 Dapr HTTP POST /v1.0/publish"),
                http_call(http_port, "POST", "/v1.0/publish/pubsub/orders", EVENT, "application/json"),
            ),
            (
                Measured("l8 Dapr gRPC PublishEvent"),
                grpc_call(l8, "/dapr.proto.runtime.v1.Dapr/PublishEvent", dapr_publish),
            ),
            (
                Measured("l8 native gRPC PublishEvent"),
                grpc_call(l8, "/spec.proto.runtime.v1.Runtime/PublishEvent", publish),
            ),
        ]
        await measure(targets, s)
    finally:
        await l8.close()
        await floor.close()
    return [row for row, _ in targets]


def report(rows: list[Measured], s: Settings, elapsed: float, load: str) -> str:
    out = [
        f"l8 Dapr HTTP API benchmark — {procs.os_cpus()} CPUs shared by client and servers, "
        f"{s.rounds} round(s), {s.seq} sequential calls and {s.duration:.1f} s at {s.workers} in flight "
        "per row per round",
        "",
        f"{'row':<44} {'p50 ms':>7} {'p99 ms':>7} {'seq rps':>8} {'rps @' + str(s.workers):>9} {'errors':>7}",
    ]
    for row in rows:
        out.append(
            f"{row.name:<44} {row.p50:7.3f} {row.p99:7.3f} {row.seq_rps:8.0f} {row.conc_rps:9.0f} {row.errors:7d}"
            + (f"  ({row.first_error})" if row.first_error else "")
        )
    by = {r.name: r for r in rows}

    def ratio(a: str, b: str) -> str:
        return f"{by[a].conc_rps / by[b].conc_rps:.2f}"

    out += [
        "",
        f"l8 HTTP GetState / minimal HTTP server → NATS KV, rps @{s.workers}: "
        f"{ratio('l8 Dapr HTTP GET /v1.0/state', 'minimal HTTP server → NATS KV get')}",
        f"l8 HTTP GetState / l8 Dapr gRPC GetState, rps @{s.workers}: "
        f"{ratio('l8 Dapr HTTP GET /v1.0/state', 'l8 Dapr gRPC GetState')}",
        f"l8 HTTP publish / minimal HTTP server → JetStream, rps @{s.workers}: "
        f"{ratio('l8 Dapr HTTP POST /v1.0/publish', 'minimal HTTP server → JetStream publish')}",
        f"l8 HTTP publish / l8 Dapr gRPC publish, rps @{s.workers}: "
        f"{ratio('l8 Dapr HTTP POST /v1.0/publish', 'l8 Dapr gRPC PublishEvent')}",
        f"total bench time {elapsed:.0f} s; load average at start {load}, at end {procs.loadavg()}",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http")
    parser.add_argument("--quick", action="store_true", help="a smoke run; rough numbers")
    parser.add_argument("--out", help="also write the report to this file")
    args = parser.parse_args(argv)
    s = PROFILES["quick" if args.quick else "full"]
    load = procs.loadavg()
    began = time.monotonic()
    cleanup = Cleanup()
    with tempfile.TemporaryDirectory(prefix="l8-bench-http-") as tmp:
        try:
            rows = uvloop.run(run(s, Path(tmp), cleanup))
        finally:
            cleanup.all()
    text = report(rows, s, time.monotonic() - began, load)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
