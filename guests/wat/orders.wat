;; The example function (README, "Functions"): on an `orders` event it counts the event's customer
;; in state (key count-<customer> of store `statestore`) and publishes `order-audited`
;; {"customer", "count"} on `pubsub`; on an invocation whose body is a customer id it answers
;; that customer's count.

  (data (i32.const 16) "statestore")
  (data (i32.const 32) "pubsub")
  (data (i32.const 48) "order-audited")
  (data (i32.const 64) "count-")
  (data (i32.const 80) "\"customer\":\"")
  (data (i32.const 96) "{\"customer\":\"")
  (data (i32.const 112) "\",\"count\":")
  (data (i32.const 128) "}")
  (data (i32.const 136) "0")

  ;; After a JSON key: skips blanks and the colon up to the string's opening quote; answers the
  ;; byte after it, or 0 when what follows is not a string.
  (func $value_start (param $at i32) (param $end i32) (result i32)
    (local $c i32)
    (block $done
      (loop $skip
        (br_if $done (i32.ge_u (local.get $at) (local.get $end)))
        (local.set $c (i32.load8_u (local.get $at)))
        (local.set $at (i32.add (local.get $at) (i32.const 1)))
        (if (i32.eq (local.get $c) (i32.const 34)) (then (return (local.get $at))))
        (br_if $skip (i32.or (i32.or (i32.eq (local.get $c) (i32.const 32)) (i32.eq (local.get $c) (i32.const 58)))
                             (i32.or (i32.eq (local.get $c) (i32.const 9)) (i32.eq (local.get $c) (i32.const 10)))))))
    (i32.const 0))

  ;; The state key count-<customer>, as (ptr << 32 | len).
  (func $key (param $cust i32) (param $cust_len i32) (result i64)
    (local $k i32)
    (local.set $k (call $alloc (i32.add (local.get $cust_len) (i32.const 6))))
    (memory.copy (local.get $k) (i32.const 64) (i32.const 6))
    (memory.copy (i32.add (local.get $k) (i32.const 6)) (local.get $cust) (local.get $cust_len))
    (call $pack (local.get $k) (i32.add (local.get $cust_len) (i32.const 6))))

  ;; state.get of a key: the answer as (ptr << 32 | len), or the negative code.
  (func $get (param $key i64) (result i64)
    (local $req i32) (local $end i32) (local $klen i32)
    (local.set $klen (i32.wrap_i64 (local.get $key)))
    (local.set $req (call $alloc (i32.add (local.get $klen) (i32.const 32))))
    (local.set $end (call $put_field (local.get $req) (i32.const 16) (i32.const 10)))
    (local.set $end (call $put_field (local.get $end) (i32.wrap_i64 (i64.shr_u (local.get $key) (i64.const 32))) (local.get $klen)))
    (call $host (i32.const 1) (local.get $req) (i32.sub (local.get $end) (local.get $req))))

  (func (export "l8_on_event") (param $ptr i32) (param $len i32) (result i64)
    (local $data i32) (local $data_len i32) (local $pos i32) (local $cust i32) (local $cust_len i32)
    (local $key i64) (local $r i64) (local $count i64) (local $num i32) (local $num_len i32)
    (local $req i32) (local $end i32) (local $ev i32) (local $ev_end i32)
    (local.set $data (i32.add (i32.add (local.get $ptr) (i32.const 4)) (i32.load (local.get $ptr))))
    (local.set $data_len (i32.sub (i32.add (local.get $ptr) (local.get $len)) (local.get $data)))
    (local.set $pos (call $find (local.get $data) (local.get $data_len) (i32.const 80) (i32.const 10)))
    (if (i32.lt_s (local.get $pos) (i32.const 0)) (then (return (i64.const -2))))
    (local.set $cust (call $value_start (i32.add (i32.add (local.get $data) (local.get $pos)) (i32.const 10))
                                        (i32.add (local.get $data) (local.get $data_len))))
    (if (i32.eqz (local.get $cust)) (then (return (i64.const -2))))
    (local.set $cust_len
      (call $find (local.get $cust) (i32.sub (i32.add (local.get $data) (local.get $data_len)) (local.get $cust))
                  (i32.const 80) (i32.const 1)))
    (if (i32.le_s (local.get $cust_len) (i32.const 0)) (then (return (i64.const -2))))
    (local.set $key (call $key (local.get $cust) (local.get $cust_len)))
    (local.set $r (call $get (local.get $key)))
    (if (i64.eq (local.get $r) (i64.const -1))
      (then (local.set $count (i64.const 0)))
      (else
        (if (i64.lt_s (local.get $r) (i64.const 0)) (then (return (i64.const -1))))
        (local.set $count
          (call $atoi (i32.wrap_i64 (i64.shr_u (local.get $r) (i64.const 32))) (i32.wrap_i64 (local.get $r))))))
    (local.set $count (i64.add (local.get $count) (i64.const 1)))
    (local.set $num (call $alloc (i32.const 24)))
    (local.set $num_len (call $itoa (local.get $count) (local.get $num)))
    ;; state.set [statestore, key, count]
    (local.set $req (call $alloc (i32.add (i32.wrap_i64 (local.get $key)) (i32.const 64))))
    (local.set $end (call $put_field (local.get $req) (i32.const 16) (i32.const 10)))
    (local.set $end (call $put_field (local.get $end)
      (i32.wrap_i64 (i64.shr_u (local.get $key) (i64.const 32))) (i32.wrap_i64 (local.get $key))))
    (local.set $end (call $put_field (local.get $end) (local.get $num) (local.get $num_len)))
    (if (i64.lt_s (call $host (i32.const 2) (local.get $req) (i32.sub (local.get $end) (local.get $req))) (i64.const 0))
      (then (return (i64.const -1))))
    ;; publish [pubsub, order-audited, {"customer":"<c>","count":<n>}]
    (local.set $ev (call $alloc (i32.add (local.get $cust_len) (i32.const 64))))
    (memory.copy (local.get $ev) (i32.const 96) (i32.const 13))
    (memory.copy (i32.add (local.get $ev) (i32.const 13)) (local.get $cust) (local.get $cust_len))
    (local.set $ev_end (i32.add (i32.add (local.get $ev) (i32.const 13)) (local.get $cust_len)))
    (memory.copy (local.get $ev_end) (i32.const 112) (i32.const 10))
    (local.set $ev_end (i32.add (local.get $ev_end) (i32.const 10)))
    (memory.copy (local.get $ev_end) (local.get $num) (local.get $num_len))
    (local.set $ev_end (i32.add (local.get $ev_end) (local.get $num_len)))
    (i32.store8 (local.get $ev_end) (i32.const 125))
    (local.set $ev_end (i32.add (local.get $ev_end) (i32.const 1)))
    (local.set $req (call $alloc (i32.add (i32.sub (local.get $ev_end) (local.get $ev)) (i32.const 64))))
    (local.set $end (call $put_field (local.get $req) (i32.const 32) (i32.const 6)))
    (local.set $end (call $put_field (local.get $end) (i32.const 48) (i32.const 13)))
    (local.set $end (call $put_field (local.get $end) (local.get $ev) (i32.sub (local.get $ev_end) (local.get $ev))))
    (if (i64.lt_s (call $host (i32.const 4) (local.get $req) (i32.sub (local.get $end) (local.get $req))) (i64.const 0))
      (then (return (i64.const -1))))
    (i64.const 0))

  (func (export "l8_on_invoke") (param $ptr i32) (param $len i32) (result i64)
    (local $data i32) (local $data_len i32) (local $r i64)
    (local.set $data (i32.add (i32.add (local.get $ptr) (i32.const 4)) (i32.load (local.get $ptr))))
    (local.set $data_len (i32.sub (i32.add (local.get $ptr) (local.get $len)) (local.get $data)))
    (if (i32.eqz (local.get $data_len)) (then (return (i64.const -2))))
    (local.set $r (call $get (call $key (local.get $data) (local.get $data_len))))
    (if (i64.eq (local.get $r) (i64.const -1)) (then (return (call $pack (i32.const 136) (i32.const 1)))))
    (if (i64.lt_s (local.get $r) (i64.const 0)) (then (return (i64.const -1))))
    (local.get $r))
