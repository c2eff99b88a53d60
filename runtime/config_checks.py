"""Checks the config models share: ``ConfigError``, secret files, name tokens, host:port addresses,
and the wording of pydantic's errors. A module of its own so that every model module can use them
without importing runtime/config.py, which imports them all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bus.subjects import TOKEN


class ConfigError(Exception):
    """A config that cannot be used; the message names the file and the field."""


def read_secret(path: str | None, field: str) -> str | None:
    """The content of a secret file, stripped; a file that cannot be read is a ConfigError."""
    if not path:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError as exc:
        raise ConfigError(f"{field}: cannot read {path}: {exc.strerror or exc}") from None


def check_token(value: str, what: str, limit: int) -> str:
    if not TOKEN.match(value):
        raise ValueError(f"{what} {value[:64]!r} may use only letters, digits, '_' and '-'")
    if len(value) > limit:
        raise ValueError(f"{what} {value[:64]!r}… is {len(value)} characters; at most {limit} are allowed")
    return value


def check_address(value: str, field: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not host:port")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} of {field} is not a number from 0 to 65535")
    return value


def error_message(error: Any) -> str:
    """One pydantic error as l8 words it."""
    msg = str(error["msg"])
    if error["type"] == "extra_forbidden":
        return "unknown field"
    return msg.removeprefix("Value error, ")
