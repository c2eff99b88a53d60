"""What each identity on the bus may publish and subscribe to: the NATS permissions that make the
bus, not a header, tell who sent a request (docs/security.md).

- An app's sidecar publishes only requests and invocations whose last token is its own app id (or
  the name of one of its functions, which act as app ids), subscribes only to its own inbox, its
  app's invocations and events (its input bindings' too) and the configuration changes every front
  hears; it may answer what it received (``allow_responses``) and send to the handler's end of a
  stream (``_INBOX.s.>``). It has no access to JetStream's API, KV or Object Store subjects: only workers touch those.
- A worker serves and publishes anything of its namespace (requests, events routed to apps, the
  changes it pushes), uses JetStream, and answers any inbox.
- The CLI (``l8 subscriptions``) reads the subscription registry's bucket and nothing else.

A process that is both a sidecar and a worker (``l8 run`` with in-process handlers) has the union.
The sets are data: the embedded server's config is made from them (bus/credentials.py), and
``l8 nats-users`` prints them for an external server.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bus import subjects


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True, slots=True)
class Permissions:
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    responses: bool = False  # may answer the reply subject of a message it received

    def __or__(self, other: Permissions) -> Permissions:
        return Permissions(
            _unique((*self.publish, *other.publish)),
            _unique((*self.subscribe, *other.subscribe)),
            self.responses or other.responses,
        )

    def to_json(self) -> dict[str, Any]:
        """In nats-server's config form."""
        out: dict[str, Any] = {"publish": {"allow": list(self.publish)}, "subscribe": {"allow": list(self.subscribe)}}
        if self.responses:
            out["allow_responses"] = True
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Permissions:
        return cls(
            tuple(raw.get("publish", {}).get("allow", ())),
            tuple(raw.get("subscribe", {}).get("allow", ())),
            bool(raw.get("allow_responses", False)),
        )


def sidecar(ns: str, ids: Sequence[str], apis: Sequence[str]) -> Permissions:
    """The sidecar of app ``ids[0]``, whose functions ``ids[1:]`` act as app ids of their own."""
    publish = [f"l8.{ns}.{api}.*.*.{caller}" for caller in ids for api in apis]
    publish += [f"l8.{ns}.app.*.invoke.{caller}" for caller in ids]
    publish.append(f"{subjects.STREAM_INBOXES}.>")
    subscribe = [f"{subjects.inbox_prefix(subjects.SIDECAR, ns, ids[0])}.>"]
    for target in ids:
        subscribe += [
            f"{subjects.invoke_wildcard(ns, target)}",
            f"{subjects.event_stem(ns, target, 'event')}.>",
            f"{subjects.event_stem(ns, target, 'stream')}.>",
            f"{subjects.event_stem(ns, target, 'binding')}.>",
        ]
    subscribe.append(f"l8.{ns}.changes.>")
    return Permissions(_unique(publish), _unique(subscribe), responses=True)


def worker(ns: str, publish_also: Iterable[str] = ()) -> Permissions:
    """A worker of namespace ``ns``; ``publish_also``: subjects of its NATS bindings, which it
    publishes to (output) and reads (input)."""
    bindings = tuple(publish_also)
    publish = (
        f"l8.{ns}.>",
        "$JS.API.>",
        "$JS.ACK.>",
        "$JS.FC.>",
        "$KV.>",
        "$O.>",
        f"{subjects.INBOX}.>",
        *bindings,
    )
    subscribe = (
        f"l8.{ns}.>",
        f"{subjects.inbox_prefix(subjects.WORKER, ns)}.>",
        f"{subjects.STREAM_INBOXES}.>",
        *bindings,
    )
    return Permissions(_unique(publish), subscribe)


def cli(ns: str) -> Permissions:
    """Reading the subscription registry (the KV bucket ``l8_<ns>_subscriptions``)."""
    stream = f"KV_l8_{ns}_subscriptions"
    publish = (
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.FC.{stream}.>",
    )
    return Permissions(publish, (f"{subjects.inbox_prefix(subjects.CLI, ns)}.>",))


def server_users(users: Iterable[tuple[str, str, Permissions]]) -> str:
    """A nats-server ``authorization`` block for ``(user, password, permissions)``; a password of
    the form ``$NAME`` is left as a reference to the server's environment variable ``NAME``."""
    lines = ["authorization {", "  users = ["]
    for user, password, perms in users:
        secret = password if password.startswith("$") else json.dumps(password)
        body = json.dumps(perms.to_json(), indent=None)
        lines.append(f"    {{user: {json.dumps(user)}, password: {secret}, permissions: {body}}}")
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"
