// A small SDK for the l8/1 ABI (docs/wasm-abi.md) in AssemblyScript, built with --runtime stub.
//
// The stub runtime never frees; the host calls l8_alloc once per call, for the input, before it
// calls an export, and that is when the SDK resets the heap, giving back what the previous call
// allocated.

@external("l8", "call")
declare function hostCall(op: i32, req: usize, reqLen: i32, resp: usize, respCap: i32): i64;
@external("l8", "take")
declare function hostTake(dst: usize): i32;
@external("l8", "log")
declare function hostLog(level: i32, ptr: usize, len: i32): void;

export const STATE_GET = 1;
export const STATE_SET = 2;
export const STATE_DELETE = 3;
export const PUBLISH = 4;
export const INVOKE = 5;
export const NEXT_ID = 6;
export const CONFIGURATION_GET = 7;
export const NOT_FOUND: i64 = -1;
export const RETRY: i64 = -1;
export const DROP: i64 = -2;

export function l8_alloc(len: i32): usize {
  heap.reset();
  return heap.alloc(<usize>len);
}

/** The data of a call's input (after the u32 length and the meta JSON). */
export function inputData(ptr: usize, len: i32): Uint8Array {
  const metaLen = load<u32>(ptr);
  return view(ptr + 4 + metaLen, len - 4 - <i32>metaLen);
}

/** A view of guest memory as a Uint8Array (copied, so it is an ordinary AssemblyScript array). */
export function view(ptr: usize, len: i32): Uint8Array {
  const out = new Uint8Array(len);
  memory.copy(out.dataStart, ptr, <usize>len);
  return out;
}

export function bytes(s: string): Uint8Array {
  return Uint8Array.wrap(String.UTF8.encode(s));
}

export function concat(parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (let i = 0; i < parts.length; i++) n += parts[i].length;
  const out = new Uint8Array(n);
  let at = 0;
  for (let i = 0; i < parts.length; i++) {
    out.set(parts[i], at);
    at += parts[i].length;
  }
  return out;
}

/** The return value that hands out to the host. */
export function output(out: Uint8Array): i64 {
  if (out.length == 0) return 0;
  return (<i64>out.dataStart << 32) | <i64>out.length;
}

/** The answer of a host call; code is the negative code of the call, or 0. */
export class Answer {
  constructor(public data: Uint8Array, public code: i64) {}
}

export function host(op: i32, fields: Uint8Array[]): Answer {
  let n = 0;
  for (let i = 0; i < fields.length; i++) n += 4 + fields[i].length;
  const req = new Uint8Array(n);
  let at = 0;
  for (let i = 0; i < fields.length; i++) {
    store<u32>(req.dataStart + at, fields[i].length);
    req.set(fields[i], at + 4);
    at += 4 + fields[i].length;
  }
  const resp = new Uint8Array(256);
  const got = hostCall(op, req.dataStart, n, resp.dataStart, 256);
  if (got < 0) return new Answer(new Uint8Array(0), got);
  if (got <= 256) return new Answer(resp.subarray(0, <i32>got), 0);
  const big = new Uint8Array(<i32>got);
  hostTake(big.dataStart);
  return new Answer(big, 0);
}

export function log(level: i32, text: string): void {
  const b = bytes(text);
  hostLog(level, b.dataStart, b.length);
}

export function find(hay: Uint8Array, needle: Uint8Array, from: i32 = 0): i32 {
  for (let i = from; i + needle.length <= hay.length; i++) {
    let j = 0;
    while (j < needle.length && hay[i + j] == needle[j]) j++;
    if (j == needle.length) return i;
  }
  return -1;
}

export function atoi(digits: Uint8Array): u64 {
  let v: u64 = 0;
  for (let i = 0; i < digits.length; i++) {
    const c = digits[i];
    if (c < 48 || c > 57) break;
    v = v * 10 + <u64>(c - 48);
  }
  return v;
}

export function itoa(v: u64): Uint8Array {
  return bytes(v.toString());
}
