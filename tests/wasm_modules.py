"""WebAssembly modules for the function tests: the guests built by scripts/build-guests, and WAT
modules that probe the host or break the ABI on purpose."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import wasmtime

REPO = Path(__file__).parent.parent
BUILD = REPO / "guests" / "build"
GUESTS = ("wat", "rust", "go", "as")


def build_guests() -> dict[str, Path]:
    """Run scripts/build-guests (it rebuilds only what changed) and answer each guest's module."""
    subprocess.run([str(REPO / "scripts" / "build-guests")], check=True, cwd=REPO)
    return {g: BUILD / f"orders-{g}.wasm" for g in GUESTS}


def wat(text: str) -> bytes:
    return wasmtime.wat2wasm(text)


_IMPORTS = """
  (import "l8" "call" (func $call (param i32 i32 i32 i32 i32) (result i64)))
  (import "l8" "take" (func $take (param i32) (result i32)))
  (import "l8" "log" (func $log (param i32 i32 i32)))
"""


# A module that imports only l8.log cannot wait on anything: l8 runs its calls inline.
_LOG_ONLY = """
  (import "l8" "log" (func $log (param i32 i32 i32)))
"""


def invoke_module(
    body: str, *, memory: str = '(memory (export "memory") 4)', extra: str = "", inline: bool = False
) -> bytes:
    """A module whose l8_on_invoke is ``body`` (params $p $n, result i64), input at 65536; with
    ``inline`` it imports only l8.log, so its calls run on the event loop's thread."""
    return wat(
        f"""(module {_LOG_ONLY if inline else _IMPORTS}
  {memory}
  (func (export "l8_alloc") (param i32) (result i32) (i32.const 65536))
  (func (export "l8_on_invoke") (param $p i32) (param $n i32) (result i64) {body})
  {extra})"""
    )


# The input's data is u32 op | u32 resp_cap | request; the output is the i64 that l8.call
# answered, then the response (taken when it did not fit in resp_cap).
PROBE = invoke_module(
    """
    (local $data i32) (local $len i32) (local $r i64)
    (local.set $data (i32.add (i32.add (local.get $p) (i32.const 4)) (i32.load (local.get $p))))
    (local.set $len (i32.sub (i32.add (local.get $p) (local.get $n)) (local.get $data)))
    (local.set $r (call $call (i32.load (local.get $data)) (i32.add (local.get $data) (i32.const 8))
                             (i32.sub (local.get $len) (i32.const 8)) (i32.const 8)
                             (i32.load offset=4 (local.get $data))))
    (i64.store (i32.const 0) (local.get $r))
    (if (i64.lt_s (local.get $r) (i64.const 0)) (then (return (i64.const 8))))
    (if (i64.gt_s (local.get $r) (i64.extend_i32_u (i32.load offset=4 (local.get $data))))
      (then (drop (call $take (i32.const 8)))))
    (i64.add (i64.const 8) (local.get $r))"""
)


def probe_input(op: int, *fields: bytes, cap: int = 4096) -> bytes:
    from handlers.wasm.abi import encode_fields

    return struct.pack("<II", op, cap) + encode_fields(*fields)


def probe_answer(out: bytes) -> tuple[int, bytes]:
    (r,) = struct.unpack_from("<q", out)
    return r, out[8:]


BAD = {
    "invalid bytes": b"\x00asm\x01\x00\x00\x00garbage",
    "missing export": wat(
        '(module (memory (export "memory") 1) (func (export "l8_on_invoke") (param i32 i32) (result i64) i64.const 0))'
    ),
    "unknown import": wat(
        '(module (import "env" "abort" (func)) (memory (export "memory") 1)'
        ' (func (export "l8_alloc") (param i32) (result i32) i32.const 0)'
        ' (func (export "l8_on_invoke") (param i32 i32) (result i64) i64.const 0))'
    ),
    "initial memory over the cap": invoke_module("(i64.const 0)", memory='(memory (export "memory") 2000)'),
}

# Modules that break a limit, by name: (body, memory). Each is built for a lane (it imports
# l8.call) or inline (l8.log only) by ``limit_module``.
_LIMITS = {
    "trap": ("unreachable", None),
    "loop": ("(loop $forever (br $forever)) (i64.const 0)", None),
    "memory bomb": (
        "(loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) unreachable",
        None,
    ),
    "bogus pointer": ("(i64.const 0x7fff000000000010)", None),
    # 2 MiB of output from a 3 MiB memory: inside its memory, over a 1 MiB output cap.
    "oversize": ("(i64.const 0x200000)", '(memory (export "memory") 48)'),
    # Calls log until the host refuses: more host calls than limits.maxHostCalls.
    "chatty": (
        "(local $i i32) (loop $again (call $log (i32.const 0) (i32.const 0) (i32.const 1))"
        " (local.set $i (i32.add (local.get $i) (i32.const 1)))"
        " (br_if $again (i32.lt_u (local.get $i) (i32.const 1000)))) (i64.const 0)",
        None,
    ),
    "echo": (
        """(local $data i32)
    (local.set $data (i32.add (i32.add (local.get $p) (i32.const 4)) (i32.load (local.get $p))))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $data)) (i64.const 32))
            (i64.extend_i32_u (i32.sub (i32.add (local.get $p) (local.get $n)) (local.get $data))))""",
        None,
    ),
}
WHERE = ("lane", "inline")


