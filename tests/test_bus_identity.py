"""The bus enforces who is who: a sidecar's NATS user may publish only requests that name its own app
as the caller, read only its own inboxes, invocations and events, and touch no KV or stream subject.
Every forgery below comes from another app's real user on the embedded bus (registered the way a
second `l8 run` registers itself) and is refused by nats-server, with no effect on the victim."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest

from bus import subjects
from bus.sync import server_has_seen
from handlers.proto import runtime_pb2 as pb
from runtime import bus_identity
from runtime.config import Config, load_config
from runtime.sidecar import Sidecar
from tests.conftest import native_stub, unique
from tests.servers import binary, free_port, stop_pid, wait_port

SECURE = Path(__file__).parent.parent / "configs" / "secure.yaml"
STATE = {"statestore": {"kind": "state", "type": "nats.kv"}, "pubsub": {"kind": "pubsub", "type": "nats.jetstream"}}


@dataclass
class Setup:
    victim: Sidecar  # app "victim" with the embedded bus and every handler
    ns: str
    url: str
    config: Config  # the forger's: another app on the same data dir, no handlers


def config(data_dir: Path, ns: str, app: str, **extra: Any) -> Config:
    return Config.model_validate(
        {
            "app": {"id": app},
            "namespace": ns,
            "data_dir": str(data_dir),
            "server": {"grpc": "127.0.0.1:0", "http": "127.0.0.1:0"},
            "components": STATE,
            **extra,
        }
    )


@pytest.fixture(scope="module")
async def setup(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    data_dir = tmp_path_factory.mktemp("identity")
    ns = unique("ns")
    victim = Sidecar(config(data_dir, ns, "victim"))
    await victim.start()
    assert victim.embedded is not None
    url = victim.embedded.url
    forger = config(data_dir, ns, "forger", bus={"url": url}, workers="none")
    try:
        yield Setup(victim, ns, url, forger)
    finally:
        await victim.stop()


class Conn:
    """A raw nats-py connection as one user, recording what the server refuses."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: Any = None

    async def open(self, url: str, identity: bus_identity.Identity, auth: Any) -> Conn:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        self.nc = await nats.connect(
            servers=[url], inbox_prefix=identity.inbox, error_cb=on_error, **auth.connect_options()
        )
        return self

    async def refused(self, what: str) -> None:
        """Wait (with a generous bound) until the server has refused ``what``."""
        deadline = time.monotonic() + 20
        while not any("permissions violation" in e.lower() and what.lower() in e.lower() for e in self.errors):
            assert time.monotonic() < deadline, f"the server did not refuse {what}: {self.errors}"
            await self.nc.flush()
            await asyncio.sleep(0.02)


@pytest.fixture
async def forger(setup: Setup) -> AsyncIterator[tuple[Conn, bus_identity.Identity]]:
    identity = bus_identity.of(setup.config, bus_identity.SIDECAR)
    auth = await bus_identity.auth_for(setup.config, identity, [setup.url])
    assert auth.user == "app/" + setup.ns + "/forger"
    conn = await Conn().open(setup.url, identity, auth)
    try:
        yield conn, identity
    finally:
        await conn.nc.close()


def save(key: str, value: bytes) -> bytes:
    return pb.SaveStateRequest(store_name="statestore", states=[pb.StateItem(key=key, value=value)]).SerializeToString()


async def victim_value(setup: Setup, key: str) -> bytes:
    channel, stub = native_stub(setup.victim)
    try:
        data: bytes = (await stub.GetState(pb.GetStateRequest(store_name="statestore", key=key))).data
        return data
    finally:
        await channel.close()


async def victim_saves(setup: Setup, key: str, value: bytes) -> None:
    channel, stub = native_stub(setup.victim)
    try:
        await stub.SaveState(pb.SaveStateRequest(store_name="statestore", states=[pb.StateItem(key=key, value=value)]))
    finally:
        await channel.close()


