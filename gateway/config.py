"""Typed configuration: one YAML file, validated at start-up.

Errors name the file, the key path and what was expected; `ConfigError` carries the whole
message so the CLI can print it and exit non-zero without a traceback.
"""

from __future__ import annotations

import ipaddress
import os
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from discovery import PoolSnapshot
from discovery.consul import ConsulConfig
from discovery.registration import RegisterConfig

from .endpoints.static import HostPort, PoolConfig, check_hostport, static_snapshots
from .endpoints.upstream import UpstreamTLS
from .ledger.config import LedgerConfig, PricesConfig
from .observe.tracing import TracingConfig
from .policy.admission.config import AdmissionConfig
from .policy.auth.config import AuthConfig
from .policy.budgets.config import BudgetsConfig
from .policy.cache.config import CacheConfig
from .policy.limits.config import RateLimitsConfig, RedisConfig
from .server.tls import TLSConfig

ENV_LISTEN = "MESHGATE_LISTEN"
ENV_METRICS_LISTEN = "MESHGATE_METRICS_LISTEN"
DEFAULT_CONFIG_NAME = "<embedded default>"


Positive = Annotated[float, Field(gt=0)]  # a map's value that must be > 0 (the error names its key)


class ConfigError(Exception):
    """The config cannot be used; the message is for humans and complete."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    """The gRPC front door."""

    listen: HostPort = "127.0.0.1:8700"
    # Transport cap for one message in either direction (gRPC answers RESOURCE_EXHAUSTED above it).
    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=4096)
    # Deadline applied when a caller sets none, and the cap on any caller's deadline.
    default_timeout_s: float = Field(default=30.0, gt=0)
    max_timeout_s: float = Field(default=300.0, gt=0)
    # On SIGTERM: how long in-flight calls may take to finish before they are cancelled.
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    # Use uvloop for the event loop when installed.
    uvloop: bool = True
    # One logfmt line per call on logger meshgate.access (method, code, ms, request id, peer,
    # user, model, pool, endpoint, attempts).
    access_log: bool = True
    # A listener on a non-loopback address needs an authenticator (auth.authenticators) unless
    # this says, explicitly, that anyone who can reach the port may call every model.
    allow_unauthenticated: bool = False
    # TLS on the listener (certificates reloaded when their files change); mTLS with client_ca_file.
    tls: TLSConfig | None = None

    _listen = field_validator("listen")(classmethod(lambda cls, v: check_hostport(v)))


class MetricsConfig(_Strict):
    """Prometheus /metrics over HTTP; listen null turns it off."""

    listen: str | None = "127.0.0.1:8701"
    # Per-principal labels on meshgate_principal_* (calls and cost): off by default, and only
    # these bounded fields (never user or key: that is what the ledger is for).
    principal_labels: list[Literal["project", "department"]] = Field(default_factory=list)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        return None if v is None else check_hostport(v)

    @field_validator("principal_labels")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("principal_labels: each label once")
        return v


class LimitsConfig(_Strict):
    """Request validation limits (INVALID_ARGUMENT naming the field when exceeded)."""

    max_request_bytes: int = Field(default=32 * 1024 * 1024, ge=1)
    max_inputs: int = Field(default=64, ge=1)
    max_dims: int = Field(default=16, ge=1)


class ReadinessConfig(_Strict):
    """Background readiness checks (server live + model ready) per endpoint."""

    interval_s: float = Field(default=1.0, gt=0)
    timeout_s: float = Field(default=1.0, gt=0)
    # Slower checks per backend kind: external APIs rate-limit (and some bill) their model list,
    # and a failing call still triggers an immediate check. Kinds not listed use interval_s.
    interval_by_backend: dict[str, Positive] = Field(
        default_factory=lambda: {"openai": 15.0, "anthropic": 15.0}
    )
    # Endpoints from a source that health-checks them (Consul lists only passing instances and
    # drops failing ones within its blocking query) are checked this often while every model is
    # ready; still at once when new or after a failed call, and at interval_s while not ready.
    health_checked_interval_s: float = Field(default=10.0, gt=0)


class LoadProbeConfig(_Strict):
    """Background scrapes of each endpoint's metrics_url (GPU, queue, KV cache signals)."""

    interval_s: float = Field(default=1.0, gt=0)
    jitter: float = Field(default=0.2, ge=0, lt=1)  # +-20% per round, so replicas do not scrape in step
    timeout_s: float = Field(default=0.5, gt=0)
    max_age_s: float = Field(default=5.0, gt=0)  # older values stop steering
    metric_names: str | None = None  # a YAML file replacing the packaged metric name table
    max_concurrent: int = Field(default=32, ge=1)  # scrapes in flight at once (the rest wait their turn)


class OutlierConfig(_Strict):
    consecutive_failures: int = Field(default=5, ge=1)
    base_ejection_s: float = Field(default=5.0, gt=0)
    max_ejection_s: float = Field(default=300.0, gt=0)
    max_ejected_percent: float = Field(default=50.0, ge=0, le=100)


