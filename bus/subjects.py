"""The subject scheme of the bus.

Every subject a sidecar may publish on ends in its own app id, so the bus itself can tell who sent
a message (a NATS user per app whose permissions cover only subjects ending in its id), never a
header that anyone could forge:

- ``l8.<ns>.<api>.<component>.<op>.<caller>``: requests to handlers, queue group
  ``l8.<ns>.<api>.<component>``.
- ``l8.<ns>.app.<target>.invoke.<caller>``: invocations of an app, answered by that app's sidecars
  in the queue group ``l8.<ns>.app.<target>.invoke``.
- ``l8.<ns>.app.<target>.event.<pubsub>.<topic key>``: events routed by the pub/sub workers to an
  app's sidecars, which push them to the app (queue group: the subject). Only workers publish here.
- ``l8.<ns>.app.<target>.stream.<pubsub>.<topic key>``: events for the app's streaming
  subscriptions, answered only by the sidecars that hold such a stream.
- ``l8.<ns>.app.<target>.binding.<binding>.<key>``: input binding events routed by the bindings
  workers to an app's sidecars (queue group: the subject's stem).
- ``l8.<ns>.evt.<pubsub>.<topic>``: topics of NATS-backed pub/sub components; the JetStream
  bridge owns that name (bridges/nats/pubsub.py), since bridges do not import the bus. Likewise
  ``l8.<ns>.cron.<binding>.<app>``, the ticks of cron bindings (bridges/cron/bindings.py).
- ``l8.<ns>.changes.<api>.<component>``: changes a component's workers push to every front
  (configuration).

Replies come to inboxes of the receiver's own: ``_INBOX.a.<ns>.<app>.…`` for an app's sidecars,
``_INBOX.w.<ns>.…`` for workers, ``_INBOX.c.<ns>.…`` for the CLI, so the bus can let each read only
its own (bus/permissions.py). The handler's end of a stream (bus/stream.py) listens on
``_INBOX.s.<random>``, which callers may send to but nobody can guess.

A *stem* is a subject without its last two tokens (``op.caller``, or ``pubsub.topic key``): the part
that names the route, which local dispatch looks up.
"""

from __future__ import annotations

import base64
import hashlib
import re

# A token is one dot-free piece of a subject; names that reach subjects are checked against it
# when the config loads, so a bad name fails at start rather than on the first request.
TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
# Free-form names (topics) become one bounded token: plain when short and plain, else base64url,
# else a digest; plain tokens never start with '_' or '~', so the three forms never collide.
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9-][A-Za-z0-9_-]{0,63}$")
_MAX_B64 = 64


def check_token(value: str, what: str) -> str:
    """Return ``value`` if it can be one subject token, else raise ValueError naming ``what``."""
    if not TOKEN.match(value):
        raise ValueError(f"{what} {value[:64]!r} may use only letters, digits, '_' and '-'")
    return value


def name_key(name: str) -> str:
    """One short subject token (also a valid KV key token) for any non-empty name."""
    if _PLAIN_KEY.match(name):
        return name
    encoded = base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")
    if len(encoded) <= _MAX_B64:
        return "_" + encoded
    return "~" + hashlib.sha256(name.encode()).hexdigest()[:40]


def request_subject(ns: str, api: str, component: str, op: str, caller: str) -> str:
    return f"l8.{ns}.{api}.{component}.{op}.{caller}"


def request_wildcard(ns: str, api: str, component: str) -> str:
    return f"l8.{ns}.{api}.{component}.*.*"


def queue_group(ns: str, api: str, component: str) -> str:
    return f"l8.{ns}.{api}.{component}"


def invoke_subject(ns: str, target: str, caller: str) -> str:
    return f"l8.{ns}.app.{target}.invoke.{caller}"


def invoke_wildcard(ns: str, target: str) -> str:
    return f"l8.{ns}.app.{target}.invoke.*"


def invoke_queue(ns: str, target: str) -> str:
    return f"l8.{ns}.app.{target}.invoke"


def invoke_stem(ns: str, target: str) -> str:
    return f"l8.{ns}.app.{target}"


def event_stem(ns: str, target: str, kind: str = "event") -> str:
    """``l8.<ns>.app.<target>.<kind>``: the events of one app (``event``) or of its streams (``stream``)."""
    return f"l8.{ns}.app.{target}.{kind}"


def event_subject(ns: str, target: str, pubsub: str, topic: str, kind: str = "event") -> str:
    return f"{event_stem(ns, target, kind)}.{pubsub}.{name_key(topic)}"


def changes_subject(ns: str, api: str, component: str) -> str:
    return f"l8.{ns}.changes.{api}.{component}"


def stem_of(subject: str) -> str:
    """The subject without its last two tokens."""
    return subject.rsplit(".", 2)[0]


def op_of(subject: str) -> str:
    """The second last token of a request subject: the operation."""
    return subject.rsplit(".", 2)[1]


def caller_of(subject: str) -> str:
    """The last token of a request or invocation subject: the caller's app id."""
    return subject.rpartition(".")[2]


INBOX = "_INBOX"
STREAM_INBOXES = "_INBOX.s"
# The kinds of bus identities: an app's sidecar, a worker, the CLI.
SIDECAR, WORKER, CLI = "a", "w", "c"


def inbox_prefix(kind: str, ns: str, app: str = "") -> str:
    """The reply inboxes of one identity (nats-py's ``inbox_prefix``)."""
    if kind == SIDECAR:
        return f"{INBOX}.{SIDECAR}.{ns}.{app}"
    return f"{INBOX}.{kind}.{ns}"
