"""The one table of input limits, and the checks every front and handler uses.

Sizes are UTF-8 bytes. Each limit keeps one input from costing more than it is worth: keys and
names end up in NATS subjects (nats-server closes a connection whose protocol line passes 4 KiB),
in bus headers and in error messages; counts bound the work and memory of one request; numbers are
ranged so arithmetic on them cannot overflow a backend's type. The README's "Limits" section lists
the same values (a test keeps the two equal).
"""

from __future__ import annotations

from collections.abc import Mapping, Sized

from bridges.errors import InvalidArgument, quote

# ---- names ----
APP_ID = 128  # an app id (config, invocation targets); also the first part of every prefixed key
NAME = 128  # a component name (state store, pub/sub, ...) in config and in requests
NAMESPACE = 64
TOPIC = 249  # a pub/sub topic (Kafka's own limit); one subject token on NATS
METHOD = 1024  # an invoked method, path and query excluded
ENTRY_ID = 256  # a bulk publish entry id
# ---- keys ----
KEY = 1024  # state keys, lock resources, sequencer keys, configuration keys
LOCK_OWNER = 1024
GROUP = 256  # configuration group or label
ETAG = 64
TRACEPARENT = 512  # longer ones are dropped, not refused (they are advisory)
# ---- maps: request metadata, invocation metadata, configuration tags and metadata ----
MAP_ENTRIES = 64
MAP_KEY = 256
MAP_VALUE = 4096
# ---- counts per request ----
# keys of a bulk get or delete, states of a save, items or keys of a configuration call, bulk publish entries
BULK = 1000
# ---- numbers ----
TTL_SECONDS = 2**31 - 1  # ttlInSeconds: about 68 years, which every backend's expiry arithmetic holds
LOCK_EXPIRE_SECONDS = 86_400  # a day keeps a forgotten lock from living forever
MAX_IN_FLIGHT = 10_000  # maxInFlight of a streaming subscription (checked by runtime/subscriber.py)
# ---- files, secrets, bindings ----
FILE_NAME = 1024  # a file's name (a directory prefix, a ListFile marker): it becomes a path or an object name
FILE_SEGMENT = 255  # one '/'-separated part of a file name: what file systems take as one name
FILE_META_ENTRIES = 32  # metadata of one file, stored beside it
FILE_META_KEY = 128
FILE_META_VALUE = 1024
FILE_PAGE = 1000  # files in one ListFile answer
SECRET_KEY = 512  # a secret's name
BINDING_TARGETS = 64  # output bindings one answer to an input binding event sends to

# name -> (limit, unit, what it bounds): the README's table is checked against this one.
TABLE: dict[str, tuple[int, str, str]] = {
    "APP_ID": (APP_ID, "bytes", "app id"),
    "NAME": (NAME, "bytes", "component name"),
    "NAMESPACE": (NAMESPACE, "bytes", "namespace"),
    "TOPIC": (TOPIC, "bytes", "pub/sub topic"),
    "METHOD": (METHOD, "bytes", "invoked method"),
    "ENTRY_ID": (ENTRY_ID, "bytes", "bulk publish entry id"),
    "KEY": (KEY, "bytes", "state key, lock resource, sequencer key, configuration key"),
    "LOCK_OWNER": (LOCK_OWNER, "bytes", "lock owner"),
    "GROUP": (GROUP, "bytes", "configuration group or label"),
    "ETAG": (ETAG, "bytes", "etag"),
    "TRACEPARENT": (TRACEPARENT, "bytes", "traceparent (longer ones are dropped)"),
    "MAP_ENTRIES": (MAP_ENTRIES, "entries", "metadata, invocation metadata, configuration tags or metadata"),
    "MAP_KEY": (MAP_KEY, "bytes", "a key of such a map"),
    "MAP_VALUE": (MAP_VALUE, "bytes", "a value of such a map"),
    "BULK": (BULK, "items", "keys, states, items or entries of one request"),
    "TTL_SECONDS": (TTL_SECONDS, "seconds", "ttlInSeconds"),
    "LOCK_EXPIRE_SECONDS": (LOCK_EXPIRE_SECONDS, "seconds", "lock expire"),
    "MAX_IN_FLIGHT": (MAX_IN_FLIGHT, "events", "maxInFlight of a streaming subscription"),
    "FILE_NAME": (FILE_NAME, "bytes", "file name, directory prefix or ListFile marker"),
    "FILE_SEGMENT": (FILE_SEGMENT, "bytes", "one '/'-separated segment of a file name"),
    "FILE_META_ENTRIES": (FILE_META_ENTRIES, "entries", "metadata of one file"),
    "FILE_META_KEY": (FILE_META_KEY, "bytes", "a key of a file's metadata"),
    "FILE_META_VALUE": (FILE_META_VALUE, "bytes", "a value of a file's metadata"),
    "FILE_PAGE": (FILE_PAGE, "files", "page_size of ListFile"),
    "SECRET_KEY": (SECRET_KEY, "bytes", "secret name"),
    "BINDING_TARGETS": (BINDING_TARGETS, "bindings", "output bindings of one answer to an input binding event"),
}


def size(value: str) -> int:
    """UTF-8 bytes of ``value``, without encoding it when it is short enough to be sure."""
    n = len(value)
    return n if value.isascii() else len(value.encode())


def check_size(value: str, limit: int, what: str) -> str:
    """``value`` if it is at most ``limit`` bytes, else INVALID_ARGUMENT naming ``what``."""
    if len(value) * 4 > limit and size(value) > limit:
        raise InvalidArgument(f"{what} is {size(value)} bytes; at most {limit} are allowed: {quote(value)}")
    return value


def check_count(items: Sized, limit: int, what: str) -> None:
    if len(items) > limit:
        raise InvalidArgument(f"{what} holds {len(items)} items; at most {limit} are allowed")


def check_map(
    values: Mapping[str, str],
    what: str,
    entries: int = MAP_ENTRIES,
    key_bytes: int = MAP_KEY,
    value_bytes: int = MAP_VALUE,
) -> None:
    """A metadata-like map: at most ``entries`` entries of bounded keys and values."""
    if not values:
        return
    if len(values) > entries:
        raise InvalidArgument(f"{what} has {len(values)} entries; at most {entries} are allowed")
    for key, value in values.items():
        check_size(key, key_bytes, f"{what}: a key")
        check_size(value, value_bytes, f"{what}: the value of {quote(key)}")


def check_range(value: int, low: int, high: int, what: str) -> int:
    if not low <= value <= high:
        raise InvalidArgument(f"{what} must be from {low} to {high}; got {quote(str(value))}")
    return value
