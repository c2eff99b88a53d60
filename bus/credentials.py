"""The users of the embedded bus: one per identity, kept in the data dir, readable by its owner only.

``<data dir>/nats/credentials.json`` (mode 0600) holds each user's password and permissions
(bus/permissions.py); the embedded nats-server's config file (0600 too) is made from it, so no
process without a user can read or write anything on the bus, and each user can reach only its
own subjects. Secrets never appear in a process's argv.

Each l8 process registers the user it connects as: ``l8 run`` its app's sidecar (``app/<ns>/<app>``),
a local ``l8 worker`` the namespace's worker (``worker/<ns>``), ``l8 subscriptions`` the reader
(``cli/<ns>``). Registering an existing user keeps its password and widens its permissions to
cover what the new process needs; when that changes the server's config, the caller has the
running server reload it (bus/embedded.py ``reload``). A lock file keeps concurrent
registrations from losing each other's users.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bus.auth import BusAuth
from bus.permissions import Permissions, server_users

FILE = "credentials.json"
CONF = "users.conf"  # included by the embedded server's nats-server.conf
_LOCK = ".credentials.lock"
# What a bare EmbeddedNats (no identities given: tests, benchmarks) lets its one user do.
ALL = Permissions(publish=(">",), subscribe=(">",))


def path_in(directory: Path) -> Path:
    return Path(directory) / FILE


def sidecar_user(ns: str, app: str) -> str:
    return f"app/{ns}/{app}"


def worker_user(ns: str) -> str:
    return f"worker/{ns}"


def cli_user(ns: str) -> str:
    return f"cli/{ns}"


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(Path(directory) / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _users(directory: Path) -> dict[str, dict[str, Any]]:
    try:
        raw = json.loads(path_in(directory).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise OSError(f"cannot read the bus credentials in {path_in(directory)}: {exc}") from None
    users = raw.get("users") if isinstance(raw, dict) else None
    return users if isinstance(users, dict) else {}  # an earlier single-user file: made anew


def read(directory: Path, user: str) -> BusAuth | None:
    """The credentials of ``user`` kept in ``directory``, or None when it has none."""
    entry = _users(Path(directory)).get(user)
    if entry is None:
        return None
    return BusAuth(user=user, password=str(entry["password"]))


def exists(directory: Path) -> bool:
    return path_in(directory).exists()


def register(directory: Path, user: str, permissions: Permissions) -> tuple[BusAuth, bool]:
    """``user``'s credentials, made now if it has none, with at least ``permissions``; and whether
    the server's config changed (a running server must then reload it)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory):
        users = _users(directory)
        entry = users.get(user)
        changed = False
        if entry is None:
            entry = {"password": secrets.token_urlsafe(32), "permissions": permissions.to_json()}
            changed = True
        else:
            wider = (Permissions.from_json(entry.get("permissions", {})) | permissions).to_json()
            if wider != entry.get("permissions"):
                entry["permissions"] = wider
                changed = True
        users[user] = entry
        conf = directory / CONF
        if changed or not conf.exists():
            write_private(path_in(directory), json.dumps({"users": users}, indent=1))
            write_private(conf, server_config(users))
            changed = True
        else:
            os.chmod(path_in(directory), 0o600)
        return BusAuth(user=user, password=str(entry["password"])), changed


def server_config(users: dict[str, dict[str, Any]]) -> str:
    """The nats-server config that admits exactly these users, each with its permissions."""
    return server_users(
        (name, str(entry["password"]), Permissions.from_json(entry.get("permissions", {})))
        for name, entry in sorted(users.items())
    )


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner can read, created that way (never world-readable)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)
