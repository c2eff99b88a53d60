from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DynamicConfiguration(_message.Message):
    __slots__ = ("component_config",)
    COMPONENT_CONFIG_FIELD_NUMBER: _ClassVar[int]
    component_config: ComponentConfig
    def __init__(self, component_config: _Optional[_Union[ComponentConfig, _Mapping]] = ...) -> None: ...

class ApplyConfigurationResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ComponentConfig(_message.Message):
    __slots__ = ("kind", "name", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...
