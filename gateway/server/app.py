"""The gateway process: wires config, discovery, endpoint table, director and servicers.

Lifecycle: start -> serve -> SIGTERM/SIGINT -> health NOT_SERVING -> refuse new calls -> let
in-flight calls finish within `server.shutdown_grace_s` -> close backends -> exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer
from meshgate.v1 import inference_pb2, inference_pb2_grpc, models_pb2, models_pb2_grpc
from prometheus_client import CollectorRegistry, start_http_server
from tritonclient.grpc import service_pb2 as kserve_pb
from tritonclient.grpc import service_pb2_grpc as kserve_grpc

from adapters import REGISTRY
from adapters.scrub import register_secret
from discovery import DiscoverySource, StaticSource
from discovery.consul import ConsulSource, resolve_token
from discovery.registration import ConsulRegistrar

from ..config import Config
from ..endpoints import EndpointState, EndpointTable, default_adapter_maker
from ..endpoints.readiness import ReadinessChecker
from ..load import LoadProbe, load_metric_names
from ..observe.metrics import Metrics
from ..pipeline.director import Director
from ..pipeline.stages import Stage, build_stages
from ..policy.auth.authenticate import build_authentication
from ..policy.auth.authorize import AuthorizeStage, Rules
from . import ports
from .background import supervise
from .interceptors import FrontDoor
from .servicers.inference import InferenceServicer
from .servicers.kserve import KServeServicer
from .servicers.models import ModelsServicer
from .tls import ReloadingCredentials

log = logging.getLogger("meshgate")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Gateway:
    """The composition root: every component is built and wired here, and only here."""

    def __init__(
        self, config: Config, registry: CollectorRegistry | None = None, extra_stages: tuple[Stage, ...] = ()
    ) -> None:
        self.config = config
        self.metrics = Metrics(registry or CollectorRegistry())
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._health_state: dict[str, bool] = {}
        self.authentication = build_authentication(config.auth)
        self.rules = Rules(config.auth) if config.auth.rules or config.auth.default == "deny" else None
        self.table = EndpointTable(
            default_adapter_maker(config.server.max_message_bytes),
            self._on_table_change,
            config.routing.gpu_capacity,
        )
        self.readiness = ReadinessChecker(self.table, config.readiness)
        self.director = Director(
            config,
            self.table,
            self.metrics,
            self.readiness.report_down,
            on_eject=self._on_eject,
            stages=build_stages(
                config,
                self.metrics,
                extra_stages,
                authorize=AuthorizeStage(self.rules) if self.rules is not None else None,
            ),
        )
        probe_cfg = config.routing.load_probe
        self.probe = LoadProbe(
            self.table.states,
            interval_s=probe_cfg.interval_s,
            jitter=probe_cfg.jitter,
            timeout_s=probe_cfg.timeout_s,
            max_concurrent=probe_cfg.max_concurrent,
            metric_names=load_metric_names(probe_cfg.metric_names),
            on_scrape=lambda url, ok: self.metrics.scrapes.labels("ok" if ok else "error").inc(),
            on_sample=self.director.scheduler.scraped,
        )
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
        for name, ready in [("", overall), *pools.items()]:
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
        ours = (
            inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name,
            models_pb2.DESCRIPTOR.services_by_name["Models"].full_name,
            kserve_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
        )
        server = grpc.aio.server(options=options)
        # Every call of ours goes through the front door; health and reflection get the body guard.
        door = FrontDoor(cfg, self.metrics, self.authentication, self.rules, self.config.auth.audit_log)
        door.register(
            inference_pb2_grpc.add_InferenceServicer_to_server, InferenceServicer(self.director), server
        )
        door.register(models_pb2_grpc.add_ModelsServicer_to_server, ModelsServicer(self.director), server)
        door.register(
            kserve_grpc.add_GRPCInferenceServiceServicer_to_server,
            KServeServicer(self.director, self.any_ready, self.metrics.models, cfg.default_timeout_s),
            server,
        )
        door.register(health_pb2_grpc.add_HealthServicer_to_server, self.health, server, front_door=False)
        door.register(
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
            ReflectionServicer((*ours, health.SERVICE_NAME, reflection.SERVICE_NAME)),
            server,
            front_door=False,
        )
        self._bind(server, cfg.listen)
        self._serve_metrics()
        await self.health.set("", NOT_SERVING)
        self._health_state[""] = False
        for source in self.sources:
            self._background(f"discovery:{source.name}", functools.partial(self._follow, source))
        self._background("readiness", lambda: self.readiness.run(self._after_readiness_round))
        self._background("load_probe", self.probe.run)
        for name, loop in self.authentication.loops() if self.authentication is not None else ():
            self._background(name, loop)
        await server.start()
        self._server = server
        reg, consul_cfg = self.config.discovery.registration, self.config.discovery.consul
        if reg.enabled and consul_cfg is not None:
            from .. import __version__

            host = cfg.listen.rpartition(":")[0].strip("[]")
            self.registrar = ConsulRegistrar(consul_cfg, reg, host, self.port, __version__)
            self._background("registration", self.registrar.run)

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
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()


async def serve(config: Config, config_name: str) -> int:
    gateway = Gateway(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
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
