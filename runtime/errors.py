"""The one table: l8 status code ↔ gRPC status ↔ HTTP status; and bus errors to status codes."""

from __future__ import annotations

import grpc

from bridges.errors import Code
from bus.errors import BusClosed, BusError, BusTimeout, NoResponders, PayloadTooLarge, RemoteError

TABLE: dict[Code, tuple[grpc.StatusCode, int]] = {
    Code.OK: (grpc.StatusCode.OK, 200),
    Code.CANCELLED: (grpc.StatusCode.CANCELLED, 499),
    Code.UNKNOWN: (grpc.StatusCode.UNKNOWN, 500),
    Code.INVALID_ARGUMENT: (grpc.StatusCode.INVALID_ARGUMENT, 400),
    Code.DEADLINE_EXCEEDED: (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    Code.NOT_FOUND: (grpc.StatusCode.NOT_FOUND, 404),
    Code.ALREADY_EXISTS: (grpc.StatusCode.ALREADY_EXISTS, 409),
    Code.PERMISSION_DENIED: (grpc.StatusCode.PERMISSION_DENIED, 403),
    Code.RESOURCE_EXHAUSTED: (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    Code.FAILED_PRECONDITION: (grpc.StatusCode.FAILED_PRECONDITION, 400),
    Code.ABORTED: (grpc.StatusCode.ABORTED, 409),
    Code.OUT_OF_RANGE: (grpc.StatusCode.OUT_OF_RANGE, 400),
    Code.UNIMPLEMENTED: (grpc.StatusCode.UNIMPLEMENTED, 501),
    Code.INTERNAL: (grpc.StatusCode.INTERNAL, 500),
    Code.UNAVAILABLE: (grpc.StatusCode.UNAVAILABLE, 503),
    Code.DATA_LOSS: (grpc.StatusCode.DATA_LOSS, 500),
    Code.UNAUTHENTICATED: (grpc.StatusCode.UNAUTHENTICATED, 401),
}

_BY_GRPC = {grpc_code: code for code, (grpc_code, _) in TABLE.items()}


def grpc_status(code: str) -> grpc.StatusCode:
    try:
        return TABLE[Code(code)][0]
    except ValueError:
        return grpc.StatusCode.UNKNOWN


def http_status(code: str) -> int:
    try:
        return TABLE[Code(code)][1]
    except ValueError:
        return 500


def code_of_grpc(status: grpc.StatusCode) -> Code:
    return _BY_GRPC.get(status, Code.UNKNOWN)


def from_bus_error(exc: BusError, what: str) -> tuple[Code, str]:
    """The status and message a caller sees for a bus failure while serving ``what``."""
    if isinstance(exc, RemoteError):
        try:
            return Code(exc.code), exc.message
        except ValueError:
            return Code.UNKNOWN, exc.message
    if isinstance(exc, NoResponders):
        return (
            Code.UNAVAILABLE,
            f"no worker serves {what} (nobody listens on {exc.subject}); start one with `l8 worker`",
        )
    if isinstance(exc, BusTimeout):
        return Code.DEADLINE_EXCEEDED, f"{what}: no answer within the deadline ({exc.timeout:.3f}s)"
    if isinstance(exc, PayloadTooLarge):
        return Code.INVALID_ARGUMENT, f"{what}: {exc}"
    if isinstance(exc, BusClosed):
        return Code.UNAVAILABLE, f"{what}: the bus is not connected"
    return Code.UNAVAILABLE, f"{what}: {exc}"
