"""Reading only what routing needs from a request's bytes: one string field, without decoding."""

from __future__ import annotations


class Malformed(ValueError):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise Malformed("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise Malformed("varint too long")


def string_field(buf: bytes, number: int) -> str:
    """The first value of string field ``number``, or "".

    Serializers write fields in number order, so field 1 is usually read off the first bytes.
    """
    if number == 1 and len(buf) > 1 and buf[0] == 0x0A and buf[1] < 0x80 and 2 + buf[1] <= len(buf):
        found = buf[2 : 2 + buf[1]]
    else:
        found = bytes_field(buf, number)
    try:
        return found.decode()
    except UnicodeDecodeError:
        raise Malformed("field is not UTF-8") from None


def bytes_field(buf: bytes, number: int) -> bytes:
    """The first value of length-delimited field ``number`` (bytes, string or message), or b""."""
    pos = 0
    end = len(buf)
    while pos < end:
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise Malformed("truncated field")
            if field == number:
                return buf[pos : pos + length]
            pos += length
        elif wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise Malformed(f"unsupported wire type {wire}")
    if pos > end:
        raise Malformed("truncated field")
    return b""


def name_field(buf: bytes, path: tuple[int, ...]) -> str:
    """The string at ``path``: field numbers through nested messages, the last one a string."""
    for number in path[:-1]:
        buf = bytes_field(buf, number)
    return string_field(buf, path[-1])


def count_field(buf: bytes, number: int) -> int:
    """How many values of length-delimited field ``number`` (a repeated message) ``buf`` holds."""
    pos = 0
    end = len(buf)
    count = 0
    while pos < end:
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 2:
            length, pos = _varint(buf, pos)
            count += field == number
            pos += length
        elif wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise Malformed(f"unsupported wire type {wire}")
    return count
