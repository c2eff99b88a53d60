"""Credentials of the embedded bus: generated once per data dir, readable by its owner only.

``l8 run`` creates ``<data dir>/nats/credentials.json`` (mode 0600) on its first start and hands
the embedded nats-server a config file (0600 too) that requires them, so no process without
them can read or write anything on the bus; the secret never appears in a process's argv. A
local ``l8 worker`` with the same data dir reads the file and joins.

Part of the design for per-app identities (docs/security.md): the file will hold one user per
role, each with the permissions of its subjects.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from bus.auth import BusAuth

FILE = "credentials.json"
USER = "l8"


def path_in(directory: Path) -> Path:
    return Path(directory) / FILE


def read(directory: Path) -> BusAuth | None:
    """The credentials kept in ``directory``, or None when there are none."""
    try:
        raw = json.loads(path_in(directory).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise OSError(f"cannot read the bus credentials in {path_in(directory)}: {exc}") from None
    return BusAuth(user=str(raw["user"]), password=str(raw["password"]))


def load_or_create(directory: Path) -> BusAuth:
    """The credentials of ``directory``, made now if it has none (only its owner may read them)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    found = read(directory)
    if found is not None:
        os.chmod(path_in(directory), 0o600)
        return found
    auth = BusAuth(user=USER, password=secrets.token_urlsafe(32))
    write_private(path_in(directory), json.dumps({"user": auth.user, "password": auth.password}))
    return auth


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner can read, created that way (never world-readable)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def server_config(auth: BusAuth) -> str:
    """The nats-server config that requires ``auth`` of every client."""
    return f'authorization {{\n  user: "{auth.user}"\n  password: "{auth.password}"\n}}\n'
