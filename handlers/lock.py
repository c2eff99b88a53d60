"""The Lock API: TryLock, Unlock and LockKeepAlive on a LockStore.

Semantics (DESIGN.md): a lock is not reentrant, so TryLock on a held lock answers success=false
without an error, even to its owner; Unlock and LockKeepAlive answer SUCCESS, LOCK_UNEXIST or
LOCK_BELONG_TO_OTHERS; a lock frees itself when its expiry passes, and LockKeepAlive moves the
expiry to ``expire`` seconds from now. Resources are scoped per app id by default (``keyPrefix``).
The native messages are wire-compatible with Dapr's TryLockAlpha1/UnlockAlpha1 ones.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bridges.errors import InvalidArgument, Unimplemented
from bridges.protocols import LockStore
from handlers.base import KeyPrefix, RequestInfo
from handlers.proto import runtime_pb2 as pb

# Redis and NATS hold expiries far longer; a day keeps a forgotten lock from living forever.
MAX_EXPIRE = 86_400


class LockHandler:
    """Serves one lock component; ops are the last token of the request subject."""

    def __init__(self, component: str, store: LockStore, metadata: dict[str, str]) -> None:
        self.component = component
        self.store = store
        self.prefix = KeyPrefix(metadata.get("keyPrefix", "appid"), component)
        self._ops: dict[str, Callable[[bytes, RequestInfo], Awaitable[bytes]]] = {
            "trylock": self.try_lock,
            "unlock": self.unlock,
            "keepalive": self.keep_alive,
        }

    async def __call__(self, op: str, payload: bytes, ctx: RequestInfo) -> bytes:
        fn = self._ops.get(op)
        if fn is None:
            raise Unimplemented(f"lock has no operation {op!r}")
        return await fn(payload, ctx)

    async def try_lock(self, payload: bytes, ctx: RequestInfo) -> bytes:
        req = pb.TryLockRequest.FromString(payload)
        resource = self._resource(req.resource_id, req.lock_owner, ctx)
        expire = _expire(req.expire)
        success = await self.store.try_lock(resource, req.lock_owner, expire)
        data: bytes = pb.TryLockResponse(success=success).SerializeToString()
        return data

    async def unlock(self, payload: bytes, ctx: RequestInfo) -> bytes:
        req = pb.UnlockRequest.FromString(payload)
        resource = self._resource(req.resource_id, req.lock_owner, ctx)
        status = await self.store.unlock(resource, req.lock_owner)
        data: bytes = pb.UnlockResponse(status=int(status)).SerializeToString()  # type: ignore[arg-type]
        return data

    async def keep_alive(self, payload: bytes, ctx: RequestInfo) -> bytes:
        req = pb.LockKeepAliveRequest.FromString(payload)
        resource = self._resource(req.resource_id, req.lock_owner, ctx)
        expire = _expire(req.expire)
        status = await self.store.keep_alive(resource, req.lock_owner, expire)
        data: bytes = pb.LockKeepAliveResponse(status=int(status)).SerializeToString()  # type: ignore[arg-type]
        return data

    def _resource(self, resource_id: str, owner: str, ctx: RequestInfo) -> str:
        resource = self.prefix.apply(resource_id, ctx.app_id, "resource_id")
        if not owner:
            raise InvalidArgument("lock_owner is empty; give each would-be holder its own id, e.g. a UUID")
        return resource


def _expire(expire: int) -> int:
    if expire <= 0:
        raise InvalidArgument(f"expire must be a positive number of seconds; got {expire}")
    if expire > MAX_EXPIRE:
        raise InvalidArgument(f"expire may be at most {MAX_EXPIRE} seconds; got {expire}")
    return expire
