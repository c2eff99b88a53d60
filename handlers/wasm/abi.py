"""The ``l8/1`` ABI (docs/wasm-abi.md): what a module must export and may import, the input layout,
the request fields of host calls and the codes they answer."""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import wasmtime

ABI = "l8/1"
IMPORT_MODULE = "l8"
WASI_MODULE = "wasi_snapshot_preview1"
ON_EVENT = "l8_on_event"
ON_INVOKE = "l8_on_invoke"
ALLOC = "l8_alloc"
INITIALIZE = "_initialize"

RETRY = -1
DROP = -2

_I32 = wasmtime.ValType.i32()
_I64 = wasmtime.ValType.i64()
_U32 = struct.Struct("<I")


class Op(enum.IntEnum):
    STATE_GET = 1
    STATE_SET = 2
    STATE_DELETE = 3
    PUBLISH = 4
    INVOKE = 5
    NEXT_ID = 6
    CONFIGURATION_GET = 7


# op -> (name, the number of fields it takes, the number it may take at most)
OPS: dict[int, tuple[str, int, int]] = {
    Op.STATE_GET: ("state.get", 2, 2),
    Op.STATE_SET: ("state.set", 3, 3),
    Op.STATE_DELETE: ("state.delete", 2, 2),
    Op.PUBLISH: ("publish", 3, 4),
    Op.INVOKE: ("invoke", 3, 3),
    Op.NEXT_ID: ("next_id", 2, 2),
    Op.CONFIGURATION_GET: ("configuration.get", 2, 2),
}


class Status(enum.IntEnum):
    """What ``call`` answers when it fails."""

    NOT_FOUND = -1
    FAILED = -2
    DENIED = -3
    TIMED_OUT = -4
    BAD_REQUEST = -5


# The imports of module ``l8``: name -> (params, results).
IMPORTS: dict[str, tuple[list[wasmtime.ValType], list[wasmtime.ValType]]] = {
    "call": ([_I32] * 5, [_I64]),
    "take": ([_I32], [_I32]),
    "log": ([_I32] * 3, []),
}


class ModuleError(Exception):
    """A module that l8 cannot run; the message says why."""


@dataclass(frozen=True, slots=True)
class Shape:
    """What the ABI check learned of a module."""

    on_event: bool
    on_invoke: bool
    initialize: bool
    wasi: bool
    initial_memory_bytes: int
    host_calls: bool = True  # it imports l8.call (or l8.take), so its calls may wait on other blocks


def _func_sig(ty: wasmtime.FuncType) -> str:
    params = ", ".join(str(p) for p in ty.params)
    results = ", ".join(str(r) for r in ty.results)
    return f"({params}) -> ({results})"


def check(module: wasmtime.Module) -> Shape:
    """Check a compiled module's exports and imports against ``l8/1``; ModuleError says what is wrong."""
    exports = {e.name: e.type for e in module.exports}
    memory = exports.get("memory")
    if not isinstance(memory, wasmtime.MemoryType):
        raise ModuleError("it does not export 'memory' (a memory)")
    if memory.is_64 or memory.is_shared:
        raise ModuleError("its memory must be a 32-bit, unshared memory")
    wanted = {
        ALLOC: ([_I32], [_I32]),
        ON_EVENT: ([_I32, _I32], [_I64]),
        ON_INVOKE: ([_I32, _I32], [_I64]),
        INITIALIZE: ([], []),
    }
    for name, (params, results) in wanted.items():
        ty = exports.get(name)
        if ty is None:
            continue
        if not isinstance(ty, wasmtime.FuncType) or ty.params != params or ty.results != results:
            have = _func_sig(ty) if isinstance(ty, wasmtime.FuncType) else type(ty).__name__
            raise ModuleError(
                f"export {name!r} has type {have}; {ABI} needs "
                f"({', '.join(map(str, params))}) -> ({', '.join(map(str, results))})"
            )
    if ALLOC not in exports:
        raise ModuleError(f"it does not export {ALLOC!r} ((i32) -> i32)")
    if ON_EVENT not in exports and ON_INVOKE not in exports:
        raise ModuleError(f"it exports neither {ON_EVENT!r} nor {ON_INVOKE!r}")
    wasi = False
    host_calls = False
    for imp in module.imports:
        if imp.module == WASI_MODULE and isinstance(imp.type, wasmtime.FuncType):
            wasi = True
            continue
        sig = IMPORTS.get(imp.name or "") if imp.module == IMPORT_MODULE else None
        if sig is None:
            raise ModuleError(
                f"it imports {imp.module}.{imp.name}, which l8 does not provide "
                f"({IMPORT_MODULE}.call, {IMPORT_MODULE}.take, {IMPORT_MODULE}.log and {WASI_MODULE} functions)"
            )
        if not isinstance(imp.type, wasmtime.FuncType) or imp.type.params != sig[0] or imp.type.results != sig[1]:
            have = _func_sig(imp.type) if isinstance(imp.type, wasmtime.FuncType) else type(imp.type).__name__
            raise ModuleError(f"it imports {imp.module}.{imp.name} as {have}; {ABI} defines {_func_sig_of(sig)}")
        host_calls = host_calls or imp.name != "log"
    return Shape(
        on_event=ON_EVENT in exports,
        on_invoke=ON_INVOKE in exports,
        initialize=INITIALIZE in exports,
        wasi=wasi,
        initial_memory_bytes=memory.limits.min * 65536,
        host_calls=host_calls,
    )


def _func_sig_of(sig: tuple[list[wasmtime.ValType], list[wasmtime.ValType]]) -> str:
    return f"({', '.join(map(str, sig[0]))}) -> ({', '.join(map(str, sig[1]))})"


def encode_input(meta: Mapping[str, Any], data: bytes) -> bytes:
    """``u32 meta_len | meta JSON | data``."""
    encoded = orjson.dumps(meta)
    return b"".join((_U32.pack(len(encoded)), encoded, data))


def decode_input(buf: bytes) -> tuple[dict[str, Any], bytes]:
    """The inverse of ``encode_input`` (guests and tests use it)."""
    (n,) = _U32.unpack_from(buf)
    meta: dict[str, Any] = json.loads(buf[4 : 4 + n])
    return meta, buf[4 + n :]


def encode_fields(*fields: bytes) -> bytes:
    """A host-call request: each field as ``u32 len | bytes``."""
    return b"".join(_U32.pack(len(f)) + f for f in fields)


def decode_fields(buf: bytes, at_least: int, at_most: int) -> list[bytes] | None:
    """The fields of a request, or None when it is not ``at_least``..``at_most`` well-formed fields."""
    fields: list[bytes] = []
    pos = 0
    end = len(buf)
    while pos < end:
        if len(fields) == at_most or pos + 4 > end:
            return None
        (n,) = _U32.unpack_from(buf, pos)
        pos += 4
        if pos + n > end:
            return None
        fields.append(bytes(buf[pos : pos + n]))
        pos += n
    return fields if len(fields) >= at_least else None


def split_result(r: int) -> tuple[int, int]:
    """The output pointer and length of a non-negative return value."""
    return r >> 32, r & 0xFFFFFFFF
