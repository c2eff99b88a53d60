"""Security: the API token on the fronts, APP_API_TOKEN on callbacks, TLS and mTLS for the servers,
the embedded bus's credentials, and external NATS with user/password, token and TLS client certs."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc
from tests.conftest import SidecarFactory, native_stub, sidecar_config, unique
from tests.process import l8_running, spawn, start_l8
from tests.servers import Server, binary, free_port, stop_pid, wait_port
from tests.test_e2e import dapr_env, state_config
from tests.test_invoke_sidecar import RecordingApp, recording_app, request

__all__ = ["recording_app"]  # the fixture, shared with test_invoke_sidecar.py

HERE = Path(__file__).parent
TOKEN = "t0ken-" + "x" * 20
STATE = {"statestore": {"kind": "state", "type": "nats.kv"}}


async def aget(port: int, path: str, headers: dict[str, str] | None = None, context: Any = None) -> int:
    """``http_get`` off the event loop, which serves the sidecar being called."""
    return await asyncio.to_thread(http_get, port, path, headers, context)


def http_get(port: int, path: str, headers: dict[str, str] | None = None, context: Any = None) -> int:
    scheme = "https" if context is not None else "http"
    req = urllib.request.Request(f"{scheme}://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_with_an_api_token_every_call_but_health_needs_it_and_a_wrong_one_is_unauthenticated(
    nats_server: Server, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    sidecar = await make_sidecar(
        sidecar_config(
            nats_server.url,
            STATE,
            server={"grpc": "127.0.0.1:0", "http": "127.0.0.1:0", "api_token_file": str(tmp_path / "token")},
        )
    )
    channel, stub = native_stub(sidecar)
    save = pb.SaveStateRequest(store_name="statestore", states=[pb.StateItem(key="k", value=b"v")])
    try:
        for metadata in (None, (("dapr-api-token", "wrong"),), (("dapr-api-token", TOKEN[:-1]),)):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.SaveState(save, metadata=metadata)
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        # Nothing was written by the refused calls.
        good = (("dapr-api-token", TOKEN),)
        assert (await stub.GetState(pb.GetStateRequest(store_name="statestore", key="k"), metadata=good)).data == b""
        await stub.SaveState(save, metadata=good)
        assert (await stub.GetState(pb.GetStateRequest(store_name="statestore", key="k"), metadata=good)).data == b"v"
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        # Every other service is behind it too: a proxied call and reflection.
        proxied = channel.unary_unary("/some.app.Service/Call")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await proxied(b"", metadata=(("dapr-app-id", "another-app"),))
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        reflection = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in reflection(iter([b"\x3a\x00"])):  # list_services
                pass
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    finally:
        await channel.close()
    assert sidecar.http is not None
    port = sidecar.http.port
    assert await aget(port, "/v1.0/healthz") == 204
    assert await aget(port, "/v1.0/healthz/outbound") == 204
    assert await aget(port, "/actuator/health/readiness") == 200
    assert await aget(port, "/v1.0/metadata") == 401
    assert await aget(port, "/v1.0/metadata", {"dapr-api-token": "nope"}) == 401
    assert await aget(port, "/v1.0/metadata", {"dapr-api-token": TOKEN}) == 200
    assert await aget(port, "/v1.0/invoke/x/method/y") == 401


def test_the_dapr_sdk_with_the_api_token_set_works_and_without_it_is_refused(nats_server: Server) -> None:
    env = {**os.environ, "DAPR_API_TOKEN": TOKEN}
    with l8_running(state_config(nats_server), env=env) as l8:
        client = [sys.executable, str(HERE / "dapr_state_client.py")]
        with_token = {**dapr_env(l8.grpc_port, l8.http_port), "DAPR_API_TOKEN": TOKEN}
        out = subprocess.run(client, env=with_token, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr + l8.log()
        assert out.stdout.strip() == "ok"
        without = dapr_env(l8.grpc_port, l8.http_port)
        without.pop("DAPR_API_TOKEN", None)
        out = subprocess.run(client, env=without, capture_output=True, text=True, timeout=60)
        assert out.returncode != 0 and "UNAUTHENTICATED" in out.stderr


async def test_the_app_api_token_reaches_the_app_on_every_callback(
    nats_server: Server, make_sidecar: SidecarFactory, recording_app: tuple[RecordingApp, int], tmp_path: Path
) -> None:
    app, app_port = recording_app
    (tmp_path / "app-token").write_text("app-secret")
    ns, target_id = unique("ns"), unique("target")
    target_app = {"id": target_id, "callback": f"127.0.0.1:{app_port}", "api_token_file": str(tmp_path / "app-token")}
    await make_sidecar(sidecar_config(nats_server.url, {}, app=target_app, namespace=ns))
    caller = await make_sidecar(sidecar_config(nats_server.url, {}, namespace=ns))
    channel, stub = native_stub(caller)
    try:
        await stub.InvokeService(request(target_id, "m"))
    finally:
        await channel.close()
    _request, metadata, _deadline = app.calls[-1]
    assert metadata.get("dapr-api-token") == "app-secret"


# ---- TLS ----


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=l8 test CA",
    )
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
        )
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", "san.cnf")  # fmt: skip
    yield d


async def test_the_grpc_and_http_servers_serve_tls_and_with_a_client_ca_require_client_certificates(
    nats_server: Server, make_sidecar: SidecarFactory, pki: Path
) -> None:
    tls = {
        "cert_file": str(pki / "server.crt"),
        "key_file": str(pki / "server.key"),
        "client_ca_file": str(pki / "ca.crt"),
    }
    sidecar = await make_sidecar(
        sidecar_config(nats_server.url, STATE, server={"grpc": "127.0.0.1:0", "http": "127.0.0.1:0", "tls": tls})
    )
    assert sidecar.grpc is not None and sidecar.http is not None
    ca, cert, key = ((pki / n).read_bytes() for n in ("ca.crt", "client.crt", "client.key"))
    get = pb.GetStateRequest(store_name="statestore", key="k")
    address = f"127.0.0.1:{sidecar.grpc.port}"
    async with grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(ca, key, cert)) as channel:
        assert (await runtime_pb2_grpc.RuntimeStub(channel).GetState(get)).data == b""
    async with grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(ca)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await runtime_pb2_grpc.RuntimeStub(channel).GetState(get, timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await runtime_pb2_grpc.RuntimeStub(channel).GetState(get, timeout=5)
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
    assert await aget(sidecar.http.port, "/v1.0/healthz", context=context) == 204
    bare = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        await aget(sidecar.http.port, "/v1.0/healthz", context=bare)


# ---- the bus ----


def test_a_local_worker_joins_the_embedded_bus_with_the_credentials_of_its_data_dir(tmp_path: Path) -> None:
    port = free_port()
    data_dir = tmp_path / "data"
    config = {"app": {"id": unique("app")}, "data_dir": str(data_dir), "bus": {"url": "embedded", "port": port},
              "workers": "none", "components": STATE}  # fmt: skip
    with l8_running(config, cwd=tmp_path) as l8:
        creds = data_dir / "nats" / "credentials.json"
        assert creds.stat().st_mode & 0o777 == 0o600
        users = json.loads(creds.read_text())["users"]
        secrets = [u["password"] for u in users.values()]
        worker_cfg = {**config, "workers": "all"}
        (tmp_path / "worker.yaml").write_text(json.dumps(worker_cfg))
        proc, log_path = spawn(
            ["worker", "--config", str(tmp_path / "worker.yaml"), "--bus", f"nats://127.0.0.1:{port}"], tmp_path
        )
        try:
            with grpc.insecure_channel(l8.grpc_address) as channel:
                stub = runtime_pb2_grpc.RuntimeStub(channel)
                from tests.process import wait_until_served

                wait_until_served(
                    l8.grpc_address,
                    lambda ch: runtime_pb2_grpc.RuntimeStub(ch).GetState(
                        pb.GetStateRequest(store_name="statestore", key="a")
                    ),
                )
                stub.SaveState(pb.SaveStateRequest(store_name="statestore", states=[pb.StateItem(key="a", value=b"1")]))
        finally:
            stop_pid(proc)
        for secret in secrets:
            assert secret not in log_path.read_text() and secret not in l8.log()


@pytest.fixture(scope="module")
def secured_nats(tmp_path_factory: pytest.TempPathFactory, pki: Path) -> Iterator[dict[str, int]]:
    """Three nats-servers: one with user/password, one with a token, one with TLS verifying clients."""
    d = tmp_path_factory.mktemp("secured")
    confs = {
        "user": 'authorization { user: "svc", password: "pw-123" }',
        "token": 'authorization { token: "tok-456" }',
        "tls": f'tls {{ cert_file: "{pki}/server.crt", key_file: "{pki}/server.key", '
        f'ca_file: "{pki}/ca.crt", verify: true }}',
    }
    procs, ports = [], {}
    try:
        for name, conf in confs.items():
            port = free_port()
            (d / f"{name}.conf").write_text(conf + "\n")
            args = ["-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(d / name), "-c", str(d / f"{name}.conf")]
            proc = subprocess.Popen(
                [binary("nats-server"), *args],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            procs.append(proc)
            wait_port(port, proc=proc)
            ports[name] = port
        yield ports
    finally:
        for proc in procs:
            stop_pid(proc)


@pytest.mark.parametrize("kind", ["user", "token", "tls"])
def test_l8_reaches_an_external_bus_with_user_password_token_or_tls_client_certs_and_keeps_secrets_out_of_logs(
    secured_nats: dict[str, int], pki: Path, tmp_path: Path, kind: str
) -> None:
    port = secured_nats[kind]
    url = f"{'tls' if kind == 'tls' else 'nats'}://127.0.0.1:{port}"
    bus: dict[str, Any] = {"url": url, "connect_timeout": 5}
    secret = {"user": "pw-123", "token": "tok-456", "tls": "none"}[kind]
    if kind == "user":
        (tmp_path / "pw").write_text("pw-123")
        bus.update(user="svc", password_file=str(tmp_path / "pw"))
    elif kind == "token":
        (tmp_path / "tok").write_text("tok-456")
        bus["token_file"] = str(tmp_path / "tok")
    else:
        bus["tls"] = {
            "ca_file": str(pki / "ca.crt"),
            "cert_file": str(pki / "client.crt"),
            "key_file": str(pki / "client.key"),
        }
    config = {"app": {"id": unique("app")}, "namespace": unique("ns"), "bus": bus, "components": STATE}
    with l8_running(config, cwd=tmp_path) as l8, grpc.insecure_channel(l8.grpc_address) as channel:
        stub = runtime_pb2_grpc.RuntimeStub(channel)
        stub.SaveState(pb.SaveStateRequest(store_name="statestore", states=[pb.StateItem(key="a", value=b"1")]))
        assert stub.GetState(pb.GetStateRequest(store_name="statestore", key="a")).data == b"1"
        assert secret not in l8.log()
    # Without the credentials l8 is refused, and says where it tried, with no secret in the message.
    refused = {"app": {"id": unique("app")}, "bus": {"url": url, "connect_timeout": 2}, "components": STATE}
    l8 = start_l8(refused, cwd=tmp_path, wait=False)
    assert l8.proc.wait(60) == 1
    assert f"127.0.0.1:{port}" in l8.log() and "Traceback" not in l8.log()


def test_the_ready_line_redacts_credentials_in_bus_urls(secured_nats: dict[str, int], tmp_path: Path) -> None:
    url = f"nats://svc:pw-123@127.0.0.1:{secured_nats['user']}"
    config = {"app": {"id": unique("app")}, "namespace": unique("ns"), "bus": {"url": url}, "components": STATE}
    with l8_running(config, cwd=tmp_path) as l8:
        assert f"nats://***@127.0.0.1:{secured_nats['user']}" in l8.log()
        assert "pw-123" not in l8.log()


def test_l8_reaches_an_external_bus_with_an_nkey_seed_and_keeps_the_seed_out_of_logs(tmp_path: Path) -> None:
    import secrets as random

    import nkeys

    seed = nkeys.encode_seed(random.token_bytes(32), nkeys.PREFIX_BYTE_USER).decode()
    public = nkeys.from_seed(seed.encode()).public_key.decode()
    conf = tmp_path / "nkey.conf"
    conf.write_text(f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}\n')
    port = free_port()
    args = ["-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path / "js"), "-c", str(conf)]
    proc = subprocess.Popen([binary("nats-server"), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc=proc)
        (tmp_path / "seed").write_text(seed + "\n")
        url = f"nats://127.0.0.1:{port}"
        bus = {"url": url, "connect_timeout": 5, "nkey_seed_file": str(tmp_path / "seed")}
        config = {"app": {"id": unique("app")}, "namespace": unique("ns"), "bus": bus, "components": STATE}
        with l8_running(config, cwd=tmp_path) as l8, grpc.insecure_channel(l8.grpc_address) as channel:
            stub = runtime_pb2_grpc.RuntimeStub(channel)
            stub.SaveState(pb.SaveStateRequest(store_name="statestore", states=[pb.StateItem(key="a", value=b"n")]))
            assert stub.GetState(pb.GetStateRequest(store_name="statestore", key="a")).data == b"n"
            assert seed not in l8.log()
        # Another user's seed is refused.
        (tmp_path / "other").write_text(nkeys.encode_seed(random.token_bytes(32), nkeys.PREFIX_BYTE_USER).decode())
        refused = {**config, "bus": {**bus, "connect_timeout": 2, "nkey_seed_file": str(tmp_path / "other")}}
        l8 = start_l8(refused, cwd=tmp_path, wait=False)
        assert l8.proc.wait(60) == 1
        assert f"127.0.0.1:{port}" in l8.log() and "Traceback" not in l8.log()
    finally:
        stop_pid(proc)


def test_l8_reaches_an_operator_mode_bus_with_a_creds_file_and_keeps_its_seed_out_of_logs(tmp_path: Path) -> None:
    from tests.nats_jwt import Operator

    operator = Operator(tmp_path / "op")
    port = free_port()
    args = ["-a", "127.0.0.1", "-p", str(port), "-c", str(operator.conf)]
    proc = subprocess.Popen([binary("nats-server"), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc=proc)
        creds, seed = operator.creds("orders")
        bus = {"url": f"nats://127.0.0.1:{port}", "connect_timeout": 5, "creds_file": str(creds)}
        config = {"app": {"id": unique("app")}, "namespace": unique("ns"), "bus": bus, "components": STATE}
        with l8_running(config, cwd=tmp_path) as l8, grpc.insecure_channel(l8.grpc_address) as channel:
            stub = runtime_pb2_grpc.RuntimeStub(channel)
            stub.SaveState(pb.SaveStateRequest(store_name="statestore", states=[pb.StateItem(key="a", value=b"j")]))
            assert stub.GetState(pb.GetStateRequest(store_name="statestore", key="a")).data == b"j"
            assert seed not in l8.log() and creds.read_text().splitlines()[1] not in l8.log()
        # A user signed by an account the server does not know is refused.
        forged, _ = operator.creds("forged", signer=operator.stranger())
        refused = {**config, "bus": {**bus, "connect_timeout": 2, "creds_file": str(forged)}}
        l8 = start_l8(refused, cwd=tmp_path, wait=False)
        assert l8.proc.wait(60) == 1
        assert f"127.0.0.1:{port}" in l8.log() and "Traceback" not in l8.log()
    finally:
        stop_pid(proc)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_dapr_js_sdk_with_the_api_token_set_works(nats_server: Server, protocol: str) -> None:
    # Without it the SDK's start-up check of the sidecar (its metadata) is refused and it gives up
    # (DAPR_SIDECAR_COULD_NOT_BE_STARTED, after its own wait): refusals are tested above, directly.
    from tests.sdk_env import run_node

    with l8_running(state_config(nats_server), env={**os.environ, "DAPR_API_TOKEN": TOKEN}) as l8:
        ports = {"DAPR_HTTP_PORT": str(l8.http_port), "DAPR_GRPC_PORT": str(l8.grpc_port)}
        seen = run_node(l8, "dapr_client.js", protocol, "state", **ports, DAPR_API_TOKEN=TOKEN)
        assert seen["a"] == {"qty": 1}
