"""The contracts between handlers and bridges."""

from __future__ import annotations

import enum
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@runtime_checkable
class Component(Protocol):
    """Every bridge component: built by the registry, started before use, stopped once."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def features(self) -> frozenset[str]: ...


@runtime_checkable
class Probed(Protocol):
    """A component that can tell whether its backend answers: ``ping()`` is one cheap round trip
    (a Redis PING, a JetStream stream info) and raises an L8Error when the backend does not answer.
    The runtime calls it every few seconds for readiness; a component without it is judged by its
    start and by the bus alone."""

    async def ping(self) -> None: ...


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


# ---- pub/sub ----


@dataclass(slots=True)
class PubSubLimits:
    max_message_bytes: int = 1 << 20
    features: frozenset[str] = field(default_factory=frozenset)
    # Seconds the broker waits for a held message before it gives it to another subscriber; a
    # subscriber that needs longer calls ``Received.touch`` within it. None: the bridge keeps its
    # messages' leases by itself.
    lease_seconds: float | None = None


class Received(Protocol):
    """One delivered message. The subscriber settles it exactly once: ack, retry or drop.

    Until it is settled the broker keeps it; a message never settled (the process died, the
    subscription closed) is delivered again, to this subscriber or another of its group.
    """

    @property
    def data(self) -> bytes: ...

    @property
    def headers(self) -> dict[str, str]: ...

    @property
    def topic(self) -> str: ...

    @property
    def attempt(self) -> int:
        """1 on the first delivery, 2 on the first redelivery..."""
        ...

    @property
    def ref(self) -> str:
        """Where the broker keeps it (a stream sequence, an offset...), for logs."""
        ...

    async def touch(self) -> None:
        """Tell the broker the message is still being worked on, so it is not redelivered yet."""
        ...

    async def ack(self) -> None: ...

    async def retry(self, delay: float) -> None:
        """Deliver again, no sooner than ``delay`` seconds from now."""
        ...

    async def drop(self) -> None:
        """Never deliver again (the caller has dead-lettered it first, if it had somewhere to)."""
        ...


class Subscription(Protocol):
    async def fetch(self, max_messages: int, timeout: float) -> list[Received]:
        """Up to ``max_messages``, waiting at most ``timeout`` seconds for the first; [] if none."""
        ...

    async def keep_alive(self) -> None:
        """Keep this member's hold on what it fetched and has not handed out yet (and its place in
        the group), for a subscriber that fetches less often than the broker's lease."""
        ...

    async def close(self) -> None:
        """Stop fetching; unsettled messages go back to the broker for redelivery."""
        ...


class EventSource(Protocol):
    """What a delivery loop consumes (handlers/pubsub_delivery.py): a broker's topics, or the events
    of an input binding. ``limits.lease_seconds`` says how often held messages need ``touch``;
    ``publish`` carries dead letters only. Every ``PubSub`` is one."""

    limits: PubSubLimits

    async def publish(self, topic: str, data: bytes, headers: dict[str, str], *, ttl: int | None = None) -> None: ...

    async def subscribe(self, topic: str, group: str, *, max_in_flight: int, ordered: bool = False) -> Subscription: ...


class PubSub(Component, Protocol):
    """A broker. Subscribers of one ``group`` share the topic's messages (each goes to one of
    them); every group gets its own copy of every message. ``ordered`` subscriptions get each
    topic's (partition's) messages in publish order, one in flight at a time."""

    limits: PubSubLimits

    async def publish(self, topic: str, data: bytes, headers: dict[str, str], *, ttl: int | None = None) -> None: ...

    async def publish_batch(self, topic: str, messages: list[tuple[bytes, dict[str, str]]]) -> list[str | None]:
        """Publish many; returns, per message, None or the error that kept it from the broker."""
        ...

    async def subscribe(self, topic: str, group: str, *, max_in_flight: int, ordered: bool = False) -> Subscription: ...


# ---- configuration ----


@dataclass(slots=True, frozen=True)
class ConfigEntry:
    """One configuration item as a store keeps it; ``key`` is the full stored key."""

    key: str
    content: str
    tags: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    version: int = 0  # the store's revision; set by the store, ignored on writes

    @staticmethod
    def string_map(raw: str | bytes | None) -> dict[str, str]:
        """Tags or metadata as the bridges store them, a JSON object; anything else reads as empty."""
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except ValueError:
            return {}
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


@dataclass(slots=True, frozen=True)
class ConfigChange:
    """A key's new state: ``entry`` None means deleted.

    ``version`` orders the changes of one key: a write carries its new revision, a delete the
    revision it removed or a later one. Watchers may repeat a change (after a resync or from
    several workers); readers drop what they have already seen by comparing versions.
    """

    key: str
    version: int
    entry: ConfigEntry | None


ChangeSink = Callable[[list[ConfigChange]], Awaitable[None]]


@dataclass(slots=True)
class ConfigurationLimits:
    max_value_bytes: int = 1 << 20
    features: frozenset[str] = field(default_factory=frozenset)


