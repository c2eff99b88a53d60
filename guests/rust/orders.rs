//! The example function (README, "Functions"): on an `orders` event it counts the event's customer
//! in state (key count-<customer> of store `statestore`) and publishes `order-audited`
//! {"customer", "count"} on `pubsub`; on an invocation whose body is a customer id it answers
//! that customer's count.
#![no_std]

#[path = "l8.rs"]
pub mod l8;

const STORE: &[u8] = b"statestore";

fn count_of(customer: &[u8]) -> Result<(u64, &'static [u8]), i64> {
    let key = l8::concat(&[b"count-", customer]);
    match l8::host(l8::STATE_GET, &[STORE, key]) {
        Ok(value) => Ok((l8::atoi(value), key)),
        Err(l8::NOT_FOUND) => Ok((0, key)),
        Err(code) => Err(code),
    }
}

/// Where the string value of a JSON key starts (after its opening quote).
fn string_value(data: &[u8], key: &[u8]) -> Option<usize> {
    let mut at = l8::find(data, key)? + key.len();
    while at < data.len() && matches!(data[at], b' ' | b':' | b'\t' | b'\n') {
        at += 1;
    }
    if at < data.len() && data[at] == b'"' {
        Some(at + 1)
    } else {
        None
    }
}

#[no_mangle]
pub extern "C" fn l8_on_event(ptr: i32, len: i32) -> i64 {
    let (_meta, data) = l8::input(ptr, len);
    let start = match string_value(data, b"\"customer\"") {
        Some(at) => at,
        None => return l8::DROP,
    };
    let customer = match l8::find(&data[start..], b"\"") {
        Some(n) if n > 0 => &data[start..start + n],
        _ => return l8::DROP,
    };
    let (count, key) = match count_of(customer) {
        Ok(found) => found,
        Err(_) => return l8::RETRY,
    };
    let number = l8::itoa(count + 1);
    if l8::host(l8::STATE_SET, &[STORE, key, number]).is_err() {
        return l8::RETRY;
    }
    let event = l8::concat(&[b"{\"customer\":\"", customer, b"\",\"count\":", number, b"}"]);
    if l8::host(l8::PUBLISH, &[b"pubsub", b"order-audited", event]).is_err() {
        return l8::RETRY;
    }
    0
}

#[no_mangle]
pub extern "C" fn l8_on_invoke(ptr: i32, len: i32) -> i64 {
    let (_meta, customer) = l8::input(ptr, len);
    if customer.is_empty() {
        return l8::DROP;
    }
    match count_of(customer) {
        Ok((count, _)) => l8::output(l8::itoa(count)),
        Err(code) => code,
    }
}
