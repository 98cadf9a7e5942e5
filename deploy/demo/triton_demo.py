#!/usr/bin/env python3
"""A real Triton Inference Server (bundled in nvidia-pytriton) with small demo models, on CPU.

Runs in its own venv (deploy/demo/server_envs.py). Used by `make run` and by the test fixtures.

Models:
  add_sub    INPUT0, INPUT1 FP32 [-1]  -> OUTPUT0 = a + b, OUTPUT1 = a - b
  echo_text  TEXT BYTES [-1]           -> TEXT upper-cased
  sleep      MS INT64 [1]              -> MS, after sleeping that many milliseconds (one instance:
             concurrent calls queue in Triton; pytriton races when several instances start)
  countdown  N INT64 [1]               -> COUNT INT64 [1]: decoupled, N responses (N, N-1 ... 1),
             for ModelStreamInfer (what token-streaming models such as TensorRT-LLM do)
  fail       X FP32 [-1]               -> always raises (how a model's Python error reaches callers)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import sysconfig
import tempfile
import threading
import time

# The Python backend stub links Debian's libpython 3.11.2 but runs this interpreter's stdlib;
# without this every model fails to load ('_thread.RLock' object has no attribute '_recursion_count').
_libdir = sysconfig.get_config_var("LIBDIR") or ""
os.environ["LD_LIBRARY_PATH"] = _libdir + os.pathsep + os.environ.get("LD_LIBRARY_PATH", "")

import numpy as np  # noqa: E402
from pytriton.model_config import ModelConfig, Tensor  # noqa: E402
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig  # noqa: E402


def add_sub(requests):
    return [{"OUTPUT0": r["INPUT0"] + r["INPUT1"], "OUTPUT1": r["INPUT0"] - r["INPUT1"]} for r in requests]


def echo_text(requests):
    return [{"TEXT": np.array([t.upper() for t in r["TEXT"]], dtype=np.bytes_)} for r in requests]


def sleep(requests):
    out = []
    for r in requests:
        time.sleep(float(r["MS"][0]) / 1000.0)
        out.append({"MS": r["MS"]})
    return out


def countdown(requests):
    n = int(requests[0]["N"][0])
    for i in range(n, 0, -1):
        time.sleep(0.002)
        yield [{"COUNT": np.array([i], dtype=np.int64)}]


def fail(requests):
    raise ValueError("fail: this model always fails")


MODELS = {
    "add_sub": dict(
        infer_func=add_sub,
        inputs=[
            Tensor(name="INPUT0", dtype=np.float32, shape=(-1,)),
            Tensor(name="INPUT1", dtype=np.float32, shape=(-1,)),
        ],
        outputs=[
            Tensor(name="OUTPUT0", dtype=np.float32, shape=(-1,)),
            Tensor(name="OUTPUT1", dtype=np.float32, shape=(-1,)),
        ],
    ),
    "echo_text": dict(
        infer_func=echo_text,
        inputs=[Tensor(name="TEXT", dtype=np.bytes_, shape=(-1,))],
        outputs=[Tensor(name="TEXT", dtype=np.bytes_, shape=(-1,))],
    ),
    "sleep": dict(
        infer_func=sleep,
        inputs=[Tensor(name="MS", dtype=np.int64, shape=(1,))],
        outputs=[Tensor(name="MS", dtype=np.int64, shape=(1,))],
    ),
    "countdown": dict(
        infer_func=countdown,
        inputs=[Tensor(name="N", dtype=np.int64, shape=(1,))],
        outputs=[Tensor(name="COUNT", dtype=np.int64, shape=(1,))],
        decoupled=True,
    ),
    "fail": dict(
        infer_func=fail,
        inputs=[Tensor(name="X", dtype=np.float32, shape=(-1,))],
        outputs=[Tensor(name="X", dtype=np.float32, shape=(-1,))],
    ),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grpc-port", type=int, default=8001)
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--metrics-port", type=int, default=8002)
    ap.add_argument(
        "--models", default="add_sub,echo_text,sleep,countdown", help=f"comma list of: {', '.join(MODELS)}"
    )
    args = ap.parse_args()
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_address="127.0.0.1",
        metrics_port=args.metrics_port,
        allow_gpu_metrics=False,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with (
        tempfile.TemporaryDirectory(prefix="meshgate-triton-") as workspace,
        Triton(
            config=config,
            workspace=os.path.join(workspace, "ws"),
            security_config=TritonSecurityConfig(restricted_endpoints=[]),
        ) as triton,
    ):
        for name in args.models.split(","):
            spec = dict(MODELS[name])
            config = ModelConfig(batching=False, decoupled=bool(spec.pop("decoupled", False)))
            triton.bind(model_name=name, config=config, strict=False, **spec)
        triton.run()
        print(
            f"triton: serving {args.models} on grpc 127.0.0.1:{args.grpc_port}, "
            f"metrics http://127.0.0.1:{args.metrics_port}/metrics",
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
