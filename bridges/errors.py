"""Errors raised by bridges and handlers; the runtime maps ``code`` to gRPC and HTTP in one table.

L8Error (INTERNAL)
├── InvalidArgument (INVALID_ARGUMENT)    bad input: says what is wrong, nothing was changed
│   └── InvalidEtag                       an etag that is not one this store hands out
├── EtagMismatch (ABORTED)                the etag is stale, or FIRST_WRITE found the key taken
├── DeadlineExceeded (DEADLINE_EXCEEDED)  the backend did not answer within the call's time
├── NotFound (NOT_FOUND)
├── FailedPrecondition (FAILED_PRECONDITION)
├── ResourceExhausted (RESOURCE_EXHAUSTED)
├── PermissionDenied (PERMISSION_DENIED)  the caller may not do this (a secret outside its scope)
├── Unimplemented (UNIMPLEMENTED)         the store lacks the feature asked for
├── DataLoss (DATA_LOSS)                  what the backend holds is not what was written
└── BackendUnavailable (UNAVAILABLE)      the backend could not be reached; safe to retry

An error may carry a ``reason``: Dapr's name for the failure (``DAPR_STATE_ILLEGAL_KEY``...), which
the fronts put in a ``google.rpc.ErrorInfo``. The worker host sends it in the error reply's
``l8-reason`` header (bus/codec.py).
"""

from __future__ import annotations

import enum
from typing import ClassVar


class Code(enum.StrEnum):
    """Status codes, named as gRPC names them; they travel as strings in bus headers."""

    OK = "OK"
    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    DATA_LOSS = "DATA_LOSS"
    UNAUTHENTICATED = "UNAUTHENTICATED"


QUOTED = 64  # characters of an input an error message quotes; the rest is left out


def quote(value: str | bytes, limit: int = QUOTED) -> str:
    """``repr`` of at most ``limit`` characters of ``value``, saying how long the whole is.

    Error messages travel in bus headers and gRPC trailers and end up in logs: an input of a
    megabyte must not come back a megabyte long.
    """
    if len(value) <= limit:
        return repr(value)
    unit = "bytes" if isinstance(value, bytes) else "characters"
    return f"{value[:limit]!r}… ({len(value)} {unit})"


class L8Error(Exception):
    code: ClassVar[Code] = Code.INTERNAL
    retriable: ClassVar[bool] = False
    reason: str = ""

    def __init__(self, *args: object, reason: str = "") -> None:
        super().__init__(*args)
        if reason:
            self.reason = reason


class InvalidArgument(L8Error):
    code = Code.INVALID_ARGUMENT


class InvalidEtag(InvalidArgument):
    pass


class EtagMismatch(L8Error):
    code = Code.ABORTED


class DeadlineExceeded(L8Error):
    code = Code.DEADLINE_EXCEEDED


class NotFound(L8Error):
    code = Code.NOT_FOUND


class PermissionDenied(L8Error):
    code = Code.PERMISSION_DENIED


class FailedPrecondition(L8Error):
    code = Code.FAILED_PRECONDITION


class ResourceExhausted(L8Error):
    code = Code.RESOURCE_EXHAUSTED
    retriable = True


class DataLoss(L8Error):
    code = Code.DATA_LOSS


class Unimplemented(L8Error):
    code = Code.UNIMPLEMENTED


class BackendUnavailable(L8Error):
    code = Code.UNAVAILABLE
    retriable = True
