"""What every handler shares: the handler shape, key prefixes and metadata parsing."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from bridges.errors import InvalidArgument

# Keys must not hold the separator l8 puts between a prefix and the key.
SEPARATOR = "||"
# Names that become one token of a bus subject (app ids, component names): bus/subjects.py's TOKEN,
# spelled again because handlers do not import the bus (tests/test_layers.py checks they agree).
TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


class RequestInfo(Protocol):
    """What a handler knows about the caller (the bus's RequestContext satisfies it)."""

    @property
    def app_id(self) -> str: ...


Handler = Callable[[str, bytes, RequestInfo], Awaitable[bytes]]


class KeyPrefix:
    """The ``keyPrefix`` rule of a component: ``appid`` (default), ``name``, ``none`` or a literal."""

    def __init__(self, rule: str, component: str) -> None:
        self.rule = rule or "appid"
        self._component = component
        if self.rule not in ("appid", "name", "none") and SEPARATOR in self.rule:
            raise ValueError(f"keyPrefix {self.rule!r} may not contain {SEPARATOR!r}")

    def scope(self, app_id: str) -> str:
        """What ``apply`` puts before a key: "" or a prefix ending in the separator."""
        if self.rule == "none":
            return ""
        if self.rule == "appid":
            if not app_id:
                raise InvalidArgument("the caller has no app id, which keyPrefix 'appid' needs")
            return f"{app_id}{SEPARATOR}"
        if self.rule == "name":
            return f"{self._component}{SEPARATOR}"
        return f"{self.rule}{SEPARATOR}"

    def apply(self, key: str, app_id: str, what: str = "key", reason: str = "") -> str:
        """``reason`` names the failure of a bad key for the fronts (Dapr's ErrorInfo reason)."""
        if not key:
            raise InvalidArgument(f"{what} is empty", reason=reason)
        if SEPARATOR in key:
            raise InvalidArgument(
                f"{what} {key[:64]!r} contains {SEPARATOR!r}, which l8 reserves for key prefixes", reason=reason
            )
        if self.rule == "appid":
            if not app_id:
                raise InvalidArgument("the caller has no app id, which keyPrefix 'appid' needs")
            return f"{app_id}{SEPARATOR}{key}"
        if self.rule == "name":
            return f"{self._component}{SEPARATOR}{key}"
        if self.rule == "none":
            return key
        return f"{self.rule}{SEPARATOR}{key}"


def parse_ttl(metadata: Mapping[str, str], what: str) -> int | None:
    """``ttlInSeconds`` from request metadata: None when absent or -1, else whole seconds >= 1."""
    raw = metadata.get("ttlInSeconds")
    if raw is None or raw == "" or raw == "-1":
        return None
    try:
        ttl = int(raw)
    except ValueError:
        raise InvalidArgument(f"{what}: ttlInSeconds {raw!r} is not a whole number of seconds") from None
    if ttl < 1:
        raise InvalidArgument(f"{what}: ttlInSeconds must be at least 1, or -1 for no expiry; got {ttl}")
    return ttl


def is_json_type(content_type: str) -> bool:
    base = content_type.split(";", 1)[0].strip().lower()
    return base == "application/json" or base.endswith("+json")


def is_text_type(content_type: str) -> bool:
    base = content_type.split(";", 1)[0].strip().lower()
    return base.startswith("text/") or base in ("application/xml",) or base.endswith("+xml")
