"""l8's native protos keep every service, rpc, message, field and enum value of the protos that ship
inside Layotto's published Node SDK (npm ``layotto``, installed by scripts/test), so a client built
from them calls l8 unchanged; l8 adds only the extensions listed here."""

from __future__ import annotations

import tempfile
from pathlib import Path

import grpc_tools
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from handlers.proto import appcallback_pb2, lifecycle_pb2, runtime_pb2

SDK_PROTOS = Path(__file__).parent / "node" / "node_modules" / "layotto" / "proto"
FILES = ("runtime/v1/runtime.proto", "runtime/v1/appcallback.proto", "runtime/v1/lifecycle.proto")
PACKAGE = "spec.proto.runtime.v1"

# What l8 has beyond the SDK's protos: Layotto's newer streaming subscription and l8's own extensions.
EXTENSIONS = {
    "rpc Runtime.SubscribeTopicEvents",
    "rpc Runtime.PublishBulkEvent",
    "field ConfigurationItem.version",
    "field TopicEventRequest.path",
    *(
        f"message {name}"
        for name in (
            "SubscribeTopicEventsRequest",
            "SubscribeTopicEventsRequestInitial",
            "SubscribeTopicEventsRequestProcessed",
            "SubscribeTopicEventsResponse",
            "SubscribeTopicEventsResponseInitial",
            "BulkPublishRequest",
            "BulkPublishRequestEntry",
            "BulkPublishResponse",
            "BulkPublishResponseFailedEntry",
        )
    ),
}


def sdk_files() -> list[descriptor_pb2.FileDescriptorProto]:
    assert SDK_PROTOS.is_dir(), f"{SDK_PROTOS} is missing: scripts/test installs tests/node"
    include = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sdk.pb"
        code = protoc.main(
            ["protoc", f"-I{SDK_PROTOS}", f"-I{include}", f"--descriptor_set_out={out}", "--include_imports", *FILES]
        )
        assert code == 0, "the SDK's protos do not compile"
        found = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return [f for f in found.file if f.package == PACKAGE]


def l8_files() -> list[descriptor_pb2.FileDescriptorProto]:
    files = []
    for module in (runtime_pb2, appcallback_pb2, lifecycle_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        files.append(proto)
    return files


def flatten(files: list[descriptor_pb2.FileDescriptorProto]) -> dict[str, tuple[object, ...]]:
    """Every rpc, message, field, enum and enum value, by name, with what the wire depends on."""
    out: dict[str, tuple[object, ...]] = {}

    def enum(prefix: str, e: descriptor_pb2.EnumDescriptorProto) -> None:
        out[f"enum {prefix}{e.name}"] = ()
        for v in e.value:
            out[f"value {prefix}{e.name}.{v.name}"] = (v.number,)

    def message(prefix: str, m: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}{m.name}"
        out[f"message {name}"] = (m.options.map_entry,)
        for f in m.field:
            oneof = m.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") and not f.proto3_optional else ""
            out[f"field {name}.{f.name}"] = (f.number, f.type, f.label, f.type_name, oneof)
        for nested in m.nested_type:
            message(f"{name}.", nested)
        for e in m.enum_type:
            enum(f"{name}.", e)

    for file in files:
        for m in file.message_type:
            message("", m)
        for e in file.enum_type:
            enum("", e)
        for s in file.service:
            for rpc in s.method:
                out[f"rpc {s.name}.{rpc.name}"] = (
                    rpc.input_type,
                    rpc.output_type,
                    rpc.client_streaming,
                    rpc.server_streaming,
                )
    return out


def test_every_rpc_message_field_and_enum_value_of_the_sdk_is_in_l8_unchanged() -> None:
    sdk, l8 = flatten(sdk_files()), flatten(l8_files())
    missing = sorted(name for name in sdk if name not in l8)
    changed = sorted(f"{name}: {sdk[name]} != {l8[name]}" for name in sdk if name in l8 and sdk[name] != l8[name])
    assert not missing, missing
    assert not changed, changed


def test_l8_adds_only_its_listed_extensions() -> None:
    sdk, l8 = flatten(sdk_files()), flatten(l8_files())
    added = {name for name in l8 if name not in sdk}
    # Fields, values and map entries inside an added message come with it.
    top = {name for name in added if not any(name.split(" ", 1)[1].startswith(f"{m}.") for m in _messages(added))}
    assert top == EXTENSIONS


def _messages(names: set[str]) -> set[str]:
    return {name.split(" ", 1)[1] for name in names if name.startswith("message ")}
