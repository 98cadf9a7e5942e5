from meshgate.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CacheMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CACHE_MODE_UNSPECIFIED: _ClassVar[CacheMode]
    CACHE_MODE_USE: _ClassVar[CacheMode]
    CACHE_MODE_BYPASS: _ClassVar[CacheMode]
    CACHE_MODE_REFRESH: _ClassVar[CacheMode]
CACHE_MODE_UNSPECIFIED: CacheMode
CACHE_MODE_USE: CacheMode
CACHE_MODE_BYPASS: CacheMode
CACHE_MODE_REFRESH: CacheMode

class InferRequest(_message.Message):
    __slots__ = ("model", "model_version", "id", "inputs", "outputs", "parameters", "routing")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Parameter
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Parameter, _Mapping]] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    ROUTING_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    id: str
    inputs: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Tensor]
    outputs: _containers.RepeatedCompositeFieldContainer[RequestedOutput]
    parameters: _containers.MessageMap[str, _tensor_pb2.Parameter]
    routing: RoutingHints
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ..., id: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[_tensor_pb2.Tensor, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[RequestedOutput, _Mapping]]] = ..., parameters: _Optional[_Mapping[str, _tensor_pb2.Parameter]] = ..., routing: _Optional[_Union[RoutingHints, _Mapping]] = ...) -> None: ...

class RequestedOutput(_message.Message):
    __slots__ = ("name", "parameters")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Parameter
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Parameter, _Mapping]] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    parameters: _containers.MessageMap[str, _tensor_pb2.Parameter]
    def __init__(self, name: _Optional[str] = ..., parameters: _Optional[_Mapping[str, _tensor_pb2.Parameter]] = ...) -> None: ...

class RoutingHints(_message.Message):
    __slots__ = ("preferred_region", "cache_mode")
    PREFERRED_REGION_FIELD_NUMBER: _ClassVar[int]
    CACHE_MODE_FIELD_NUMBER: _ClassVar[int]
    preferred_region: str
    cache_mode: CacheMode
    def __init__(self, preferred_region: _Optional[str] = ..., cache_mode: _Optional[_Union[CacheMode, str]] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("model", "model_version", "id", "outputs", "parameters", "route")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Parameter
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Parameter, _Mapping]] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    id: str
    outputs: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Tensor]
    parameters: _containers.MessageMap[str, _tensor_pb2.Parameter]
    route: RouteInfo
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ..., id: _Optional[str] = ..., outputs: _Optional[_Iterable[_Union[_tensor_pb2.Tensor, _Mapping]]] = ..., parameters: _Optional[_Mapping[str, _tensor_pb2.Parameter]] = ..., route: _Optional[_Union[RouteInfo, _Mapping]] = ...) -> None: ...

class RouteInfo(_message.Message):
    __slots__ = ("pool", "endpoint", "backend", "attempts")
    POOL_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    pool: str
    endpoint: str
    backend: str
    attempts: int
    def __init__(self, pool: _Optional[str] = ..., endpoint: _Optional[str] = ..., backend: _Optional[str] = ..., attempts: _Optional[int] = ...) -> None: ...
