#!/usr/bin/env python3
"""make bench-dashboard: the Grafana dashboard's main panels, drawn from a real run.

A real Prometheus (Debian's) scrapes a real gateway in front of two real Tritons (the demo
models; DCGM-format pages report 30% and 70% GPU utilisation) and an OpenAI stand-in, for 90 s:
30 s of light traffic, 30 s that saturate the `sleep` model (its queue and the KEDA signal rise),
30 s light again. Each panel's own PromQL (deploy/grafana/meshgate-dashboard.json, Grafana's
variables filled in) is queried over the run and plotted: bench/results/dashboard.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import grpc
from meshgate.v1 import generate_pb2, inference_pb2_grpc

from tests.dcgm_standin import DCGMStandIn
from tests.helpers import add_sub_request, llm_pool, triton_pool
from tests.openai_standin import OpenAIStandIn
from tests.procs import ROOT, Gateway, Triton
from tests.prometheus_server import PrometheusServer
from tests.test_balance import _sleep_request

PANELS = (
    "Traffic by method",
    "Latency (end to end)",
    "Queue depth by pool",
    "Outstanding work and desired replicas",
    "GPU utilisation by endpoint",
    "Scheduler decisions: calls per endpoint",
)
ERRORS: dict[str, int] = {}
VARS = {"$__rate_interval": "10s", "$__range": "90s", "$__interval": "2s"}


def traffic(address: str, stop: threading.Event, heavy: threading.Event) -> None:
    msg = generate_pb2.ChatMessage(role="user", content=[generate_pb2.ContentPart(text="hello dashboard")])
    chat = generate_pb2.GenerateRequest(model="echo", messages=[msg])

    def sleeper() -> None:
        with grpc.insecure_channel(address) as ch:
            stub = inference_pb2_grpc.InferenceStub(ch)
            while not stop.is_set():
                if heavy.is_set():
                    try:
                        stub.Infer(_sleep_request(400), timeout=30)
                    except grpc.RpcError as err:
                        ERRORS[err.code().name] = ERRORS.get(err.code().name, 0) + 1
                        if ERRORS[err.code().name] == 1:
                            print(f"sleep call: {err.code().name}: {err.details()}", flush=True)
                        time.sleep(0.05)
                else:
                    time.sleep(0.1)

    workers = [threading.Thread(target=sleeper) for _ in range(12)]
    for w in workers:
        w.start()
    with grpc.insecure_channel(address) as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        i = 0
        while not stop.is_set():
            i += 1
            stub.Infer(add_sub_request([float(i % 50)], [1.0]), timeout=10)
            if i % 5 == 0:
                list(stub.GenerateStream(chat, timeout=10))
            time.sleep(0.02)
    for w in workers:
        w.join()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase-s", type=float, default=30.0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "dashboard.png"))
    args = ap.parse_args()
    dash = json.loads((ROOT / "deploy" / "grafana" / "meshgate-dashboard.json").read_text())
    panels = {p["title"]: p for p in dash["panels"]}
    tritons = [Triton().start(), Triton().start()]
    dcgm = [DCGMStandIn(util_percent=30), DCGMStandIn(util_percent=70)]
    llm = OpenAIStandIn()
    for t in tritons:
        t.wait_ready()
    endpoints = [
        triton_pool(
            t.address,
            ["add_sub", "sleep"],
            id=f"triton-{n}",
            slots=2,
            metrics_url=f"http://127.0.0.1:{t.metrics_port}/metrics,{d.url}",
        )["endpoints"][0]
        for n, t, d in zip("ab", tritons, dcgm, strict=True)
    ]
    config = {
        "pools": {"tritons": {"endpoints": endpoints}, "llm": llm_pool(llm.base_url)},
        "routing": {"model_costs": {"sleep": 4}, "load_probe": {"interval_s": 0.5}},
        "admission": {"pools": ["tritons"]},  # no cache: identical sleep calls would be hits
    }
    gw = Gateway(config).start()
    prom = PrometheusServer([f"127.0.0.1:{gw.metrics_port}"]).start()
    stop, heavy = threading.Event(), threading.Event()
    try:
        gw.wait_serving("tritons")
        gw.wait_serving("llm")
        runner = threading.Thread(target=traffic, args=(gw.address, stop, heavy))
        start = time.time()
        runner.start()
        time.sleep(args.phase_s)
        heavy.set()
        print("saturating sleep", flush=True)
        time.sleep(args.phase_s)
        heavy.clear()
        print("light again", flush=True)
        time.sleep(args.phase_s)
        stop.set()
        runner.join()
        end = time.time()
        time.sleep(2)
        series = {
            title: [
                (t.get("legendFormat", ""), prom.query_range(_fill(t["expr"]), start, end, 2.0))
                for t in panels[title]["targets"]
            ]
            for title in PANELS
        }
    finally:
        stop.set()
        prom.stop()
        gw.stop()
        for t in tritons:
            t.stop()
        for d in dcgm:
            d.close()
        llm.close()
    plot(series, start, args.phase_s, Path(args.out))
    print(f"wrote {args.out}")
    return 0


def _fill(expr: str) -> str:
    for var, value in VARS.items():
        expr = expr.replace(var, value)
    return expr


def _legend(fmt: str, labels: dict[str, str]) -> str:
    for k, v in labels.items():
        fmt = fmt.replace("{{" + k + "}}", v)
    return fmt


def plot(series: dict[str, list[tuple[str, list[dict]]]], start: float, phase_s: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 7.5))
    for ax, (title, targets) in zip(axes.flat, series.items(), strict=True):
        for legend, result in targets:
            for s in result:
                xs = [float(t) - start for t, _ in s["values"]]
                ys = [float(v) for _, v in s["values"]]
                ax.plot(xs, ys, label=_legend(legend, s["metric"]) or title)
        ax.axvspan(phase_s, 2 * phase_s, color="orange", alpha=0.12)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("s (shaded: the sleep model saturated)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(
        "meshgate dashboard panels, from a real Prometheus scraping a real gateway (make bench-dashboard)"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
