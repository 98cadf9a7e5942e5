"""A stand-in for the Consul agent's HTTP API, faithful to the documented behaviour that meshgate uses.

No Consul binary can be installed on this machine, so the tests talk to this instead. It keeps
one node ("standin-node", 127.0.0.1, dc1) and implements:

- PUT  /v1/agent/service/register[?replace-existing-checks]  (CamelCase or snake_case keys)
- PUT  /v1/agent/service/deregister/<id>                      (404 'Unknown service ID "<id>"')
- GET  /v1/agent/services, /v1/agent/checks
- PUT  /v1/agent/check/{pass,warn,fail}/<id>?note=, PUT /v1/agent/check/update/<id>
- GET  /v1/catalog/services, /v1/catalog/service/<name>, /v1/health/service/<name>
       (?passing, repeated ?tag, blocking ?index&wait with X-Consul-Index)
- GET  /v1/status/leader

Blocking queries follow Consul: no index (or 0) answers at once; otherwise the request waits
until the watched index exceeds it or `wait` (default 5m, max 10m) plus up to wait/16 of jitter
passes, then answers with the current index, which may be lower than the one asked for after a
restart; the index is never 0; a bad index or wait is a 400. Each service name has its own index,
kept after its last instance goes (the extinction index). New checks start critical unless a
Status is given. TTL checks go critical ("TTL expired"); gRPC checks really probe
grpc.health.v1.Health/Check at the registered address every Interval, HTTP checks GET their URL
(2xx passing, 429 warning) and TCP checks connect; a service whose check stays
critical longer than DeregisterCriticalServiceAfter is reaped. With an ACL token set, requests
without it get 403 "Permission denied".

Failure modes for tests: `stop()` / `start()` (an outage: the port refuses connections, state is
kept as a real cluster keeps it), `restart(index)` (an agent that comes back with a lower raft
index, as after a restore or a fresh single-server cluster), `fail_next(status, n)` (5xx
answers), `malformed = True` (200 with a body that is not JSON), `not_found` (paths answered
404 "404 page not found", as an agent without that endpoint or a proxy in front answers),
`empty` (paths answered 200 with an empty body).

Runs in its own thread with its own event loop; the public methods are thread-safe.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

NODE = {
    "ID": "0f3a9c2e-0000-4000-8000-000000000001",
    "Node": "standin-node",
    "Address": "127.0.0.1",
    "Datacenter": "dc1",
    "TaggedAddresses": {"lan": "127.0.0.1", "wan": "127.0.0.1"},
    "Meta": {},
}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Go duration ('10s', '1m30s', '500ms') -> seconds; ValueError when malformed."""
    text = text.strip()
    if text.isdigit():  # Consul also accepts a bare number of seconds for wait
        return float(text)
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            raise ValueError(text)
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(text)
    return total


def _norm(d: dict[str, Any]) -> dict[str, Any]:
    """Keys compared as Consul's decoder does: case-insensitive, snake_case == CamelCase."""
    return {k.replace("_", "").lower(): v for k, v in d.items()}