class RetryBudgetConfig(_Strict):
    percent: float = Field(default=20.0, ge=0)  # retries may add this share of a pool's requests
    min_per_s: float = Field(default=3.0, ge=0)  # plus this many per second


class ProfileConfig(_Strict):
    filters: list[str] = Field(default_factory=lambda: ["ready", "not_ejected"])
    scorers: dict[str, float] = Field(default_factory=dict)  # scorer -> weight
    picker: str = "max_score"


class TargetConfig(_Strict):
    model: str = Field(min_length=1)
    version: str = ""
    pool: str = ""  # "" = any pool that serves the model
    weight: float = Field(default=1.0, gt=0)  # in `split` only


class AliasConfig(_Strict):
    """A model name callers use, mapped to a chain of targets (see gateway/routing/policy.py)."""

    split: list[TargetConfig] = Field(default_factory=list)
    fallback: list[TargetConfig] = Field(default_factory=list)
    spill_on_deadline: bool = True

    @model_validator(mode="after")
    def _has_targets(self) -> AliasConfig:
        if not self.split and not self.fallback:
            raise ValueError("an alias needs `split` or `fallback` targets")
        return self


class RoutingConfig(_Strict):
    # Retry an idempotent call once on another endpoint when the first answers UNAVAILABLE.
    retry_unavailable: bool = True
    profile: str = "default"  # scheduler profile for every pool ...
    pool_profiles: dict[str, str] = Field(default_factory=dict)  # ... except these (pool -> profile)
    profiles: dict[str, ProfileConfig] = Field(default_factory=dict)  # added to / replacing built-ins
    # Complexity units per item (tensor models) or per 1,000 tokens (LLMs); default 1.
    model_costs: dict[str, float] = Field(default_factory=dict)
    # LLM requests without max_tokens are expected to produce this many tokens.
    expected_output_tokens: int = Field(default=256, ge=1)
    load_probe: LoadProbeConfig = LoadProbeConfig()
    outlier: OutlierConfig = OutlierConfig()
    retry_budget: RetryBudgetConfig = RetryBudgetConfig()
    aliases: dict[str, AliasConfig] = Field(default_factory=dict)
    # GPU class (Consul Meta / endpoint `gpu`) -> capacity, for endpoints that give no capacity.
    gpu_capacity: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _profiles_exist(self) -> RoutingConfig:
        from .routing.scheduler import BUILTIN_PROFILES, ProfileSpec, check_profile

        for name, p in self.profiles.items():
            check_profile(name, ProfileSpec(tuple(p.filters), p.scorers, p.picker))
        known = set(BUILTIN_PROFILES) | set(self.profiles)
        for where, name in [
            ("profile", self.profile),
            *((f"pool_profiles.{k}", v) for k, v in self.pool_profiles.items()),
        ]:
            if name not in known:
                raise ValueError(
                    f"{where}: unknown profile {name!r}; expected one of {', '.join(sorted(known))}"
                )
        for model, cost in self.model_costs.items():
            if not cost > 0:
                raise ValueError(f"model_costs.{model}: must be > 0")
        return self


class DiscoveryConfig(_Strict):
    """Where endpoints come from besides `pools`, and whether the gateway registers itself."""

    consul: ConsulConfig | None = None
    # The YAML key is `register`; the attribute is renamed because pydantic models (ABCs)
    # already have a `register` classmethod.
    registration: RegisterConfig = Field(default_factory=RegisterConfig, alias="register")

    @model_validator(mode="after")
    def _register_needs_consul(self) -> DiscoveryConfig:
        if self.registration.enabled and self.consul is None:
            raise ValueError("register.enabled needs a consul section (use `consul: {}` for the defaults)")
        return self


class AutoscalingConfig(_Strict):
    """Per-pool autoscaling signals (gateway/observe/autoscale.py), as Prometheus gauges and
    through KEDA's external scaler gRPC service on the gateway's port."""

    keda: bool = True  # serve externalscaler.ExternalScaler (no authentication, like grpc.health)
    # pool glob -> complexity units one backend replica should carry (in flight and queued);
    # default: its slots x the pool's mean units per call (a replica with every slot busy).
    target_units_per_replica: dict[str, Positive] = Field(default_factory=dict)
    stream_interval_s: float = Field(default=1.0, gt=0)  # StreamIsActive checks this often


