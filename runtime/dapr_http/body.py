"""Reading what a Dapr HTTP request carries: JSON bodies, query metadata, field types and sizes.

Every check happens before anything is forwarded, so a bad request changes nothing; messages quote
at most a short prefix of what was sent.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson

from runtime.dapr_http.errors import HttpError, malformed

MAX_ITEMS = 10_000  # items of one bulk request (states, keys, events, operations)
MAX_METADATA = 256  # metadata entries of one request or item
MAX_NAME = 1024  # keys, ids and metadata names, in characters


def short(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:64] + "…") if len(text) > 64 else repr(text)


def json_body(body: bytes, reason: str = "") -> Any:
    if not body.strip():
        raise malformed("the request has no body; a JSON body is required", reason)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise malformed(f"failed deserializing HTTP body: {str(exc)[:120]}", reason) from None


def json_list(body: bytes, what: str, reason: str = "") -> list[Any]:
    value = json_body(body, reason)
    if not isinstance(value, list):
        raise malformed(f"failed deserializing HTTP body: {what} must be a JSON array", reason)
    if len(value) > MAX_ITEMS:
        raise malformed(f"{what} has {len(value)} entries; at most {MAX_ITEMS}", reason)
    return value


def json_object(value: Any, what: str, reason: str = "") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise malformed(f"{what} must be a JSON object", reason)
    return value


def get(obj: dict[str, Any], name: str) -> Any:
    """A field by name, matched as Go's encoding/json (so Dapr) matches it: exactly, else ignoring
    case (the JS SDK sends ``entryID`` for ``entryId``)."""
    if name in obj:
        return obj[name]
    folded = name.casefold()
    for key, value in obj.items():
        if key.casefold() == folded:
            return value
    return None


def has(obj: dict[str, Any], name: str) -> bool:
    folded = name.casefold()
    return name in obj or any(key.casefold() == folded for key in obj)


def string(obj: dict[str, Any], name: str, where: str, *, required: bool = False, limit: int = MAX_NAME) -> str:
    value = get(obj, name)
    if value is None:
        if required:
            raise malformed(f"{where}.{name} is missing")
        return ""
    if not isinstance(value, str):
        raise malformed(f"{where}.{name} must be a string; got {type(value).__name__}")
    if len(value) > limit:
        raise malformed(f"{where}.{name} is {len(value)} characters; at most {limit}")
    return value


def integer(obj: dict[str, Any], name: str, where: str, *, required: bool = False) -> int:
    value = get(obj, name)
    if value is None:
        if required:
            raise malformed(f"{where}.{name} is missing")
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise malformed(f"{where}.{name} must be a whole number; got {short(value)}")
    if not -(2**31) <= value < 2**31:
        raise malformed(f"{where}.{name} {value} is out of range")
    return value


def string_map(value: Any, where: str, reason: str = "") -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise malformed(f"{where} must be a JSON object of strings", reason)
    if len(value) > MAX_METADATA:
        raise malformed(f"{where} has {len(value)} entries; at most {MAX_METADATA}", reason)
    for key, item in value.items():
        if not isinstance(item, str):
            raise malformed(f"{where}.{key[:64]} must be a string; got {type(item).__name__}", reason)
        if len(key) > MAX_NAME:
            raise malformed(f"{where} has a name of {len(key)} characters; at most {MAX_NAME}", reason)
    return dict(value)


def query(raw: str) -> list[tuple[str, str]]:
    try:
        return parse_qsl(raw, keep_blank_values=True, strict_parsing=False, errors="strict", max_num_fields=1000)
    except (ValueError, UnicodeDecodeError) as exc:
        raise malformed(f"the query string is malformed: {str(exc)[:100]}") from None


def query_metadata(raw: str, reason: str = "") -> dict[str, str]:
    """``metadata.<name>=<value>`` query parameters, as Dapr reads them."""
    found = {k[len("metadata.") :]: v for k, v in query(raw) if k.startswith("metadata.")}
    if len(found) > MAX_METADATA:
        raise malformed(f"the query has {len(found)} metadata entries; at most {MAX_METADATA}", reason)
    return found


def query_value(raw: str, name: str) -> str:
    for key, value in query(raw):
        if key == name:
            return value
    return ""


def query_values(raw: str, name: str) -> list[str]:
    return [value for key, value in query(raw) if key == name]


def encode(value: Any) -> bytes:
    """A JSON value as Dapr stores it: compact JSON."""
    try:
        return orjson.dumps(value)
    except TypeError as exc:  # pragma: no cover - anything orjson.loads returns can be dumped
        raise HttpError(400, "ERR_MALFORMED_REQUEST", str(exc)) from None
