"""Backends found through Consul (the stand-in), with traffic flowing: changes, outages, bad data."""

from __future__ import annotations

import collections
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from tests.consul_standin import ConsulStandIn
from tests.flaky_backend import FlakyBackend
from tests.helpers import add_sub_request, infer
from tests.procs import Gateway, MLServer, Triton, wait_until

PASSING = {"TTL": "1h", "Status": "passing"}


def backend(
    pool: str, sid: str, server: Triton | MLServer, models: str, kind: str = "triton", **meta: str
) -> dict[str, Any]:
    return {
        "Name": pool,
        "ID": sid,
        "Address": "127.0.0.1",
        "Port": server.grpc_port,
        "Tags": ["inference"],
        "Meta": {"backend": kind, "models": models, **meta},
        "Check": dict(PASSING),
    }


@pytest.fixture
def standin() -> Iterator[ConsulStandIn]:
    s = ConsulStandIn(min_deregister_s=1.0, reap_interval_s=0.2)
    yield s
    s.close()


def consul_gateway(standin: ConsulStandIn, **discovery: Any) -> Gateway:
    consul = {"address": standin.address, "backoff_max_s": 1.0, **discovery.pop("consul", {})}
    return Gateway({"discovery": {"consul": consul, **discovery}})


class Traffic:
    """Background callers recording (start time, endpoint or error) for every call."""

    def __init__(self, gw: Gateway, threads: int = 4) -> None:
        self.calls: list[tuple[float, str]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(gw.address,)) for _ in range(threads)]

    def _run(self, address: str) -> None:
        with grpc.insecure_channel(address) as ch:
            while not self._stop.is_set():
                start = time.monotonic()
                try:
                    self.calls.append((start, infer(ch, add_sub_request([1], [2]), timeout=5).route.endpoint))
                except grpc.RpcError as err:
                    self.errors.append(f"{err.code().name}: {err.details()}")
                time.sleep(0.005)

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def served_by(self, since: float = 0.0) -> collections.Counter[str]:
        return collections.Counter(ep for start, ep in list(self.calls) if start >= since)


def test_backends_registered_in_consul_are_served(
    standin: ConsulStandIn, triton_a: Triton, mlserver: MLServer
) -> None:
    standin.register(
        backend("tritons", "triton-a", triton_a, "add_sub,echo_text", gpu="a100-80g", capacity="2")
    )
    standin.register(backend("mlservers", "mlserver-1", mlserver, "sum", kind="kserve_v2"))
    standin.register({"Name": "not-a-model", "Port": 1, "Tags": ["web"], "Check": dict(PASSING)})
    gw = consul_gateway(standin).start()
    try:
        gw.wait_serving("tritons").wait_serving("mlservers")
        with grpc.insecure_channel(gw.address) as ch:
            resp = infer(ch, add_sub_request([1], [2]))
            assert (resp.route.pool, resp.route.endpoint, resp.route.backend) == (
                "tritons",
                "triton-a",
                "triton",
            )
        from meshgate.v1 import models_pb2, models_pb2_grpc

        with grpc.insecure_channel(gw.address) as ch:
            names = [
                m.name
                for m in models_pb2_grpc.ModelsStub(ch).ListModels(models_pb2.ListModelsRequest()).models
            ]
        assert names == ["add_sub", "echo_text", "sum"]  # the untagged service is not a pool
    finally:
        gw.stop()


def test_deregistered_or_failing_backend_stops_receiving_calls_within_1s(
    standin: ConsulStandIn, triton_a: Triton, triton_b: Triton
) -> None:
    from grpc_health.v1 import health_pb2

    from tests.health_server import HealthServer

    checker = HealthServer()  # the gRPC health endpoint Consul probes for triton-b
    standin.register(backend("tritons", "triton-a", triton_a, "add_sub"))
    b = backend("tritons", "triton-b", triton_b, "add_sub")
    b["Check"] = {"GRPC": f"127.0.0.1:{checker.port}", "Interval": "100ms", "Timeout": "1s"}
    standin.register(b)
    gw = consul_gateway(standin).start()
    try:
        wait_until(
            lambda: standin.check_status("service:triton-b") == "passing", 10, "triton-b check passing"
        )
        gw.wait_serving("tritons")  # traffic starts once the gateway has checked its endpoints
        with Traffic(gw) as traffic:
            wait_until(lambda: traffic.served_by()["triton-b"] > 20, 20, "traffic on triton-b")
            # 1. Its gRPC health check fails: Consul marks it critical, the passing set shrinks.
            failed_at = time.monotonic()
            checker.set(health_pb2.HealthCheckResponse.NOT_SERVING)
            time.sleep(2.0)
            assert traffic.served_by(since=failed_at + 1.0)["triton-b"] == 0
            assert traffic.served_by(since=failed_at + 1.0)["triton-a"] > 20
            # 2. It comes back healthy and gets calls again once ready.
            checker.set(health_pb2.HealthCheckResponse.SERVING)
            back_at = time.monotonic()
            wait_until(lambda: traffic.served_by(since=back_at)["triton-b"] > 5, 10, "triton-b back")
            # 3. Deregistered: no new calls within 1 s.
            gone_at = time.monotonic()
            standin.deregister("triton-b")
            time.sleep(2.0)
            assert traffic.served_by(since=gone_at + 1.0)["triton-b"] == 0
        assert traffic.errors == []
    finally:
        gw.stop()
        checker.close()


