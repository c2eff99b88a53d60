"""Flow control, as Layotto's rules: at most ``threshold`` calls per second of a resource, a full
gRPC method (``/dapr.proto.runtime.v1.Dapr/GetState``) or an HTTP route (``POST /v1.0/state/{store}``,
or the route alone for every verb). A call over the limit answers RESOURCE_EXHAUSTED (HTTP 429) with
a message naming the rule, or, with ``max_wait_ms``, waits for its turn that long at most.

Each rule is a token bucket (``burst`` calls at once, refilled at ``threshold`` per second) of this
sidecar, so of its app: limits are per app and no sidecar waits on another (no global count).
Rules are reloadable: ``reload`` replaces them, and a bucket whose rule did not change keeps its
tokens.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

from runtime.ops_config import FlowRuleConfig

_GRPC = re.compile(r"^/[A-Za-z0-9_.]+/[A-Za-z0-9_]+$")
_HTTP = re.compile(r"^(?:(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) )?(/[^\s]*)$")


def parse_resource(resource: str) -> str:
    """The key calls are counted under: the method, or ``VERB /route`` (``* /route`` for any verb)."""
    if _GRPC.match(resource):
        return resource
    found = _HTTP.match(resource)
    if found is None:
        raise ValueError(
            f"resource {resource[:64]!r} is neither a gRPC method (/package.Service/Method) "
            "nor an HTTP route ([VERB ]/v1.0/...)"
        )
    return f"{found.group(1) or '*'} {found.group(2).rstrip('/') or '/'}"


class Limited(Exception):
    """A call refused by a rule; the message names the rule."""


@dataclass(slots=True)
class _Bucket:
    rule: FlowRuleConfig
    index: int
    rate: float
    burst: float
    tokens: float
    stamp: float

    def take(self, now: float) -> float:
        """Take a token: 0 when one was there, else the seconds until it will be (reserved)."""
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        wait = (1.0 - tokens) / self.rate
        if wait * 1000 > self.rule.max_wait_ms:
            self.tokens = tokens
            return -1.0
        self.tokens = tokens - 1.0  # reserved: the ones after it wait longer
        return wait

    def describe(self) -> str:
        return (
            f"flow control rule {self.index} ({self.rule.resource}: {self.rule.threshold:g} calls per second"
            f"{f', burst {int(self.burst)}' if self.rule.burst else ''}) refused the call: over the limit"
        )


class FlowControl:
    def __init__(self, rules: Iterable[FlowRuleConfig], app_id: str) -> None:
        self._app_id = app_id
        self._buckets: dict[str, _Bucket] = {}
        self.reload(rules)

    def reload(self, rules: Iterable[FlowRuleConfig]) -> None:
        old = self._buckets
        buckets: dict[str, _Bucket] = {}
        now = time.monotonic()
        for index, rule in enumerate(rules):
            if rule.app is not None and rule.app != self._app_id:
                continue
            key = parse_resource(rule.resource)
            kept = old.get(key)
            if kept is not None and kept.rule == rule:
                kept.index = index
                buckets[key] = kept
                continue
            burst = float(rule.burst or max(1, math.ceil(rule.threshold)))
            buckets[key] = _Bucket(rule, index, rule.threshold, burst, burst, now)
        self._buckets = buckets

    @property
    def resources(self) -> list[str]:
        return list(self._buckets)

    def bucket(self, *keys: str) -> _Bucket | None:
        buckets = self._buckets
        for key in keys:
            found = buckets.get(key)
            if found is not None:
                return found
        return None

    async def admit(self, bucket: _Bucket) -> bool:
        """Whether the call goes on (True: after waiting its turn); raises Limited when refused."""
        wait = bucket.take(time.monotonic())
        if wait == 0.0:
            return False
        if wait < 0.0:
            raise Limited(bucket.describe())
        await asyncio.sleep(wait)
        return True
