"""Mapping of l8 keys to NATS KV keys.

KV keys are subject tokens (``[-/_=.A-Za-z0-9]``). An l8 key is split on its ``||`` prefix
separator and each part becomes one token: kept as it is when it uses only letters, digits and
'-', else ``_`` plus its unpadded base64url. A kept part never holds '_', so no two keys collide.
"""

from __future__ import annotations

import base64
import functools
import re

_PLAIN = re.compile(r"^[A-Za-z0-9-]+$")


def _token(part: str) -> str:
    if _PLAIN.match(part):
        return part
    return "_" + base64.urlsafe_b64encode(part.encode()).decode().rstrip("=")


@functools.lru_cache(maxsize=8192)
def encode(key: str) -> str:
    return ".".join(_token(part) for part in key.split("||"))


def _part(token: str) -> str:
    if not token.startswith("_"):
        return token
    raw = token[1:]
    return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()


def decode(kv_key: str) -> str:
    return "||".join(_part(token) for token in kv_key.split("."))


def bucket_name(value: str) -> str:
    if not re.match(r"^[A-Za-z0-9_-]+$", value):
        raise ValueError(f"bucket name {value!r} may use only letters, digits, '_' and '-'")
    return value
