"""The Secrets API: GetSecret and GetBulkSecret on a SecretStore, within per-app scopes.

Scopes follow Dapr's secret scoping, set on each store's metadata: ``defaultAccess`` (``allow``, the
default, or ``deny``), ``allowedSecrets`` and ``deniedSecrets`` (comma-separated names) apply to
every app, and ``scopes.<app-id>.<same key>`` replaces one of them for that app. A denied name is
never served; when an allow-list is set only its names are; otherwise ``defaultAccess`` decides.
GetSecret outside the scope answers PERMISSION_DENIED; GetBulkSecret leaves such secrets out.
Errors name secrets, never their values.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from bridges.errors import InvalidArgument, NotFound, PermissionDenied, Unimplemented
from bridges.protocols import SecretStore
from handlers import limits
from handlers.base import RequestInfo, short
from handlers.proto import runtime_pb2 as pb

MAX_KEY = limits.SECRET_KEY
SCOPES = "scopes."
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SCOPE_KEYS = ("defaultAccess", "allowedSecrets", "deniedSecrets")


@dataclass(slots=True, frozen=True)
class Scope:
    default_allow: bool = True
    allowed: frozenset[str] = frozenset()
    denied: frozenset[str] = frozenset()

    def allows(self, name: str) -> bool:
        if name in self.denied:
            return False
        if self.allowed:
            return name in self.allowed
        return self.default_allow


def _names(raw: str) -> frozenset[str]:
    return frozenset(n.strip() for n in raw.split(",") if n.strip())


def _scope(values: Mapping[str, str], where: str) -> Scope:
    access = values.get("defaultAccess", "allow").strip().lower() or "allow"
    if access not in ("allow", "deny"):
        raise ValueError(f"metadata {where}defaultAccess: {access!r} is neither 'allow' nor 'deny'")
    return Scope(access == "allow", _names(values.get("allowedSecrets", "")), _names(values.get("deniedSecrets", "")))


def scopes_of(metadata: Mapping[str, str]) -> tuple[Scope, dict[str, Scope]]:
    """The store-wide scope and the per-app ones from a store's metadata."""
    common = {k: metadata[k] for k in _SCOPE_KEYS if k in metadata}
    per_app: dict[str, dict[str, str]] = {}
    for key, value in metadata.items():
        if not key.startswith(SCOPES):
            continue
        app, _, setting = key[len(SCOPES) :].rpartition(".")
        if not app or setting not in _SCOPE_KEYS:
            raise ValueError(f"metadata {key}: expected scopes.<app-id>.{'|'.join(_SCOPE_KEYS)}")
        per_app.setdefault(app, {})[setting] = value
    return _scope(common, ""), {app: _scope({**common, **values}, f"scopes.{app}.") for app, values in per_app.items()}


class SecretsHandler:
    """Serves one secret store; ops are the last token of the request subject."""

    def __init__(self, component: str, store: SecretStore, metadata: dict[str, str]) -> None:
        self.component = component
        self.store = store
        self.scope, self.app_scopes = scopes_of(metadata)
        self._ops: dict[str, Callable[[bytes, RequestInfo], Awaitable[bytes]]] = {
            "get": self.get,
            "bulkget": self.bulk_get,
        }

    async def __call__(self, op: str, payload: bytes, ctx: RequestInfo) -> bytes:
        fn = self._ops.get(op)
        if fn is None:
            raise Unimplemented(f"secrets has no operation {op!r}")
        return await fn(payload, ctx)

    def _scope_of(self, app_id: str) -> Scope:
        return self.app_scopes.get(app_id, self.scope)

    async def get(self, payload: bytes, ctx: RequestInfo) -> bytes:
        req = pb.GetSecretRequest.FromString(payload)
        key = req.key
        if not key:
            raise InvalidArgument(f"the secret's key is empty; secret store {self.component!r} needs a name")
        if limits.size(key) > MAX_KEY:
            raise InvalidArgument(f"secret key {short(key)} is over {MAX_KEY} bytes")
        if _CONTROL.search(key):
            raise InvalidArgument(f"secret key {short(key)} holds a control character")
        limits.check_map(req.metadata, f"secret {short(key)}: metadata")
        if not self._scope_of(ctx.app_id).allows(key):
            raise PermissionDenied(
                f"app {ctx.app_id!r} may not read secret {short(key)} of secret store {self.component!r}"
            )
        values = await self.store.get(key)
        if values is None:
            raise NotFound(f"secret store {self.component!r} has no secret {short(key)}")
        data: bytes = pb.GetSecretResponse(data=values).SerializeToString()
        return data

    async def bulk_get(self, payload: bytes, ctx: RequestInfo) -> bytes:
        req = pb.GetBulkSecretRequest.FromString(payload)
        limits.check_map(req.metadata, f"secret store {self.component!r}: metadata")
        scope = self._scope_of(ctx.app_id)
        resp = pb.GetBulkSecretResponse()
        for name, values in sorted((await self.store.bulk()).items()):
            if scope.allows(name):
                resp.data[name].secrets.update(values)
        data: bytes = resp.SerializeToString()
        return data
