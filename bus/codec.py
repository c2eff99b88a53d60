"""What travels beside the payload: header names, deadlines and error replies.

The caller's identity is not a header: it is the last token of the subject (bus/subjects.py). A
request carries its deadline (``l8-timeout``, milliseconds left when it was sent) and, when there
is one, the W3C ``traceparent``; an error reply carries ``l8-code`` and ``l8-message``, and
``l8-reason`` when the error names its failure (Dapr's reason, e.g. ``DAPR_STATE_ILLEGAL_KEY``).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

HDR_TIMEOUT = "l8-timeout"  # milliseconds left when the request was sent
HDR_TRACEPARENT = "traceparent"  # W3C trace context, passed through untouched
HDR_CODE = "l8-code"  # error replies: the status code name
HDR_MESSAGE = "l8-message"  # error replies: what went wrong
HDR_REASON = "l8-reason"  # error replies: the failure's name, for Dapr's ErrorInfo (optional)
REASON = re.compile(r"[A-Z][A-Z0-9_]{0,63}")

# Header values must be one line of ASCII; an error message is cut to fit what a reply can carry.
_MAX_MESSAGE = 2000
# A deadline header past this (a day) is a bad header, not a long wait.
_MAX_TIMEOUT_MS = 86_400_000


@dataclass(slots=True)
class RequestContext:
    """What a handler knows of the request besides its payload."""

    app_id: str  # the caller, from the subject
    deadline: float  # time.monotonic() at which the caller gives up
    traceparent: str | None = None
    headers: dict[str, str] | None = None  # as they came, for handlers that carry metadata
    subject: str = ""

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


@dataclass(slots=True)
class Reply:
    """A handler's answer when it carries headers too (an invocation's metadata)."""

    data: bytes
    headers: dict[str, str] | None = None


def request_headers(timeout: float, traceparent: str | None = None) -> dict[str, str]:
    headers = {HDR_TIMEOUT: str(max(1, int(timeout * 1000)))}
    if traceparent:
        headers[HDR_TRACEPARENT] = traceparent
    return headers


def timeout_of(headers: dict[str, str] | None, default: float) -> float:
    """The seconds a request may take: its ``l8-timeout`` when that is a sane number, else ``default``."""
    raw = headers.get(HDR_TIMEOUT) if headers else None
    if raw is None or not raw.isdigit() or len(raw) > 9:
        return default
    ms = int(raw)
    return ms / 1000 if 0 < ms <= _MAX_TIMEOUT_MS else default


def context_from_headers(
    headers: dict[str, str] | None, default_timeout: float, app_id: str = "", subject: str = ""
) -> RequestContext:
    return RequestContext(
        app_id=app_id,
        deadline=time.monotonic() + timeout_of(headers, default_timeout),
        traceparent=headers.get(HDR_TRACEPARENT) if headers else None,
        headers=headers,
        subject=subject,
    )


def error_headers(code: str, message: str, reason: str = "") -> dict[str, str]:
    clean = " ".join(message.split())[:_MAX_MESSAGE]
    headers = {HDR_CODE: code, HDR_MESSAGE: clean.encode("ascii", "backslashreplace").decode("ascii")}
    if reason and REASON.fullmatch(reason):
        headers[HDR_REASON] = reason
    return headers
