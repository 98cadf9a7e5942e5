from meshgate.v1 import models_pb2 as _models_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListPoolsRequest(_message.Message):
    __slots__ = ("pool",)
    POOL_FIELD_NUMBER: _ClassVar[int]
    pool: str
    def __init__(self, pool: _Optional[str] = ...) -> None: ...

class ListPoolsResponse(_message.Message):
    __slots__ = ("pools",)
    POOLS_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedCompositeFieldContainer[PoolState]
    def __init__(self, pools: _Optional[_Iterable[_Union[PoolState, _Mapping]]] = ...) -> None: ...

class PoolState(_message.Message):
    __slots__ = ("name", "ready", "profile", "endpoints")
    NAME_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    ready: bool
    profile: str
    endpoints: _containers.RepeatedCompositeFieldContainer[_models_pb2.Endpoint]
    def __init__(self, name: _Optional[str] = ..., ready: _Optional[bool] = ..., profile: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[_models_pb2.Endpoint, _Mapping]]] = ...) -> None: ...

class DrainEndpointRequest(_message.Message):
    __slots__ = ("pool", "endpoint_id")
    POOL_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    pool: str
    endpoint_id: str
    def __init__(self, pool: _Optional[str] = ..., endpoint_id: _Optional[str] = ...) -> None: ...

class DrainEndpointResponse(_message.Message):
    __slots__ = ("endpoint",)
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    endpoint: _models_pb2.Endpoint
    def __init__(self, endpoint: _Optional[_Union[_models_pb2.Endpoint, _Mapping]] = ...) -> None: ...

class UndrainEndpointRequest(_message.Message):
    __slots__ = ("pool", "endpoint_id")
    POOL_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    pool: str
    endpoint_id: str
    def __init__(self, pool: _Optional[str] = ..., endpoint_id: _Optional[str] = ...) -> None: ...

class UndrainEndpointResponse(_message.Message):
    __slots__ = ("endpoint",)
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    endpoint: _models_pb2.Endpoint
    def __init__(self, endpoint: _Optional[_Union[_models_pb2.Endpoint, _Mapping]] = ...) -> None: ...

class ReloadConfigRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadConfigResponse(_message.Message):
    __slots__ = ("source", "applied", "restart_required")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    RESTART_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    source: str
    applied: _containers.RepeatedScalarFieldContainer[str]
    restart_required: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, source: _Optional[str] = ..., applied: _Optional[_Iterable[str]] = ..., restart_required: _Optional[_Iterable[str]] = ...) -> None: ...

class ListPrincipalsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPrincipalsResponse(_message.Message):
    __slots__ = ("principals",)
    PRINCIPALS_FIELD_NUMBER: _ClassVar[int]
    principals: _containers.RepeatedCompositeFieldContainer[PrincipalInfo]
    def __init__(self, principals: _Optional[_Iterable[_Union[PrincipalInfo, _Mapping]]] = ...) -> None: ...

class PrincipalInfo(_message.Message):
    __slots__ = ("user", "project", "department", "roles", "auth", "credential_id", "expires_at", "revoked", "last_seen_seconds_ago")
    USER_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    DEPARTMENT_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_SECONDS_AGO_FIELD_NUMBER: _ClassVar[int]
    user: str
    project: str
    department: str
    roles: _containers.RepeatedScalarFieldContainer[str]
    auth: str
    credential_id: str
    expires_at: float
    revoked: bool
    last_seen_seconds_ago: float
    def __init__(self, user: _Optional[str] = ..., project: _Optional[str] = ..., department: _Optional[str] = ..., roles: _Optional[_Iterable[str]] = ..., auth: _Optional[str] = ..., credential_id: _Optional[str] = ..., expires_at: _Optional[float] = ..., revoked: _Optional[bool] = ..., last_seen_seconds_ago: _Optional[float] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("since", "until", "group_by")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    since: float
    until: float
    group_by: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, since: _Optional[float] = ..., until: _Optional[float] = ..., group_by: _Optional[_Iterable[str]] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("since", "until", "group_by", "currency", "rows", "unwritten")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    UNWRITTEN_FIELD_NUMBER: _ClassVar[int]
    since: float
    until: float
    group_by: _containers.RepeatedScalarFieldContainer[str]
    currency: str
    rows: _containers.RepeatedCompositeFieldContainer[UsageTotals]
    unwritten: int
    def __init__(self, since: _Optional[float] = ..., until: _Optional[float] = ..., group_by: _Optional[_Iterable[str]] = ..., currency: _Optional[str] = ..., rows: _Optional[_Iterable[_Union[UsageTotals, _Mapping]]] = ..., unwritten: _Optional[int] = ...) -> None: ...

class UsageTotals(_message.Message):
    __slots__ = ("group", "calls", "tokens_in", "tokens_out", "tokens_cached", "gpu_seconds", "cost", "cache_hits", "errors")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_IN_FIELD_NUMBER: _ClassVar[int]
    TOKENS_OUT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_CACHED_FIELD_NUMBER: _ClassVar[int]
    GPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    group: _containers.RepeatedScalarFieldContainer[str]
    calls: int
    tokens_in: int
    tokens_out: int
    tokens_cached: int
    gpu_seconds: float
    cost: float
    cache_hits: int
    errors: int
    def __init__(self, group: _Optional[_Iterable[str]] = ..., calls: _Optional[int] = ..., tokens_in: _Optional[int] = ..., tokens_out: _Optional[int] = ..., tokens_cached: _Optional[int] = ..., gpu_seconds: _Optional[float] = ..., cost: _Optional[float] = ..., cache_hits: _Optional[int] = ..., errors: _Optional[int] = ...) -> None: ...

class ListBudgetsRequest(_message.Message):
    __slots__ = ("budget", "key")
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    budget: str
    key: str
    def __init__(self, budget: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class ListBudgetsResponse(_message.Message):
    __slots__ = ("currency", "budgets")
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    currency: str
    budgets: _containers.RepeatedCompositeFieldContainer[BudgetState]
    def __init__(self, currency: _Optional[str] = ..., budgets: _Optional[_Iterable[_Union[BudgetState, _Mapping]]] = ...) -> None: ...

class BudgetState(_message.Message):
    __slots__ = ("name", "scope", "key", "unit", "limit", "spent", "remaining", "window_start", "window_end", "over_soft_threshold")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_FIELD_NUMBER: _ClassVar[int]
    OVER_SOFT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    name: str
    scope: str
    key: str
    unit: str
    limit: float
    spent: float
    remaining: float
    window_start: float
    window_end: float
    over_soft_threshold: bool
    def __init__(self, name: _Optional[str] = ..., scope: _Optional[str] = ..., key: _Optional[str] = ..., unit: _Optional[str] = ..., limit: _Optional[float] = ..., spent: _Optional[float] = ..., remaining: _Optional[float] = ..., window_start: _Optional[float] = ..., window_end: _Optional[float] = ..., over_soft_threshold: _Optional[bool] = ...) -> None: ...