def test_consul_outage_keeps_endpoints_and_recovers(
    standin: ConsulStandIn, triton_a: Triton, triton_b: Triton
) -> None:
    standin.register(backend("tritons", "triton-a", triton_a, "add_sub"))
    standin.register(backend("tritons", "triton-b", triton_b, "add_sub"))
    gw = consul_gateway(standin).start()
    try:
        gw.wait_serving("tritons")
        with Traffic(gw) as traffic:
            standin.stop()
            outage = time.monotonic()
            time.sleep(30.0)
            metrics = _metrics(gw)
            age = float(
                next(
                    x for x in metrics.splitlines() if x.startswith("meshgate_discovery_data_age_seconds")
                ).split()[-1]
            )
            assert age > 25
            assert 'meshgate_discovery_errors_total{kind="ClientConnectorError",source="consul"}' in metrics
            during = traffic.served_by(since=outage)
            assert during["triton-a"] > 50 and during["triton-b"] > 50, during
            standin.start()
            standin.deregister("triton-b")  # a change made after Consul returns is picked up
            wait_until(lambda: "works again" in gw.log(), 10, "watchers to recover")
            changed = time.monotonic() + 1.0
            time.sleep(2.0)
            assert traffic.served_by(since=changed)["triton-b"] == 0
        assert traffic.errors == []
        assert "keeping the last known endpoints" in gw.log()
    finally:
        gw.stop()


def test_bad_entries_and_consul_errors_leave_the_gateway_serving(
    standin: ConsulStandIn, triton_a: Triton
) -> None:
    standin.register(backend("tritons", "triton-a", triton_a, "add_sub"))
    standin.register(backend("tritons", "no-backend", triton_a, "add_sub") | {"Meta": {"models": "add_sub"}})
    standin.register(backend("tritons", "odd-kind", triton_a, "add_sub", kind="tensorrt-llm"))
    standin.register(backend("tritons", "bad-capacity", triton_a, "add_sub", capacity="lots"))
    gw = consul_gateway(standin).start()
    try:
        gw.wait_serving("tritons")
        with grpc.insecure_channel(gw.address) as ch:
            assert infer(ch, add_sub_request([1], [1])).route.endpoint == "triton-a"
        log = gw.log()
        assert "skipping an instance of pool tritons: service 'no-backend': Meta 'backend' is missing" in log
        assert (
            "service 'odd-kind': Meta backend='tensorrt-llm' is not one of anthropic, kserve_v2, openai, tfserving, torchserve, triton, vllm"
            in log
        )
        assert "service 'bad-capacity': Meta capacity='lots' must be > 0" in log
        metrics = _metrics(gw)
        assert 'meshgate_discovery_invalid_entries_total{reason="unknown_backend",source="consul"}' in metrics

        for fault, expected in (
            ("malformed", "Failed to decode JSON"),
            ("acl", "ACLPermissionDenied"),
            ("5xx", "No cluster leader"),
        ):
            if fault == "malformed":
                standin.malformed = True
            elif fault == "acl":
                standin.acl_token = "s3cret"
            else:
                standin.fail_next(500)
            standin.register(backend("tritons", f"poke-{fault}", triton_a, "nope"))  # wake the watchers
            wait_until(lambda e=expected: e in gw.log(), 10, f"a logged {expected}")
            with grpc.insecure_channel(gw.address) as ch:
                assert infer(ch, add_sub_request([1], [1])).route.endpoint == "triton-a"
            standin.malformed, standin.acl_token = False, None
            standin.fail_next(500, 0)
        assert gw.alive()
        assert "Traceback" not in gw.log()
    finally:
        gw.stop()


