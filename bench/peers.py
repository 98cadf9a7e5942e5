#!/usr/bin/env python3
"""make bench-peers: meshgate's LLM path against LiteLLM's proxy and Portkey's gateway, side by
side in one run on loopback, in front of one nginx fake OpenAI backend that answers at once.

Backend (nginx, HTTP/1.1, static files): a fixed chat completion on one port, a 100-chunk SSE
stream (with a usage chunk and [DONE]) on another; both also answer GET /v1/models.
Paths:
    direct     h2load (HTTP/1.1) POSTs the OpenAI JSON body to nginx
    meshgate   Generate / GenerateStream over gRPC (h2load, pre-encoded gRPC bodies); afterwards
               meshgate_requests_total must count only grpc code OK (h2load sees HTTP 200 only)
    litellm    the LiteLLM proxy (its own virtualenv, pinned; 1 worker), OpenAI JSON over HTTP/1.1
    portkey    Portkey's open-source gateway (npm, pinned; started with a preload that binds it to
               127.0.0.1), OpenAI JSON over HTTP/1.1 with x-portkey-provider/custom-host headers
Each path at 1, 16 and 64 connections (unary) and 1 and 16 (streams): requests/s, p50 and the
gateway's process-tree CPU per request. Then time to first byte of streams at 1 and 16 concurrent
streams (bench/ttfb.py), from a backend that paces its tokens (the tests' OpenAI stand-in, 30 ms
a token), so that the first byte and the last are different moments. Rounds are interleaved (path by path within a round),
figures are medians of --rounds. Writes bench/results/peers.md and a plot (bench/out/peers.png).

What the peers need (installed once under ~/.cache/meshgate/peers): LiteLLM 1.108.7 with its
proxy extras in a virtualenv of its own (pip); Portkey 1.15.2 with @hono/node-server pinned to
1.13.8 (its streams fail with the version npm picks).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.overhead import (
    BACKEND_SERVER,
    METHOD,
    ROOT,
    frame,
    free_port,
    group_cpu_seconds,
    nginx,
    start,
    stop,
    write_payloads,
)
from bench.ttfb import paced_backend, ttfb

PEERS = Path.home() / ".cache" / "meshgate" / "peers"
LITELLM = "1.108.7"
PORTKEY = "1.15.2"
HONO = "1.13.8"
CHUNKS = 100
MASTER_KEY = "sk-" + secrets.token_hex(32)
UNARY = "/meshgate.v1.Inference/Generate"
STREAM = "/meshgate.v1.Inference/GenerateStream"

BACKEND = """
  server {{
    listen 127.0.0.1:{port};
    location / {{
      # A static file answers GET only: POST -> 405 -> internal GET of the same URI -> 200.
      root {root};
      default_type {mime};
      error_page 405 =200 $uri;
    }}
  }}
"""

LOOPBACK = """import net from 'node:net';
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' && (args[1] === undefined || typeof args[1] === 'function')) {
    args.splice(1, args[1] === undefined ? 1 : 0, '127.0.0.1');
  } else if (args[0] && typeof args[0] === 'object' && !args[0].host) {
    args[0] = { ...args[0], host: '127.0.0.1' };
  }
  return listen.apply(this, args);
};
"""


def backend_files(work: Path) -> tuple[Path, Path]:
    unary, stream = work / "unary", work / "stream"
    completion = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1,
        "model": "bench",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok " * 20}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 20, "total_tokens": 32},
    }
    models = {"object": "list", "data": [{"id": m, "object": "model"} for m in ("bench", "bench-stream")]}
    events = []
    for i in range(CHUNKS):
        delta = {"content": f" t{i}"} if i else {"role": "assistant", "content": "t0"}
        events.append(
            {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "bench",
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }
        )
    events.append(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "bench",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
    )
    events.append(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "bench",
            "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": CHUNKS, "total_tokens": CHUNKS + 12},
        }
    )
    sse = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    for root, body in ((unary, json.dumps(completion)), (stream, sse)):
        (root / "v1" / "chat").mkdir(parents=True)
        (root / "v1" / "chat" / "completions").write_text(body)
        (root / "v1" / "models").write_text(json.dumps(models))
    return unary, stream


def ensure_peers() -> dict[str, Path]:
    """The peers' installs (once): LiteLLM's virtualenv and Portkey's node_modules."""
    PEERS.mkdir(parents=True, exist_ok=True)
    venv = PEERS / f"litellm-{LITELLM}"
    if not (venv / "bin" / "litellm").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"litellm[proxy]=={LITELLM}"], check=True)
    portkey = PEERS / f"portkey-{PORTKEY}"
    server = portkey / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    if not server.exists():
        portkey.mkdir(exist_ok=True)
        # An override, not only a top-level pin: the gateway's own dependency would keep a newer one.
        package = {
            "private": True,
            "dependencies": {"@portkey-ai/gateway": PORTKEY, "@hono/node-server": HONO},
            "overrides": {"@hono/node-server": HONO},
        }
        (portkey / "package.json").write_text(json.dumps(package, indent=2))
        subprocess.run(
            [shutil.which("npm") or "npm", "install", "--silent", "--prefix", str(portkey)], check=True
        )
    (portkey / "loopback.mjs").write_text(LOOPBACK)
    return {"litellm": venv / "bin" / "litellm", "portkey": server, "loopback": portkey / "loopback.mjs"}


