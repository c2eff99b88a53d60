"""Translation of NATS and JetStream failures into l8 errors, at the bridge edge."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import nats.errors
import nats.js.errors

from bridges.errors import BackendUnavailable, EtagMismatch, InvalidArgument, L8Error

# JetStream API error codes (err_code) that mean something to a caller.
WRONG_LAST_SEQUENCE = 10071
MESSAGE_TOO_LARGE = 10054
BATCH_INCOMPLETE = 10176


def check_pub_ack(data: bytes, what: str) -> int:
    """The stream sequence of a JetStream publish ack, or the l8 error its error means."""
    try:
        ack = json.loads(data)
    except ValueError:
        raise BackendUnavailable(f"{what}: unreadable reply from JetStream") from None
    err = ack.get("error")
    if err is None:
        return int(ack["seq"])
    code = err.get("err_code")
    desc = err.get("description", "")
    if code == WRONG_LAST_SEQUENCE:
        raise EtagMismatch(f"{what}: etag mismatch ({desc})")
    if code == MESSAGE_TOO_LARGE:
        raise InvalidArgument(f"{what}: {desc}")
    raise L8Error(f"{what}: JetStream error {code}: {desc}")


@contextlib.contextmanager
def map_nats_errors(what: str) -> Iterator[None]:
    try:
        yield
    except L8Error:
        raise
    except nats.errors.NoRespondersError:
        raise BackendUnavailable(f"{what}: JetStream is not available") from None
    except nats.errors.TimeoutError:
        raise BackendUnavailable(f"{what}: JetStream did not answer in time") from None
    except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError) as exc:
        raise BackendUnavailable(f"{what}: {type(exc).__name__}") from None
    except nats.js.errors.APIError as exc:
        raise L8Error(f"{what}: JetStream error {exc.err_code}: {exc.description}") from None
