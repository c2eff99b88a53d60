"""The subject scheme of the bus.

- ``l8.<ns>.<api>.<component>.<op>``: requests to handlers, queue group ``l8.<ns>.<api>.<component>``.
- ``l8.<ns>.app.<app_id>.invoke``: invocations of an app, answered by that app's sidecars.
- ``l8.<ns>.evt.<pubsub>.<topic>``: topics of NATS-backed pub/sub components; the JetStream
  bridge owns that name (bridges/nats/pubsub.py), since bridges do not import the bus.
- ``l8.<ns>.<api>.<component>.events.changes``: changes a component's workers push to every front
  (configuration); one token longer than requests, so the request wildcard does not match it.
"""

from __future__ import annotations

import re

# A token is one dot-free piece of a subject; names that reach subjects are checked against it
# when the config loads, so a bad name fails at start rather than on the first request.
TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


def check_token(value: str, what: str) -> str:
    """Return ``value`` if it can be one subject token, else raise ValueError naming ``what``."""
    if not TOKEN.match(value):
        raise ValueError(f"{what} {value!r} may use only letters, digits, '_' and '-'")
    return value


def request_subject(ns: str, api: str, component: str, op: str) -> str:
    return f"l8.{ns}.{api}.{component}.{op}"


def request_wildcard(ns: str, api: str, component: str) -> str:
    return f"l8.{ns}.{api}.{component}.*"


def queue_group(ns: str, api: str, component: str) -> str:
    return f"l8.{ns}.{api}.{component}"


def invoke_subject(ns: str, app_id: str) -> str:
    return f"l8.{ns}.app.{app_id}.invoke"


def changes_subject(ns: str, api: str, component: str) -> str:
    return f"l8.{ns}.{api}.{component}.events.changes"


def op_of(subject: str) -> str:
    """The last token of a request subject: the operation."""
    return subject.rpartition(".")[2]
