from meshgate.v1 import generate_pb2 as _generate_pb2
from meshgate.v1 import routing_pb2 as _routing_pb2
from meshgate.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

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
    routing: _routing_pb2.RoutingHints
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ..., id: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[_tensor_pb2.Tensor, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[RequestedOutput, _Mapping]]] = ..., parameters: _Optional[_Mapping[str, _tensor_pb2.Parameter]] = ..., routing: _Optional[_Union[_routing_pb2.RoutingHints, _Mapping]] = ...) -> None: ...

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
    route: _routing_pb2.RouteInfo
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ..., id: _Optional[str] = ..., outputs: _Optional[_Iterable[_Union[_tensor_pb2.Tensor, _Mapping]]] = ..., parameters: _Optional[_Mapping[str, _tensor_pb2.Parameter]] = ..., route: _Optional[_Union[_routing_pb2.RouteInfo, _Mapping]] = ...) -> None: ...
