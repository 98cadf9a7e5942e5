"""Real processes for the tests: Triton (pytriton), MLServer, TorchServe and the gateway itself.

Every process starts in its own session on 127.0.0.1 with free ports and is stopped by killing
its process group, so nothing outlives a test run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

ROOT = Path(__file__).resolve().parent.parent
ENVS = ROOT / "deploy" / "demo" / "server_envs.py"


def server_python(kind: str) -> str:
    """The python of a model server's venv, created on first use."""
    out = subprocess.run(
        [sys.executable, str(ENVS), "ensure", kind], check=True, capture_output=True, text=True
    )
    return out.stdout.strip().splitlines()[-1]


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class Proc:
    """A process in its own session, its output in a log file."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.mkstemp(prefix=f"meshgate-{name}-", suffix=".log")[1])

    def spawn(self, cmd: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=cwd
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (a crash, as far as peers can tell)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


def _grpc_ready(address: str, models: list[str]) -> bool:
    try:
        with grpc.insecure_channel(address) as ch:
            stub = kpb_grpc.GRPCInferenceServiceStub(ch)
            if not stub.ServerReady(kpb.ServerReadyRequest(), timeout=1).ready:
                return False
            return all(stub.ModelReady(kpb.ModelReadyRequest(name=m), timeout=1).ready for m in models)
    except grpc.RpcError:
        return False


class Triton(Proc):
    """A real tritonserver (from nvidia-pytriton) serving deploy/demo/triton_demo.py's models."""

    def __init__(self, models: tuple[str, ...] = ("add_sub", "echo_text", "sleep")) -> None:
        super().__init__("triton")
        self.models = list(models)
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> Triton:
        script = ROOT / "deploy" / "demo" / "triton_demo.py"
        self.spawn(
            [
                server_python("triton"),
                str(script),
                f"--grpc-port={self.grpc_port}",
                f"--http-port={self.http_port}",
                f"--metrics-port={self.metrics_port}",
                f"--models={','.join(self.models)}",
            ]
        )
        return self

    def wait_ready(self, timeout: float = 90) -> Triton:
        try:
            wait_until(
                lambda: self._check_alive() and _grpc_ready(self.address, self.models),
                timeout,
                "Triton ready",
            )
        except RuntimeError:
            # pytriton's tritonserver very rarely dies while loading the Python models on this
            # busy 2-core machine (a C++ abort in the model load); one fresh start, then give up.
            self.stop()
            self.start()
            wait_until(
                lambda: self._check_alive() and _grpc_ready(self.address, self.models),
                timeout,
                "Triton ready",
            )
        return self

    def _check_alive(self) -> bool:
        if not self.alive():
            raise RuntimeError(f"Triton exited early:\n{self.log()[-3000:]}")
        return True


class MLServer(Proc):
    """A real MLServer with the `sum` model from tests/servers/mlserver_models."""

    def __init__(self) -> None:
        super().__init__("mlserver")
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.dir = Path(tempfile.mkdtemp(prefix="meshgate-mlserver-"))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> MLServer:
        shutil.copytree(ROOT / "tests" / "servers" / "mlserver_models", self.dir, dirs_exist_ok=True)
        settings = {
            "host": "127.0.0.1",
            "http_port": self.http_port,
            "grpc_port": self.grpc_port,
            "metrics_port": self.metrics_port,
            "parallel_workers": 0,
        }
        (self.dir / "settings.json").write_text(json.dumps(settings))
        bindir = Path(server_python("mlserver")).parent
        env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
        self.spawn([str(bindir / "mlserver"), "start", str(self.dir)], env=env, cwd=str(self.dir))
        return self

    def wait_ready(self, timeout: float = 90) -> MLServer:
        def ok() -> bool:
            if not self.alive():
                raise RuntimeError(f"MLServer exited early:\n{self.log()[-3000:]}")
            return _grpc_ready(self.address, ["sum"])

        wait_until(ok, timeout, "MLServer ready")
        return self