class Config(_Strict):
    server: ServerConfig = ServerConfig()
    discovery: DiscoveryConfig = DiscoveryConfig()
    metrics: MetricsConfig = MetricsConfig()
    limits: LimitsConfig = LimitsConfig()
    readiness: ReadinessConfig = ReadinessConfig()
    routing: RoutingConfig = RoutingConfig()
    auth: AuthConfig = AuthConfig()
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    log_format: Literal["text", "json"] = "text"  # json: one object per line, with request and trace ids
    pools: dict[str, PoolConfig] = Field(default_factory=dict)
    rate_limits: RateLimitsConfig = RateLimitsConfig()
    cache: CacheConfig | None = None  # the response cache; off when absent
    admission: AdmissionConfig = AdmissionConfig()  # fair admission to saturated pools; off without pools
    redis: RedisConfig | None = None
    ledger: LedgerConfig | None = None  # durable usage records (SQLite or PostgreSQL); off when absent
    prices: PricesConfig = PricesConfig()  # what calls cost (tokens, GPU-seconds, cache hits)
    budgets: BudgetsConfig = BudgetsConfig()  # spend caps per department, project, user, API key
    upstream_tls: dict[str, UpstreamTLS] = Field(default_factory=dict)  # pool (or "*") -> TLS to its backends
    autoscaling: AutoscalingConfig = AutoscalingConfig()  # per-pool signals, KEDA external scaler
    tracing: TracingConfig = TracingConfig()  # OpenTelemetry spans over OTLP/gRPC; off by default

    @model_validator(mode="after")
    def _redis_when_used(self) -> Config:
        if self.rate_limits.store == "redis" and self.redis is None:
            raise ValueError(
                "rate_limits.store: redis needs a redis section (redis: {url: redis://host:6379/0})"
            )
        if self.ledger is not None and self.ledger.store == "postgres" and not self.ledger.url:
            raise ValueError("ledger.store: postgres needs ledger.url (postgresql://user@host:5432/db)")
        if self.budgets.store == "redis" and self.redis is None:
            raise ValueError("budgets.store: redis needs a redis section (redis: {url: redis://host:6379/0})")
        if self.cache is not None and self.cache.store == "redis" and self.redis is None:
            raise ValueError("cache.store: redis needs a redis section (redis: {url: redis://host:6379/0})")
        return self

    @model_validator(mode="after")
    def _secure_by_default(self) -> Config:
        listen = self.server.listen
        if not self.auth.authenticators and not self.server.allow_unauthenticated and not _loopback(listen):
            raise ValueError(
                f"server.listen {listen} is reachable from other hosts and no authenticator is"
                " configured: anyone who can reach it could call every model. Configure"
                " auth.authenticators (e.g. [api_key] with auth.api_keys.file), listen on"
                " 127.0.0.1, or set server.allow_unauthenticated: true"
            )
        return self

    def static_snapshots(self) -> tuple[PoolSnapshot, ...]:
        return static_snapshots(self.pools)


def _loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def format_errors(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid configuration ({err.error_count()} error(s)):"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif (
            "input" in e
            and e["type"] not in ("missing", "value_error")
            and not isinstance(e["input"], dict | list)
        ):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"  {path}: {msg}")
    return "\n".join(lines)


_ENV_REF = re.compile(r"\$(\$)?\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(text: str, source: str, env: dict[str, str]) -> str:
    """`${NAME}` in the config text becomes the environment variable's value (a Kubernetes
    Secret passed as env, say, so that no password sits in a ConfigMap); `$${NAME}` stays a
    literal `${NAME}`; comment lines are left alone. ConfigError naming every variable that is
    not set."""
    lines = text.splitlines(keepends=True)
    live = [i for i, line in enumerate(lines) if not line.lstrip().startswith("#") and "${" in line]
    refs = [m for i in live for m in _ENV_REF.finditer(lines[i])]
    missing = sorted({m.group(2) for m in refs if not m.group(1) and m.group(2) not in env})
    if missing:
        raise ConfigError(f"{source}: environment variable(s) not set: {', '.join(missing)}")
    for i in live:
        lines[i] = _ENV_REF.sub(
            lambda m: "${" + m.group(2) + "}" if m.group(1) else env[m.group(2)], lines[i]
        )
    return "".join(lines)


def parse_config(text: str, source: str, env: dict[str, str] | None = None) -> Config:
    """Parse and validate YAML text (with ${NAME} from the environment); `source` names it in
    errors."""
    env = dict(os.environ) if env is None else env
    text = expand_env(text, source, env)
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    server = data.setdefault("server", {}) if isinstance(data.get("server", {}), dict) else None
    if server is not None and env.get(ENV_LISTEN):
        server["listen"] = env[ENV_LISTEN]
    if env.get(ENV_METRICS_LISTEN) and isinstance(data.get("metrics", {}), dict):
        value = env[ENV_METRICS_LISTEN]
        data.setdefault("metrics", {})["listen"] = None if value in ("off", "none") else value
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_errors(source, err)) from None


def load_config(path: str | None, env: dict[str, str] | None = None) -> tuple[Config, str]:
    """Load `path`, or the embedded default when None. Returns the config and its source name."""
    if path is None:
        text = resources.files("gateway").joinpath("default.yaml").read_text()
        return parse_config(text, DEFAULT_CONFIG_NAME, env), DEFAULT_CONFIG_NAME
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    return parse_config(text, path, env), path
