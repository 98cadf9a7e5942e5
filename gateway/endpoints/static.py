"""Static pools: the endpoints listed under `pools` in the config, and the snapshots they make
(the static discovery source's, discovery/static.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from adapters import REGISTRY
from discovery import Endpoint, ModelRef, PoolSnapshot


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_hostport(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected 'host:port' with a port 0-65535, got {value!r}")
    return value


HostPort = Annotated[str, Field(min_length=3)]


class EndpointConfig(_Strict):
    """One model server."""

    address: HostPort
    backend: str
    models: list[str] = Field(min_length=1)
    id: str | None = None
    region: str = ""
    metrics_url: str = ""
    capacity: float = Field(default=1.0, gt=0)
    gpu: str = ""  # GPU class; sets the capacity from routing.gpu_capacity when capacity is not given
    slots: int = Field(default=1, ge=1)  # requests the server runs at once
    costs: dict[str, float] = Field(default_factory=dict)  # model -> complexity units per item
    # HTTP backends (openai, vllm): base URL (default http://<address>/v1), and where the API key
    # is: an environment variable or a file. The key itself never goes in this file.
    base_url: str | None = None
    api_key_env: str | None = None
    api_key_file: str | None = None
    # Backend-specific options, with the same keys as Consul Meta (e.g. torchserve: protocol,
    # management_port). The named fields above win over the same keys here.
    meta: dict[str, str] = Field(default_factory=dict)

    _address = field_validator("address")(classmethod(lambda cls, v: check_hostport(v)))

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        if v not in REGISTRY:
            raise ValueError(f"unknown backend {v!r}; expected one of {', '.join(sorted(REGISTRY))}")
        return v

    @field_validator("models")
    @classmethod
    def _models(cls, v: list[str]) -> list[str]:
        for m in v:
            if not ModelRef.parse(m).name:
                raise ValueError(f"model {m!r}: expected 'name' or 'name:version'")
        return v


class PoolConfig(_Strict):
    endpoints: list[EndpointConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> PoolConfig:
        ids = [e.id or e.address for e in self.endpoints]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"endpoint ids must be unique within a pool; repeated: {', '.join(dupes)}")
        return self


def static_snapshots(pools: Mapping[str, PoolConfig]) -> tuple[PoolSnapshot, ...]:
    snaps = []
    for pool_name, pool in sorted(pools.items()):
        eps = []
        for e in pool.endpoints:
            host, _, port = e.address.rpartition(":")
            eps.append(
                Endpoint(
                    id=e.id or e.address,
                    pool=pool_name,
                    host=host.strip("[]"),
                    port=int(port),
                    backend=e.backend,
                    models=tuple(ModelRef.parse(m) for m in e.models),
                    region=e.region,
                    metrics_url=e.metrics_url,
                    capacity=e.capacity,
                    gpu=e.gpu,
                    slots=e.slots,
                    costs=e.costs,
                    meta=e.meta
                    | ({"capacity": str(e.capacity)} if "capacity" in e.model_fields_set else {})
                    | {
                        k: v
                        for k, v in (
                            ("base_url", e.base_url),
                            ("api_key_env", e.api_key_env),
                            ("api_key_file", e.api_key_file),
                        )
                        if v
                    },
                )
            )
        snaps.append(PoolSnapshot(source="static", pool=pool_name, endpoints=tuple(eps)))
    return tuple(snaps)
