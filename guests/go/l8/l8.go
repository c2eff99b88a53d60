// Package l8 is a small SDK for the l8/1 ABI (docs/wasm-abi.md) for Go's wasip1 port, built with
// -buildmode=c-shared (the host calls _initialize first).
//
// The buffer l8_alloc hands the host stays referenced until the next l8_alloc, which the host makes
// once per call before it calls an export, so Go's collector cannot free it while the host writes.
package l8

import (
	"encoding/binary"
	"unsafe"
)

const (
	StateGet         = 1
	StateSet         = 2
	StateDelete      = 3
	Publish          = 4
	Invoke           = 5
	NextID           = 6
	ConfigurationGet = 7

	NotFound = -1
	Retry    = -1
	Drop     = -2
)

//go:wasmimport l8 call
func call(op, req, reqLen, resp, respCap uint32) int64

//go:wasmimport l8 take
func take(dst uint32) int32

//go:wasmimport l8 log
func hostLog(level, ptr, n uint32)

var (
	input  []byte
	output []byte
)

func addr(b []byte) uint32 {
	if len(b) == 0 {
		return 0
	}
	return uint32(uintptr(unsafe.Pointer(&b[0])))
}

//go:wasmexport l8_alloc
func l8Alloc(n int32) int32 {
	input = make([]byte, n)
	output = nil
	return int32(addr(input))
}

// Input splits a call's input into its meta JSON and its data.
func Input(ptr, n int32) (meta, data []byte) {
	buf := unsafe.Slice((*byte)(unsafe.Pointer(uintptr(ptr))), n)
	m := binary.LittleEndian.Uint32(buf)
	return buf[4 : 4+m], buf[4+m:]
}

// Output hands out to the host as the call's result.
func Output(out []byte) int64 {
	if len(out) == 0 {
		return 0
	}
	output = out
	return int64(addr(out))<<32 | int64(len(out))
}

// Host runs op with the given fields: the answer, or the negative code of the call.
func Host(op uint32, fields ...[]byte) ([]byte, int64) {
	n := 0
	for _, f := range fields {
		n += 4 + len(f)
	}
	req := make([]byte, 0, n)
	for _, f := range fields {
		req = binary.LittleEndian.AppendUint32(req, uint32(len(f)))
		req = append(req, f...)
	}
	resp := make([]byte, 256)
	got := call(op, addr(req), uint32(len(req)), addr(resp), uint32(len(resp)))
	if got < 0 {
		return nil, got
	}
	if got <= int64(len(resp)) {
		return resp[:got], 0
	}
	big := make([]byte, got)
	take(addr(big))
	return big, 0
}

// Log writes a line to l8's log at level 0 (debug) to 3 (error).
func Log(level uint32, text string) {
	b := []byte(text)
	hostLog(level, addr(b), uint32(len(b)))
}
