// The example function (README, "Functions"): on an `orders` event it counts the event's customer
// in state (key count-<customer> of store `statestore`) and publishes `order-audited`
// {"customer", "count"} on `pubsub`; on an invocation whose body is a customer id it answers
// that customer's count.
import {
  Answer, DROP, NOT_FOUND, PUBLISH, RETRY, STATE_GET, STATE_SET,
  atoi, bytes, concat, find, host, inputData, itoa, output,
} from "./sdk";

export { l8_alloc } from "./sdk";

const STORE = "statestore";

class Count {
  constructor(public value: u64, public key: Uint8Array, public code: i64) {}
}

function countOf(customer: Uint8Array): Count {
  const key = concat([bytes("count-"), customer]);
  const got: Answer = host(STATE_GET, [bytes(STORE), key]);
  if (got.code == NOT_FOUND) return new Count(0, key, 0);
  if (got.code < 0) return new Count(0, key, got.code);
  return new Count(atoi(got.data), key, 0);
}

/** Where the string value of a JSON key starts (after its opening quote), or -1. */
function stringValue(data: Uint8Array, key: Uint8Array): i32 {
  const at = find(data, key);
  if (at < 0) return -1;
  let i = at + key.length;
  while (i < data.length && (data[i] == 32 || data[i] == 58 || data[i] == 9 || data[i] == 10)) i++;
  return i < data.length && data[i] == 34 ? i + 1 : -1;
}

export function l8_on_event(ptr: usize, len: i32): i64 {
  const data = inputData(ptr, len);
  const start = stringValue(data, bytes('"customer"'));
  if (start < 0) return DROP;
  const end = find(data, bytes('"'), start);
  if (end <= start) return DROP;
  const customer = data.slice(start, end);
  const count = countOf(customer);
  if (count.code < 0) return RETRY;
  const number = itoa(count.value + 1);
  if (host(STATE_SET, [bytes(STORE), count.key, number]).code < 0) return RETRY;
  const event = concat([bytes('{"customer":"'), customer, bytes('","count":'), number, bytes("}")]);
  if (host(PUBLISH, [bytes("pubsub"), bytes("order-audited"), event]).code < 0) return RETRY;
  return 0;
}

export function l8_on_invoke(ptr: usize, len: i32): i64 {
  const customer = inputData(ptr, len);
  if (customer.length == 0) return DROP;
  const count = countOf(customer);
  if (count.code < 0) return count.code;
  return output(itoa(count.value));
}
