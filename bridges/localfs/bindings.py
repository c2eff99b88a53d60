"""An output binding to a local directory (metadata ``root``): ``create``, ``get``, ``list`` and
``delete``, on the same files and rules as the local directory file store (bridges/localfs/file.py):
writes are atomic, names stay inside the root.

A call names its file in metadata ``fileName``; ``create`` without one makes a fresh name, and
answers it in the reply's ``fileName``. ``list`` answers a JSON array of the names under
``fileName`` (a directory; default: every file), in name order.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

from bridges.errors import InvalidArgument, ResourceExhausted
from bridges.localfs.file import LocalDirFileStore
from bridges.protocols import BindingReply
from bridges.registry import BridgeEnv

MAX_LIST = 10_000


class LocalDirBinding:
    def __init__(self, name: str, metadata: dict[str, str], env: BridgeEnv) -> None:
        self.name = name
        self._what = f"binding {name!r}"
        self._files = LocalDirFileStore(name, metadata, env)

    def features(self) -> frozenset[str]:
        return frozenset()

    def operations(self) -> tuple[str, ...]:
        return ("create", "get", "list", "delete")

    async def start(self) -> None:
        await self._files.start()

    async def stop(self) -> None:
        await self._files.stop()

    def _name(self, metadata: dict[str, str], *, required: bool = True) -> str:
        name = metadata.get("fileName", "").strip("/") if not required else metadata.get("fileName", "")
        if required and not name:
            raise InvalidArgument(f"{self._what}: metadata fileName is required")
        if name and self._files.root.is_reserved(name):
            raise InvalidArgument(f"{self._what}: fileName {name[:64]!r} starts with '.l8', which l8 reserves")
        if name:
            self._files.root.path_of(name)  # refuses absolute names, '..' and links out of the root
        return name

    async def invoke(
        self, operation: str, data: bytes, metadata: dict[str, str], *, timeout: float, max_reply: int
    ) -> BindingReply:
        if operation == "create":
            name = self._name(metadata) if metadata.get("fileName") else uuid.uuid4().hex
            await self._files.put(name, _once(data), {})
            return BindingReply(metadata={"fileName": name})
        if operation == "get":
            name = self._name(metadata)
            info, content = await self._files.get(name)
            if info.size > max_reply:
                await content.aclose()
                raise ResourceExhausted(f"{self._what}: {name[:64]!r} is {info.size} bytes; the most is {max_reply}")
            return BindingReply(b"".join([block async for block in content]))
        if operation == "delete":
            await self._files.delete(self._name(metadata))
            return BindingReply()
        page = await self._files.list(self._name(metadata, required=False), "", MAX_LIST)
        names = [f.name for f in page.files]
        return BindingReply(json.dumps(names).encode(), {"truncated": str(page.truncated).lower()})


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
