// The example function (README, "Functions"): on an `orders` event it counts the event's customer
// in state (key count-<customer> of store `statestore`) and publishes `order-audited`
// {"customer", "count"} on `pubsub`; on an invocation whose body is a customer id it answers
// that customer's count.
package main

import (
	"bytes"
	"strconv"

	"l8guest/l8"
)

var store = []byte("statestore")

func countOf(customer []byte) (uint64, []byte, int64) {
	key := append([]byte("count-"), customer...)
	value, code := l8.Host(l8.StateGet, store, key)
	if code == l8.NotFound {
		return 0, key, 0
	}
	if code < 0 {
		return 0, key, code
	}
	n, _ := strconv.ParseUint(string(value), 10, 64)
	return n, key, 0
}

// stringValue answers what follows the opening quote of key's string value, or nil.
func stringValue(data []byte, key string) []byte {
	at := bytes.Index(data, []byte(key))
	if at < 0 {
		return nil
	}
	rest := bytes.TrimLeft(data[at+len(key):], " \t\n:")
	if len(rest) == 0 || rest[0] != '"' {
		return nil
	}
	return rest[1:]
}

//go:wasmexport l8_on_event
func onEvent(ptr, n int32) int64 {
	_, data := l8.Input(ptr, n)
	rest := stringValue(data, `"customer"`)
	if rest == nil {
		return l8.Drop
	}
	end := bytes.IndexByte(rest, '"')
	if end <= 0 {
		return l8.Drop
	}
	customer := rest[:end]
	count, key, code := countOf(customer)
	if code < 0 {
		return l8.Retry
	}
	number := []byte(strconv.FormatUint(count+1, 10))
	if _, code := l8.Host(l8.StateSet, store, key, number); code < 0 {
		return l8.Retry
	}
	event := []byte(`{"customer":"` + string(customer) + `","count":` + string(number) + `}`)
	if _, code := l8.Host(l8.Publish, []byte("pubsub"), []byte("order-audited"), event); code < 0 {
		return l8.Retry
	}
	return 0
}

//go:wasmexport l8_on_invoke
func onInvoke(ptr, n int32) int64 {
	_, customer := l8.Input(ptr, n)
	if len(customer) == 0 {
		return l8.Drop
	}
	count, _, code := countOf(customer)
	if code < 0 {
		return code
	}
	return l8.Output([]byte(strconv.FormatUint(count, 10)))
}

func main() {}
