"""Self-registration: the gateway registers itself in Consul so that clients can find it.

The registration carries a gRPC health check against the gateway's own grpc.health.v1 service
(the overall "" status), so Consul marks a replica critical as soon as it stops serving, and
DeregisterCriticalServiceAfter removes a replica that died without deregistering. On SIGTERM the
gateway turns NOT_SERVING, deregisters, then drains.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import aiohttp
import consul
from pydantic import BaseModel, ConfigDict, Field

from .consul import ConsulConfig, close_client, make_client

log = logging.getLogger("meshgate.discovery.registration")


class RegisterConfig(BaseModel):
    """discovery.register in the gateway config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    name: str = Field(default="meshgate", min_length=1)
    # Unique per replica; default <name>-<hostname>-<port>.
    id: str | None = None
    # Address Consul and clients use to reach this replica; default: the listen host, or this
    # host's name when listening on all interfaces.
    address: str | None = None
    tags: list[str] = Field(default_factory=lambda: ["meshgate", "grpc"])
    check_interval_s: float = Field(default=5.0, gt=0)
    check_timeout_s: float = Field(default=2.0, gt=0)
    # Consul's minimum is 1m; its reaper runs every 30 s.
    deregister_critical_after: str = "1m"
    # How often to confirm the registration is still there (re-registers after a Consul wipe).
    refresh_s: float = Field(default=30.0, gt=0)


# What registration survives: the network, Consul's errors (5xx, 403), bodies that are not JSON
# or not the shape the API documents (ValueError covers json.JSONDecodeError).
_ERRORS = (aiohttp.ClientError, TimeoutError, consul.ConsulException, ValueError, TypeError, KeyError)


class ConsulRegistrar:
    def __init__(
        self, consul_config: ConsulConfig, config: RegisterConfig, listen_host: str, port: int, version: str
    ) -> None:
        self._consul_config = consul_config
        self.config = config
        host = config.address or listen_host
        if host in ("", "0.0.0.0", "::", "[::]"):
            host = socket.gethostname()
        self.address = host
        self.port = port
        self.service_id = config.id or f"{config.name}-{socket.gethostname()}-{port}"
        self._version = version
        self._client = make_client(consul_config, 10.0)
        self.registered = False

    async def register(self) -> None:
        """Register (or re-register); raises on failure."""
        check = consul.Check.grpc(
            f"{self.address}:{self.port}",
            f"{self.config.check_interval_s}s",
            timeout=f"{self.config.check_timeout_s}s",
            deregister=self.config.deregister_critical_after,
        )
        meta = {"version": self._version, "api": "meshgate.v1", "kserve_v2": "true"}
        await self._client.agent.service.register(
            self.config.name,
            service_id=self.service_id,
            address=self.address,
            port=self.port,
            tags=list(self.config.tags),
            meta=meta,
            check=check,
        )
        if not self.registered:
            log.info("registered in Consul as %s (%s:%d)", self.service_id, self.address, self.port)
        self.registered = True

    async def run(self) -> None:
        """Register, retrying while Consul is unreachable; then confirm it periodically."""
        delay = 0.5
        while True:
            try:
                services = await self._client.agent.services() if self.registered else {}
                if not isinstance(services, dict):
                    # py-consul answers None for a 404 (an agent without the endpoint, a proxy in
                    # between) or an empty body: we cannot tell, so register again.
                    log.warning(
                        "consul: GET /v1/agent/services gave no service map (%s); registering %s again",
                        type(services).__name__,
                        self.service_id,
                    )
                    services = {}
                if self.service_id not in services:
                    await self.register()
                delay = self.config.refresh_s
            except _ERRORS as err:
                log.warning(
                    "consul registration of %s failed (%s: %s); retrying",
                    self.service_id,
                    type(err).__name__,
                    str(err)[:200],
                )
                delay = min(delay * 2, 10.0)
            await asyncio.sleep(delay)

    async def deregister(self) -> None:
        try:
            if self.registered:
                await asyncio.wait_for(self._client.agent.service.deregister(self.service_id), 3.0)
                log.info("deregistered %s from Consul", self.service_id)
        except _ERRORS as err:
            log.warning(
                "consul deregistration of %s failed (%s); its check will go critical",
                self.service_id,
                type(err).__name__,
            )
        finally:
            self.registered = False
            await close_client(self._client)
