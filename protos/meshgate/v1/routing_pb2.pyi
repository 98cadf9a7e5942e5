from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Preference(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PREFERENCE_UNSPECIFIED: _ClassVar[Preference]
    PREFERENCE_LATENCY: _ClassVar[Preference]
    PREFERENCE_COST: _ClassVar[Preference]

class CacheMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CACHE_MODE_UNSPECIFIED: _ClassVar[CacheMode]
    CACHE_MODE_USE: _ClassVar[CacheMode]
    CACHE_MODE_BYPASS: _ClassVar[CacheMode]
    CACHE_MODE_REFRESH: _ClassVar[CacheMode]
PREFERENCE_UNSPECIFIED: Preference
PREFERENCE_LATENCY: Preference
PREFERENCE_COST: Preference
CACHE_MODE_UNSPECIFIED: CacheMode
CACHE_MODE_USE: CacheMode
CACHE_MODE_BYPASS: CacheMode
CACHE_MODE_REFRESH: CacheMode

class RoutingHints(_message.Message):
    __slots__ = ("preferred_region", "cache_mode", "prefer")
    PREFERRED_REGION_FIELD_NUMBER: _ClassVar[int]
    CACHE_MODE_FIELD_NUMBER: _ClassVar[int]
    PREFER_FIELD_NUMBER: _ClassVar[int]
    preferred_region: str
    cache_mode: CacheMode
    prefer: Preference
    def __init__(self, preferred_region: _Optional[str] = ..., cache_mode: _Optional[_Union[CacheMode, str]] = ..., prefer: _Optional[_Union[Preference, str]] = ...) -> None: ...

class RouteInfo(_message.Message):
    __slots__ = ("pool", "endpoint", "backend", "attempts", "model", "skipped", "cache_hit")
    POOL_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    pool: str
    endpoint: str
    backend: str
    attempts: int
    model: str
    skipped: _containers.RepeatedScalarFieldContainer[str]
    cache_hit: bool
    def __init__(self, pool: _Optional[str] = ..., endpoint: _Optional[str] = ..., backend: _Optional[str] = ..., attempts: _Optional[int] = ..., model: _Optional[str] = ..., skipped: _Optional[_Iterable[str]] = ..., cache_hit: _Optional[bool] = ...) -> None: ...