class ConfigurationStore(Component, Protocol):
    """Keys arrive fully scoped (prefix, group and label joined by ``||``) and never hold ``||``
    inside their last part, so a scope is a plain prefix of the keys it holds."""

    limits: ConfigurationLimits

    async def get(self, keys: list[str]) -> list[ConfigEntry]:
        """The entries of the keys that exist, in no particular order."""
        ...

    async def list_scope(self, scope: str) -> list[ConfigEntry]:
        """Every entry whose key is ``scope`` followed by one last part."""
        ...

    async def write(self, sets: list[ConfigEntry], deletes: list[str]) -> None:
        """Write ``sets`` and delete ``deletes``, all or nothing. Deleting an absent key is no
        error and makes no change event."""
        ...

    async def watch(self, sink: ChangeSink) -> None:
        """Start pushing changes to ``sink`` until ``stop()``: first every current entry, then each
        change as the store sees it, with nothing lost in between. Idempotent."""
        ...


# ---- lock ----


class LockStatus(enum.IntEnum):
    """Outcome of an unlock or a renewal; the numbers are those of the native and Dapr enums."""

    SUCCESS = 0
    UNEXIST = 1
    BELONGS_TO_OTHERS = 2


class LockStore(Component, Protocol):
    """Non-reentrant locks with an expiry; resources arrive fully prefixed.

    ``try_lock`` takes a free resource for ``expire`` seconds and answers False when it is held,
    by anyone (the same owner included). ``unlock`` and ``keep_alive`` act only for the holder.
    """

    async def try_lock(self, resource: str, owner: str, expire: int) -> bool: ...

    async def unlock(self, resource: str, owner: str) -> LockStatus: ...

    async def keep_alive(self, resource: str, owner: str, expire: int) -> LockStatus: ...


# ---- sequencer ----


class Sequencer(Component, Protocol):
    """Counters per key; keys arrive fully prefixed.

    ``reserve`` takes the next ``count`` ids of ``key`` at once and returns the last of them, so
    the caller owns ``last - count + 1 .. last``. Every id it hands out is greater than ``floor``
    and than every id any earlier reservation of the key returned, whichever process made it.
    """

    async def reserve(self, key: str, count: int, floor: int) -> int: ...


# ---- file ----


@dataclass(slots=True, frozen=True)
class FileInfo:
    name: str
    size: int
    last_modified: float  # unix seconds
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class FilePage:
    files: list[FileInfo]
    truncated: bool  # more files follow the last one of ``files``


class FileStore(Component, Protocol):
    """Files by name. Names arrive checked by the handler: relative, '/'-separated segments, none
    empty, '.' or '..'. A file becomes visible only when its upload is complete, and of two uploads
    of one name the one that completes last wins."""

    async def put(self, name: str, chunks: AsyncIterator[bytes], metadata: dict[str, str]) -> FileInfo:
        """Store what ``chunks`` yields. If ``chunks`` raises, nothing is stored and the error goes on."""
        ...

    async def get(self, name: str) -> tuple[FileInfo, AsyncGenerator[bytes, None]]:
        """The file's info and its content (close the generator when done); NotFound if missing."""
        ...

    async def stat(self, name: str) -> FileInfo:
        """NotFound if missing."""
        ...

    async def list(self, directory: str, after: str, limit: int) -> FilePage:
        """Up to ``limit`` files under ``directory`` ("" is every file), at any depth, in name order,
        those whose name sorts after ``after`` only."""
        ...

    async def delete(self, name: str) -> None:
        """NotFound if missing."""
        ...


# ---- secrets ----


class SecretStore(Component, Protocol):
    """Secrets by name; a secret is a map of values (most stores hold one value, under its name)."""

    async def get(self, name: str) -> dict[str, str] | None:
        """None when the store has no such secret."""
        ...

    async def bulk(self) -> dict[str, dict[str, str]]:
        """Every secret the store holds."""
        ...


# ---- bindings ----


@dataclass(slots=True, frozen=True)
class BindingReply:
    data: bytes = b""
    metadata: dict[str, str] = field(default_factory=dict)


class OutputBinding(Component, Protocol):
    """An external system l8 sends to: ``invoke`` runs one of ``operations()``."""

    def operations(self) -> tuple[str, ...]: ...

    async def invoke(
        self, operation: str, data: bytes, metadata: dict[str, str], *, timeout: float, max_reply: int
    ) -> BindingReply:
        """Run ``operation`` within ``timeout`` seconds; a reply over ``max_reply`` bytes is refused
        with ResourceExhausted rather than read whole."""
        ...


@runtime_checkable
class InputBinding(Component, Protocol):
    """An external system l8 takes events from (an input binding).

    ``subscribe`` reads the binding's events for ``group``: each event goes to one subscriber of a
    group, every group gets every event (where the system can tell groups apart). Each event is a
    ``Received`` whose ``data`` is the event's data and whose ``headers`` are its metadata, as the
    app is to get them; settling works as for pub/sub (what a binding cannot keep, such as core
    NATS messages, it says in its docs). ``lease_seconds`` is ``PubSubLimits.lease_seconds``."""

    lease_seconds: float | None

    async def subscribe(self, group: str, *, max_in_flight: int, ordered: bool = False) -> Subscription: ...


# ---- hello (Layotto's demo) ----


class Hello(Component, Protocol):
    """Layotto's demo building block: a greeting, optionally for ``name``."""

    async def hello(self, name: str) -> str: ...


@runtime_checkable
class Reconfigurable(Protocol):
    """A component that takes a new full metadata while it runs (Layotto's ApplyConfiguration)."""

    async def apply(self, metadata: dict[str, str]) -> None: ...
