from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChecksumKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHECKSUM_KIND_NONE: _ClassVar[ChecksumKind]
    CHECKSUM_KIND_XXH3_64: _ClassVar[ChecksumKind]
    CHECKSUM_KIND_TORCH_WORDS: _ClassVar[ChecksumKind]
    CHECKSUM_KIND_MULSUM_64: _ClassVar[ChecksumKind]
CHECKSUM_KIND_NONE: ChecksumKind
CHECKSUM_KIND_XXH3_64: ChecksumKind
CHECKSUM_KIND_TORCH_WORDS: ChecksumKind
CHECKSUM_KIND_MULSUM_64: ChecksumKind

class KVChunk(_message.Message):
    __slots__ = ("request_id", "layer", "num_tokens", "layer_nbytes", "offset", "data", "checksum", "checksum_kind")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LAYER_NBYTES_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_KIND_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    layer: int
    num_tokens: int
    layer_nbytes: int
    offset: int
    data: bytes
    checksum: int
    checksum_kind: ChecksumKind
    def __init__(self, request_id: _Optional[str] = ..., layer: _Optional[int] = ..., num_tokens: _Optional[int] = ..., layer_nbytes: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., checksum: _Optional[int] = ..., checksum_kind: _Optional[_Union[ChecksumKind, str]] = ...) -> None: ...

class PushKVReply(_message.Message):
    __slots__ = ("num_layers", "num_bytes")
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    NUM_BYTES_FIELD_NUMBER: _ClassVar[int]
    num_layers: int
    num_bytes: int
    def __init__(self, num_layers: _Optional[int] = ..., num_bytes: _Optional[int] = ...) -> None: ...
