"""Errors of the bus.

BusError
├── NoResponders   nobody listens on the subject (no worker for that api and component)
├── BusTimeout     no reply before the deadline
├── BusClosed      the connection is gone or was never made
│   └── BusUnreachable  the first connection could not be made in time
├── InvalidSubject a subject the bus refuses to send (too long for the server)
├── PayloadTooLarge  the message is larger than the bus carries
├── RemoteError    the worker answered with an error code and message in its reply headers
└── StreamBroken   a stream beside a request broke: a lost message, a silent peer, a cancel
"""

from __future__ import annotations


class BusError(Exception):
    """Root of the bus errors."""


class NoResponders(BusError):
    def __init__(self, subject: str) -> None:
        super().__init__(f"no worker answers on {subject}")
        self.subject = subject


class BusTimeout(BusError):
    def __init__(self, subject: str, timeout: float) -> None:
        super().__init__(f"no reply on {subject} within {timeout:.3f}s")
        self.subject = subject
        self.timeout = timeout


class BusClosed(BusError):
    pass


class BusUnreachable(BusClosed):
    pass


class InvalidSubject(BusError):
    pass


class PayloadTooLarge(BusError):
    def __init__(self, subject: str, size: int, limit: int) -> None:
        super().__init__(f"the message is {size} bytes; the bus carries at most {limit}")
        self.subject = subject
        self.size = size
        self.limit = limit


class RemoteError(BusError):
    """An error a worker sent back; ``code`` is the name of a status code (``INVALID_ARGUMENT``...),
    ``reason`` Dapr's name for the failure when the worker gave one."""

    def __init__(self, code: str, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason


class StreamBroken(BusError):
    """A stream (bus/stream.py) could not go on; ``code`` names the status, as RemoteError's does."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
