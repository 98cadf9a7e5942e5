#!/usr/bin/env python3
"""`make run`: a real local Triton with demo models, and the gateway in front of it.

Starts deploy/demo/triton_demo.py (its own venv) on Triton's default ports (8000-8002), then
`meshgate serve` on its embedded default config (gRPC 127.0.0.1:8700, metrics :8701), prints
commands to try, and on Ctrl-C stops both process groups so nothing is left behind.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from meshgate.v1 import models_pb2, models_pb2_grpc

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BIN = Path(sys.executable).parent


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def all_ready(address: str) -> bool:
    """The gateway is SERVING and every model it knows is ready."""
    try:
        with grpc.insecure_channel(address) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            if resp.status != health_pb2.HealthCheckResponse.SERVING:
                return False
            models = (
                models_pb2_grpc.ModelsStub(ch).ListModels(models_pb2.ListModelsRequest(), timeout=1).models
            )
            return bool(models) and all(m.ready for m in models)
    except grpc.RpcError:
        return False


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, wait: float = 10.0) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers in the group (tritonserver, model stubs)
    except ProcessLookupError:
        return


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", help="gateway config (default: the embedded default)")
    args = ap.parse_args()
    busy = [p for p in (8000, 8001, 8002, 8700, 8701) if not port_free(p)]
    if busy:
        print(
            f"make run: port(s) {busy} on 127.0.0.1 are in use; stop what holds them and retry",
            file=sys.stderr,
        )
        return 1
    triton_python = subprocess.run(
        [sys.executable, str(HERE / "server_envs.py"), "ensure", "triton"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()[-1]
    procs: list[subprocess.Popen[bytes]] = []
    interrupted = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal interrupted
        interrupted = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    # `timeout 60 make run` or a supervisor signals make alone: make dies, this process is
    # re-parented. Stop then too, rather than leave the demo running without its make.
    parent = os.getppid()

    def stopping() -> bool:
        return interrupted or os.getppid() != parent

    try:
        log_path = Path(tempfile.gettempdir()) / "meshgate-demo-triton.log"
        print(
            f"make run: starting Triton (CPU) with models add_sub, echo_text, sleep, countdown (log: {log_path}) ...",
            flush=True,
        )
        with log_path.open("wb") as log:
            triton = subprocess.Popen(
                [triton_python, str(HERE / "triton_demo.py")], start_new_session=True, stdout=log, stderr=log
            )
        procs.append(triton)
        gateway_cmd = [str(BIN / "meshgate"), "serve"] + (["--config", args.config] if args.config else [])
        gateway = subprocess.Popen(gateway_cmd, start_new_session=True, cwd=ROOT)
        procs.append(gateway)
        deadline = time.monotonic() + 120
        while not all_ready("127.0.0.1:8700"):
            if stopping():
                return 130
            for p in procs:
                if p.poll() is not None:
                    print(f"make run: {p.args[0]} exited with {p.returncode}", file=sys.stderr)
                    return 1
            if time.monotonic() > deadline:
                print("make run: the gateway did not become ready within 120 s", file=sys.stderr)
                return 1
            time.sleep(1.0)  # each check is a ListModels call: one access-log line
        mg = os.path.relpath(BIN / "meshgate", Path.cwd())
        print(
            f"""
meshgate is serving on 127.0.0.1:8700 in front of a local Triton. Try:

  {mg} models
  {mg} models add_sub
  {mg} infer --model add_sub --input INPUT0:FP32:4=1,2,3,4 --input INPUT1:FP32:4=10,20,30,40
  {mg} infer --model echo_text --input TEXT:BYTES:2=hello,mesh --json
  curl -s http://127.0.0.1:8701/metrics | grep ^meshgate_
  buf curl --protocol grpc --http2-prior-knowledge --data '{{"model":"add_sub","inputs":[{{"name":"INPUT0","datatype":"DATA_TYPE_FP32","shape":[2],"contents":{{"fp32Contents":[1,2]}}}},{{"name":"INPUT1","datatype":"DATA_TYPE_FP32","shape":[2],"contents":{{"fp32Contents":[3,4]}}}}]}}' http://127.0.0.1:8700/meshgate.v1.Inference/Infer

tritonclient works too: InferenceServerClient(url="127.0.0.1:8700"). Ctrl-C stops everything.
""",
            flush=True,
        )
        while not stopping() and all(p.poll() is None for p in procs):
            time.sleep(0.3)
        return 0 if stopping() else 1
    finally:
        print("make run: stopping ...", file=sys.stderr, flush=True)
        for p in reversed(procs):
            stop(p)


if __name__ == "__main__":
    sys.exit(main())
