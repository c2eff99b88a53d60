"""An output binding to a NATS subject: ``publish`` (fire and forget, flushed to the server) and
``request`` (request/reply within the call's time).

Metadata: ``subject`` (required), ``url`` (a NATS server of its own; default: the bus's connection),
``timeoutSeconds`` (the longest a request waits, default 5; the caller's deadline may cut it
shorter). On the bus's own server the subject may not start with ``l8.``, ``$`` or ``_INBOX.``: those
are l8's requests, JetStream's API and replies, which an app must not reach through a binding. The
request's metadata travels as NATS headers; a reply's headers come back as the response metadata.
"""

from __future__ import annotations

import asyncio
import re

import nats
import nats.errors
from nats.aio.client import Client

from bridges.errors import BackendUnavailable, DeadlineExceeded, InvalidArgument, ResourceExhausted
from bridges.nats.errors import map_nats_errors
from bridges.protocols import BindingReply
from bridges.registry import BridgeEnv

_SUBJECT = re.compile(r"^[^\s.*>]+(\.[^\s.*>]+)*$")
_HEADER = re.compile(r"^[!-9;-~]+$")  # printable ASCII but ':'
_RESERVED = ("l8.", "$", "_INBOX.")


class NatsBinding:
    def __init__(self, name: str, metadata: dict[str, str], env: BridgeEnv) -> None:
        self.name = name
        self._what = f"binding {name!r}"
        self.subject = metadata.get("subject", "")
        if not _SUBJECT.match(self.subject):
            raise ValueError(f"{self._what}: metadata subject {self.subject!r} is not a NATS subject without wildcards")
        self._url = metadata.get("url") or ""
        if not self._url and self.subject.startswith(_RESERVED):
            raise ValueError(
                f"{self._what}: subject {self.subject!r} is l8's own on the bus; "
                "use another, or a server of its own (url)"
            )
        if not self._url and env.nats is None:
            raise ValueError(f"{self._what}: needs the bus connection or metadata url")
        self._timeout = float(metadata.get("timeoutSeconds", "5"))
        self._nc: Client | None = None if self._url else env.nats
        self._own = bool(self._url)

    def features(self) -> frozenset[str]:
        return frozenset()

    def operations(self) -> tuple[str, ...]:
        return ("publish", "request")

    async def start(self) -> None:
        if self._own and self._nc is None:
            with map_nats_errors(f"{self._what}: connecting to {self._url}"):
                try:
                    self._nc = await nats.connect(
                        servers=[u.strip() for u in self._url.split(",")],
                        name=f"l8-binding:{self.name}",
                        connect_timeout=self._timeout,
                        max_reconnect_attempts=-1,
                        allow_reconnect=True,
                    )
                except (OSError, nats.errors.NoServersError) as exc:
                    raise BackendUnavailable(f"{self._what}: cannot reach {self._url}: {exc}") from None

    async def stop(self) -> None:
        if self._own and self._nc is not None:
            nc, self._nc = self._nc, None
            try:
                await nc.drain()
            except Exception:
                await nc.close()

    def _headers(self, metadata: dict[str, str]) -> dict[str, str] | None:
        for key, value in metadata.items():
            if not _HEADER.match(key) or any(c in value for c in "\r\n\x00"):
                raise InvalidArgument(f"{self._what}: metadata {key[:64]!r} cannot be a NATS header")
        return metadata or None

    async def invoke(
        self, operation: str, data: bytes, metadata: dict[str, str], *, timeout: float, max_reply: int
    ) -> BindingReply:
        nc = self._nc
        if nc is None:
            raise BackendUnavailable(f"{self._what} is not started")
        headers = self._headers(metadata)
        what = f"{self._what}: {operation} on {self.subject}"
        with map_nats_errors(what):
            if operation == "publish":
                await nc.publish(self.subject, data, headers=headers)
                # The flush's round trip says the server has the message (core NATS acks no more).
                try:
                    async with asyncio.timeout(min(timeout, self._timeout)):
                        await nc.flush()
                except TimeoutError:
                    raise DeadlineExceeded(f"{what}: the server did not confirm in time") from None
                return BindingReply()
            try:
                msg = await nc.request(self.subject, data, timeout=min(timeout, self._timeout), headers=headers)
            except nats.errors.NoRespondersError:
                raise BackendUnavailable(f"{what}: nobody answers") from None
            except nats.errors.TimeoutError:
                raise DeadlineExceeded(f"{what}: no answer within {min(timeout, self._timeout):.3f}s") from None
        if len(msg.data) > max_reply:
            raise ResourceExhausted(f"{what}: the reply is {len(msg.data)} bytes; the most is {max_reply}")
        return BindingReply(msg.data, dict(msg.headers or {}))