def limit_module(name: str, where: str = "lane") -> bytes:
    body, memory = _LIMITS[name]
    if memory is None:
        return invoke_module(body, inline=where == "inline")
    return invoke_module(body, memory=memory, inline=where == "inline")


TRAP, LOOP, ECHO = limit_module("trap"), limit_module("loop"), limit_module("echo")
HOST_BAD_POINTER = invoke_module(
    """(i64.store (i32.const 0)
      (call $call (i32.const 1) (i32.const 0x7ffffff0) (i32.const 16) (i32.const 8) (i32.const 64)))
    (i64.const 8)"""
)


def echo_version(tag: int) -> bytes:
    """An echo module that answers ``tag`` (a different module for each tag)."""
    return invoke_module(f"(i64.store (i32.const 0) (i64.const {tag})) (i64.const 8)")


def event_module(body: str, *, data: str = "", invoke: str | None = None) -> bytes:
    """A module whose l8_on_event is ``body`` (params $p $n, result i64; locals $data $len hold the
    event's data, $end is free), input at 65536, scratch from 1024; ``data`` adds data segments below 1024, and
    ``invoke`` an l8_on_invoke body of the same shape."""
    prologue = """(local $data i32) (local $len i32) (local $end i32)
    (local.set $data (i32.add (i32.add (local.get $p) (i32.const 4)) (i32.load (local.get $p))))
    (local.set $len (i32.sub (i32.add (local.get $p) (local.get $n)) (local.get $data)))"""
    on_invoke = (
        f'(func (export "l8_on_invoke") (param $p i32) (param $n i32) (result i64) {prologue} {invoke})'
        if invoke is not None
        else ""
    )
    return wat(
        f"""(module {_IMPORTS}
  (memory (export "memory") 4)
  {data}
  (func (export "l8_alloc") (param i32) (result i32) (i32.const 65536))
  ;; u32 len | bytes of len at src, written at dst; answers the end
  (func $field (param $dst i32) (param $src i32) (param $len i32) (result i32)
    (i32.store (local.get $dst) (local.get $len))
    (memory.copy (i32.add (local.get $dst) (i32.const 4)) (local.get $src) (local.get $len))
    (i32.add (i32.add (local.get $dst) (i32.const 4)) (local.get $len)))
  (func (export "l8_on_event") (param $p i32) (param $n i32) (result i64) {prologue} {body})
  {on_invoke})"""
    )


# Logs the event's data, then answers by its first byte: "r" RETRY, "d" DROP, "t" traps, else SUCCESS.
VERDICT = event_module(
    """(call $log (i32.const 1) (local.get $data) (local.get $len))
    (if (i32.eq (i32.load8_u (local.get $data)) (i32.const 114)) (then (return (i64.const -1))))
    (if (i32.eq (i32.load8_u (local.get $data)) (i32.const 100)) (then (return (i64.const -2))))
    (if (i32.eq (i32.load8_u (local.get $data)) (i32.const 116)) (then unreachable))
    (i64.const 0)"""
)

# The first time it sees an event (no state key "held" yet) it sets "held", logs "holding" and
# loops until its deadline; once "held" is set it sets "done" and succeeds. Both keys in store
# `statestore`, under the function's own prefix.
_STATESTORE = '(data (i32.const 16) "statestore") (data (i32.const 32) "held") (data (i32.const 48) "done")'
HOLD = event_module(
    """(local.set $end (call $field (i32.const 1024) (i32.const 16) (i32.const 10)))
    (local.set $end (call $field (local.get $end) (i32.const 32) (i32.const 4)))
    (if (i64.eq (call $call (i32.const 1) (i32.const 1024) (i32.sub (local.get $end) (i32.const 1024))
                            (i32.const 4096) (i32.const 64)) (i64.const -1))
      (then
        (local.set $end (call $field (local.get $end) (i32.const 32) (i32.const 4)))
        (drop (call $call (i32.const 2) (i32.const 1024) (i32.sub (local.get $end) (i32.const 1024))
                          (i32.const 4096) (i32.const 64)))
        (call $log (i32.const 1) (i32.const 32) (i32.const 4))
        (loop $forever (br $forever))))
    (local.set $end (call $field (i32.const 1024) (i32.const 16) (i32.const 10)))
    (local.set $end (call $field (local.get $end) (i32.const 48) (i32.const 4)))
    (local.set $end (call $field (local.get $end) (i32.const 48) (i32.const 4)))
    (drop (call $call (i32.const 2) (i32.const 1024) (i32.sub (local.get $end) (i32.const 1024))
                      (i32.const 4096) (i32.const 64)))
    (i64.const 0)""",
    data=_STATESTORE,
)
