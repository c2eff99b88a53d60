;; A small SDK for the l8/1 ABI (docs/wasm-abi.md) in WebAssembly text. scripts/build-guests puts it
;; inside the module before the function's own code, so a function calls $alloc, $put_field,
;; $host, $find and the number helpers below.
;;
;; Memory: a bump allocator from $heap_base. The host calls l8_alloc once per call, for the input,
;; before it calls an export; that is when everything the previous call allocated is given back.

  (import "l8" "call" (func $l8_call (param i32 i32 i32 i32 i32) (result i64)))
  (import "l8" "take" (func $l8_take (param i32) (result i32)))
  (import "l8" "log" (func $l8_log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (global $heap_base i32 (i32.const 4096))
  (global $heap (mut i32) (i32.const 4096))

  ;; Room for len bytes, 8-aligned; traps when memory cannot grow (the host's memory cap).
  (func $alloc (param $len i32) (result i32)
    (local $ptr i32) (local $end i32) (local $pages i32)
    (local.set $ptr (global.get $heap))
    (local.set $end (i32.and (i32.add (i32.add (local.get $ptr) (local.get $len)) (i32.const 7)) (i32.const -8)))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (local.set $pages
          (i32.add (i32.shr_u (i32.sub (local.get $end) (i32.mul (memory.size) (i32.const 65536))) (i32.const 16))
                   (i32.const 1)))
        (if (i32.eq (memory.grow (local.get $pages)) (i32.const -1)) (then unreachable))))
    (global.set $heap (local.get $end))
    (local.get $ptr))

  (func (export "l8_alloc") (param $len i32) (result i32)
    (global.set $heap (global.get $heap_base))
    (call $alloc (local.get $len)))

  ;; Writes a field (u32 len | bytes) at dst; answers the byte after it.
  (func $put_field (param $dst i32) (param $src i32) (param $len i32) (result i32)
    (i32.store (local.get $dst) (local.get $len))
    (memory.copy (i32.add (local.get $dst) (i32.const 4)) (local.get $src) (local.get $len))
    (i32.add (i32.add (local.get $dst) (i32.const 4)) (local.get $len)))

  ;; l8.call with a 256-byte answer buffer, taking larger answers: (ptr << 32 | len), or the
  ;; negative code of the call.
  (func $host (param $op i32) (param $req i32) (param $req_len i32) (result i64)
    (local $buf i32) (local $n i64)
    (local.set $buf (call $alloc (i32.const 256)))
    (local.set $n (call $l8_call (local.get $op) (local.get $req) (local.get $req_len) (local.get $buf) (i32.const 256)))
    (if (i64.lt_s (local.get $n) (i64.const 0)) (then (return (local.get $n))))
    (if (i64.gt_s (local.get $n) (i64.const 256))
      (then
        (local.set $buf (call $alloc (i32.wrap_i64 (local.get $n))))
        (drop (call $l8_take (local.get $buf)))))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $buf)) (i64.const 32)) (local.get $n)))

  (func $pack (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32)) (i64.extend_i32_u (local.get $len))))

  (func $log (param $level i32) (param $ptr i32) (param $len i32)
    (call $l8_log (local.get $level) (local.get $ptr) (local.get $len)))

  ;; The offset of needle in hay, or -1.
  (func $find (param $hay i32) (param $hay_len i32) (param $needle i32) (param $needle_len i32) (result i32)
    (local $i i32) (local $j i32)
    (block $none
      (loop $outer
        (br_if $none (i32.gt_s (i32.add (local.get $i) (local.get $needle_len)) (local.get $hay_len)))
        (local.set $j (i32.const 0))
        (block $miss
          (loop $inner
            (if (i32.eq (local.get $j) (local.get $needle_len)) (then (return (local.get $i))))
            (br_if $miss
              (i32.ne (i32.load8_u (i32.add (i32.add (local.get $hay) (local.get $i)) (local.get $j)))
                      (i32.load8_u (i32.add (local.get $needle) (local.get $j)))))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br $inner)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $outer)))
    (i32.const -1))

  ;; The decimal number in [ptr, ptr+len); stops at the first non-digit.
  (func $atoi (param $ptr i32) (param $len i32) (result i64)
    (local $v i64) (local $i i32) (local $c i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (local.set $c (i32.sub (i32.load8_u (i32.add (local.get $ptr) (local.get $i))) (i32.const 48)))
        (br_if $done (i32.gt_u (local.get $c) (i32.const 9)))
        (local.set $v (i64.add (i64.mul (local.get $v) (i64.const 10)) (i64.extend_i32_u (local.get $c))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (local.get $v))

  ;; Writes v in decimal at dst; answers the number of bytes.
  (func $itoa (param $v i64) (param $dst i32) (result i32)
    (local $n i32) (local $t i64) (local $i i32)
    (local.set $t (local.get $v))
    (loop $count
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (local.set $t (i64.div_u (local.get $t) (i64.const 10)))
      (br_if $count (i64.ne (local.get $t) (i64.const 0))))
    (local.set $i (local.get $n))
    (loop $digit
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (i32.add (local.get $dst) (local.get $i))
        (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $v) (i64.const 10)))))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (br_if $digit (i32.gt_s (local.get $i) (i32.const 0))))
    (local.get $n))
