"""What operability costs: `python -m bench.operability [--quick]`.

One run, everything on loopback, started and stopped here: a nats-server, an OTLP receiver (a
child process counting the spans it is sent), an app callback server (bench.pubsub's, counting
events), and one `l8 run` per configuration, all on the same bus:

- **base**: l8 as it was before issue 12 (the first parent of the commit that merged it, or
  `--base REF`; extracted with `git archive`);
- **off**: this l8 with tracing, metrics and flow control off (the default);
- **tracing 100 %** and **tracing 1 %**: spans exported over OTLP gRPC to the receiver;
- **metrics**: `metrics.enabled`;
- **flow control**: a rule on GetState with a threshold it never reaches (every call takes a token).

Rows, measured round-robin (3 rounds, so a burst of other work on the machine hits every row):
GetState (native, local dispatch, the default) sequential p50 and rps with 64 in flight; and the
delivery of N events to the app (bulk-published, then delivered one by one with concurrency 32),
as events/s. Each figure is printed beside base's and off's from the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from io import BytesIO
from pathlib import Path
from typing import Any

import grpc
import uvloop
import yaml

from bench import procs
from bench.load import Measured, concurrent, fixed_count, sequential
from bench.pubsub import PAYLOAD, AppProcess

ROOT = Path(__file__).parent.parent
GET = "/spec.proto.runtime.v1.Runtime/GetState"
TARGETS = {"off": 0.02, "metrics": 0.05, "flow control": 0.03}  # cost over base (off) / over off


# ---- the OTLP receiver: a child process ----


def receiver_main(port: int) -> None:
    from concurrent import futures

    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    spans = 0

    class Servicer(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
        def Export(self, request: Any, context: Any) -> Any:
            nonlocal spans
            spans += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    for line in sys.stdin:  # any line asks for the count; EOF ends it
        print(spans, flush=True)
        del line
    server.stop(0)


# ---- the configurations ----


BEFORE_ISSUE_12 = "Merge branch 'issue-12'"  # the merge that brought these hooks; its first parent is without them


def base_ref() -> str | None:
    """l8 before issue 12: the first parent of the commit that merged it, else the merge base with
    main (on the issue's own branch, before it was merged)."""
    for args in (["log", "--merges", f"--grep={BEFORE_ISSUE_12}", "--format=%P", "-1"], ["merge-base", "HEAD", "main"]):
        try:
            out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
        except (subprocess.CalledProcessError, FileNotFoundError):
            continue
        if out:
            return out[0]
    return None


def base_tree(work: Path, ref: str | None) -> Path | None:
    """The l8 of ``ref`` as files, or None when there is none to compare with."""
    if ref is None:
        return None
    try:
        archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None
    tree = work / f"base-{ref[:10]}"
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    return tree


def configs(bus: str, app_port: int, otlp: int, topics: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    def make(name: str, **extra: Any) -> dict[str, Any]:
        return {
            "app": {"id": f"bench-{name.replace(' ', '-').replace('%', 'pct')}", "callback": f"127.0.0.1:{app_port}"},
            "namespace": "bench",
            "bus": {"url": bus},
            "log_level": "warning",
            "components": {
                "statestore": {"kind": "state", "type": "nats.kv"},
                "pubsub": {"kind": "pubsub", "type": "nats.jetstream"},
            },
            "subscriptions": [{"pubsub": "pubsub", "topic": t, "concurrency": 32} for t in topics[name]],
            **extra,
        }

    endpoint = f"http://127.0.0.1:{otlp}"
    return {
        "base": make("base"),
        "off": make("off"),
        "tracing 100%": make("tracing 100%", tracing={"enabled": True, "sampling": 1.0, "endpoint": endpoint}),
        "tracing 1%": make("tracing 1%", tracing={"enabled": True, "sampling": 0.01, "endpoint": endpoint}),
        "metrics": make("metrics", metrics={"enabled": True}),
        "flow control": make(
            "flow control", flow_control={"rules": [{"resource": GET, "threshold": 1_000_000, "burst": 1_000_000}]}
        ),
    }


class L8:
    def __init__(self, name: str, config: dict[str, Any], work: Path, base: Path | None) -> None:
        self.name = name
        self.grpc_port, self.http_port = procs.free_port(), procs.free_port()
        path = work / f"{name.replace(' ', '-').replace('%', 'pct')}.yaml"
        path.write_text(yaml.safe_dump(config))
        env = procs.child_env()
        for key in [k for k in env if k.startswith("OTEL_")]:
            del env[key]
        if base is not None:
            env["PYTHONPATH"] = str(base)  # the base's packages first: its l8, this venv's libraries
        args = [sys.executable, "-m", "runtime.cli", "run", "--config", str(path)]
        args += ["--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port), "--data-dir", str(work / name)]
        self.proc = procs.spawn(args, work / f"{path.stem}.log", env)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.http_port}/v1.0/healthz/outbound"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"l8 {self.name} exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 204:
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise TimeoutError(f"l8 {self.name} is not ready")


async def deliver(stub: Any, app: AppProcess, topic: str, n: int) -> float:
    from handlers.proto import runtime_pb2 as pb

    began = time.time()
    for start in range(0, n, 500):
        entries = [
            pb.BulkPublishRequestEntry(entry_id=str(i), event=PAYLOAD, content_type="application/json")
            for i in range(start, min(n, start + 500))
        ]
        await stub.PublishBulkEvent(pb.BulkPublishRequest(pubsub_name="pubsub", topic=topic, entries=entries))
    line = await app.result(120)
    assert line["topic"] == topic, line
    return n / (line["last"] - began)


async def main(quick: bool, ref: str | None) -> None:
    from handlers.proto import runtime_pb2 as pb
    from handlers.proto import runtime_pb2_grpc

    rounds, seq, seconds, events = (2, 200, 0.5, 300) if quick else (3, 600, 1.0, 1000)
    cpu_calls, cpu_rounds = (300, 4) if quick else (500, 12)
    work = Path(tempfile.mkdtemp(prefix="l8-bench-ops-"))
    nats_port = procs.free_port()
    nats = procs.spawn([procs.venv_bin("nats-server"), "-js", "-p", str(nats_port), "-sd", str(work / "js")],
                       work / "nats.log")  # fmt: skip
    procs.wait_port(nats_port, nats)
    otlp_port = procs.free_port()
    receiver = subprocess.Popen([sys.executable, "-m", "bench.operability", "--receiver", str(otlp_port)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    assert receiver.stdout is not None and receiver.stdin is not None
    assert receiver.stdout.readline().strip() == "ready"
    base = base_tree(work, ref)
    names = ["base", "off", "tracing 100%", "tracing 1%", "metrics", "flow control"]
    if base is None:
        names.remove("base")
    topics = {name: [f"d{i}r{r}" for r in range(rounds)] for i, name in enumerate(names)}
    app = AppProcess({t: events for ts in topics.values() for t in ts})
    await app.start()
    l8s: dict[str, L8] = {}
    try:
        for name, config in configs(f"nats://127.0.0.1:{nats_port}", app.port, otlp_port, topics).items():
            if name in names:
                l8s[name] = L8(name, config, work, base if name == "base" else None)
        for l8 in l8s.values():
            l8.wait_ready()
        channels = {n: grpc.aio.insecure_channel(f"127.0.0.1:{x.grpc_port}") for n, x in l8s.items()}
        stubs = {n: runtime_pb2_grpc.RuntimeStub(c) for n, c in channels.items()}
        request = pb.GetStateRequest(store_name="statestore", key="k").SerializeToString()
        item = pb.StateItem(key="k", value=b"v")
        for stub in stubs.values():
            await stub.SaveState(pb.SaveStateRequest(store_name="statestore", states=[item]))
        rows = {n: Measured(n) for n in names}
        delivered: dict[str, list[float]] = {n: [] for n in names}
        # CPU seconds of the l8 process per 1000 calls and per 1000 events: what a hook costs, which
        # the machine's other load moves far less than it moves latency and throughput.
        cpu_get: dict[str, list[float]] = {n: [] for n in names}
        cpu_events: dict[str, list[float]] = {n: [] for n in names}
        for r in range(rounds):
            for name in names:
                call = channels[name].unary_unary(GET)

                async def get(call: Any = call) -> object:
                    return await call(request)

                pid = l8s[name].proc.pid
                await sequential(get, seq, 50, rows[name])
                await concurrent(get, 64, seconds, 0.25, rows[name])
                before = procs.cpu_seconds(pid)
                delivered[name].append(await deliver(stubs[name], app, topics[name][r], events))
                cpu_events[name].append((procs.cpu_seconds(pid) - before) / events * 1000)
        # CPU per call in short turns, many of them, so that the machine's other load falls on every row.
        for _ in range(cpu_rounds):
            for name in names:
                call = channels[name].unary_unary(GET)

                async def get(call: Any = call) -> object:
                    return await call(request)

                pid = l8s[name].proc.pid
                before = procs.cpu_seconds(pid)
                await fixed_count(get, 16, cpu_calls)
                cpu_get[name].append((procs.cpu_seconds(pid) - before) / cpu_calls * 1000)
        receiver.stdin.write("count\n")
        receiver.stdin.flush()
        spans = int(receiver.stdout.readline())
        for channel in channels.values():
            await channel.close()
    finally:
        for l8 in l8s.values():
            procs.stop(l8.proc)
        app.stop()
        receiver.stdin.close()
        receiver.wait(10)
        procs.stop(nats)
    cpu = {n: (statistics.median(cpu_get[n]), statistics.median(cpu_events[n])) for n in names}
    report(names, rows, delivered, cpu, spans, rounds, seq, events, base)


def report(
    names: list[str], rows: dict[str, Measured], delivered: dict[str, list[float]],
    cpu: dict[str, tuple[float, float]], spans: int, rounds: int, seq: int, events: int, base: Path | None,
) -> None:  # fmt: skip
    print(f"operability cost, {rounds} rounds round-robin; {procs.os_cpus()} CPUs, load {procs.loadavg()}")
    print(f"GetState: {seq} sequential calls and 64 in flight per round; delivery: {events} events per round")
    print(f"base = {base.name if base else 'n/a'} (l8 before issue 12), off = this l8 with every hook off")
    print()
    header = f"{'row':<14} {'p50 ms':>8} {'rps@64':>9} {'events/s':>9} | "
    header += f"{'p50 vs off':>10} {'rps vs off':>10} {'ev/s vs off':>11}"
    print(header)
    print("-" * len(header))
    off = rows["off"]
    off_events = statistics.median(delivered["off"])
    for name in names:
        row = rows[name]
        ev = statistics.median(delivered[name])
        print(
            f"{name:<14} {row.p50:>8.3f} {row.conc_rps:>9.0f} {ev:>9.0f} | {_pct(row.p50, off.p50):>10} "
            f"{_pct(off.conc_rps, row.conc_rps):>10} {_pct(off_events, ev):>11}"
        )
    print()
    if "base" in rows:
        b = rows["base"]
        b_events = statistics.median(delivered["base"])
        print(
            f"off vs base (target <= 2 %): p50 {_pct(off.p50, b.p50)}, rps {_pct(b.conc_rps, off.conc_rps)}, "
            f"events/s {_pct(b_events, off_events)}"
        )
    for name, target in (("metrics", 0.05), ("flow control", 0.03)):
        row = rows[name]
        print(
            f"{name} vs off (target <= {target:.0%}): p50 {_pct(row.p50, off.p50)}, "
            f"rps {_pct(off.conc_rps, row.conc_rps)}, events/s {_pct(off_events, statistics.median(delivered[name]))}"
        )
    print()
    header = f"{'row':<14} {'CPU s/1000 GetState':>20} {'CPU s/1000 events':>18} | "
    header += f"{'GetState vs off':>15} {'events vs off':>13}"
    print(header)
    print("-" * len(header))
    for name in names:
        get, ev = cpu[name]
        print(f"{name:<14} {get:>20.3f} {ev:>18.3f} | {_pct(get, cpu['off'][0]):>15} {_pct(ev, cpu['off'][1]):>13}")
    if "base" in cpu:
        print(
            f"CPU, off vs base (target <= 2 %): GetState {_pct(cpu['off'][0], cpu['base'][0])}, "
            f"events {_pct(cpu['off'][1], cpu['base'][1])}"
        )
    for name, target in (("metrics", 0.05), ("flow control", 0.03)):
        print(
            f"CPU, {name} vs off (target <= {target:.0%}): GetState {_pct(cpu[name][0], cpu['off'][0])}, "
            f"events {_pct(cpu[name][1], cpu['off'][1])}"
        )
    print(f"spans the OTLP receiver got: {spans}")
    print(json.dumps({n: {"p50_ms": rows[n].p50, "rps64": rows[n].conc_rps, "events_s": statistics.median(delivered[n]),
                          "errors": rows[n].errors} for n in names}))  # fmt: skip


def _pct(cost: float, reference: float) -> str:
    """How much more ``cost`` is than ``reference`` (for rps: pass base first), as +x.x %."""
    return f"{(cost / reference - 1) * 100:+.1f}%"


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.operability")
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer calls and events")
    parser.add_argument("--base", help="the l8 (a git ref) of the base row; default: l8 before issue 12")
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        receiver_main(args.receiver)
        return
    uvloop.run(main(args.quick, args.base or base_ref()))


if __name__ == "__main__":
    cli()