def test_an_endpoint_that_cannot_be_built_is_skipped_and_later_changes_still_apply(
    standin: ConsulStandIn, tmp_path: Path
) -> None:
    """An OpenAI instance in Consul names a key file that does not exist: it is skipped with one
    log line and counted, its pool-mate serves, and the gateway keeps following Consul (this
    used to end the source's watch task: later changes were never seen)."""
    from meshgate.v1 import generate_pb2, inference_pb2_grpc

    from tests.helpers import metric_value
    from tests.openai_standin import OpenAIStandIn

    key = "sk-consul-0123456789abcdef"
    (tmp_path / "ok.key").write_text(key)
    llm = OpenAIStandIn(api_key=key)

    def entry(sid: str, key_file: Path) -> dict[str, Any]:
        meta = {
            "backend": "openai",
            "models": "echo",
            "base_url": llm.base_url,
            "api_key_file": str(key_file),
        }
        return {
            "Name": "llm",
            "ID": sid,
            "Address": "127.0.0.1",
            "Port": 1,
            "Tags": ["inference"],
            "Meta": meta,
        }

    standin.register(entry("llm-bad", tmp_path / "missing.key"))
    standin.register(entry("llm-good", tmp_path / "ok.key"))
    gw = consul_gateway(standin).start()
    msg = generate_pb2.ChatMessage(role="user", content=[generate_pb2.ContentPart(text="hi")])
    req = generate_pb2.GenerateRequest(model="echo", messages=[msg])
    try:
        gw.wait_serving("llm")
        with grpc.insecure_channel(gw.address) as ch:
            stub = inference_pb2_grpc.InferenceStub(ch)
            assert {stub.Generate(req, timeout=5).route.endpoint for _ in range(4)} == {"llm-good"}
            page = _metrics(gw)
            assert (
                metric_value(
                    page,
                    "meshgate_discovery_invalid_entries_total",
                    reason="unreadable_file",
                    source="consul",
                )
                == 1
            )
            # Later changes in Consul: the bad instance is fixed, and a new one arrives.
            standin.register(entry("llm-bad", tmp_path / "ok.key"))
            standin.register(entry("llm-new", tmp_path / "ok.key"))
            wait_until(
                lambda: (
                    {stub.Generate(req, timeout=5).route.endpoint for _ in range(12)}
                    == {"llm-good", "llm-bad", "llm-new"}
                ),
                10,
                "the fixed and the new instance to take calls",
            )
        log = gw.log()
        assert log.count("endpoint skipped: pool=llm id=llm-bad") == 1
        assert "Traceback" not in log
    finally:
        gw.stop()
        llm.close()


def test_self_registration(standin: ConsulStandIn, triton_a: Triton) -> None:
    def registering(service_id: str) -> Gateway:
        gw = consul_gateway(
            standin,
            register={"enabled": True, "id": service_id, "check_interval_s": 0.2, "check_timeout_s": 1},
        )
        # A gateway with nothing ready answers NOT_SERVING: give it a pool.
        gw.config["pools"] = {
            "p": {"endpoints": [{"address": triton_a.address, "backend": "triton", "models": ["add_sub"]}]}
        }
        gw.config_path.write_text(yaml.safe_dump(gw.config))
        return gw.start()

    gw = registering("meshgate-test-1")
    try:
        wait_until(
            lambda: standin.check_status("service:meshgate-test-1") == "passing", 10, "gateway check passing"
        )
        assert standin.service_ids("meshgate") == ["meshgate-test-1"]
        gw.signal(signal.SIGTERM)
        assert gw.proc is not None and gw.proc.wait(10) == 0
        assert standin.service_ids("meshgate") == []  # deregistered on SIGTERM
        assert "deregistered meshgate-test-1 from Consul" in gw.log()
    finally:
        gw.stop()
    # Killed without a chance to deregister: its gRPC check goes critical.
    gw2 = registering("meshgate-test-2")
    try:
        wait_until(
            lambda: standin.check_status("service:meshgate-test-2") == "passing", 10, "gateway 2 passing"
        )
        gw2.kill()
        wait_until(
            lambda: standin.check_status("service:meshgate-test-2") == "critical", 5, "gateway 2 critical"
        )
    finally:
        gw2.stop()


