"""How l8 proves itself to NATS: user and password, token, NKey seed, creds file, TLS client certs.

Secrets are read from files or config by the runtime and handed here as values; they go to the
driver's connect call only, never into a log line, an error message or a process's argv.
``redact`` takes credentials out of server URLs before they are shown anywhere.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from typing import Any

_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")


def redact(url: str) -> str:
    """``nats://user:secret@host:4222`` → ``nats://***@host:4222``; other URLs as they are."""
    return _USERINFO.sub("***@", url)


def redact_all(servers: list[str]) -> str:
    return ",".join(redact(u) for u in servers)


@dataclass(frozen=True, slots=True)
class BusAuth:
    """Credentials for an external bus; every field is optional and they combine as NATS allows."""

    user: str | None = None
    password: str | None = None
    token: str | None = None
    nkey_seed: str | None = None  # the seed itself ("SU..."), read from its file by the runtime
    creds_file: str | None = None  # a path: the driver reads the JWT and seed from it
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_server_name: str | None = None

    def __repr__(self) -> str:  # never print a secret, even in a traceback's locals
        shown = [f"user={self.user!r}"] if self.user else []
        shown += [name for name in ("password", "token", "nkey_seed") if getattr(self, name)]
        shown += [f"{name}={getattr(self, name)!r}" for name in ("creds_file", "tls_ca_file", "tls_cert_file")]
        return f"BusAuth({', '.join(shown)})"

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca_file or self.tls_cert_file)

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.tls_ca_file)
        if self.tls_cert_file:
            context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        return context

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect``."""
        options: dict[str, Any] = {}
        if self.user is not None:
            options["user"] = self.user
            options["password"] = self.password or ""
        if self.token is not None:
            options["token"] = self.token
        if self.nkey_seed is not None:
            options["nkeys_seed_str"] = self.nkey_seed
        if self.creds_file is not None:
            options["user_credentials"] = self.creds_file
        context = self.ssl_context()
        if context is not None:
            options["tls"] = context
            if self.tls_server_name:
                options["tls_hostname"] = self.tls_server_name
        return options