async def test_a_sidecar_on_the_embedded_bus_acts_as_its_own_app_and_a_request_as_another_app_is_refused(
    setup: Setup, forger: tuple[Conn, bus_identity.Identity]
) -> None:
    conn, _identity = forger
    ns = setup.ns
    await victim_saves(setup, "precious", b"victim's")
    # As itself the forger is served: its own requests are answered by the victim's workers.
    own = subjects.request_subject(ns, "state", "statestore", "save", "forger")
    reply = await conn.nc.request(own, save("k", b"1"))
    assert not (reply.headers or {}).get("l8-code")
    # As the victim it is refused by the server, whatever the op.
    as_victim = subjects.request_subject(ns, "state", "statestore", "save", "victim")
    await conn.nc.publish(as_victim, save("precious", b"forged"), reply=conn.nc.new_inbox())
    await conn.refused(as_victim)
    get_as_victim = subjects.request_subject(ns, "state", "statestore", "get", "victim")
    with pytest.raises(nats.errors.TimeoutError):
        get = pb.GetStateRequest(store_name="statestore", key="precious").SerializeToString()
        await conn.nc.request(get_as_victim, get, timeout=1)
    await conn.refused(get_as_victim)
    announce = subjects.request_subject(ns, "pubsub", "pubsub", "announce", "victim")
    await conn.nc.publish(announce, b'{"instance": "x", "specs": []}')
    await conn.refused(announce)
    invoke_as_victim = subjects.invoke_subject(ns, "forger", "victim")
    await conn.nc.publish(invoke_as_victim, b"")
    await conn.refused(invoke_as_victim)
    assert await victim_value(setup, "precious") == b"victim's"


async def test_another_apps_invocations_events_and_replies_cannot_be_read_nor_its_events_forged(
    setup: Setup, forger: tuple[Conn, bus_identity.Identity]
) -> None:
    conn, identity = forger
    ns = setup.ns

    async def ignore(msg: Any) -> None:
        raise AssertionError(f"the forger received {msg.subject}")

    for subject, queue in (
        (subjects.invoke_wildcard(ns, "victim"), subjects.invoke_queue(ns, "victim")),
        (subjects.event_stem(ns, "victim") + ".>", ""),
        (subjects.event_stem(ns, "victim", "stream") + ".>", ""),
        (subjects.inbox_prefix(subjects.SIDECAR, ns, "victim") + ".>", ""),
        (subjects.inbox_prefix(subjects.WORKER, ns) + ".>", ""),
        ("_INBOX.>", ""),
        (subjects.request_wildcard(ns, "state", "statestore"), subjects.queue_group(ns, "state", "statestore")),
    ):
        await conn.nc.subscribe(subject, queue=queue, cb=ignore)
        await conn.refused(subject)
    fake_event = subjects.event_subject(ns, "victim", "pubsub", "orders")
    await conn.nc.publish(fake_event, b'{"specversion": "1.0"}')
    await conn.refused(fake_event)
    # Its own are open to it.
    queue = subjects.invoke_queue(ns, "forger")
    await conn.nc.subscribe(subjects.invoke_wildcard(ns, "forger"), queue=queue, cb=ignore)
    await conn.nc.subscribe(f"{identity.inbox}.x.>", cb=ignore)
    before = len(conn.errors)
    await server_has_seen(conn.nc)
    assert conn.errors[before:] == []


async def test_the_kv_and_stream_apis_are_closed_to_a_sidecar(
    setup: Setup, forger: tuple[Conn, bus_identity.Identity]
) -> None:
    conn, _identity = forger
    bucket = f"l8_{setup.ns}_statestore"
    for subject in (
        f"$JS.API.STREAM.INFO.KV_{bucket}",
        f"$JS.API.DIRECT.GET.KV_{bucket}",
        f"$KV.{bucket}.victim||precious",
        "$JS.API.STREAM.NAMES",
        f"$JS.API.STREAM.DELETE.KV_l8_{setup.ns}_subscriptions",
        f"$O.l8_{setup.ns}_wasm.C.x",
    ):
        await conn.nc.publish(subject, b"{}", reply=conn.nc.new_inbox())
        await conn.refused(subject)

    async def ignore(msg: Any) -> None:
        raise AssertionError(f"the forger received {msg.subject}")

    await conn.nc.subscribe("$KV.>", cb=ignore)
    await conn.refused("$KV.>")


