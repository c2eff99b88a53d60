"""One conformance suite for the Secrets API (native and Dapr rpcs) against every store: environment
variables and a local file; then each store's own rules, and secret references in component metadata."""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from dapr.proto.runtime.v1 import dapr_pb2_grpc
from dapr.proto.runtime.v1 import secret_pb2 as dapr_secret

from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc
from runtime.components import ComponentError
from runtime.config import Config
from runtime.sidecar import Sidecar
from tests.conftest import SidecarFactory, native_stub, sidecar_config, unique
from tests.servers import Server

BRIDGES = ["env", "local.file"]
STORE = "vault"


@pytest.fixture
def prefix() -> Iterator[str]:
    """A prefix no other variable of this process has; its variables are removed afterwards."""
    prefix = f"L8T{uuid.uuid4().hex[:6].upper()}_"
    yield prefix
    for name in [n for n in os.environ if n.startswith(prefix)]:
        del os.environ[name]


def store_component(
    bridge: str, secrets: dict[str, str], tmp_path: Path, prefix: str, **metadata: str
) -> dict[str, Any]:
    meta = dict(metadata)
    if bridge == "env":
        os.environ.update(secrets)
        meta["prefixes"] = prefix
    else:
        path = tmp_path / f"secrets-{uuid.uuid4().hex[:6]}.json"
        path.write_text(json.dumps(secrets))
        meta["secretsFile"] = str(path)
    return {"kind": "secrets", "type": bridge, "metadata": meta}


@dataclass
class Env:
    sidecars: list[Sidecar]
    stubs: list[runtime_pb2_grpc.RuntimeStub]
    names: dict[str, str]  # short name -> the secret's full name


@pytest.fixture(params=BRIDGES)
async def env(
    request: pytest.FixtureRequest, nats_server: Server, make_sidecar: SidecarFactory, tmp_path: Path, prefix: str
) -> AsyncIterator[Env]:
    """Two sidecars of two apps on one bus, sharing a store; app ``b`` is scoped to two secrets."""
    names = {k: f"{prefix}{k.upper()}" for k in ("db", "api", "denied", "other")}
    secrets = {names["db"]: "db-pass-1", names["api"]: "api-key-2", names["denied"]: "no", names["other"]: "o-3"}
    ns, app_b = unique("ns"), unique("b")
    scope = {
        "deniedSecrets": names["denied"],
        f"scopes.{app_b}.defaultAccess": "deny",
        f"scopes.{app_b}.allowedSecrets": f"{names['db']}, {names['api']}",
    }
    components = {STORE: store_component(request.param, secrets, tmp_path, prefix, **scope)}
    sidecars = [
        await make_sidecar(sidecar_config(nats_server.url, components, namespace=ns, app_id=app))
        for app in (unique("a"), app_b)
    ]
    pairs = [native_stub(s) for s in sidecars]
    yield Env(sidecars, [stub for _, stub in pairs], names)
    for channel, _ in pairs:
        await channel.close()


async def error_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


async def test_get_secret_answers_the_value_under_its_name(env: Env) -> None:
    got = await env.stubs[0].GetSecret(pb.GetSecretRequest(store_name=STORE, key=env.names["db"]))
    assert dict(got.data) == {env.names["db"]: "db-pass-1"}


async def test_a_missing_secret_is_not_found_naming_it(env: Env) -> None:
    code, message = await error_of(env.stubs[0].GetSecret(pb.GetSecretRequest(store_name=STORE, key="NOPE_1")))
    assert code is grpc.StatusCode.NOT_FOUND and "NOPE_1" in message


async def test_bulk_answers_every_secret_the_app_may_read(env: Env) -> None:
    everything = await env.stubs[0].GetBulkSecret(pb.GetBulkSecretRequest(store_name=STORE))
    assert {k: dict(v.secrets) for k, v in everything.data.items()} == {
        env.names["db"]: {env.names["db"]: "db-pass-1"},
        env.names["api"]: {env.names["api"]: "api-key-2"},
        env.names["other"]: {env.names["other"]: "o-3"},
    }, "the store-wide deniedSecrets leaves one out"
    scoped = await env.stubs[1].GetBulkSecret(pb.GetBulkSecretRequest(store_name=STORE))
    assert sorted(scoped.data) == sorted([env.names["db"], env.names["api"]])


async def test_per_app_scopes_deny_what_they_do_not_allow(env: Env) -> None:
    a, b = env.stubs
    assert (await a.GetSecret(pb.GetSecretRequest(store_name=STORE, key=env.names["other"]))).data
    code, message = await error_of(b.GetSecret(pb.GetSecretRequest(store_name=STORE, key=env.names["other"])))
    assert code is grpc.StatusCode.PERMISSION_DENIED and env.names["other"] in message and "o-3" not in message
    for stub in (a, b):
        code, _ = await error_of(stub.GetSecret(pb.GetSecretRequest(store_name=STORE, key=env.names["denied"])))
        assert code is grpc.StatusCode.PERMISSION_DENIED
    assert (await b.GetSecret(pb.GetSecretRequest(store_name=STORE, key=env.names["api"]))).data


