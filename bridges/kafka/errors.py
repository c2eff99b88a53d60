"""Translation of aiokafka failures into l8 errors, at the bridge edge."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NoBrokersAvailable,
    RecordTooLargeError,
    RequestTimedOutError,
)

from bridges.errors import BackendUnavailable, InvalidArgument, L8Error


@contextlib.contextmanager
def map_kafka_errors(what: str) -> Iterator[None]:
    try:
        yield
    except L8Error:
        raise
    except (MessageSizeTooLargeError, RecordTooLargeError) as exc:
        raise InvalidArgument(f"{what}: message too large for the broker: {exc}") from None
    except (KafkaConnectionError, KafkaTimeoutError, NoBrokersAvailable, RequestTimedOutError) as exc:
        raise BackendUnavailable(f"{what}: kafka unavailable: {exc}") from None
    except KafkaError as exc:
        raise L8Error(f"{what}: kafka error: {exc!r}") from None
