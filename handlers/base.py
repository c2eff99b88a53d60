"""What every handler shares: the handler shape, key prefixes and metadata parsing."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Protocol, TypeVar

from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from bridges.errors import InvalidArgument, quote
from handlers import limits

log = logging.getLogger("l8.handlers")

# Keys must not hold the separator l8 puts between a prefix and the key.
SEPARATOR = "||"
# Names that become one token of a bus subject (app ids, component names): bus/subjects.py's TOKEN,
# spelled again because handlers do not import the bus (tests/test_layers.py checks they agree).
TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
_WHOLE = re.compile(r"-?[0-9]{1,12}")


class RequestInfo(Protocol):
    """What a handler knows about the caller (the bus's RequestContext satisfies it)."""

    @property
    def app_id(self) -> str: ...


Handler = Callable[[str, bytes, RequestInfo], Awaitable[bytes]]


class ChunkStream(Protocol):
    """Messages beside a request (the bus's streams satisfy it): read them, or send them."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def send(self, message: bytes) -> None: ...


# What an error message quotes of the caller's input at most.
QUOTE_LIMIT = 64


def short(value: str, limit: int = QUOTE_LIMIT) -> str:
    """``value`` quoted for an error message, cut to ``limit`` characters."""
    if len(value) <= limit:
        return repr(value)
    return repr(value[:limit]) + f"... ({len(value)} characters)"


def check_metadata(
    metadata: Mapping[str, str],
    what: str,
    *,
    entries: int = limits.MAP_ENTRIES,
    key_chars: int = limits.MAP_KEY,
    value_chars: int = limits.MAP_VALUE,
) -> dict[str, str]:
    """Request metadata within its ranges, as a plain dict; INVALID_ARGUMENT naming what is wrong."""
    if len(metadata) > entries:
        raise InvalidArgument(f"{what}: metadata holds at most {entries} entries; got {len(metadata)}")
    for key, value in metadata.items():
        if not key:
            raise InvalidArgument(f"{what}: a metadata key is empty")
        if len(key) > key_chars:
            raise InvalidArgument(f"{what}: metadata key {short(key)} is over {key_chars} characters")
        if len(value) > value_chars:
            raise InvalidArgument(f"{what}: metadata {short(key)} is over {value_chars} characters")
    return dict(metadata)


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
            limits.check_size(app_id, limits.APP_ID, "app_id")
            return f"{app_id}{SEPARATOR}"
        if self.rule == "name":
            return f"{self._component}{SEPARATOR}"
        return f"{self.rule}{SEPARATOR}"

    def apply(self, key: str, app_id: str, what: str = "key", reason: str = "") -> str:
        """``reason`` names the failure of a bad key for the fronts (Dapr's ErrorInfo reason)."""
        if not key:
            raise InvalidArgument(f"{what} is empty", reason=reason)
        limits.check_size(key, limits.KEY, what)
        if SEPARATOR in key:
            raise InvalidArgument(
                f"{what} {quote(key)} contains {SEPARATOR!r}, which l8 reserves for key prefixes", reason=reason
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
    """``ttlInSeconds`` from request metadata: None when absent or -1, else whole seconds from 1 to
    ``limits.TTL_SECONDS``."""
    raw = metadata.get("ttlInSeconds")
    if raw is None or raw == "" or raw == "-1":
        return None
    # No valid TTL has more than ten digits, and int() of a long digit string is slow.
    if not _WHOLE.fullmatch(raw):
        raise InvalidArgument(f"{what}: ttlInSeconds {quote(raw)} is not a whole number of seconds")
    ttl = int(raw)
    if not 1 <= ttl <= limits.TTL_SECONDS:
        raise InvalidArgument(
            f"{what}: ttlInSeconds must be from 1 to {limits.TTL_SECONDS}, or -1 for no expiry; got {ttl}"
        )
    return ttl


def is_json_type(content_type: str) -> bool:
    base = content_type.split(";", 1)[0].strip().lower()
    return base == "application/json" or base.endswith("+json")


def is_text_type(content_type: str) -> bool:
    base = content_type.split(";", 1)[0].strip().lower()
    return base.startswith("text/") or base in ("application/xml",) or base.endswith("+xml")


C = TypeVar("C", bound=RequestInfo)
R = TypeVar("R")


def guarded(handler: Callable[[str, bytes, C], Awaitable[R]]) -> Callable[[str, bytes, C], Awaitable[R]]:
    """``handler``, with a request that does not decode answered INVALID_ARGUMENT.

    Bytes that are not the message an op expects (protobuf's DecodeError, a string field that is
    not UTF-8) are the caller's fault, not l8's: they are logged once at DEBUG, without a traceback.
    """

    async def serve(op: str, payload: bytes, ctx: C) -> R:
        try:
            return await handler(op, payload, ctx)
        except (DecodeError, UnicodeDecodeError) as exc:
            log.debug("op %s: %d bytes that are not a valid request: %s", quote(op), len(payload), exc)
            raise InvalidArgument(f"the request is not a valid message for op {quote(op)}: {exc}") from None

    return serve
