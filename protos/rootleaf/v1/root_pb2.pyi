from protos.rootleaf.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelRef(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("request_id", "user_id", "candidate_ids", "models", "request_features")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_IDS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FEATURES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    user_id: int
    candidate_ids: _containers.RepeatedScalarFieldContainer[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelRef]
    request_features: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Tensor]
    def __init__(self, request_id: _Optional[str] = ..., user_id: _Optional[int] = ..., candidate_ids: _Optional[_Iterable[int]] = ..., models: _Optional[_Iterable[_Union[ModelRef, _Mapping]]] = ..., request_features: _Optional[_Iterable[_Union[_tensor_pb2.Tensor, _Mapping]]] = ...) -> None: ...

class ModelResult(_message.Message):
    __slots__ = ("model", "version", "outputs", "error_code", "error_message")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    outputs: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Tensor]
    error_code: int
    error_message: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., outputs: _Optional[_Iterable[_Union[_tensor_pb2.Tensor, _Mapping]]] = ..., error_code: _Optional[int] = ..., error_message: _Optional[str] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("request_id", "results")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    results: _containers.RepeatedCompositeFieldContainer[ModelResult]
    def __init__(self, request_id: _Optional[str] = ..., results: _Optional[_Iterable[_Union[ModelResult, _Mapping]]] = ...) -> None: ...

class BundleStatus(_message.Message):
    __slots__ = ("name", "path", "model_count", "version_count", "last_good_load_unix", "last_error", "content_hash")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MODEL_COUNT_FIELD_NUMBER: _ClassVar[int]
    VERSION_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_GOOD_LOAD_UNIX_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    model_count: int
    version_count: int
    last_good_load_unix: float
    last_error: str
    content_hash: str
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., model_count: _Optional[int] = ..., version_count: _Optional[int] = ..., last_good_load_unix: _Optional[float] = ..., last_error: _Optional[str] = ..., content_hash: _Optional[str] = ...) -> None: ...

class PartitionStatus(_message.Message):
    __slots__ = ("name", "targets", "models", "serving_addresses", "addresses", "health")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    SERVING_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    name: str
    targets: _containers.RepeatedScalarFieldContainer[str]
    models: _containers.RepeatedScalarFieldContainer[str]
    serving_addresses: int
    addresses: int
    health: _containers.RepeatedCompositeFieldContainer[TargetHealth]
    def __init__(self, name: _Optional[str] = ..., targets: _Optional[_Iterable[str]] = ..., models: _Optional[_Iterable[str]] = ..., serving_addresses: _Optional[int] = ..., addresses: _Optional[int] = ..., health: _Optional[_Iterable[_Union[TargetHealth, _Mapping]]] = ...) -> None: ...

class TargetHealth(_message.Message):
    __slots__ = ("target", "address", "serving", "detail")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    target: str
    address: str
    serving: bool
    detail: str
    def __init__(self, target: _Optional[str] = ..., address: _Optional[str] = ..., serving: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class RootStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RootStatusResponse(_message.Message):
    __slots__ = ("bundles", "partitions", "settings")
    class SettingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BUNDLES_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    bundles: _containers.RepeatedCompositeFieldContainer[BundleStatus]
    partitions: _containers.RepeatedCompositeFieldContainer[PartitionStatus]
    settings: _containers.ScalarMap[str, str]
    def __init__(self, bundles: _Optional[_Iterable[_Union[BundleStatus, _Mapping]]] = ..., partitions: _Optional[_Iterable[_Union[PartitionStatus, _Mapping]]] = ..., settings: _Optional[_Mapping[str, str]] = ...) -> None: ...