async def test_the_dapr_rpcs_answer_as_the_native_ones(env: Env) -> None:
    assert env.sidecars[0].grpc is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{env.sidecars[0].grpc.port}") as channel:
        dapr = dapr_pb2_grpc.DaprStub(channel)
        got = await dapr.GetSecret(dapr_secret.GetSecretRequest(store_name=STORE, key=env.names["api"]))
        assert dict(got.data) == {env.names["api"]: "api-key-2"}
        bulk = await dapr.GetBulkSecret(dapr_secret.GetBulkSecretRequest(store_name=STORE))
        assert dict(bulk.data[env.names["db"]].secrets) == {env.names["db"]: "db-pass-1"}


async def test_bad_requests_are_invalid_argument(env: Env) -> None:
    stub = env.stubs[0]
    for store in ("", "missing"):
        code, message = await error_of(stub.GetSecret(pb.GetSecretRequest(store_name=store, key="k")))
        assert code is grpc.StatusCode.INVALID_ARGUMENT and f"configured: {STORE}" in message
        code, _ = await error_of(stub.GetBulkSecret(pb.GetBulkSecretRequest(store_name=store)))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
    for key, why in (("", "empty"), ("k" * 600, "over 512"), ("a\nb", "control")):
        code, message = await error_of(stub.GetSecret(pb.GetSecretRequest(store_name=STORE, key=key)))
        assert code is grpc.StatusCode.INVALID_ARGUMENT and why in message and len(message) < 300
    code, _ = await error_of(
        stub.GetSecret(pb.GetSecretRequest(store_name=STORE, key="k", metadata={f"m{i}": "v" for i in range(100)}))
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT


# ---- each store's own rules ----


async def test_the_env_store_serves_only_its_prefixes_and_keeps_names_whole(
    nats_server: Server, make_sidecar: SidecarFactory, prefix: str
) -> None:
    os.environ[f"{prefix}TOKEN"] = "t0ken"
    sidecar = await make_sidecar(
        sidecar_config(
            nats_server.url, {STORE: {"kind": "secrets", "type": "env", "metadata": {"prefixes": f"X_, {prefix}"}}}
        )
    )
    channel, stub = native_stub(sidecar)
    async with channel:
        got = await stub.GetSecret(pb.GetSecretRequest(store_name=STORE, key=f"{prefix}TOKEN"))
        assert dict(got.data) == {f"{prefix}TOKEN": "t0ken"}
        code, _ = await error_of(stub.GetSecret(pb.GetSecretRequest(store_name=STORE, key="PATH")))
        assert code is grpc.StatusCode.NOT_FOUND, "PATH exists but lies outside the prefixes"
        bulk = await stub.GetBulkSecret(pb.GetBulkSecretRequest(store_name=STORE))
        assert all(k.startswith((prefix, "X_")) for k in bulk.data) and f"{prefix}TOKEN" in bulk.data


async def test_an_env_store_without_prefixes_is_refused_at_start(
    nats_server: Server, make_sidecar: SidecarFactory
) -> None:
    with pytest.raises(ComponentError, match="prefixes is empty"):
        await make_sidecar(sidecar_config(nats_server.url, {STORE: {"kind": "secrets", "type": "env"}}))


@pytest.mark.parametrize(
    ("filename", "text", "separator"),
    [
        ("s.json", '{"db": {"user": "u", "password": "p@ss"}, "hosts": ["h1", "h2"], "port": 5432, "tls": true}', ""),
        ("s.yaml", "db:\n  user: u\n  password: p@ss\nhosts: [h1, h2]\nport: 5432\ntls: true\n", ""),
        ("s.yml", "db:\n  user: u\n  password: p@ss\nhosts: [h1, h2]\nport: 5432\ntls: true\n", "."),
    ],
)
async def test_the_local_file_store_flattens_nested_keys_with_its_separator(
    nats_server: Server, make_sidecar: SidecarFactory, tmp_path: Path, filename: str, text: str, separator: str
) -> None:
    (tmp_path / filename).write_text(text)
    metadata = {"secretsFile": str(tmp_path / filename)}
    if separator:
        metadata["nestedSeparator"] = separator
    sidecar = await make_sidecar(
        sidecar_config(nats_server.url, {STORE: {"kind": "secrets", "type": "local.file", "metadata": metadata}})
    )
    sep = separator or ":"
    channel, stub = native_stub(sidecar)
    async with channel:
        bulk = await stub.GetBulkSecret(pb.GetBulkSecretRequest(store_name=STORE))
        assert {k: v.secrets[k] for k, v in bulk.data.items()} == {
            f"db{sep}user": "u",
            f"db{sep}password": "p@ss",
            f"hosts{sep}0": "h1",
            f"hosts{sep}1": "h2",
            "port": "5432",
            "tls": "true",
        }


async def test_a_malformed_secrets_file_stops_the_component_without_quoting_it(
    nats_server: Server, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    for name, text in (("bad.json", '{"a": "hunter2-secret" "b"}'), ("bad.yaml", "a: hunter2-secret\n b: [\n")):
        (tmp_path / name).write_text(text)
        metadata = {"secretsFile": str(tmp_path / name)}
        with pytest.raises(ComponentError) as info:
            await make_sidecar(
                sidecar_config(
                    nats_server.url, {STORE: {"kind": "secrets", "type": "local.file", "metadata": metadata}}
                )
            )
        assert "line" in str(info.value) and "hunter2" not in str(info.value)
    with pytest.raises(ComponentError, match="cannot read it"):
        await make_sidecar(
            sidecar_config(
                nats_server.url,
                {STORE: {"kind": "secrets", "type": "local.file", "metadata": {"secretsFile": str(tmp_path / "no")}}},
            )
        )


# ---- secret references in component metadata ----


def redis_with_secret_url(redis_url: str, tmp_path: Path, **ref: Any) -> dict[str, Any]:
    (tmp_path / "s.yaml").write_text(json.dumps({"redis": {"url": redis_url}, "plain": redis_url}))
    return {
        "vault": {"kind": "secrets", "type": "local.file", "metadata": {"secretsFile": str(tmp_path / "s.yaml")}},
        "cache": {
            "kind": "state",
            "type": "redis",
            "metadata": {"url": ref or {"secretKeyRef": {"name": "redis:url"}}},
        },
    }


@pytest.mark.redis
@pytest.mark.parametrize("ref", [{"secretKeyRef": {"name": "redis:url"}}, {"secretRef": "plain"}])
async def test_a_metadata_value_from_a_secret_is_resolved_at_start(
    nats_server: Server, redis_server: Server, make_sidecar: SidecarFactory, tmp_path: Path, ref: dict[str, Any]
) -> None:
    components = redis_with_secret_url(f"redis://127.0.0.1:{redis_server.port}", tmp_path)
    components["cache"]["metadata"]["url"] = ref
    sidecar = await make_sidecar(sidecar_config(nats_server.url, components))
    channel, stub = native_stub(sidecar)
    async with channel:
        await stub.SaveState(pb.SaveStateRequest(store_name="cache", states=[pb.StateItem(key="k", value=b"v")]))
        assert (await stub.GetState(pb.GetStateRequest(store_name="cache", key="k"))).data == b"v"


async def test_a_component_that_fails_with_a_secret_never_shows_it_in_errors_health_or_logs(
    nats_server: Server, make_sidecar: SidecarFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret_url = "redis://:Sup3r-S3cret-Pw@127.0.0.1:1/0"  # nothing listens on port 1
    config = sidecar_config(nats_server.url, redis_with_secret_url(secret_url, tmp_path))
    caplog.set_level(logging.DEBUG)
    sidecar = Sidecar(config)
    try:
        with pytest.raises(ComponentError) as info:
            await sidecar.start()
    finally:
        await sidecar.stop()
    assert "***" in str(info.value) and "Sup3r-S3cret-Pw" not in str(info.value)
    assert "Sup3r-S3cret-Pw" not in json.dumps(sidecar.health.report())
    assert "Sup3r-S3cret-Pw" not in caplog.text
    assert "Sup3r-S3cret-Pw" not in config.model_dump_json(), "the config holds the reference, not the value"


async def test_a_reference_to_a_missing_secret_stops_start_naming_the_field(
    nats_server: Server, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    components = redis_with_secret_url("redis://x", tmp_path)
    components["cache"]["metadata"]["url"] = {"secretKeyRef": {"name": "nope"}}
    with pytest.raises(ComponentError, match="metadata url: secret store 'vault' has no secret 'nope'"):
        await make_sidecar(sidecar_config(nats_server.url, components))


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ({"secretKeyRef": {"name": "x", "store": "elsewhere"}}, "'elsewhere' is not a configured secret store"),
        ({"secretKeyRef": {"key": "x"}}, "name"),
        ({"somethingElse": {"name": "x"}}, "secretKeyRef"),
        ({"secretRef": {"name": "x", "key": "y"}}, "use secretKeyRef"),
    ],
)
def test_a_bad_secret_reference_is_a_config_error_naming_the_field(value: dict[str, Any], why: str) -> None:
    from pydantic import ValidationError

    raw = {
        "components": {
            "vault": {"kind": "secrets", "type": "env", "metadata": {"prefixes": "A_"}},
            "cache": {"kind": "state", "type": "redis", "metadata": {"url": value}},
        }
    }
    with pytest.raises(ValidationError) as info:
        Config.model_validate(raw)
    assert why in str(info.value) and "url" in str(info.value)


def test_a_reference_without_a_store_needs_exactly_one_secret_store() -> None:
    from pydantic import ValidationError

    stores = {n: {"kind": "secrets", "type": "env", "metadata": {"prefixes": "A_"}} for n in ("one", "two")}
    raw = {
        "components": {**stores, "cache": {"kind": "state", "type": "redis", "metadata": {"url": {"secretRef": "u"}}}}
    }
    with pytest.raises(ValidationError, match="say which secret store"):
        Config.model_validate(raw)
