"""The gateway process: wires config, discovery, endpoint table, director and servicers.

Lifecycle: start -> serve -> SIGTERM/SIGINT -> health NOT_SERVING -> refuse new calls -> let
in-flight calls finish within `server.shutdown_grace_s` -> close backends -> exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2
from prometheus_client import CollectorRegistry, start_http_server

from adapters import REGISTRY
from adapters.scrub import register_secret
from discovery import DiscoverySource, Endpoint, StaticSource
from discovery.consul import ConsulSource, resolve_token
from discovery.registration import ConsulRegistrar

from ..config import Config, ConfigError, load_config
from ..endpoints import EndpointState, EndpointTable, default_adapter_maker
from ..endpoints.readiness import ReadinessChecker
from ..observe.autoscale import Autoscaling
from ..observe.metrics import Metrics
from ..observe.tracing import Tracing
from ..pipeline.director import Director
from ..pipeline.stages import Stage
from ..policy.admission.stage import AdmissionStage
from ..policy.auth.authenticate import build_authentication
from ..policy.auth.authorize import Rules
from ..policy.auth.keys import KeyFileError
from . import build, ports, services
from .background import supervise
from .interceptors import FrontDoor
from .reload import ReloadPlan, plan_reload, reload_logged
from .tls import ReloadingCredentials

log = logging.getLogger("meshgate")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# SERVING while the process answers, whatever its backends do: for liveness probes (a gateway
# whose pools are all down must not be restarted for it); "" and the pools are for readiness.
LIVENESS = "meshgate.liveness"


class Gateway:
    """The composition root: every component is built and wired here, and only here. What holds
    state across config reloads lives here: the rate limits' counters, the response cache's
    entries and fair admission's queues (waiting calls keep
    their place); the stages that use them are rebuilt by each reload."""

    def __init__(
        self,
        config: Config,
        registry: CollectorRegistry | None = None,
        extra_stages: tuple[Stage, ...] = (),
        config_path: str | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path  # re-read by reload(); None: the embedded default
        self.metrics = Metrics(registry or CollectorRegistry(), tuple(config.metrics.principal_labels))
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._health_state: dict[str, bool] = {}
        self.authentication = build_authentication(config.auth)
        self.rules = build.rules(config)
        self._extra_stages = extra_stages
        admission = AdmissionStage(
            lambda model, version: self.director.pools_for(model, version),
            lambda pool: self.table.pool_states(pool),
            self.metrics.registry,
        )
        self.shared = build.Shared(config, self.metrics, admission, self._endpoints_for)
        self.table = EndpointTable(
            default_adapter_maker(config.server.max_message_bytes),
            self._on_table_change,
            config.routing.gpu_capacity,
            build.upstream(config),
        )
        self.readiness = ReadinessChecker(self.table, config.readiness)
        self.director = Director(
            config,
            self.table,
            self.metrics,
            self.readiness.report_down,
            on_eject=self._on_eject,
            stages=self._stages(config, self.rules),
        )
        self.autoscaling = Autoscaling(
            config.autoscaling, self.table.pools, self.director.scheduler, admission, self.metrics.registry
        )
        self.tracing = Tracing(config.tracing, self.metrics.registry) if config.tracing.enabled else None
        self.door = FrontDoor(
            config.server, self.metrics, self.authentication, self.rules, config.auth.audit_log, self.tracing
        )
        self.probe = build.probe(config, self.table.states, self.metrics, self.director.scheduler.scraped)
        self.sources: list[DiscoverySource] = [StaticSource(config.static_snapshots())]
        self.consul: ConsulSource | None = None
        if config.discovery.consul is not None:
            self.consul = ConsulSource(config.discovery.consul, REGISTRY.keys())
            with contextlib.suppress(OSError):  # an unreadable token file is the watcher's to report
                register_secret(resolve_token(config.discovery.consul))  # masked in every message
            self.sources.append(self.consul)
        self.registrar: ConsulRegistrar | None = None
        self.metrics.watch_endpoints(self.table.states)
        self.metrics.watch_discovery(
            [(self.consul.name, self.consul.stats)] if self.consul is not None else [], self.table.invalid
        )
        self._tasks: list[asyncio.Task[Any]] = []
        self._auth_tasks: list[asyncio.Task[Any]] = []  # the authenticators' loops (replaced on reload)
        self._server: grpc.aio.Server | None = None
        self._http: Any = None
        self.port = 0
        self.metrics_port = 0

    def _on_eject(self, state: EndpointState, seconds: float) -> None:
        ep = state.endpoint
        log.warning(
            "endpoint ejected for %.0f s after consecutive failures: pool=%s id=%s (%s)",
            seconds,
            ep.pool,
            ep.id,
            state.health.message,
        )
        self.metrics.ejections.labels(ep.pool, ep.id).inc()

    # -- health ---------------------------------------------------------------------------
    def _on_table_change(self, added: list[EndpointState]) -> None:
        self.readiness.check_soon(added)
        self._publish_health()

    def _publish_health(self) -> None:
        pools = self.table.pool_ready()
        overall = any(pools.values())
        gone = [(name, False) for name in self._health_state if name and name not in pools]  # reload
        for name, ready in [("", overall), *pools.items(), *gone]:
            if self._health_state.get(name) != ready:
                self._health_state[name] = ready
                if name:
                    log.info("pool %s is %s", name, "SERVING" if ready else "NOT_SERVING")
                self._spawn(self.health.set(name, SERVING if ready else NOT_SERVING))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    def any_ready(self) -> bool:
        return self._health_state.get("", False)

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config.server
        options = [
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            # Only `serve --workers`' own processes share the port (ports.py says why).
            ("grpc.so_reuseport", 1 if ports.is_worker() else 0),
        ]
        server = grpc.aio.server(options=options)
        services.register(self, server)
        self._bind(server, cfg.listen)
        self._serve_metrics()
        await self.health.set("", NOT_SERVING)
        await self.health.set(LIVENESS, SERVING)
        self._health_state[""] = False
        for source in self.sources:
            self._background(f"discovery:{source.name}", functools.partial(self._follow, source))
        self._background("readiness", lambda: self.readiness.run(self._after_readiness_round))
        self._background("load_probe", self.probe.run)
        self._start_auth_loops()
        await self.shared.start()
        await server.start()
        self._server = server
        reg, consul_cfg = self.config.discovery.registration, self.config.discovery.consul
        if reg.enabled and consul_cfg is not None:
            from .. import __version__

            host = cfg.listen.rpartition(":")[0].strip("[]")
            self.registrar = ConsulRegistrar(consul_cfg, reg, host, self.port, __version__)
            self._background("registration", self.registrar.run)

    def _endpoints_for(self, model: str, version: str) -> list[Endpoint]:
        pools = self.director.pools_for(model, version)
        return [s.endpoint for pool in pools for s in self.table.pool_states(pool)]

    def _stages(self, config: Config, rules: Rules | None) -> tuple[Stage, ...]:
        return build.stages(config, self.metrics, rules, self.shared, self._extra_stages)

    def _start_auth_loops(self) -> None:
        for task in self._auth_tasks:
            task.cancel()
        self._auth_tasks = []
        for name, loop in self.authentication.loops() if self.authentication is not None else ():
            self._background(name, loop)
            self._auth_tasks.append(self._tasks[-1])

    # -- reload ---------------------------------------------------------------------------
    def reload(self) -> ReloadPlan:
        """Re-read the config file and apply what changed (reload.py says what can change live).
        Everything new is built before anything is swapped: a file that does not load is
        refused with the start-up error text (ConfigError), and the running config stays. Calls
        under way finish as they started; the next ones get the new settings."""
        new, source = load_config(self.config_path)
        plan = plan_reload(self.config, new, source)
        cfg = plan.config
        if not plan.applied:
            return plan
        authentication, rules = self.authentication, self.rules
        if "auth" in plan.applied:  # else keep what the authenticators cached (keys, JWKS)
            try:
                authentication = build_authentication(cfg.auth)
            except KeyFileError as err:
                raise ConfigError(f"{source}: {err}") from None
            rules = build.rules(cfg)
        try:
            self.director.reconfigure(cfg, self._stages(cfg, rules))
        except ValueError as err:
            raise ConfigError(f"{source}: {err}") from None
        self.door.use(cfg.server, authentication, rules, cfg.auth.audit_log)
        if authentication is not self.authentication:
            self.authentication, self.rules = authentication, rules
            self._start_auth_loops()
        self.table.set_upstream_tls(build.upstream(cfg))
        self.shared.cache.resize(cfg.cache.max_bytes if cfg.cache is not None else 0)
        self.autoscaling.config = cfg.autoscaling
        new_static = {snap.pool: snap for snap in cfg.static_snapshots()}
        for snap in self.config.static_snapshots():
            if snap.pool not in new_static:
                self.table.remove(snap.source, snap.pool)
        for snap in new_static.values():
            self.table.apply(snap)
        logging.getLogger().setLevel(cfg.log_level)
        self.config = cfg
        return plan

    def reload_everywhere(self) -> ReloadPlan:
        """reload(); under `serve --workers`, the parent then passes SIGHUP to every worker."""
        plan = self.reload()
        if ports.is_worker():
            os.kill(os.getppid(), signal.SIGHUP)
        return plan

    def principals(self) -> list[tuple[Any, ...]]:
        """(principal, expires_at, revoked, last seen (monotonic) or None) for ListPrincipals."""
        seen = dict(self.door.seen)
        known = self.authentication.known() if self.authentication is not None else []
        rows = [(p, expires, revoked, seen.pop(p, None)) for p, expires, revoked in known]
        recent = sorted(seen.items(), key=lambda item: -item[1])
        return rows + [(p, 0.0, False, at) for p, at in recent]

    def _bind(self, server: grpc.aio.Server, listen: str) -> None:
        """Bind the gRPC port, or raise OSError saying why (and who holds it)."""
        # Checked first (except by `--workers`' own processes, which share the port) so that a
        # held address is one clear line instead of grpc's C-core error log plus ours.
        problem = "" if ports.is_worker() else ports.bind_problem(listen)
        tls = self.config.server.tls
        if not problem:
            try:
                if tls is not None:
                    self.port = server.add_secure_port(listen, ReloadingCredentials(tls).credentials())
                else:
                    self.port = server.add_insecure_port(listen)
            except (OSError, ValueError) as err:  # the certificate files: named in the message
                raise OSError(f"server.tls: {err}") from None
            except RuntimeError:  # grpc raises RuntimeError("Failed to bind ...") and says no more
                self.port = 0
            if self.port == 0:
                problem = ports.bind_problem(listen) or f"cannot listen on {listen}"
        if problem:
            raise OSError(problem)

    def _serve_metrics(self) -> None:
        listen = self.config.metrics.listen
        if not listen:
            return
        host, port = ports.split_hostport(listen)
        try:
            self._http, _thread = start_http_server(port, host, registry=self.metrics.registry)
        except OSError as err:
            problem = ports.bind_problem(listen) or f"cannot listen on {listen}: {err.strerror or err}"
            raise OSError(
                f"metrics: {problem}; set metrics.listen (MESHGATE_METRICS_LISTEN) to another"
                " address, or null to turn metrics off"
            ) from None
        self.metrics_port = self._http.server_port

    def _background(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """A loop that lives as long as the gateway: restarted (after a back-off) if it fails."""
        self._tasks.append(asyncio.get_running_loop().create_task(supervise(name, run, self.metrics)))

    def _after_readiness_round(self) -> None:
        self._publish_health()
        for adapter in self.table.take_retired():
            self._spawn(adapter.aclose())

    async def _follow(self, source: DiscoverySource) -> None:
        async for snap in source.watch():
            self.table.apply(snap)  # skips what it cannot build; a bug ends this, and supervise restarts it

    async def stop(self) -> None:
        """Drain: NOT_SERVING, deregister, refuse new calls, finish in-flight ones within the grace period."""
        await self.health.enter_graceful_shutdown()
        if self.registrar is not None:
            await self.registrar.deregister()
        if self._server is not None:
            await self._server.stop(self.config.server.shutdown_grace_s)
        for source in self.sources:
            await source.aclose()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.probe.aclose()
        for state in self.table.states():
            await state.adapter.aclose()
        for adapter in self.table.take_retired(linger_s=0):
            await adapter.aclose()
        await self.shared.aclose()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self.tracing is not None:  # the spans still queued go out (at most tracing.timeout_s)
            await asyncio.to_thread(self.tracing.shutdown)


async def serve(config: Config, config_name: str, config_path: str | None = None) -> int:
    gateway = Gateway(config, config_path=config_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, functools.partial(reload_logged, gateway.reload))
    await gateway.start()
    host = config.server.listen.rpartition(":")[0]
    metrics = ""
    if gateway.metrics_port and config.metrics.listen:
        mhost = config.metrics.listen.rpartition(":")[0]
        metrics = f", metrics on http://{mhost}:{gateway.metrics_port}/metrics"
    print(f"meshgate: serving on {host}:{gateway.port} (config: {config_name}){metrics}", flush=True)
    await stop.wait()
    log.info("shutting down: draining in-flight calls (grace %.1fs)", config.server.shutdown_grace_s)
    await gateway.stop()
    log.info("stopped")
    return 0