def _metrics(gw: Gateway) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/metrics", timeout=5).read().decode()


def test_register_cli_adds_a_backend_the_gateway_then_serves(
    standin: ConsulStandIn, triton_a: Triton, triton_b: Triton
) -> None:
    from tests.test_cli import meshgate

    standin.register(backend("tritons", "triton-a", triton_a, "add_sub"))
    gw = consul_gateway(standin).start()
    try:
        gw.wait_serving("tritons")
        with Traffic(gw, threads=2) as traffic:
            out = meshgate(
                "register",
                "--consul",
                standin.address,
                "--name",
                "tritons",
                "--id",
                "triton-b",
                "--address",
                "127.0.0.1",
                "--port",
                str(triton_b.grpc_port),
                "--backend",
                "triton",
                "--models",
                "add_sub,echo_text",
                "--gpu",
                "l4",
                "--capacity",
                "2",
                "--interval",
                "200ms",
                "--meta",
                "cost_per_hour=0.8",
            )
            assert out.returncode == 0, out.stderr
            assert (
                f"registered triton-b in pool tritons (triton at 127.0.0.1:{triton_b.grpc_port}, check: tcp"
                in out.stdout
            )
            registered_at = time.monotonic()
            # A new backend starts receiving calls once its check passes and it is ready.
            wait_until(
                lambda: traffic.served_by(since=registered_at)["triton-b"] > 5, 10, "calls on triton-b"
            )
            out = meshgate("deregister", "--consul", standin.address, "--id", "triton-b")
            assert out.returncode == 0 and "deregistered triton-b" in out.stdout
            gone_at = time.monotonic()
            time.sleep(1.5)
            assert traffic.served_by(since=gone_at + 1.0)["triton-b"] == 0
        assert traffic.errors == []
    finally:
        gw.stop()
    bad = meshgate(
        "register",
        "--consul",
        standin.address,
        "--name",
        "p",
        "--address",
        "h",
        "--port",
        "1",
        "--backend",
        "tgi",
        "--models",
        "m",
    )
    assert bad.returncode == 2
    assert (
        "Meta backend='tgi' is not one of anthropic, kserve_v2, openai, tfserving, torchserve, triton, vllm"
        in bad.stderr
    )
    missing = meshgate("deregister", "--consul", standin.address, "--id", "nope")
    assert missing.returncode == 1
    assert "Consul has no service with id 'nope'" in missing.stderr


def mixed_gateway(standin: ConsulStandIn, static_id: str, address: str, **config: Any) -> Gateway:
    """A started gateway whose pool `tritons` has one static endpoint besides Consul's."""
    gw = consul_gateway(standin)
    endpoint = {"id": static_id, "address": address, "backend": "triton", "models": ["add_sub"]}
    gw.config["pools"] = {"tritons": {"endpoints": [endpoint]}}
    gw.config.update(config)
    gw.config_path.write_text(yaml.safe_dump(gw.config))
    gw.start()
    try:
        gw.wait_serving("tritons")
    except BaseException:
        gw.stop()
        raise
    return gw


def test_static_and_consul_endpoints_merge_into_one_pool(
    standin: ConsulStandIn, triton_a: Triton, triton_b: Triton
) -> None:
    standin.register(backend("tritons", "triton-b", triton_b, "add_sub"))
    gw = mixed_gateway(standin, "triton-a", triton_a.address)
    try:
        with grpc.insecure_channel(gw.address) as ch:
            wait_until(
                lambda: infer(ch, add_sub_request([1], [1])).route.endpoint == "triton-b",
                10,
                "consul endpoint",
            )
            seen = collections.Counter(infer(ch, add_sub_request([1], [1])).route.endpoint for _ in range(20))
        assert set(seen) == {"triton-a", "triton-b"}
        standin.deregister("triton-b")  # Consul's part goes; the static part stays
        time.sleep(0.5)
        with grpc.insecure_channel(gw.address) as ch:
            assert {infer(ch, add_sub_request([1], [1])).route.endpoint for _ in range(10)} == {"triton-a"}
    finally:
        gw.stop()


