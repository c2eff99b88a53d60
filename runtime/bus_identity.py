"""Who an l8 process is on the bus: its user, its permissions and its reply inboxes.

A sidecar is its app (``app/<ns>/<app>`` on the embedded bus), a worker (and ``l8 wasm``) is its
namespace's worker, ``l8 subscriptions`` is the reader of the registry; a sidecar with in-process
handlers is a worker too (bus/permissions.py). How a process gets its credentials:

- ``l8 run`` with the embedded bus registers its own user, the namespace's worker and reader in the
  data dir before the server starts, so the server admits exactly them (bus/credentials.py).
- A process on a loopback bus whose data dir holds the embedded bus's credentials (a local
  ``l8 worker``, a second app's ``l8 run --bus nats://127.0.0.1:…``, the CLI) registers its own user
  there and has the server reload its config, then waits until the server admits it.
- On any other bus the process presents what ``bus.*`` configures (a user per app, made by the
  operator from ``l8 nats-users``; docs/security.md).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import nats
import nats.errors

from bus import BusAuth, credentials, permissions, subjects
from bus.embedded import reload
from bus.errors import BusUnreachable
from bus.permissions import Permissions
from runtime.config import API_NAMES, Config

SIDECAR, WORKER, CLI = "sidecar", "worker", "cli"


@dataclass(frozen=True, slots=True)
class Identity:
    user: str  # its user on the embedded bus
    permissions: Permissions
    inbox: str  # nats-py's inbox_prefix


def of(config: Config, role: str, apis: Sequence[str] = ()) -> Identity:
    """The identity of a process of ``role`` that runs the handlers of ``apis``."""
    ns = config.namespace
    if role == CLI:
        return Identity(credentials.cli_user(ns), permissions.cli(ns), subjects.inbox_prefix(subjects.CLI, ns))
    worker = permissions.worker(ns, bindings_subjects(config))
    if role == WORKER:
        return Identity(credentials.worker_user(ns), worker, subjects.inbox_prefix(subjects.WORKER, ns))
    app = config.app.id
    ids = [app, *(f.name for f in config.functions)]
    perms = permissions.sidecar(ns, ids, API_NAMES)
    if apis:
        perms |= worker
    return Identity(credentials.sidecar_user(ns, app), perms, subjects.inbox_prefix(subjects.SIDECAR, ns, app))


def bindings_subjects(config: Config) -> list[str]:
    """The subjects of NATS bindings on the bus's own server: its workers publish there (output)
    and read them (input)."""
    return [
        c.metadata["subject"]
        for c in config.components_of("bindings").values()
        if c.type == "nats" and not c.metadata.get("url") and c.metadata.get("subject")
    ]


def embedded_users(config: Config, own: Identity) -> list[tuple[str, Permissions]]:
    """What the owner of the embedded bus registers before the server starts: itself, then the
    namespace's worker and reader, so local workers and the CLI find their users there."""
    users = [(own.user, own.permissions)]
    for role in (WORKER, CLI):
        other = of(config, role)
        if other.user != own.user:
            users.append((other.user, other.permissions))
    return users


def data_dir_bus(config: Config) -> Path:
    return Path(config.data_dir) / "nats"


async def auth_for(config: Config, identity: Identity, servers: Sequence[str]) -> BusAuth:
    """The credentials to present on ``servers`` (a bus this process does not own)."""
    auth = config.bus.auth()
    directory = data_dir_bus(config)
    if config.bus.has_auth or not loopback(servers) or not credentials.exists(directory):
        return auth
    own, changed = credentials.register(directory, identity.user, identity.permissions)
    auth = replace(auth, user=own.user, password=own.password)
    if changed and reload(directory):
        await wait_admitted(servers, auth, config.bus.connect_timeout)
    return auth


async def wait_admitted(servers: Sequence[str], auth: BusAuth, timeout: float) -> None:
    """Wait until the server, reloading its config, lets ``auth`` in (it applies a reload soon
    after the signal, not before the signal returns)."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    last = ""
    while True:
        try:
            nc = await nats.connect(
                servers=list(servers),
                connect_timeout=1,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                **auth.connect_options(),
            )
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            last = str(exc) or type(exc).__name__
        else:
            await nc.close()
            return
        if time.monotonic() + delay > deadline:
            raise BusUnreachable(f"the embedded bus did not admit user {auth.user} within {timeout:g}s: {last}")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


def loopback(servers: Iterable[str]) -> bool:
    found = False
    for url in servers:
        found = True
        host = urlsplit(url).hostname or ""
        if host == "localhost":
            continue
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return False
        except ValueError:
            return False
    return found


def render_users(
    config: Config,
    *,
    sidecars: Sequence[str] = (),
    sidecars_with_workers: Sequence[str] = (),
    workers: Sequence[str] = (),
    readers: Sequence[str] = (),
) -> str:
    """A nats-server ``authorization`` block for an external bus: one user per app's sidecars
    (named as the app), per worker and per reader, each password a reference to the server's
    environment (``$L8_PASSWORD_<USER>``), so no secret goes into the file."""
    users: list[tuple[str, str, Permissions]] = []

    def password(user: str) -> str:
        return "$L8_PASSWORD_" + "".join(c if c.isalnum() else "_" for c in user).upper()

    for app in (*sidecars, *sidecars_with_workers):
        cfg = config.model_copy(update={"app": config.app.model_copy(update={"id": app}), "functions": []})
        ident = of(cfg, SIDECAR, API_NAMES if app in sidecars_with_workers else ())
        users.append((app, password(app), ident.permissions))
    users += [(name, password(name), of(config, WORKER).permissions) for name in workers]
    users += [(name, password(name), of(config, CLI).permissions) for name in readers]
    return permissions.server_users(users)
