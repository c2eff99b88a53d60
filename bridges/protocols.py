"""The contracts between handlers and bridges."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@runtime_checkable
class Component(Protocol):
    """Every bridge component: built by the registry, started before use, stopped once."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def features(self) -> frozenset[str]: ...


@dataclass(slots=True, frozen=True)
class StateEntry:
    value: bytes
    etag: str
    expires_at: float | None = None  # unix seconds, when a TTL is set


@dataclass(slots=True, frozen=True)
class StateSet:
    key: str
    value: bytes
    etag: str | None = None  # must match the stored etag when given
    first_write: bool = False  # without an etag: insert only
    ttl: int | None = None  # seconds


@dataclass(slots=True, frozen=True)
class StateDelete:
    key: str
    etag: str | None = None


StateOp = StateSet | StateDelete


@dataclass(slots=True)
class StateLimits:
    max_value_bytes: int = 1 << 20
    max_transaction_ops: int = 1000
    features: frozenset[str] = field(default_factory=frozenset)


class StateStore(Component, Protocol):
    """Keys arrive fully prefixed; etags are opaque strings this store handed out.

    ``set``/``delete``/``transact`` raise EtagMismatch on a stale etag or a taken key under
    FIRST_WRITE, and InvalidEtag on an etag the store cannot have issued.
    """

    limits: StateLimits

    async def get(self, key: str) -> StateEntry | None: ...

    async def set(self, op: StateSet) -> None: ...

    async def delete(self, op: StateDelete) -> None: ...

    async def transact(self, ops: list[StateOp]) -> None: ...