async def test_a_request_whose_reply_subject_is_not_an_inbox_gets_no_answer(
    setup: Setup, forger: tuple[Conn, bus_identity.Identity], caplog: pytest.LogCaptureFixture
) -> None:
    # The reply would go out under the worker's rights: to a request subject naming the victim as
    # the caller, it would be a request as the victim. So the worker host answers inboxes only.
    conn, _identity = forger
    ns = setup.ns
    await victim_saves(setup, "kept", b"1")
    deputy = subjects.request_subject(ns, "state", "statestore", "delete", "victim")
    with caplog.at_level(logging.DEBUG, logger="l8.bus.worker"):
        await conn.nc.publish(
            subjects.request_subject(ns, "state", "statestore", "get", "forger"),
            pb.GetStateRequest(store_name="statestore", key="kept").SerializeToString(),
            reply=deputy,
        )
        deadline = time.monotonic() + 20
        while not any("not an inbox" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the worker host did not refuse the reply subject"
            await asyncio.sleep(0.02)
    assert await victim_value(setup, "kept") == b"1"


async def test_a_second_app_joins_the_embedded_bus_with_a_user_of_its_own_and_the_server_reloads(
    setup: Setup,
) -> None:
    joined = Sidecar(setup.config)
    await joined.start()
    try:
        channel, stub = native_stub(joined)
        try:
            await stub.SaveState(
                pb.SaveStateRequest(store_name="statestore", states=[pb.StateItem(key="j", value=b"joined")])
            )
            assert (await stub.GetState(pb.GetStateRequest(store_name="statestore", key="j"))).data == b"joined"
        finally:
            await channel.close()
        # Its keys are its own: the victim's key of the same name is another key.
        assert await victim_value(setup, "j") == b""
    finally:
        await joined.stop()
    # A third app registering now reloads the server, and the second one is still admitted.
    third = setup.config.model_copy(update={"app": setup.config.app.model_copy(update={"id": unique("third")})})
    identity = bus_identity.of(third, bus_identity.SIDECAR)
    auth = await bus_identity.auth_for(third, identity, [setup.url])
    conn = await Conn().open(setup.url, identity, auth)
    await conn.nc.close()


def test_on_an_external_server_set_up_with_l8_nats_users_an_app_acts_as_itself_only(tmp_path: Path) -> None:
    ns = unique("ns")
    users = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "nats-users", "--namespace", ns, "--sidecar", "orders",
         "--sidecar", "payments", "--worker", "workers"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "pw-" not in users  # passwords stay in the server's environment
    conf = tmp_path / "nats.conf"
    conf.write_text(f"jetstream {{ store_dir: {json.dumps(str(tmp_path / 'js'))} }}\n{users}")
    passwords = {"orders": "pw-orders", "payments": "pw-payments", "workers": "pw-workers"}
    env = {**os.environ, **{f"L8_PASSWORD_{u.upper()}": p for u, p in passwords.items()}}
    port = free_port()
    proc = subprocess.Popen(
        [binary("nats-server"), "-a", "127.0.0.1", "-p", str(port), "-c", str(conf)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        wait_port(port, proc=proc)
        for user, password in passwords.items():
            (tmp_path / user).write_text(password)
        asyncio.run(_external(f"nats://127.0.0.1:{port}", ns, tmp_path))
    finally:
        stop_pid(proc)


def _secure(url: str, ns: str, tmp_path: Path, user: str, **extra: Any) -> Config:
    overrides = {
        "app": {"id": "orders"},
        "namespace": ns,
        "data_dir": str(tmp_path / "data"),
        "bus": {"url": url, "user": user, "password_file": str(tmp_path / user)},
        "server": {"grpc": "127.0.0.1:0", "http": "127.0.0.1:0", "api_token_file": None},
        **extra,
    }
    return load_config(SECURE, overrides)


async def _external(url: str, ns: str, tmp_path: Path) -> None:
    worker = Sidecar(_secure(url, ns, tmp_path, "workers", workers="state,lock,pubsub"), serve=False)
    orders = Sidecar(_secure(url, ns, tmp_path, "orders"))
    await worker.start()
    await orders.start()
    try:
        channel, stub = native_stub(orders)
        try:
            item = pb.StateItem(key="k", value=b"o")
            await stub.SaveState(pb.SaveStateRequest(store_name="statestore", states=[item]))
            assert (await stub.GetState(pb.GetStateRequest(store_name="statestore", key="k"))).data == b"o"
        finally:
            await channel.close()
        payments = _secure(url, ns, tmp_path, "payments", app={"id": "payments"}, workers="none")
        identity = bus_identity.of(payments, bus_identity.SIDECAR)
        conn = await Conn().open(url, identity, payments.bus.auth())
        try:
            as_orders = subjects.request_subject(ns, "state", "statestore", "save", "orders")
            await conn.nc.publish(as_orders, save("k", b"forged"), reply=conn.nc.new_inbox())
            await conn.refused(as_orders)
            await conn.nc.publish(f"$JS.API.STREAM.INFO.KV_l8_{ns}_statestore", b"", reply=conn.nc.new_inbox())
            await conn.refused("$JS.API.STREAM.INFO")
            own = subjects.request_subject(ns, "state", "statestore", "save", "payments")
            reply = await conn.nc.request(own, save("k", b"p"), timeout=10)
            assert not (reply.headers or {}).get("l8-code")
        finally:
            await conn.nc.close()
        channel, stub = native_stub(orders)
        try:
            assert (await stub.GetState(pb.GetStateRequest(store_name="statestore", key="k"))).data == b"o"
        finally:
            await channel.close()
    finally:
        await orders.stop()
        await worker.stop()