@dataclass
class Check:
    id: str
    name: str
    service_id: str
    service_name: str
    status: str = "critical"
    output: str = ""
    kind: str = ""
    ttl: float = 0.0
    grpc: str = ""
    grpc_tls: bool = False
    interval: float = 10.0
    timeout: float = 10.0
    deregister_after: float = 0.0
    ttl_deadline: float = 0.0
    critical_since: float = field(default_factory=time.monotonic)
    create_index: int = 0
    modify_index: int = 0

    def api(self) -> dict[str, Any]:
        return {
            "Node": NODE["Node"],
            "CheckID": self.id,
            "Name": self.name,
            "Status": self.status,
            "Notes": "",
            "Output": self.output,
            "ServiceID": self.service_id,
            "ServiceName": self.service_name,
            "ServiceTags": [],
            "Type": self.kind,
            "Definition": {},
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass
class Service:
    id: str
    name: str
    tags: list[str]
    address: str
    port: int
    meta: dict[str, str]
    weights: dict[str, int]
    create_index: int
    modify_index: int

    def api(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Service": self.name,
            "Tags": list(self.tags),
            "Address": self.address,
            "Meta": dict(self.meta),
            "Port": self.port,
            "Weights": dict(self.weights),
            "EnableTagOverride": False,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


class BadRequest(Exception):
    pass


class ConsulStandIn:
    def __init__(
        self,
        port: int = 0,
        acl_token: str | None = None,
        min_deregister_s: float = 60.0,
        reap_interval_s: float = 30.0,
        ssl_context: Any = None,
    ) -> None:
        self.port = port
        self.ssl_context = ssl_context  # serve HTTPS (with CERT_REQUIRED: Consul's verify_incoming)
        self.acl_token = acl_token
        self.min_deregister_s = min_deregister_s
        self.reap_interval_s = reap_interval_s
        self.malformed = False
        self._open: set[Any] = set()  # transports of requests being handled (blocked queries)
        self.not_found: set[str] = set()
        self.empty: set[str] = set()
        self.requests = 0
        self._fail: tuple[int, int] = (0, 0)  # (status, remaining)
        self._index = 10
        self._services: dict[str, Service] = {}
        self._checks: dict[str, Check] = {}
        self._service_index: dict[str, int] = {}
        self._catalog_index = self._index
        self._loop = asyncio.new_event_loop()
        self._changed: asyncio.Condition | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._probes: dict[str, asyncio.Task[Any]] = {}
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="consul-standin")
        self._thread.start()
        self._call(self._setup())

    # -- thread plumbing --------------------------------------------------------------------
    def _call(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _setup(self) -> None:
        self._changed = asyncio.Condition()
        self._tasks.append(asyncio.create_task(self._ttl_loop()))
        self._tasks.append(asyncio.create_task(self._reap_loop()))
        await self._start_http()

    async def _start_http(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        r.add_put("/v1/agent/service/register", self._register)
        r.add_put("/v1/agent/service/deregister/{id}", self._deregister)
        r.add_get("/v1/agent/services", self._agent_services)
        r.add_get("/v1/agent/checks", self._agent_checks)
        r.add_put("/v1/agent/check/{state:pass|warn|fail}/{id}", self._check_state)
        r.add_put("/v1/agent/check/update/{id}", self._check_update)
        r.add_get("/v1/catalog/services", self._catalog_services)
        r.add_get("/v1/catalog/service/{name}", self._catalog_service)
        r.add_get("/v1/health/service/{name}", self._health_service)
        r.add_get("/v1/status/leader", self._leader)
        # Blocked queries must not hold an outage or shutdown open: close them within 0.2 s.
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, "127.0.0.1", self.port, reuse_address=True, ssl_context=self.ssl_context
        )
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """An outage: close the port and every open connection; state is kept."""

        async def _stop() -> None:
            for transport in list(self._open):  # a dead agent drops its blocked queries too
                transport.close()
            self._open.clear()
            if self._runner is not None:
                await self._runner.cleanup()
                self._runner = None

        self._call(_stop())

    def start(self) -> None:
        """Come back on the same port."""
        self._call(self._start_http())

    def close(self) -> None:
        async def _close() -> None:
            # every task of this loop: ours, the probes, and probes of checks dropped lately
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            # Wait for them to unwind (their aiohttp sessions close): a task still pending when
            # the loop closes is collected later and complains ("coroutine ignored GeneratorExit").
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._runner is not None:
                await self._runner.cleanup()

        self._call(_close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def restart(self, index: int) -> None:
        """Go away, then come back with every index at `index` (lower than before): services
        and checks are kept, as a restored snapshot keeps them."""
        self.stop()

        async def _reset() -> None:
            self._index = index
            self._catalog_index = index
            self._service_index = dict.fromkeys(self._service_index, index)

        self._call(_reset())
        self.start()

    def fail_next(self, status: int = 500, n: int = 1_000_000) -> None:
        """Answer the next n requests with `status` (n large = until cleared with n=0)."""
        self._fail = (status, n)

    # -- state views for tests --------------------------------------------------------------
    def service_ids(self, name: str | None = None) -> list[str]:
        return sorted(s.id for s in list(self._services.values()) if name is None or s.name == name)

    def check_status(self, check_id: str) -> str | None:
        c = self._checks.get(check_id)
        return c.status if c else None

    def checks_of(self, service_id: str) -> list[tuple[str, str]]:
        return sorted((c.id, c.status) for c in list(self._checks.values()) if c.service_id == service_id)

    def register(self, body: dict[str, Any]) -> None:
        self._call(self._do_register(body))

    def deregister(self, service_id: str) -> None:
        self._call(self._do_deregister(service_id))

    # -- HTTP ---------------------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests += 1
        status, left = self._fail
        if left > 0:
            self._fail = (status, left - 1)
            return web.Response(status=status, text="rpc error making call: No cluster leader")
        if request.path in self.not_found:
            return web.Response(status=404, text="404 page not found")
        if request.path in self.empty:
            return web.Response(status=200, body=b"", content_type="application/json")
        if self.acl_token is not None:
            auth = request.headers.get("Authorization", "")
            token = (
                request.headers.get("X-Consul-Token")
                or request.query.get("token")
                or (auth[7:] if auth.startswith("Bearer ") else "")
            )
            if token != self.acl_token:
                return web.Response(status=403, text="Permission denied")
        transport = request.transport
        if transport is not None:
            self._open.add(transport)
        try:
            resp = await handler(request)
        except BadRequest as err:
            return web.Response(status=400, text=str(err))
        finally:
            self._open.discard(transport)
        if self.malformed and resp.content_type == "application/json":
            return web.Response(
                status=200,
                text='{"broken": [',
                content_type="application/json",
                headers={"X-Consul-Index": resp.headers.get("X-Consul-Index", "1")},
            )
        return resp

    def _json(self, data: Any, index: int | None = None) -> web.Response:
        headers = {"X-Consul-KnownLeader": "true", "X-Consul-LastContact": "0"}
        if index is not None:
            headers["X-Consul-Index"] = str(max(index, 1))
        return web.json_response(data, headers=headers)

    async def _block(self, request: web.Request, current: Any) -> None:
        """Wait while the watched index <= the requested one (Consul's blocking query)."""
        raw_index = request.query.get("index")
        if raw_index is None:
            return
        try:
            index = int(raw_index)
            if index < 0:
                raise ValueError
        except ValueError:
            raise BadRequest("Invalid index") from None
        try:
            wait = parse_duration(request.query.get("wait", "5m"))
        except ValueError:
            raise BadRequest("Invalid wait time") from None
        if index == 0:
            return
        wait = min(wait, 600.0)
        wait += random.uniform(0, wait / 16)
        deadline = time.monotonic() + wait
        assert self._changed is not None
        async with self._changed:
            while current() <= index:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                try:
                    await asyncio.wait_for(self._changed.wait(), left)
                except TimeoutError:
                    return

    async def _bump(self, *names: str, catalog: bool = False) -> None:
        self._index += 1
        for n in names:
            self._service_index[n] = self._index
        if catalog:
            self._catalog_index = self._index
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    async def _leader(self, request: web.Request) -> web.Response:
        return self._json("127.0.0.1:8300")

    async def _register(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.text())
        except json.JSONDecodeError:
            raise BadRequest("Request decode failed: invalid character") from None
        if not isinstance(body, dict):
            raise BadRequest("Request decode failed: expected an object")
        await self._do_register(body, replace=request.query.get("replace-existing-checks") is not None)
        return web.Response(status=200)

    async def _do_register(self, body: dict[str, Any], replace: bool = False) -> None:
        b = _norm(body)
        name = b.get("name") or ""
        if not name:
            raise BadRequest("Missing service name")
        sid = b.get("id") or name
        port = b.get("port") or 0
        if not isinstance(port, int):
            raise BadRequest("Request decode failed: Port must be a number")
        weights = _norm(b.get("weights") or {})
        old = self._services.get(sid)
        svc = Service(
            sid,
            name,
            list(b.get("tags") or []),
            b.get("address") or "",
            port,
            {str(k): str(v) for k, v in (b.get("meta") or {}).items()},
            {"Passing": int(weights.get("passing", 1)), "Warning": int(weights.get("warning", 1))},
            old.create_index if old else self._index + 1,
            self._index + 1,
        )
        specs = list(b.get("checks") or [])
        if b.get("check"):
            specs.insert(0, b["check"])
        checks = [self._parse_check(svc, _norm(spec), i, len(specs)) for i, spec in enumerate(specs)]
        if old is not None and old.name != name:
            self._drop_service(sid)
        if replace or old is None:
            for cid in [c.id for c in self._checks.values() if c.service_id == sid]:
                self._drop_check(cid)
        self._services[sid] = svc
        for c in checks:
            prev = self._checks.get(c.id)
            if prev is not None and not replace:
                c.status, c.output = prev.status, prev.output
            self._drop_check(c.id)
            self._checks[c.id] = c
            if c.kind in ("grpc", "http", "tcp"):
                self._probes[c.id] = asyncio.create_task(self._probe(c))
        await self._bump(name, catalog=True)

    def _parse_check(self, svc: Service, c: dict[str, Any], i: int, n: int) -> Check:
        cid = (
            c.get("checkid")
            or c.get("id")
            or (f"service:{svc.id}" if n == 1 else f"service:{svc.id}:{i + 1}")
        )
        check = Check(
            cid,
            c.get("name") or f"Service '{svc.name}' check",
            svc.id,
            svc.name,
            create_index=self._index + 1,
            modify_index=self._index + 1,
        )
        status = c.get("status")
        if status:
            if status not in ("passing", "warning", "critical"):
                raise BadRequest(f'Invalid check status: "{status}"')
            check.status = status
        try:
            if c.get("deregistercriticalserviceafter"):
                check.deregister_after = max(
                    parse_duration(c["deregistercriticalserviceafter"]), self.min_deregister_s
                )
            if c.get("ttl"):
                check.kind, check.ttl = "ttl", parse_duration(c["ttl"])
                check.ttl_deadline = time.monotonic() + check.ttl
            elif c.get("grpc") or c.get("http") or c.get("tcp"):
                check.kind = "grpc" if c.get("grpc") else "http" if c.get("http") else "tcp"
                check.grpc = str(c.get("grpc") or c.get("http") or c.get("tcp"))
                check.grpc_tls = bool(c.get("grpcusetls"))
                if not c.get("interval"):
                    raise BadRequest("Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or GRPC checks")
                check.interval = parse_duration(c["interval"])
                check.timeout = parse_duration(c.get("timeout") or "10s")
            else:
                raise BadRequest("Invalid check: TTL, GRPC, HTTP or TCP (with Interval) must be set")
        except ValueError as err:
            raise BadRequest(f"Invalid duration: {err}") from None
        return check

    def _drop_check(self, cid: str) -> None:
        self._checks.pop(cid, None)
        probe = self._probes.pop(cid, None)
        if probe is not None:
            probe.cancel()

    def _drop_service(self, sid: str) -> str | None:
        svc = self._services.pop(sid, None)
        for cid in [c.id for c in self._checks.values() if c.service_id == sid]:
            self._drop_check(cid)
        return svc.name if svc else None

    async def _deregister(self, request: web.Request) -> web.Response:
        sid = request.match_info["id"]
        if sid not in self._services:
            return web.Response(
                status=404,
                text=f'Unknown service ID "{sid}". Ensure that the service ID is passed, not the service name.',
            )
        await self._do_deregister(sid)
        return web.Response(status=200)

    async def _do_deregister(self, sid: str) -> None:
        name = self._drop_service(sid)
        if name is not None:
            await self._bump(name, catalog=True)

    async def _set_status(self, check: Check, status: str, output: str) -> None:
        changed = check.status != status or check.output != output
        if check.status != "critical" and status == "critical":
            check.critical_since = time.monotonic()
        check.status, check.output = status, output
        if changed:
            check.modify_index = self._index + 1
            await self._bump(check.service_name)

    async def _check_state(self, request: web.Request) -> web.Response:
        check = self._checks.get(request.match_info["id"])
        if check is None:
            return web.Response(status=404, text=f'Unknown check ID "{request.match_info["id"]}"')
        status = {"pass": "passing", "warn": "warning", "fail": "critical"}[request.match_info["state"]]
        if check.kind == "ttl":
            check.ttl_deadline = time.monotonic() + check.ttl
        await self._set_status(check, status, request.query.get("note", ""))
        return web.Response(status=200)

    async def _check_update(self, request: web.Request) -> web.Response:
        check = self._checks.get(request.match_info["id"])
        if check is None:
            return web.Response(status=404, text=f'Unknown check ID "{request.match_info["id"]}"')
        body = _norm(json.loads(await request.text() or "{}"))
        status = body.get("status", "")
        if status not in ("passing", "warning", "critical"):
            raise BadRequest(f'Invalid check status: "{status}"')
        if check.kind == "ttl":
            check.ttl_deadline = time.monotonic() + check.ttl
        await self._set_status(check, status, body.get("output", ""))
        return web.Response(status=200)

    async def _agent_services(self, request: web.Request) -> web.Response:
        return self._json({s.id: s.api() for s in self._services.values()})

    async def _agent_checks(self, request: web.Request) -> web.Response:
        return self._json({c.id: c.api() for c in self._checks.values()})

    async def _catalog_services(self, request: web.Request) -> web.Response:
        await self._block(request, lambda: self._catalog_index)
        out: dict[str, list[str]] = {"consul": []}
        for s in self._services.values():
            tags = out.setdefault(s.name, [])
            tags.extend(t for t in s.tags if t not in tags)
        return self._json(out, self._catalog_index)

    def _name_index(self, name: str) -> int:
        return self._service_index.get(name, self._catalog_index)

    async def _catalog_service(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        await self._block(request, lambda: self._name_index(name))
        rows = []
        for s in self._instances(name, request.query.getall("tag", [])):
            rows.append(
                {
                    "Node": NODE["Node"],
                    "Address": NODE["Address"],
                    "Datacenter": "dc1",
                    "ServiceID": s.id,
                    "ServiceName": s.name,
                    "ServiceTags": s.tags,
                    "ServiceAddress": s.address,
                    "ServicePort": s.port,
                    "ServiceMeta": s.meta,
                }
            )
        return self._json(rows, self._name_index(name))

    def _instances(self, name: str, tags: list[str]) -> list[Service]:
        return sorted(
            (s for s in self._services.values() if s.name == name and all(t in s.tags for t in tags)),
            key=lambda s: s.id,
        )

    async def _health_service(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        await self._block(request, lambda: self._name_index(name))
        passing = request.query.get("passing") is not None and request.query.get("passing") != "false"
        serf = {
            "Node": NODE["Node"],
            "CheckID": "serfHealth",
            "Name": "Serf Health Status",
            "Status": "passing",
            "Output": "Agent alive and reachable",
            "ServiceID": "",
            "ServiceName": "",
            "Type": "",
        }
        entries = []
        for s in self._instances(name, request.query.getall("tag", [])):
            checks = [serf] + [c.api() for c in self._checks.values() if c.service_id == s.id]
            if passing and any(c["Status"] != "passing" for c in checks):
                continue  # warning counts as not passing
            entries.append({"Node": NODE, "Service": s.api(), "Checks": checks})
        return self._json(entries, self._name_index(name))

    # -- check runners ------------------------------------------------------------------------
    async def _ttl_loop(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            for c in list(self._checks.values()):
                if c.kind == "ttl" and now > c.ttl_deadline and c.status != "critical":
                    await self._set_status(c, "critical", "TTL expired")

    async def _probe(self, check: Check) -> None:
        if check.kind != "grpc":
            return await self._probe_plain(check)
        target, _, service = check.grpc.partition("/")
        async with grpc.aio.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    resp = await stub.Check(
                        health_pb2.HealthCheckRequest(service=service), timeout=check.timeout
                    )
                    ok = resp.status == health_pb2.HealthCheckResponse.SERVING
                    status, output = (
                        ("passing", f"gRPC check {check.grpc}: success")
                        if ok
                        else ("critical", f"gRPC check {check.grpc}: failed with status {resp.status}")
                    )
                except grpc.aio.AioRpcError as err:
                    status, output = (
                        "critical",
                        f"gRPC check {check.grpc}: {err.code().name}: {err.details()}",
                    )
                if check.id in self._checks:
                    await self._set_status(check, status, output)
                await asyncio.sleep(check.interval)

    async def _probe_plain(self, check: Check) -> None:
        """HTTP: 2xx passing, 429 warning, else critical. TCP: a connection is passing."""
        import aiohttp

        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    if check.kind == "http":
                        async with session.get(
                            check.grpc, timeout=aiohttp.ClientTimeout(total=check.timeout)
                        ) as r:
                            code = r.status
                        status = "passing" if 200 <= code < 300 else "warning" if code == 429 else "critical"
                        output = f"HTTP GET {check.grpc}: {code}"
                    else:
                        host, _, port = check.grpc.rpartition(":")
                        _, writer = await asyncio.wait_for(
                            asyncio.open_connection(host, int(port)), check.timeout
                        )
                        writer.close()
                        status, output = "passing", f"TCP connect {check.grpc}: Success"
                except (OSError, TimeoutError, aiohttp.ClientError) as err:
                    status, output = "critical", f"{check.kind.upper()} {check.grpc}: {err}"
                if check.id in self._checks:
                    await self._set_status(check, status, output)
                await asyncio.sleep(check.interval)

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval_s)
            now = time.monotonic()
            for c in list(self._checks.values()):
                if (
                    c.deregister_after
                    and c.status == "critical"
                    and now - c.critical_since > c.deregister_after
                ):
                    await self._do_deregister(c.service_id)


def main() -> None:
    """Run it by hand: python -m tests.consul_standin [port]."""
    import sys

    standin = ConsulStandIn(port=int(sys.argv[1]) if len(sys.argv) > 1 else 8500)
    print(f"Consul stand-in on http://{standin.address}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
