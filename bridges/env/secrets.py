"""Secrets from this process's environment variables, within a prefix allow-list.

Metadata ``prefixes`` (comma separated) names the prefixes of the variables the store may serve;
``*`` allows every variable, and an empty list is refused, so a store never serves the whole
environment by accident. Names are served as they are (the prefix is not stripped), each secret
holding one value under its own name. Variables are read at every call, so a restart of the process
with new values is all an update needs.
"""

from __future__ import annotations

import os

from bridges.registry import BridgeEnv


class EnvSecretStore:
    """A ``SecretStore`` on ``os.environ``."""

    def __init__(self, name: str, metadata: dict[str, str], env: BridgeEnv) -> None:
        self.name = name
        prefixes = tuple(p.strip() for p in metadata.get("prefixes", "").split(",") if p.strip())
        if not prefixes:
            raise ValueError(
                f"secret store {name!r}: metadata prefixes is empty; name the prefixes of the variables it may "
                "serve (comma separated), or '*' for every variable"
            )
        self.prefixes = () if "*" in prefixes else prefixes

    def features(self) -> frozenset[str]:
        return frozenset()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def _allowed(self, key: str) -> bool:
        return not self.prefixes or key.startswith(self.prefixes)

    async def get(self, name: str) -> dict[str, str] | None:
        if not self._allowed(name):
            return None
        value = os.environ.get(name)
        return None if value is None else {name: value}

    async def bulk(self) -> dict[str, dict[str, str]]:
        return {k: {k: v} for k, v in os.environ.items() if self._allowed(k)}
