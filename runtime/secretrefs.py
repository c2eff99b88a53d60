"""Component metadata from secret stores, resolved at start, and kept out of every output.

A component's metadata value may be ``{secretKeyRef: {name, key, store}}`` or ``{secretRef: name}``
(runtime/config.py). When the process builds that component it reads the value from the secret
store, in this process: the store this process serves if it serves it, else one opened for the
purpose and closed again once every component has started. References are the operator's, so the
stores' per-app scopes do not apply to them.

Every value resolved so is then redacted (``***``) from this process's log records, from the
errors of the components that used it (start failures, health reasons, request errors); a URL's
user, password, path and query are redacted on their own too. Values shorter than ``Redactor.MIN``
characters are not redacted: they would blank out ordinary words.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from bridges.errors import L8Error
from bridges.protocols import SecretStore
from runtime.config import ComponentConfig, Config

StoreOf = Callable[[str], Awaitable[SecretStore]]


class Redactor(logging.Filter):
    """Replaces known secret values with ``***`` in text and in the log records it filters."""

    MIN = 4

    def __init__(self) -> None:
        super().__init__()
        self._values: set[str] = set()
        self._installed: list[logging.Handler] = []

    def add(self, value: str) -> None:
        """Redact ``value``, and when it is a URL the parts that errors quote alone (user, password,
        path, query): a connection error names the host and path, not the whole URL."""
        parts = [value]
        if "://" in value:
            try:
                url = urlsplit(value)
                parts += [url.username or "", url.password or "", url.path, url.query, url.fragment]
                parts.append(f"{url.path}?{url.query}" if url.query else "")
            except ValueError:
                pass
        for part in parts:
            if len(part) >= self.MIN and part.strip("/"):
                self._values.add(part)

    def __bool__(self) -> bool:
        return bool(self._values)

    def redact(self, text: str) -> str:
        for value in sorted(self._values, key=len, reverse=True):
            if value in text:
                text = text.replace(value, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._values:
            return True
        message = record.getMessage()
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True

    def install(self) -> None:
        """Filter every handler of the root logger (where the CLI's and tests' handlers hang)."""
        for handler in logging.getLogger().handlers:
            if handler not in self._installed:
                handler.addFilter(self)
                self._installed.append(handler)

    def uninstall(self) -> None:
        for handler in self._installed:
            handler.removeFilter(self)
        self._installed.clear()


async def resolve(config: Config, comp: ComponentConfig, store_of: StoreOf, redactor: Redactor) -> dict[str, str]:
    """``comp``'s metadata with its secret references read; ValueError naming the field if one fails."""
    metadata = dict(comp.metadata)
    for field, ref in comp.secret_refs.items():
        store_name = config.secret_store_of(ref)
        where = f"metadata {field}: secret store {store_name!r}"
        values = await (await store_of(store_name)).get(ref.name)
        if values is None:
            raise ValueError(f"{where} has no secret {ref.name!r}")
        if ref.key is not None:
            if ref.key not in values:
                raise ValueError(f"{where}: secret {ref.name!r} has no key {ref.key!r}")
            value = values[ref.key]
        elif ref.name in values:
            value = values[ref.name]
        elif len(values) == 1:
            value = next(iter(values.values()))
        else:
            raise ValueError(f"{where}: secret {ref.name!r} holds several values; pick one with secretKeyRef.key")
        redactor.add(value)
        metadata[field] = value
    return metadata


class Redacting:
    """A handler whose errors are redacted; every other attribute is the handler's."""

    def __init__(self, handler: Any, redactor: Redactor) -> None:
        self._handler = handler
        self._redactor = redactor
        streams = getattr(handler, "streams", None)
        if streams:
            self.streams = {op: self._wrap(fn) for op, fn in streams.items()}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handler, name)

    async def __call__(self, op: str, payload: bytes, ctx: Any) -> bytes:
        try:
            reply: bytes = await self._handler(op, payload, ctx)
        except Exception as exc:
            raise self._scrubbed(exc) from None
        return reply

    def _wrap(self, fn: Callable[..., Awaitable[bytes]]) -> Callable[..., Awaitable[bytes]]:
        async def call(*args: Any) -> bytes:
            try:
                return await fn(*args)
            except Exception as exc:
                raise self._scrubbed(exc) from None

        return call

    def _scrubbed(self, exc: Exception) -> Exception:
        text = str(exc)
        clean = self._redactor.redact(text)
        if clean == text:
            return exc
        if isinstance(exc, L8Error):
            try:
                return type(exc)(clean)
            except TypeError:
                pass
        code = getattr(exc, "code", None)
        return _Scrubbed(code if isinstance(code, str) else "INTERNAL", clean)


class _Scrubbed(Exception):
    """A redacted error that is not one of bridges/errors.py: its code travels as the original's."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
