from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListModelsRequest(_message.Message):
    __slots__ = ("ready_only",)
    READY_ONLY_FIELD_NUMBER: _ClassVar[int]
    ready_only: bool
    def __init__(self, ready_only: _Optional[bool] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "versions", "ready", "backends", "pools")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    POOLS_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    ready: bool
    backends: _containers.RepeatedScalarFieldContainer[str]
    pools: _containers.RepeatedCompositeFieldContainer[Pool]
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ..., ready: _Optional[bool] = ..., backends: _Optional[_Iterable[str]] = ..., pools: _Optional[_Iterable[_Union[Pool, _Mapping]]] = ...) -> None: ...

class Pool(_message.Message):
    __slots__ = ("name", "ready", "endpoints")
    NAME_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    ready: bool
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    def __init__(self, name: _Optional[str] = ..., ready: _Optional[bool] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("id", "address", "backend", "ready", "region", "in_flight", "status_message", "checked_seconds_ago", "capacity", "slots", "outstanding_units", "score", "ejected", "consecutive_failures", "load", "latency_per_unit_seconds", "health_checked", "drained", "models")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    STATUS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CHECKED_SECONDS_AGO_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_UNITS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    EJECTED_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    LATENCY_PER_UNIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_CHECKED_FIELD_NUMBER: _ClassVar[int]
    DRAINED_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    backend: str
    ready: bool
    region: str
    in_flight: int
    status_message: str
    checked_seconds_ago: float
    capacity: float
    slots: int
    outstanding_units: float
    score: float
    ejected: bool
    consecutive_failures: int
    load: EndpointLoad
    latency_per_unit_seconds: float
    health_checked: bool
    drained: bool
    models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., backend: _Optional[str] = ..., ready: _Optional[bool] = ..., region: _Optional[str] = ..., in_flight: _Optional[int] = ..., status_message: _Optional[str] = ..., checked_seconds_ago: _Optional[float] = ..., capacity: _Optional[float] = ..., slots: _Optional[int] = ..., outstanding_units: _Optional[float] = ..., score: _Optional[float] = ..., ejected: _Optional[bool] = ..., consecutive_failures: _Optional[int] = ..., load: _Optional[_Union[EndpointLoad, _Mapping]] = ..., latency_per_unit_seconds: _Optional[float] = ..., health_checked: _Optional[bool] = ..., drained: _Optional[bool] = ..., models: _Optional[_Iterable[str]] = ...) -> None: ...

class EndpointLoad(_message.Message):
    __slots__ = ("gpu_utilization", "gpu_memory", "queue_depth", "running", "kv_cache_usage", "age_seconds", "busy", "others_running", "background_load", "our_share")
    GPU_UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_USAGE_FIELD_NUMBER: _ClassVar[int]
    AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BUSY_FIELD_NUMBER: _ClassVar[int]
    OTHERS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_LOAD_FIELD_NUMBER: _ClassVar[int]
    OUR_SHARE_FIELD_NUMBER: _ClassVar[int]
    gpu_utilization: float
    gpu_memory: float
    queue_depth: float
    running: float
    kv_cache_usage: float
    age_seconds: float
    busy: float
    others_running: float
    background_load: float
    our_share: float
    def __init__(self, gpu_utilization: _Optional[float] = ..., gpu_memory: _Optional[float] = ..., queue_depth: _Optional[float] = ..., running: _Optional[float] = ..., kv_cache_usage: _Optional[float] = ..., age_seconds: _Optional[float] = ..., busy: _Optional[float] = ..., others_running: _Optional[float] = ..., background_load: _Optional[float] = ..., our_share: _Optional[float] = ...) -> None: ...
