"""The request dump and `l8 dump replay`, as an operator uses them: windows gated by CPU and memory,
records without tokens, replays that rebuild state in a fresh l8 and are never recorded again."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc

from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc
from runtime.dump_format import Record, read
from tests.conftest import unique
from tests.process import L8, L8Process, start_l8
from tests.servers import Server

SAVE = "/spec.proto.runtime.v1.Runtime/SaveState"
TOKEN = "s3cret-token-value"


def wait_log(l8: L8Process, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in l8.log():
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{l8.log()[-3000:]}"
        time.sleep(0.05)


def config(nats_server: Server, dump_dir: Path, **dump: Any) -> dict[str, Any]:
    return {
        "app": {"id": unique("dumped")},
        "namespace": unique("ns"),
        "bus": {"url": nats_server.url},
        "components": {"statestore": {"kind": "state", "type": "nats.kv", "metadata": {"keyPrefix": "none"}}},
        "dump": {"dir": str(dump_dir), "interval": 3600, "duration": 3600, **dump},
    }


def records(directory: Path) -> list[Record]:
    found: list[Record] = []
    for path in sorted(directory.glob("l8-dump-*.bin")):
        with open(path, "rb") as stream:
            found.extend(read(stream))
    return found


def env_with_token() -> dict[str, str]:
    return {**os.environ, "DAPR_API_TOKEN": TOKEN}


def save(l8: L8Process, n: int, prefix: str = "k") -> None:
    metadata = (("dapr-api-token", TOKEN), ("authorization", "Bearer abc"), ("x-request-kind", "test"))
    with grpc.insecure_channel(l8.grpc_address) as channel:
        stub = runtime_pb2_grpc.RuntimeStub(channel)
        for i in range(n):
            item = pb.StateItem(key=f"{prefix}{i}", value=f"v{i}".encode())
            stub.SaveState(pb.SaveStateRequest(store_name="statestore", states=[item]), metadata=metadata)


def test_calls_in_a_window_are_recorded_without_tokens_and_replay_rebuilds_state_in_a_fresh_l8(
    nats_server: Server, tmp_path: Path
) -> None:
    first = start_l8(config(nats_server, tmp_path / "dump"), cwd=tmp_path, env=env_with_token())
    try:
        wait_log(first, "dump window")
        save(first, 40)
    finally:
        first.stop()
    found = records(tmp_path / "dump")
    assert len(found) == 40
    assert {r.method for r in found} == {SAVE} and {r.code for r in found} == {"OK"}
    keys = {k for r in found for k, _ in r.metadata}
    assert "x-request-kind" in keys
    assert not keys & {"dapr-api-token", "authorization"}
    for path in (tmp_path / "dump").iterdir():
        assert TOKEN.encode() not in path.read_bytes() and b"Bearer" not in path.read_bytes()
    assert all(r.duration_nanos > 0 and r.window for r in found)
    # A fresh l8 (its own namespace, so an empty store) that dumps too: replays are not recorded again.
    fresh_dir = tmp_path / "fresh-dump"
    (tmp_path / "fresh").mkdir()
    fresh = start_l8(config(nats_server, fresh_dir), cwd=tmp_path / "fresh", env=env_with_token())
    try:
        wait_log(fresh, "dump window")
        files = [str(p) for p in sorted((tmp_path / "dump").glob("l8-dump-*.bin"))]
        out = subprocess.run(
            [L8, "dump", "replay", *files, "--target", fresh.grpc_address, "--rate", "500"],
            capture_output=True, text=True, timeout=120, env=env_with_token(),
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "replayed 40 requests from 1 file" in out.stdout
        assert "status:   OK 40" in out.stdout
        assert "latency ms: p50 " in out.stdout
        with grpc.insecure_channel(fresh.grpc_address) as channel:
            stub = runtime_pb2_grpc.RuntimeStub(channel)
            metadata = (("dapr-api-token", TOKEN),)
            for i in (0, 17, 39):
                got = stub.GetState(pb.GetStateRequest(store_name="statestore", key=f"k{i}"), metadata=metadata)
                assert got.data == f"v{i}".encode()
    finally:
        fresh.stop()
    # Only the test's own reads were recorded there, none of the 40 replayed writes.
    assert [r.method for r in records(fresh_dir)] == ["/spec.proto.runtime.v1.Runtime/GetState"] * 3


def test_no_window_opens_over_the_cpu_gate_and_a_sample_rate_keeps_a_share(nats_server: Server, tmp_path: Path) -> None:
    (tmp_path / "gated").mkdir()
    (tmp_path / "sampled").mkdir()
    gated = start_l8(config(nats_server, tmp_path / "gated-dump", cpu_max_rate=0), cwd=tmp_path / "gated",
                     env=env_with_token())  # fmt: skip
    sampled = start_l8(config(nats_server, tmp_path / "sampled-dump", sample_rate=0.5), cwd=tmp_path / "sampled",
                       env=env_with_token())  # fmt: skip
    try:
        wait_log(gated, "dump window skipped: CPU")
        wait_log(sampled, "dump window")
        save(gated, 20)
        save(sampled, 200)
    finally:
        gated.stop()
        sampled.stop()
    assert records(tmp_path / "gated-dump") == []
    kept = len(records(tmp_path / "sampled-dump"))
    assert 50 <= kept <= 150, kept  # 200 calls at 0.5: about 100 (the odds of leaving this range are ~1e-12)


def test_replay_reports_a_missing_file_with_exit_code_2(tmp_path: Path) -> None:
    out = subprocess.run([L8, "dump", "replay", str(tmp_path / "none.bin"), "--target", "127.0.0.1:1"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2
    assert "none.bin" in out.stderr