class TorchServe(Proc):
    """A real TorchServe (CPU) with the `add_sub` model from tests/servers/torchserve.

    It runs with TS_OPEN_INFERENCE_PROTOCOL=oip, and then serves both gRPC APIs on one port:
    the native `Predictions` and the Open Inference Protocol. TorchServe keeps a pid file and
    extracts models under the temp directory, so each instance gets its own (TMPDIR and
    java.io.tmpdir), and its own worker port range.
    """

    def __init__(self) -> None:
        super().__init__("torchserve")
        (
            self.http_port,
            self.management_http_port,
            self.metrics_port,
            self.grpc_port,
            self.management_port,
        ) = free_ports(5)
        self.dir = Path(tempfile.mkdtemp(prefix="meshgate-torchserve-"))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> TorchServe:
        bindir = Path(server_python("torchserve")).parent
        store, tmp = self.dir / "store", self.dir / "tmp"
        store.mkdir()
        tmp.mkdir()
        handler = ROOT / "tests" / "servers" / "torchserve" / "add_sub_handler.py"
        subprocess.run(
            [
                *(str(bindir / "torch-model-archiver"), "--model-name", "add_sub", "--version", "1.0"),
                *("--handler", str(handler), "--export-path", str(store)),
            ],
            check=True,
            capture_output=True,
        )
        config = {
            "inference_address": f"http://127.0.0.1:{self.http_port}",
            "management_address": f"http://127.0.0.1:{self.management_http_port}",
            "metrics_address": f"http://127.0.0.1:{self.metrics_port}",
            "grpc_inference_address": "127.0.0.1",
            "grpc_management_address": "127.0.0.1",
            "grpc_inference_port": self.grpc_port,
            "grpc_management_port": self.management_port,
            "disable_token_authorization": "true",
            "metrics_mode": "prometheus",
            "model_store": store,
            "load_models": "all",
            "default_workers_per_model": 1,
            "initial_worker_port": free_ports(1)[0],
            "vmargs": f"-Xmx512m -XX:+UseContainerSupport -Djava.io.tmpdir={tmp}",
        }
        (self.dir / "config.properties").write_text("".join(f"{k}={v}\n" for k, v in config.items()))
        env = dict(
            os.environ,
            PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}",
            TMPDIR=str(tmp),
            TS_OPEN_INFERENCE_PROTOCOL="oip",
        )
        cmd = [str(bindir / "torchserve"), "--start", "--foreground", "--ncs", "--disable-token-auth"]
        cmd += ["--ts-config", str(self.dir / "config.properties"), "--model-store", str(store)]
        self.spawn([*cmd, "--models", "add_sub=add_sub.mar"], env=env, cwd=str(self.dir))
        return self

    def wait_ready(self, timeout: float = 120) -> TorchServe:
        """Ready when the model's worker is: TorchServe's /ping says Healthy before that."""

        def ok() -> bool:
            if not self.alive():
                raise RuntimeError(f"TorchServe exited early:\n{self.log()[-3000:]}")
            try:
                with grpc.insecure_channel(self.address) as ch:
                    ready = ch.unary_unary(
                        "/org.pytorch.serve.grpc.openinference.GRPCInferenceService/ModelReady",
                        request_serializer=kpb.ModelReadyRequest.SerializeToString,
                        response_deserializer=kpb.ModelReadyResponse.FromString,
                    )
                    return bool(ready(kpb.ModelReadyRequest(name="add_sub"), timeout=1).ready)
            except grpc.RpcError:
                return False

        wait_until(ok, timeout, "TorchServe ready", interval=0.3)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        shutil.rmtree(self.dir, ignore_errors=True)


class Gateway(Proc):
    """The real gateway process (`python -m gateway serve --config ...`)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__("gateway")
        port, mport = free_ports(2)
        config = dict(config)
        server = {"listen": f"127.0.0.1:{port}", "shutdown_grace_s": 5.0, **config.get("server", {})}
        config["server"] = server
        config["metrics"] = {"listen": f"127.0.0.1:{mport}", **config.get("metrics", {})}
        config.setdefault("readiness", {"interval_s": 0.3, "timeout_s": 0.5})
        self.config = config
        self.address = server["listen"]
        self.metrics_port = mport
        fd, path = tempfile.mkstemp(prefix="meshgate-config-", suffix=".yaml")
        os.close(fd)
        self.config_path = Path(path)
        self.config_path.write_text(yaml.safe_dump(config))

    def start(self) -> Gateway:
        self.spawn(
            [sys.executable, "-m", "gateway", "serve", "--config", str(self.config_path)], cwd=str(ROOT)
        )
        wait_until(lambda: self._started(), 20, "gateway to listen")
        return self

    def serve_once(self, *extra: str) -> subprocess.CompletedProcess[str]:
        """`meshgate serve` with this config, in the foreground: for start-ups that must fail."""
        return subprocess.run(
            [sys.executable, "-m", "gateway", "serve", "--config", str(self.config_path), *extra],
            capture_output=True,
            text=True,
            cwd=str(ROOT),
            timeout=30,
        )

    def _started(self) -> bool:
        if not self.alive():
            raise RuntimeError(f"gateway exited early:\n{self.log()[-3000:]}")
        return re.search(r"meshgate: serving on", self.log()) is not None

    def metrics_text(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def health(self, service: str = "") -> int:
        with grpc.insecure_channel(self.address) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
            return int(resp.status)

    def wait_serving(self, service: str = "", timeout: float = 30, serving: bool = True) -> Gateway:
        want = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )

        def reached() -> bool:
            try:
                return self.health(service) == want
            except grpc.RpcError:  # not listening yet
                return False

        wait_until(reached, timeout, f"health {service!r} == {want}")
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)


def pool_config(pools: dict[str, list[tuple[str, str, list[str]]]], **extra: Any) -> dict[str, Any]:
    """{'pool': [(id, address, models)]} -> gateway config dict (backend inferred from the id prefix)."""
    out: dict[str, Any] = {"pools": {}}
    for name, eps in pools.items():
        out["pools"][name] = {
            "endpoints": [
                {
                    "id": i,
                    "address": a,
                    "backend": "kserve_v2" if i.startswith("mlserver") else "triton",
                    "models": m,
                }
                for i, a, m in eps
            ]
        }
    out.update(extra)
    return out


def keys_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`meshgate keys ...`, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", "keys", *args], capture_output=True, text=True, cwd=ROOT, timeout=30
    )


def make_key(path: Path, *args: str) -> str:
    """A new API key in the keys file `path` (`meshgate keys create`); the key itself."""
    out = keys_cli("create", "--file", str(path), *args)
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip()
    assert key.startswith("mgk_") and len(key) > 50
    return key
