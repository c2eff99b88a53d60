"""Files, secrets and bindings end to end: `l8 run` and `l8 worker` as subprocesses, the examples,
the Dapr SDK, a worker killed mid-upload, and l8's memory while a 200 MB file streams through."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest

from bus.sync import server_has_seen
from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc
from tests.conftest import unique
from tests.file_client import MB, digest_of, download, rss_mb, upload
from tests.process import l8_running, start_worker, stop_all
from tests.servers import Server, env_with, free_port, stop_pid
from tests.test_examples import run_example

HERE = Path(__file__).parent
SECRETS = {"SECRET_DB_PASSWORD": "pg-pass-42", "SECRET_API_KEY": "key-7"}


def sdk_env(l8: Any) -> dict[str, str]:
    return {"DAPR_GRPC_PORT": str(l8.grpc_port), "DAPR_HTTP_PORT": str(l8.http_port), "L8_GRPC_PORT": str(l8.grpc_port)}


def dapr_client(l8: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HERE / "dapr_secrets_bindings_client.py")],
        env={**os.environ, **sdk_env(l8), "DAPR_HEALTH_TIMEOUT": "20"},
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_the_default_config_serves_the_file_and_secrets_examples() -> None:
    with l8_running(env=env_with(**SECRETS)) as l8:  # the packaged configs/default.yaml, on its embedded bus
        assert run_example("file_native.py", sdk_env(l8)).strip() == "True 360000 ['reports/q3.txt'] ['finance']"
        assert run_example("secrets_dapr.py", sdk_env(l8)).strip() == "10 ['SECRET_API_KEY', 'SECRET_DB_PASSWORD']"


async def test_the_bindings_example_writes_a_file_and_asks_over_nats(nats_server: Server, tmp_path: Path) -> None:
    config = {
        "app": {"id": unique("app")},
        "namespace": unique("ns"),
        "bus": {"url": nats_server.url},
        "components": {
            "outbox": {"kind": "bindings", "type": "local.dir", "metadata": {"root": str(tmp_path / "outbox")}},
            "quotes": {"kind": "bindings", "type": "nats", "metadata": {"subject": "quotes.price"}},
        },
    }
    nc = await nats.connect(nats_server.url)

    async def price(msg: Any) -> None:
        await msg.respond(b"42.0" if msg.data == b"ACME" else b"?")

    try:
        await nc.subscribe("quotes.price", cb=price)
        await server_has_seen(nc)
        with l8_running(config) as l8:
            out = await asyncio.to_thread(run_example, "bindings_dapr.py", sdk_env(l8))
        assert out.strip() == '{"order": 7} 42.0'
        assert (tmp_path / "outbox" / "orders" / "7.json").read_text() == '{"order": 7}'
    finally:
        await nc.close()


def worker_config(nats_server: Server, root: Path) -> dict[str, Any]:
    return {
        "app": {"id": unique("app")},
        "namespace": unique("ns"),
        "bus": {"url": nats_server.url},
        "components": {
            "filestore": {"kind": "file", "type": "nats.objectstore"},
            "secretstore": {"kind": "secrets", "type": "env", "metadata": {"prefixes": "SECRET_"}},
            "disk": {"kind": "bindings", "type": "local.dir", "metadata": {"root": str(root)}},
        },
    }


async def wait_served(stub: runtime_pb2_grpc.RuntimeStub, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await stub.GetSecret(pb.GetSecretRequest(store_name="secretstore", key="SECRET_API_KEY"), timeout=5)
            await stub.ListFile(pb.ListFileRequest(request=pb.FileRequest(store_name="filestore")), timeout=5)
            return
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_a_front_only_sidecar_is_served_by_an_l8_worker_and_a_worker_killed_mid_upload_leaves_no_file(
    nats_server: Server, tmp_path: Path
) -> None:
    cfg = worker_config(nats_server, tmp_path / "disk")
    workers = [start_worker(cfg, nats_server.url, "file,secrets,bindings", env=env_with(**SECRETS))]
    try:
        with l8_running(cfg, "--workers", "none") as front:
            async with grpc.aio.insecure_channel(front.grpc_address) as channel:
                stub = runtime_pb2_grpc.RuntimeStub(channel)
                await wait_served(stub)
                out = await asyncio.to_thread(dapr_client, front)
                assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr + front.log()

                # Chunks cross the bus to the worker and back.
                await upload(stub, "filestore", "through/worker.bin", 5 * MB)
                assert await download(stub, "filestore", "through/worker.bin") == (5 * MB, await digest_of(5 * MB))

                # The worker dies while an upload is under way: the caller gets an error soon, not a hang.
                # (grpc's sync client here: grpc-aio's reports INTERNAL instead of the server's status
                # when a write races the end of a client stream, grpc/grpc#36066.)
                def torn() -> Iterator[pb.PutFileRequest]:
                    piece = os.urandom(100 * 1024)
                    yield pb.PutFileRequest(store_name="filestore", name="torn", data=piece)
                    for sent in range(1, 300):
                        yield pb.PutFileRequest(data=piece)
                        if sent == 20:
                            workers[0].send_signal(signal.SIGKILL)
                            workers[0].wait(10)

                def put_torn() -> grpc.StatusCode:
                    with grpc.insecure_channel(front.grpc_address) as sync_channel:
                        try:
                            runtime_pb2_grpc.RuntimeStub(sync_channel).PutFile(torn(), timeout=120)
                        except grpc.RpcError as exc:
                            return exc.code()  # type: ignore[no-any-return, attr-defined]
                    raise AssertionError("the upload to a killed worker succeeded")

                assert await asyncio.to_thread(put_torn) is grpc.StatusCode.UNAVAILABLE

                workers.append(start_worker(cfg, nats_server.url, "file,secrets,bindings", env=env_with(**SECRETS)))
                await wait_served(stub)
                with pytest.raises(grpc.aio.AioRpcError) as missing:
                    await stub.GetFileMeta(
                        pb.GetFileMetaRequest(request=pb.FileRequest(store_name="filestore", name="torn"))
                    )
                assert missing.value.code() is grpc.StatusCode.NOT_FOUND, "a torn upload is never visible"
                assert (await download(stub, "filestore", "through/worker.bin"))[0] == 5 * MB
    finally:
        stop_all(workers)


async def test_a_200_mb_file_streams_up_and_down_while_l8_grows_by_less_than_64_mb() -> None:
    size = 200 * MB
    with l8_running() as l8:  # the default config: nats.objectstore on the embedded bus, local dispatch
        async with grpc.aio.insecure_channel(l8.grpc_address) as channel:
            stub = runtime_pb2_grpc.RuntimeStub(channel)
            await upload(stub, "filestore", "warm-up", 4 * MB)  # every module of the path is loaded first
            await download(stub, "filestore", "warm-up")
            before = rss_mb(l8.proc.pid)
            await upload(stub, "filestore", "big.bin", size)
            got = await download(stub, "filestore", "big.bin")
            peak = rss_mb(l8.proc.pid, "VmHWM")
    assert got == (size, await digest_of(size))
    assert peak - before < 64, f"l8 grew from {before:.1f} MB to a peak of {peak:.1f} MB"


async def test_an_app_written_with_the_dapr_sdk_takes_the_input_binding_events_of_the_example(
    nats_server: Server, tmp_path: Path
) -> None:
    """examples/bindings_input_dapr.py as it is, beside `l8 run --app-port`: orders from NATS, cron ticks."""
    port, subject = free_port(), f"orders.{unique('new')}"
    config = {
        "app": {"id": unique("app")},
        "namespace": unique("ns"),
        "bus": {"url": nats_server.url},
        "components": {
            "orders-in": {"kind": "bindings", "type": "nats", "metadata": {"subject": subject}},
            "every-second": {"kind": "bindings", "type": "cron", "metadata": {"schedule": "@every 1s"}},
        },
    }
    out_path = tmp_path / "app.out"
    with open(out_path, "wb") as out:
        app = subprocess.Popen(
            [sys.executable, str(HERE.parent / "examples" / "bindings_input_dapr.py")],
            env={**os.environ, "APP_PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    nc = await nats.connect(nats_server.url)
    try:
        with l8_running(config, "--app-port", str(port)):

            def lines() -> list[str]:
                return out_path.read_text().splitlines()

            deadline = time.monotonic() + 60
            sent = 0
            while not (any(line.startswith("tick ") for line in lines()) and '{"order": 3}' in out_path.read_text()):
                # Until the app's sidecar is delivering, core NATS messages find nobody: send again.
                assert time.monotonic() < deadline, out_path.read_text()
                await nc.publish(subject, b'{"order": %d}' % sent)
                await nc.flush()
                sent = min(sent + 1, 3)
                await asyncio.sleep(0.2)
    finally:
        await nc.close()
        stop_pid(app)
    ticks = [line.split()[1] for line in lines() if line.startswith("tick ")]
    assert ticks and all(t.endswith("Z") for t in ticks), lines()