def _make_pki(d: Path) -> None:
    """A CA, a server cert for 127.0.0.1 and a client cert, with the openssl CLI."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
    )
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
        )
        (d / f"{name}.ext").write_text(ext + "\n")
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "1",
            "-extfile",
            f"{name}.ext",
        )


def test_consul_over_tls_with_client_certificate(tmp_path: Path, triton_a: Triton) -> None:
    import ssl

    _make_pki(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tmp_path / "ca.pem"))
    ctx.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    ctx.verify_mode = ssl.CERT_REQUIRED  # like verify_incoming: the gateway must show its certificate
    standin = ConsulStandIn(ssl_context=ctx)
    try:
        standin.register(backend("tritons", "triton-a", triton_a, "add_sub"))
        tls = {
            "ca_file": str(tmp_path / "ca.pem"),
            "cert_file": str(tmp_path / "client.pem"),
            "key_file": str(tmp_path / "client.key"),
        }
        gw = Gateway({"discovery": {"consul": {"address": f"https://{standin.address}", "tls": tls}}}).start()
        try:
            gw.wait_serving("tritons")
            with grpc.insecure_channel(gw.address) as ch:
                assert infer(ch, add_sub_request([1], [1])).route.endpoint == "triton-a"
        finally:
            gw.stop()
        # Without the client certificate the handshake fails: logged, and nothing is served.
        gw = Gateway(
            {
                "discovery": {
                    "consul": {
                        "address": f"https://{standin.address}",
                        "tls": {"ca_file": str(tmp_path / "ca.pem")},
                    }
                }
            }
        ).start()
        try:
            wait_until(lambda: "catalog query failed" in gw.log(), 10, "a logged TLS failure")
            assert gw.health("") == 2  # NOT_SERVING: no endpoints known
        finally:
            gw.stop()
    finally:
        standin.close()


def test_endpoints_consul_health_checks_are_checked_less_often(standin: ConsulStandIn) -> None:
    """Consul lists only instances whose checks pass and drops one whose checks fail, so the
    gateway need not ask it "are you live?" every round. A static endpoint is checked every
    readiness round (0.3 s here); the one Consul vouches for only every health_checked_interval_s
    (30 s here) while its models are ready. A failed call still checks it at once, and while it
    is down it is checked every round again."""
    static, vouched = FlakyBackend(), FlakyBackend()
    standin.register(
        {
            "Name": "tritons",
            "ID": "vouched",
            "Address": "127.0.0.1",
            "Port": vouched.port,
            "Tags": ["inference"],
            "Meta": {"backend": "triton", "models": "add_sub"},
            "Check": dict(PASSING),
        }
    )
    readiness = {"interval_s": 0.3, "timeout_s": 0.5, "health_checked_interval_s": 30}
    gw = mixed_gateway(standin, "static", static.address, readiness=readiness)
    try:
        with grpc.insecure_channel(gw.address) as ch:
            wait_until(
                lambda: (
                    {infer(ch, add_sub_request([1], [1])).route.endpoint for _ in range(6)}
                    == {"static", "vouched"}
                ),
                10,
                "both endpoints serving",
            )
            before = (static.live_checks, vouched.live_checks)
            # The static one is checked round after round (4 rounds: ~1.2 s, more on a busy machine)
            wait_until(lambda: static.live_checks - before[0] >= 4, 10, "4 readiness rounds")
            assert vouched.live_checks == before[1], (before, vouched.live_checks)
            # It breaks: calls fail UNAVAILABLE (and are retried on the static one), and it says
            # it is not live.
            vouched.fail_code, vouched.failing, vouched.live = grpc.StatusCode.UNAVAILABLE, True, False
            calls = vouched.calls
            wait_until(
                lambda: (
                    infer(ch, add_sub_request([1], [1])).route.endpoint == "static" and vouched.calls > calls
                ),
                5,
                "a call reaching the broken endpoint",
            )
            wait_until(lambda: vouched.live_checks > before[1], 2, "an immediate check after the failed call")
            checks = vouched.live_checks
            # Down: checked every round. Rounds come every 0.24-0.36 s (jitter), and one that
            # follows a check by less than 0.27 s skips it, so 2.5 s hold at least 3 checks.
            time.sleep(2.5)
            assert vouched.live_checks - checks >= 3
            vouched.failing, vouched.live = False, True
            wait_until(
                lambda: "vouched" in {infer(ch, add_sub_request([1], [1])).route.endpoint for _ in range(6)},
                5,
                "the endpoint back",
            )
            checks = vouched.live_checks
            time.sleep(1.5)
            assert vouched.live_checks - checks <= 1  # ready again: Consul vouches, 30 s
    finally:
        gw.stop()
        static.close()
        vouched.close()
