"""Secrets from a local JSON or YAML file (metadata ``secretsFile``), as Dapr's local file store.

Nested keys are flattened with ``nestedSeparator`` (default ``:``): ``{"db": {"password": "x"}}``
serves ``db:password``, and list items get their index (``hosts:0``). Scalars become strings (YAML
and JSON booleans as ``true``/``false``). The file is read once, at start; a file that cannot be read
or parsed stops the component with the position of the fault, never a quote of the file's content.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from bridges.registry import BridgeEnv


def flatten(value: Any, separator: str, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(value, dict):
        for key, inner in value.items():
            out.update(flatten(inner, separator, f"{prefix}{separator}{key}" if prefix else str(key)))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            out.update(flatten(inner, separator, f"{prefix}{separator}{i}" if prefix else str(i)))
    elif prefix:
        if isinstance(value, bool):
            out[prefix] = "true" if value else "false"
        else:
            out[prefix] = "" if value is None else str(value)
    return out


class LocalFileSecretStore:
    """A ``SecretStore`` on one file of this host, read at start."""

    def __init__(self, name: str, metadata: dict[str, str], env: BridgeEnv) -> None:
        self.name = name
        self.path = Path(metadata.get("secretsFile", "")).expanduser()
        if not metadata.get("secretsFile"):
            raise ValueError(f"secret store {name!r}: metadata secretsFile is required")
        self.separator = metadata.get("nestedSeparator") or ":"
        self._secrets: dict[str, str] = {}

    def features(self) -> frozenset[str]:
        return frozenset()

    async def start(self) -> None:
        what = f"secret store {self.name!r}: secretsFile {str(self.path)!r}"
        try:
            text = self.path.read_text()
        except OSError as exc:
            raise ValueError(f"{what}: cannot read it: {exc.strerror or type(exc).__name__}") from None
        self._secrets = flatten(_parse(text, self.path.suffix.lower(), what), self.separator)

    async def stop(self) -> None:
        return None

    async def get(self, name: str) -> dict[str, str] | None:
        value = self._secrets.get(name)
        return None if value is None else {name: value}

    async def bulk(self) -> dict[str, dict[str, str]]:
        return {k: {k: v} for k, v in self._secrets.items()}


def _parse(text: str, suffix: str, what: str) -> Any:
    # Parser messages quote the offending text, which may be a secret: only positions are reported.
    if suffix == ".json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{what}: not valid JSON at line {exc.lineno}, column {exc.colno}") from None
    else:
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ValueError(f"{what}: not valid YAML{where}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what}: the top level must be a mapping of names to secrets")
    return value
