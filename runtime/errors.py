"""The one table: l8 status code ↔ gRPC status ↔ HTTP status; bus errors to status codes; and
Dapr's rich error details (``google.rpc.Status`` with an ``ErrorInfo``) for a reason."""

from __future__ import annotations

import grpc

from bridges.errors import Code
from bus.errors import (
    BusClosed,
    BusError,
    BusTimeout,
    InvalidSubject,
    NoResponders,
    PayloadTooLarge,
    RemoteError,
    StreamBroken,
)

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


# An HTTP app's status as a gRPC caller sees it (daprd's CodeFromHTTPStatus): 2xx is OK.
_BY_HTTP_APP = {
    408: Code.CANCELLED,
    500: Code.UNKNOWN,
    400: Code.INTERNAL,
    504: Code.DEADLINE_EXCEEDED,
    404: Code.NOT_FOUND,
    409: Code.ALREADY_EXISTS,
    403: Code.PERMISSION_DENIED,
    401: Code.UNAUTHENTICATED,
    429: Code.RESOURCE_EXHAUSTED,
    501: Code.UNIMPLEMENTED,
    503: Code.UNAVAILABLE,
}


def code_of_http_app(status: int) -> Code:
    if 200 <= status < 300:
        return Code.OK
    return _BY_HTTP_APP.get(status, Code.UNKNOWN)


DOMAIN = "dapr.io"
DETAILS_KEY = "grpc-status-details-bin"


def from_bus_error(exc: BusError, what: str) -> tuple[Code, str]:
    """The status and message a caller sees for a bus failure while serving ``what``."""
    code, message, _ = failure(exc, what)
    return code, message


def failure(exc: BusError, what: str) -> tuple[Code, str, str]:
    """``from_bus_error`` and the reason a worker gave, if any."""
    if isinstance(exc, RemoteError | StreamBroken):
        reason = getattr(exc, "reason", "")
        try:
            return Code(exc.code), exc.message, reason
        except ValueError:
            return Code.UNKNOWN, exc.message, reason
    return (*_bus_failure(exc, what), "")


def status_details(
    code: Code, message: str, reason: str, metadata: dict[str, str] | None = None, resource: tuple[str, str] = ("", "")
) -> bytes:
    """A serialized ``google.rpc.Status`` carrying Dapr's ErrorInfo (and ResourceInfo), the value of
    ``grpc-status-details-bin``."""
    from google.protobuf import any_pb2  # type: ignore[import-untyped]
    from google.rpc import error_details_pb2, status_pb2

    status = status_pb2.Status(code=TABLE[code][0].value[0], message=message)
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata or {}))
    status.details.append(info)
    if resource[1]:
        where = any_pb2.Any()
        where.Pack(error_details_pb2.ResourceInfo(resource_type=resource[0], resource_name=resource[1]))
        status.details.append(where)
    data: bytes = status.SerializeToString()
    return data


def _bus_failure(exc: BusError, what: str) -> tuple[Code, str]:
    if isinstance(exc, NoResponders):
        return (
            Code.UNAVAILABLE,
            f"no worker serves {what} (nobody listens on {exc.subject}); start one with `l8 worker`",
        )
    if isinstance(exc, BusTimeout):
        return Code.DEADLINE_EXCEEDED, f"{what}: no answer within the deadline ({exc.timeout:.3f}s)"
    if isinstance(exc, (InvalidSubject, PayloadTooLarge)):
        return Code.INVALID_ARGUMENT, f"{what}: {exc}"
    if isinstance(exc, BusClosed):
        return Code.UNAVAILABLE, f"{what}: the bus is not connected"
    return Code.UNAVAILABLE, f"{what}: {exc}"
