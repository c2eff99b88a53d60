"""What travels beside the payload: header names, deadlines and error replies."""

from __future__ import annotations

import time
from dataclasses import dataclass

HDR_TIMEOUT = "l8-timeout"  # milliseconds left when the request was sent
HDR_APP_ID = "l8-app-id"  # the calling app
HDR_TRACEPARENT = "traceparent"  # W3C trace context, passed through untouched
HDR_CODE = "l8-code"  # error replies: the status code name
HDR_MESSAGE = "l8-message"  # error replies: what went wrong

# Header values must be one line of ASCII; an error message is cut to fit what a reply can carry.
_MAX_MESSAGE = 2000


@dataclass(slots=True, frozen=True)
class RequestContext:
    """What a handler knows of the request besides its payload."""

    app_id: str
    deadline: float  # time.monotonic() at which the caller gives up
    traceparent: str | None = None

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


def request_headers(app_id: str, timeout: float, traceparent: str | None) -> dict[str, str]:
    headers = {HDR_APP_ID: app_id, HDR_TIMEOUT: str(max(1, int(timeout * 1000)))}
    if traceparent:
        headers[HDR_TRACEPARENT] = traceparent
    return headers


def context_from_headers(headers: dict[str, str] | None, default_timeout: float) -> RequestContext:
    now = time.monotonic()
    if not headers:
        return RequestContext(app_id="", deadline=now + default_timeout)
    raw = headers.get(HDR_TIMEOUT)
    try:
        timeout = int(raw) / 1000 if raw else default_timeout
    except ValueError:
        timeout = default_timeout
    return RequestContext(
        app_id=headers.get(HDR_APP_ID, ""),
        deadline=now + timeout,
        traceparent=headers.get(HDR_TRACEPARENT),
    )


def error_headers(code: str, message: str) -> dict[str, str]:
    clean = " ".join(message.split())[:_MAX_MESSAGE]
    return {HDR_CODE: code, HDR_MESSAGE: clean.encode("ascii", "backslashreplace").decode("ascii")}
