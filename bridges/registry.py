"""The one registry of bridge components, keyed by (kind, config ``type``), imported lazily.

A factory is ``factory(name, metadata, env) -> Component``; modules load only when a config
names their type, so an unused backend's driver costs neither start time nor memory.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

    from bridges.protocols import Component


@dataclass(slots=True)
class BridgeEnv:
    """What bridges may share: the bus's NATS connection, the namespace, the app id, and a way
    to hear when the connection was opened anew (its JetStream consumers are then gone)."""

    nats: Client | None
    namespace: str
    app_id: str
    on_reopen: Callable[[Callable[[], Awaitable[None]]], None] | None = None
    # A request with nats-py's ``Client.request`` signature and errors, cheaper per call (the bus's
    # one inbox per connection); the NATS bridges fall back to the driver's own when it is None.
    request: Callable[..., Awaitable[Msg]] | None = None


Factory = Callable[[str, dict[str, str], BridgeEnv], "Component"]

_REGISTRY: dict[str, dict[str, str]] = {
    "state": {
        "nats.kv": "bridges.nats.state:NatsKvStateStore",
        "redis": "bridges.redis.state:RedisStateStore",
    },
    "configuration": {
        "nats.kv": "bridges.nats.configuration:NatsKvConfigurationStore",
        "redis": "bridges.redis.configuration:RedisConfigurationStore",
    },
    "lock": {
        "nats.kv": "bridges.nats.lock:NatsKvLockStore",
        "redis": "bridges.redis.lock:RedisLockStore",
    },
    "sequencer": {
        "nats.kv": "bridges.nats.sequencer:NatsKvSequencer",
        "redis": "bridges.redis.sequencer:RedisSequencer",
    },
    "pubsub": {
        "kafka": "bridges.kafka.pubsub:KafkaPubSub",
        "redis": "bridges.redis.pubsub:RedisPubSub",
        "nats.jetstream": "bridges.nats.pubsub:JetStreamPubSub",
    },
    "file": {
        "nats.objectstore": "bridges.nats.file:NatsObjectFileStore",
        "local.dir": "bridges.localfs.file:LocalDirFileStore",
    },
    "secrets": {
        "env": "bridges.env.secrets:EnvSecretStore",
        "local.file": "bridges.localfs.secrets:LocalFileSecretStore",
    },
    "bindings": {
        "nats": "bridges.nats.bindings:NatsBinding",
        "kafka": "bridges.kafka.bindings:KafkaBinding",
        "http": "bridges.http.bindings:HttpBinding",
        "redis": "bridges.redis.bindings:RedisBinding",
        "local.dir": "bridges.localfs.bindings:LocalDirBinding",
        "cron": "bridges.cron.bindings:CronBinding",
    },
    "hello": {
        "helloworld": "bridges.helloworld.hello:HelloWorld",
    },
}

# What each type's bridge declares in features(), for listing components a process does not run
# (tests/test_dapr_http_metadata.py checks it against the running bridges).
FEATURES: dict[tuple[str, str], frozenset[str]] = {
    ("state", "nats.kv"): frozenset({"ETAG", "TRANSACTIONAL", "TTL"}),
    ("state", "redis"): frozenset({"ETAG", "TRANSACTIONAL", "TTL"}),
    ("configuration", "nats.kv"): frozenset({"WATCH"}),
    ("configuration", "redis"): frozenset({"WATCH"}),
    ("lock", "nats.kv"): frozenset({"TTL", "KEEPALIVE"}),
    ("lock", "redis"): frozenset({"TTL", "KEEPALIVE"}),
    ("sequencer", "nats.kv"): frozenset({"SEGMENT"}),
    ("sequencer", "redis"): frozenset({"SEGMENT"}),
    ("pubsub", "kafka"): frozenset({"TTL", "ORDERED", "BULK_PUBLISH"}),
    ("pubsub", "redis"): frozenset({"TTL", "ORDERED", "BULK_PUBLISH"}),
    ("pubsub", "nats.jetstream"): frozenset({"TTL", "ORDERED", "BULK"}),
    ("hello", "helloworld"): frozenset({"APPLY_CONFIGURATION"}),
}

# The bindings types that are also input bindings (bridges/protocols.py ``InputBinding``), with the
# metadata key that makes a component of the type one: a sidecar announces only those.
INPUTS: dict[str, str] = {"nats": "subject", "kafka": "topics", "cron": "schedule"}

KINDS = ("state", "pubsub", "invoke", "configuration", "lock", "sequencer", "file", "secrets", "bindings", "hello")


def types_for(kind: str) -> list[str]:
    return sorted(_REGISTRY.get(kind, {}))


def features_of(kind: str, type_: str) -> frozenset[str]:
    return FEATURES.get((kind, type_), frozenset())


def is_registered(kind: str, type_: str) -> bool:
    return type_ in _REGISTRY.get(kind, {})


def create(kind: str, type_: str, name: str, metadata: dict[str, str], env: BridgeEnv) -> Any:
    target = _REGISTRY.get(kind, {}).get(type_)
    if target is None:
        known = ", ".join(types_for(kind)) or "none yet"
        raise ValueError(f"unknown {kind} type {type_!r}; known types: {known}")
    module_name, _, attr = target.partition(":")
    factory: Factory = getattr(importlib.import_module(module_name), attr)
    return factory(name, metadata, env)