def grpc_bodies(work: Path) -> tuple[Path, Path, Path]:
    from meshgate.v1 import generate_pb2

    def req(model: str) -> Any:
        msg = generate_pb2.ChatMessage(
            role="user", content=[generate_pb2.ContentPart(text="say ok twenty times")]
        )
        return generate_pb2.GenerateRequest(model=model, messages=[msg])

    unary, stream, paced = work / "generate.bin", work / "stream.bin", work / "paced.bin"
    unary.write_bytes(frame(req("bench")))
    stream.write_bytes(frame(req("bench-stream")))
    paced.write_bytes(frame(req("bench-paced")))
    return unary, stream, paced


def json_body(work: Path, model: str, stream: bool) -> Path:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "say ok twenty times"}],
        "stream": stream,
    }
    path = work / f"{model}-{stream}.json"
    path.write_text(json.dumps(body))
    return path


def h2load(
    url: str, body: Path, conns: int, seconds: float, headers: list[str], grpc_: bool
) -> dict[str, float]:
    log = Path(tempfile.mkstemp(suffix=".tsv")[1])
    cmd = [
        "h2load",
        "-t",
        "1",
        "-c",
        str(conns),
        "-m",
        "1",
        "-D",
        f"{seconds:g}",
        "--warm-up-time",
        "1",
        "-d",
        str(body),
        "--log-file",
        str(log),
    ]
    if grpc_:
        cmd += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    else:
        cmd += ["--h1", "-H", "content-type: application/json"]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rows = [line.split("\t") for line in log.read_text().splitlines() if line]
    log.unlink()
    done = [r for r in rows if int(r[1]) != 0]
    bad = sum(1 for r in done if int(r[1]) != 200)
    if bad or not done:
        raise RuntimeError(f"{url}: {bad} non-200 answers of {len(done)}:\n{out[-800:]}")
    lat = sorted(int(r[2]) / 1000 for r in done)
    return {"rps": len(lat) / seconds, "p50_ms": statistics.median(lat), "calls": len(lat)}


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception:  # noqa: BLE001 - not up yet (refused, 404 on a route it has not yet)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer in {timeout:g} s") from None
            time.sleep(0.5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--peers", nargs="*", default=["litellm", "portkey"], help="which peers to run")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="meshgate-bench-peers-"))
    work.chmod(0o755)
    tools = ensure_peers()
    unary_root, stream_root = backend_files(work)
    bu, bs = free_port(), free_port()
    procs = {
        "nginx-u": nginx(work, "unary", BACKEND.format(port=bu, root=unary_root, mime="application/json")),
        "nginx-s": nginx(work, "stream", BACKEND.format(port=bs, root=stream_root, mime="text/event-stream")),
    }
    procs["paced"], bp = paced_backend(ROOT)
    bt = free_port()  # the tensor path (meshgate's Infer path, for the ratio): a KServe v2 nginx
    from tritonclient.grpc import service_pb2 as kpb

    infer_req = kpb.ModelInferRequest.FromString(write_payloads(work, "1KiB", 1024).read_bytes()[5:])
    infer_req.model_name = "bench-tensor"  # "bench" is the chat model
    infer_body = work / "infer.bin"
    infer_body.write_bytes(frame(infer_req))
    procs["nginx-t"] = nginx(work, "tensor", BACKEND_SERVER.format(port=bt, root=work / "replies-1KiB"))
    gports: dict[str, int] = {}
    try:
        mp = gports["meshgate"] = free_port()
        cfg = work / "meshgate.json"
        cfg.write_text(
            json.dumps(
                {
                    "log_level": "WARNING",
                    "server": {"listen": f"127.0.0.1:{mp}", "access_log": False},
                    "metrics": {"listen": f"127.0.0.1:{(metrics := free_port())}"},
                    "pools": {
                        "tensor": {
                            "endpoints": [
                                {
                                    "id": "t",
                                    "address": f"127.0.0.1:{bt}",
                                    "backend": "kserve_v2",
                                    "models": ["bench-tensor"],
                                }
                            ]
                        },
                        "unary": {
                            "endpoints": [
                                {
                                    "id": "u",
                                    "address": f"127.0.0.1:{bu}",
                                    "backend": "openai",
                                    "models": ["bench"],
                                }
                            ]
                        },
                        "stream": {
                            "endpoints": [
                                {
                                    "id": "s",
                                    "address": f"127.0.0.1:{bs}",
                                    "backend": "openai",
                                    "models": ["bench-stream"],
                                    "base_url": f"http://127.0.0.1:{bs}/v1",
                                }
                            ]
                        },
                        "paced": {
                            "endpoints": [
                                {
                                    "id": "p",
                                    "address": f"127.0.0.1:{bp}",
                                    "backend": "openai",
                                    "models": ["bench-paced"],
                                }
                            ]
                        },
                    },
                }
            )
        )
        procs["meshgate"] = start(
            [sys.executable, "-m", "gateway", "serve", "--config", str(cfg)], work / "mg.log"
        )
        if "litellm" in args.peers:
            lp = gports["litellm"] = free_port()
            (work / "litellm.yaml").write_text(
                json.dumps(
                    {
                        "model_list": [
                            {
                                "model_name": "bench",
                                "litellm_params": {
                                    "model": "openai/bench",
                                    "api_base": f"http://127.0.0.1:{bu}/v1",
                                    "api_key": "sk-bench",
                                },
                            },
                            {
                                "model_name": "bench-stream",
                                "litellm_params": {
                                    "model": "openai/bench",
                                    "api_base": f"http://127.0.0.1:{bs}/v1",
                                    "api_key": "sk-bench",
                                },
                            },
                            {
                                "model_name": "bench-paced",
                                "litellm_params": {
                                    "model": "openai/bench",
                                    "api_base": f"http://127.0.0.1:{bp}/v1",
                                    "api_key": "sk-bench",
                                },
                            },
                        ]
                    }
                )
            )
            env = {
                **os.environ,
                "LITELLM_LOG": "ERROR",
                "LITELLM_TELEMETRY": "False",
                "LITELLM_MASTER_KEY": MASTER_KEY,  # it refuses to start without one
            }
            procs["litellm"] = start(
                [
                    str(tools["litellm"]),
                    "--config",
                    str(work / "litellm.yaml"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(lp),
                    "--num_workers",
                    "1",
                ],
                work / "litellm.log",
                env=env,
            )
        if "portkey" in args.peers:
            pp = gports["portkey"] = free_port()
            procs["portkey"] = start(
                [
                    "node",
                    "--import",
                    str(tools["loopback"]),
                    str(tools["portkey"]),
                    f"--port={pp}",
                    "--headless",
                ],
                work / "portkey.log",
            )
        for name in ("litellm", "portkey"):
            if name in gports:
                wait_http(
                    f"http://127.0.0.1:{gports[name]}/"
                    if name == "portkey"
                    else f"http://127.0.0.1:{gports[name]}/health/liveliness",
                    180,
                )
        time.sleep(3)
        gu, gs, gp = grpc_bodies(work)
        paths: dict[str, dict[str, Any]] = {
            "meshgate-infer": {"unary": (f"http://127.0.0.1:{mp}{METHOD}", infer_body, [], True)},
            "direct": {
                "unary": (
                    f"http://127.0.0.1:{bu}/v1/chat/completions",
                    json_body(work, "bench", False),
                    [],
                    False,
                ),
                "stream": (
                    f"http://127.0.0.1:{bs}/v1/chat/completions",
                    json_body(work, "bench", True),
                    [],
                    False,
                ),
                "ttfb": (
                    f"http://127.0.0.1:{bp}/v1/chat/completions",
                    json_body(work, "bench", True),
                    [],
                    False,
                ),
            },
            "meshgate": {
                "unary": (f"http://127.0.0.1:{mp}{UNARY}", gu, [], True),
                "stream": (f"http://127.0.0.1:{mp}{STREAM}", gs, [], True),
                "ttfb": (f"http://127.0.0.1:{mp}{STREAM}", gp, [], True),
            },
        }
        if "litellm" in gports:
            base = f"http://127.0.0.1:{gports['litellm']}/v1/chat/completions"
            auth = [f"authorization: Bearer {MASTER_KEY}"]
            paths["litellm"] = {
                "unary": (base, json_body(work, "bench", False), auth, False),
                "stream": (base, json_body(work, "bench-stream", True), auth, False),
                "ttfb": (base, json_body(work, "bench-paced", True), auth, False),
            }
        if "portkey" in gports:
            base = f"http://127.0.0.1:{gports['portkey']}/v1/chat/completions"
            pk = ["x-portkey-provider: openai", "authorization: Bearer sk-bench"]
            paths["portkey"] = {
                "unary": (
                    base,
                    json_body(work, "bench", False),
                    [*pk, f"x-portkey-custom-host: http://127.0.0.1:{bu}/v1"],
                    False,
                ),
                "stream": (
                    base,
                    json_body(work, "bench", True),
                    [*pk, f"x-portkey-custom-host: http://127.0.0.1:{bs}/v1"],
                    False,
                ),
                "ttfb": (
                    base,
                    json_body(work, "bench", True),
                    [*pk, f"x-portkey-custom-host: http://127.0.0.1:{bp}/v1"],
                    False,
                ),
            }
        loads = [
            ("unary", 1),
            ("unary", 16),
            ("unary", 64),
            ("stream", 1),
            ("stream", 16),
            ("ttfb", 1),
            ("ttfb", 16),
        ]
        samples: dict[tuple[str, str, int], list[dict[str, float]]] = {}
        for rnd in range(args.rounds):
            for kind, conns in loads:
                for name, spec in paths.items():
                    if kind not in spec:
                        continue
                    url, body, headers, is_grpc = spec[kind]
                    if kind == "ttfb":
                        stat = ttfb(
                            "grpc" if is_grpc else "http", url, body, headers, conns, max(args.seconds, 3.0)
                        )
                        samples.setdefault((name, kind, conns), []).append(stat)
                        print(
                            f"  round {rnd + 1} ttfb   c={conns:<3} {name:9} p50 {stat['ttfb_p50_ms']:7.2f} ms"
                            f"  p99 {stat['ttfb_p99_ms']:7.2f} ms  ({stat['streams']:.0f} streams)",
                            flush=True,
                        )
                        continue
                    proc = procs.get(name.split("-")[0])
                    cpu0 = group_cpu_seconds(proc.pid) if proc is not None else 0.0
                    stat = h2load(url, body, conns, args.seconds, headers, is_grpc)
                    if proc is not None:
                        # CPU over warm-up + run; calls counted over the run: scale the calls up
                        stat["cpu_ms"] = (
                            (group_cpu_seconds(proc.pid) - cpu0) * 1000 / (stat["rps"] * (args.seconds + 1))
                        )
                    samples.setdefault((name, kind, conns), []).append(stat)
                    print(
                        f"  round {rnd + 1} {kind:6} c={conns:<3} {name:9} {stat['rps']:7.0f} req/s"
                        f"  p50 {stat['p50_ms']:7.2f} ms"
                        + (f"  CPU {stat['cpu_ms']:.2f} ms/req" if "cpu_ms" in stat else ""),
                        flush=True,
                    )
        page = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
        # CANCELLED: calls h2load still had in flight when a run ended
        bad = [
            line
            for line in page.splitlines()
            if line.startswith("meshgate_requests_total{")
            and 'code="OK"' not in line
            and "CANCELLED" not in line
        ]
        if any(float(line.rsplit(" ", 1)[1]) for line in bad):
            raise RuntimeError("meshgate answered calls with a grpc-status other than OK:\n" + "\n".join(bad))
    finally:
        for proc in procs.values():
            stop(proc)
    text = report(samples, paths)
    out = ROOT / "bench" / "results" / "peers.md"
    text += "\n\n" + plot(
        samples, [p for p in paths if p not in ("direct", "meshgate-infer")], out.with_suffix(".png")
    )
    out.write_text(text + "\n")
    print("\n" + text)
    return 0


def plot(samples: dict[tuple[str, str, int], list[dict[str, float]]], names: list[str], path: Path) -> str:
    """CPU per request by gateway and load, log scale (LiteLLM is 20-100x the others)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "(no plot: matplotlib is not installed; pip install -e '.[bench]')"
    loads = [("unary", 1), ("unary", 16), ("unary", 64), ("stream", 1), ("stream", 16)]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        vals = [
            statistics.median([s["cpu_ms"] for s in samples.get((name, k, c), [])] or [float("nan")])
            for k, c in loads
        ]
        ax.bar([x + i * width for x in range(len(loads))], vals, width, label=name)
    ax.set_xticks(
        [x + width * (len(names) - 1) / 2 for x in range(len(loads))], [f"{k} c={c}" for k, c in loads]
    )
    ax.set_yscale("log")
    ax.set_ylabel("gateway CPU ms per request (stream: per 100-chunk stream)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return f"plot: {path.relative_to(ROOT)}"


def report(samples: dict[tuple[str, str, int], list[dict[str, float]]], paths: dict[str, Any]) -> str:
    def med(name: str, kind: str, c: int, key: str) -> float:
        vals = [s[key] for s in samples.get((name, kind, c), []) if key in s]
        return statistics.median(vals) if vals else float("nan")

    lines = [
        "| path | added p50 at c=1 | req/s c=1 / 16 / 64 | CPU per unary call c=1 / 16 / 64 | CPU per 100-chunk stream c=1 / 16 | stream p50 c=1 | stream TTFB p50 c=1 / 16 (paced) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    direct = med("direct", "unary", 1, "p50_ms")
    for name in paths:
        if name == "meshgate-infer":
            continue
        rps = " / ".join(f"{med(name, 'unary', c, 'rps'):.0f}" for c in (1, 16, 64))
        first = " / ".join(f"{med(name, 'ttfb', c, 'ttfb_p50_ms'):.2f}" for c in (1, 16))
        if name == "direct":
            lines.append(f"| direct | | {rps} | | | {med(name, 'stream', 1, 'p50_ms'):.2f} ms | {first} ms |")
            continue
        added = med(name, "unary", 1, "p50_ms") - direct
        cpu = " / ".join(f"{med(name, 'unary', c, 'cpu_ms'):.2f}" for c in (1, 16, 64))
        scpu = " / ".join(f"{med(name, 'stream', c, 'cpu_ms'):.2f}" for c in (1, 16))
        lines.append(
            f"| {name} | {added * 1000:+.0f} us | {rps} | {cpu} ms | {scpu} ms | {med(name, 'stream', 1, 'p50_ms'):.2f} ms"
            f" | {first} ms |"
        )
    for c in (1, 16):
        lines.append(
            f"stream TTFB c={c}, added over direct at p50: "
            + ", ".join(
                f"{name} {med(name, 'ttfb', c, 'ttfb_p50_ms') - med('direct', 'ttfb', c, 'ttfb_p50_ms'):+.2f} ms"
                for name in paths
                if name not in ("direct", "meshgate-infer")
            )
        )
    infer = [med("meshgate-infer", "unary", c, "cpu_ms") for c in (1, 16, 64)]
    lines.append("")
    lines.append(
        "meshgate's Infer path (KServe ModelInfer, 1 KiB) in the same run: CPU per call "
        + " / ".join(f"{v:.2f}" for v in infer)
        + " ms at c=1 / 16 / 64"
    )
    for c, v in zip((1, 16, 64), infer, strict=True):
        r = med("meshgate", "unary", c, "cpu_ms") / v
        lines.append(f"unary c={c}: Generate CPU per call {r:.2f}x the Infer path (target <= 1.3)")
    if "portkey" in paths:
        lines.append("")
        for c in (1, 16, 64):
            r = med("meshgate", "unary", c, "cpu_ms") / med("portkey", "unary", c, "cpu_ms")
            lines.append(f"unary c={c}: meshgate CPU per call {r:.2f}x Portkey's (target <= 0.5)")
        for c in (1, 16):
            r = med("meshgate", "stream", c, "cpu_ms") / med("portkey", "stream", c, "cpu_ms")
            lines.append(f"stream c={c}: meshgate CPU per stream {r:.2f}x Portkey's (target <= 0.8)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
