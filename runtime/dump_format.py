"""The request dump's records: protobuf messages, each written after its length as a varint (the
``writeDelimitedTo`` framing ghz and grpc-replay read), so a file is a stream of

```proto
message Record {
  uint64 time_unix_nano = 1;   // when the call arrived
  string method = 2;           // the full gRPC method, /package.Service/Method
  repeated Entry metadata = 3; // the call's metadata, without tokens, credentials or cookies
  bytes body = 4;              // the request message's bytes as they came
  uint64 duration_nanos = 5;   // how long l8 took to answer
  string code = 6;             // the status l8 answered (OK, NOT_FOUND...)
  string window = 7;           // the id of the dump window that recorded it
}
message Entry { string key = 1; string value = 2; }
```

Written by hand (a dozen lines each way) rather than generated: the schema is this small.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO


@dataclass(slots=True)
class Record:
    time_unix_nano: int
    method: str
    metadata: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    duration_nanos: int = 0
    code: str = ""
    window: str = ""


class BadRecord(ValueError):
    pass


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def encode(record: Record) -> bytes:
    parts = [_varint(1 << 3) + _varint(record.time_unix_nano), _field(2, record.method.encode())]
    for key, value in record.metadata:
        parts.append(_field(3, _field(1, key.encode()) + _field(2, value.encode())))
    parts.append(_field(4, record.body))
    parts.append(_varint(5 << 3) + _varint(record.duration_nanos))
    parts += (_field(6, record.code.encode()), _field(7, record.window.encode()))
    return b"".join(parts)


def delimited(record: Record) -> bytes:
    data = encode(record)
    return _varint(len(data)) + data


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise BadRecord("a varint is cut short")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    pos = 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            yield number, value
        elif wire == 2:
            size, pos = _read_varint(buf, pos)
            if pos + size > len(buf):
                raise BadRecord("a field is cut short")
            yield number, buf[pos : pos + size]
            pos += size
        else:
            raise BadRecord(f"wire type {wire} is not in a dump record")


def decode(buf: bytes) -> Record:
    record = Record(0, "")
    for number, value in _fields(buf):
        if isinstance(value, int):
            if number == 1:
                record.time_unix_nano = value
            elif number == 5:
                record.duration_nanos = value
        elif number == 2:
            record.method = value.decode(errors="replace")
        elif number == 3:
            entry = dict(_fields(value))
            key, val = entry.get(1, b""), entry.get(2, b"")
            if isinstance(key, bytes) and isinstance(val, bytes):
                record.metadata.append((key.decode(errors="replace"), val.decode(errors="replace")))
        elif number == 4:
            record.body = value
        elif number == 6:
            record.code = value.decode(errors="replace")
        elif number == 7:
            record.window = value.decode(errors="replace")
    return record


def read(stream: BinaryIO) -> Iterator[Record]:
    """The records of a dump file, in order; a file cut short mid-record ends at the last whole one."""
    data = stream.read()
    pos = 0
    while pos < len(data):
        try:
            size, start = _read_varint(data, pos)
        except BadRecord:
            return
        if start + size > len(data):
            return
        yield decode(data[start : start + size])
        pos = start + size
