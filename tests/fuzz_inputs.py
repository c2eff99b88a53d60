"""Hypothesis strategies for the fuzz tests: any protobuf message from its descriptor, path parts,
headers and bodies for HTTP routes, and corrupt bytes. Values lean to what breaks services: the
configured component names (so requests get past routing into the handlers), empty and huge
names, control characters, numbers at their type's limits, deep and long repeats."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

# Components of configs/default.yaml, and names that are wrong in every way a name can be.
NAMES = ["statestore", "configstore", "lockstore", "sequencer", "pubsub", "filestore", "secretstore", "helloworld"]
ODD = ["", " ", ".", "..", "../etc/passwd", "a.b", "*", ">", "a b", "\x00", "é", "k" * 4097, "x" * 70_000, "||", "%"]

names = st.sampled_from(NAMES)
odd = st.sampled_from(ODD)
text = st.one_of(names, odd, st.text(max_size=24), st.text(min_size=200, max_size=2000))

_LIMITS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def integers(low: int, high: int) -> st.SearchStrategy[int]:
    edges = [v for v in (low, high, 0, -1, 1, 2**31 - 1, 2**31, 2**53 + 1, 99_999_999_999_999) if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(max(low, -5), min(high, 100)), st.integers(low, high))


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return text
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=48), st.sampled_from([b"{}", b'{"a": 1}', b"\xff\xfe", b"x" * 70_000]))
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32 if kind == FieldDescriptor.TYPE_FLOAT else 64)
    if kind == FieldDescriptor.TYPE_ENUM:
        values = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(values), st.integers(-(2**31), 2**31 - 1))  # open enums take any
    low, high = _LIMITS[kind]
    return integers(low, high)


def fill(data: st.DataObject, message: Message, depth: int = 0) -> Message:
    """Set a random subset of ``message``'s fields, recursively up to a few levels."""
    desc: Descriptor = message.DESCRIPTOR
    for field in desc.fields:
        if not data.draw(st.booleans()):
            continue
        repeated = field.is_repeated
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            entry = field.message_type
            if entry.GetOptions().map_entry:
                key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
                count = data.draw(st.sampled_from([0, 1, 2, 3, 300]))
                target = getattr(message, field.name)
                for _ in range(count):
                    k = data.draw(_scalar(key))
                    if value.type == FieldDescriptor.TYPE_MESSAGE:
                        if depth < 2:
                            fill(data, target[k], depth + 1)
                    else:
                        target[k] = data.draw(_scalar(value))
                continue
            if depth >= 3:
                continue
            if repeated:
                for _ in range(data.draw(st.sampled_from([0, 1, 2, 3, 1001]))):
                    fill(data, getattr(message, field.name).add(), depth + 1)
            else:
                fill(data, getattr(message, field.name), depth + 1)
                getattr(message, field.name).SetInParent()
            continue
        if repeated:
            values = data.draw(st.lists(_scalar(field), max_size=4))
            if data.draw(st.integers(0, 20)) == 0:
                values = values * 300  # past the count limits
            getattr(message, field.name).extend(values)
        else:
            setattr(message, field.name, data.draw(_scalar(field)))
    return message


corrupt = st.one_of(
    st.binary(max_size=64),
    st.binary(min_size=500, max_size=4000),
    st.sampled_from([b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x05\xff\xfe\xfd\xfc\xfb", b"\x0a\x0astatestore\xff"]),
)

path_part = st.one_of(names, odd, st.text(max_size=16), st.sampled_from(["%2F", "%00", "a%2Fb", "%ZZ", "é%20x"]))
json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), text),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=12,
)
