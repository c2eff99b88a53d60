"""Dapr's HTTP errors: the body ``{"errorCode", "message", "details"}``, its codes and statuses.

A route names its own error code (``ERR_STATE_SAVE``...); a failure that Dapr names more precisely
(an unknown store, an illegal key, a stale etag) takes Dapr's code and status from ``BY_REASON``,
and otherwise its status comes from the one table (runtime/errors.py). The ``details`` carry the
same ``google.rpc.ErrorInfo`` (and ``ResourceInfo``) that gRPC callers get.
"""

from __future__ import annotations

import json

from bridges.errors import Code
from runtime import errors
from runtime.forward import FrontError
from runtime.http import Response

# Dapr's reason -> (its HTTP error code, or "" for the route's own; its HTTP status)
BY_REASON: dict[str, tuple[str, int]] = {
    "DAPR_STATE_NOT_FOUND": ("ERR_STATE_STORE_NOT_FOUND", 400),
    "DAPR_STATE_ILLEGAL_KEY": ("ERR_MALFORMED_REQUEST", 400),
    "DAPR_STATE_ETAG_MISMATCH": ("", 409),
    "DAPR_STATE_ETAG_INVALID": ("", 400),
    "DAPR_STATE_TRANSACTIONS_NOT_SUPPORTED": ("ERR_STATE_STORE_NOT_SUPPORTED", 500),
    "DAPR_STATE_TOO_MANY_TRANSACTIONS": ("ERR_STATE_STORE_TOO_MANY_TRANSACTIONS", 400),
    "DAPR_PUBSUB_NOT_FOUND": ("ERR_PUBSUB_NOT_FOUND", 404),
    "DAPR_PUBSUB_NAME_EMPTY": ("ERR_PUBSUB_EMPTY", 404),
    "DAPR_PUBSUB_TOPIC_NAME_EMPTY": ("ERR_TOPIC_EMPTY", 404),
    "DAPR_PUBSUB_METADATA_DESERIALIZATION": ("ERR_PUBSUB_REQUEST_METADATA", 400),
    "DAPR_PUBSUB_UNMARSHAL_EVENTS": ("ERR_PUBSUB_EVENTS_SER", 400),
    "DAPR_LOCK_NOT_FOUND": ("ERR_LOCK_STORE_NOT_FOUND", 400),
    "DAPR_LOCK_RESOURCE_ID_EMPTY": ("ERR_RESOURCE_ID_EMPTY", 400),
    "DAPR_LOCK_OWNER_EMPTY": ("ERR_OWNER_EMPTY", 400),
    "DAPR_LOCK_EXPIRY_NOT_POSITIVE": ("ERR_EXPIRY_NOT_POSITIVE", 400),
    "DAPR_CONFIGURATION_STORE_NOT_FOUND": ("ERR_CONFIGURATION_STORE_NOT_FOUND", 400),
}
MALFORMED = "ERR_MALFORMED_REQUEST"


class HttpError(Exception):
    """A failure of a Dapr HTTP route, answered with Dapr's error body."""

    def __init__(
        self,
        status: int,
        error_code: str,
        message: str,
        reason: str = "",
        resource: tuple[str, str] = ("", ""),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.reason = reason
        self.resource = resource

    @classmethod
    def of(cls, exc: FrontError, error_code: str) -> HttpError:
        """The HTTP form of a front's failure, for a route whose own code is ``error_code``."""
        code, status = BY_REASON.get(exc.reason, ("", errors.http_status(exc.code)))
        return cls(status, code or error_code, exc.message, exc.reason, exc.resource)

    def response(self) -> Response:
        body: dict[str, object] = {"errorCode": self.error_code, "message": self.message}
        if self.reason:
            info: dict[str, object] = {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": self.reason,
                "domain": errors.DOMAIN,
                "metadata": {},
            }
            details: list[dict[str, object]] = [info]
            if self.resource[1]:
                details.append(
                    {
                        "@type": "type.googleapis.com/google.rpc.ResourceInfo",
                        "resource_type": self.resource[0],
                        "resource_name": self.resource[1],
                    }
                )
            body["details"] = details
        return Response(self.status, json.dumps(body).encode(), {"content-type": "application/json"})


def malformed(message: str, reason: str = "") -> HttpError:
    """Bad input in the request itself: 400 ``ERR_MALFORMED_REQUEST``, or the code of ``reason``."""
    code, status = BY_REASON.get(reason, (MALFORMED, 400))
    return HttpError(status, code or MALFORMED, message, reason)


def status_of(code: Code) -> int:
    return errors.http_status(code)
