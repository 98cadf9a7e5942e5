#!/usr/bin/env python3
"""make bench-overhead: what does meshgate add on top of a direct call?

Side by side, in one run, on loopback, unary KServe v2 ModelInfer with 1 KiB and 64 KiB tensors at
concurrency 1 and 64:

  direct      h2load -> backend
  bare-proxy  h2load -> bench/bare_proxy.py (grpc.aio, raw bytes, no policy) -> backend
  meshgate    h2load -> meshgate (1 process), its KServe v2 door -> backend
  meshgate-v1 the same gateway, called through meshgate.v1.Inference/Infer (typed API: converts)
  meshgate-2w h2load -> meshgate --workers 2  -> backend
  meshgate-apikey  meshgate with auth: an API key in `authorization` metadata, a rule to pass
  meshgate-jwt     meshgate with auth: an ES256 JWT (verified once, then cached until it expires)
  meshgate-policy-* / meshgate-cache-hit   auth + rate limits (memory, Redis exact, Redis leased)
              + response cache (miss, or hit): bench/policy.py
  meshgate-before  with --baseline REV: the gateway of that commit, same config, same run
  meshgate-traced / -traced-1pct  tracing on, every call sampled / 1% of them, spans exported
              over OTLP/gRPC to a collector in this process (tests/otlp_collector.py)
  nginx       h2load -> nginx grpc_pass (1 worker, the C reference) -> backend

The backend is nginx answering every call with a fixed, pre-encoded ModelInferResponse and a
`grpc-status: 0` trailer, so it is never the bottleneck. h2load (C) is the load generator; it
checks only HTTP status, so each path is first verified with a real gRPC call (grpc-status OK,
response decodes). Latency percentiles come from h2load's per-request log.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
METHOD = "/inference.GRPCInferenceService/ModelInfer"
V1_METHOD = "/meshgate.v1.Inference/Infer"
SIZES = {"1KiB": 1024, "64KiB": 64 * 1024}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def frame(msg: Any) -> bytes:
    body = msg.SerializeToString()
    return b"\0" + len(body).to_bytes(4, "big") + body


def write_payloads(work: Path, label: str, size: int) -> Path:
    n = size // 4
    data = np.arange(n, dtype="<f4").tobytes()
    req = pb.ModelInferRequest(model_name="bench")
    req.inputs.add(name="INPUT0", datatype="FP32", shape=[n])
    req.raw_input_contents.append(data)
    body = work / f"request-{label}.bin"
    body.write_bytes(frame(req))
    from meshgate.v1 import inference_pb2, tensor_pb2

    v1 = inference_pb2.InferRequest(
        model="bench",
        inputs=[tensor_pb2.Tensor(name="INPUT0", datatype="DATA_TYPE_FP32", shape=[n], raw=data)],
    )
    (work / f"request-{label}-v1.bin").write_bytes(frame(v1))
    replies = work / f"replies-{label}" / "inference.GRPCInferenceService"
    replies.mkdir(parents=True)
    resp = pb.ModelInferResponse(model_name="bench", model_version="1")
    resp.outputs.add(name="OUTPUT0", datatype="FP32", shape=[n])
    resp.raw_output_contents.append(data)
    (replies / "ModelInfer").write_bytes(frame(resp))
    (replies / "ServerLive").write_bytes(frame(pb.ServerLiveResponse(live=True)))
    (replies / "ServerReady").write_bytes(frame(pb.ServerReadyResponse(ready=True)))
    (replies / "ModelReady").write_bytes(frame(pb.ModelReadyResponse(ready=True)))
    return body


NGINX_HEAD = """
worker_processes 1;
daemon off;
pid {work}/{name}.pid;
error_log {work}/{name}-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {work}/tmp-{name};
  proxy_temp_path {work}/tmp-{name};
  client_max_body_size 0;
  http2_max_concurrent_streams 1024;
  keepalive_requests 1000000;
"""

BACKEND_SERVER = """
  server {{
    listen 127.0.0.1:{port} http2;
    location / {{
      # A static file answers GET only: POST -> 405 -> internal GET of the same URI -> 200.
      root {root};
      default_type application/grpc;
      error_page 405 =200 $uri;
      add_trailer grpc-status 0 always;
    }}
  }}
"""

PROXY_SERVER = """
  server {{
    listen 127.0.0.1:{port} http2;
    location / {{ grpc_pass grpc://127.0.0.1:{upstream}; }}
  }}
"""


def start(
    cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.Popen[bytes]:
    with log.open("ab") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=f, start_new_session=True, env=env, cwd=cwd)


def baseline_tree(work: Path, rev: str) -> Path:
    """A checkout of `rev` (git worktree) whose gateway runs beside this one: `python -m gateway`
    from that directory imports its gateway/, adapters/ and discovery/ first."""
    tree = work / "baseline"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), rev], check=True)
    return tree


def nginx(work: Path, name: str, servers: str) -> subprocess.Popen[bytes]:
    conf = work / f"{name}.conf"
    conf.write_text(NGINX_HEAD.format(work=work, name=name) + servers + "}\n")
    (work / f"tmp-{name}").mkdir(exist_ok=True)
    return start(["nginx", "-p", str(work), "-c", str(conf)], work / f"{name}.log")


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return


def group_cpu_seconds(pgid: int) -> float:
    """utime + stime of every live process in the group."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 (pgrp) after the ')' split is index 2
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def verify(port: int, body: Path, method: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
    """One real gRPC call: grpc-status OK and a decodable response with the output."""
    payload = body.read_bytes()[5:]
    deadline = time.monotonic() + 30
    while True:
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                raw = ch.unary_unary(method)(payload, timeout=2, metadata=headers)
            if method == METHOD:
                resp = pb.ModelInferResponse.FromString(raw)
                assert resp.model_name == "bench" and len(resp.raw_output_contents) == 1
            else:
                from meshgate.v1 import inference_pb2

                v1 = inference_pb2.InferResponse.FromString(raw)
                assert v1.model == "bench" and v1.outputs[0].raw
            return
        except grpc.RpcError as err:
            if time.monotonic() > deadline:
                raise RuntimeError(f"port {port}: {err.code().name} {err.details()}") from None
            time.sleep(0.3)


def h2load(
    port: int,
    body: Path,
    concurrency: int,
    seconds: float,
    work: Path,
    method: str,
    headers: tuple[tuple[str, str], ...] = (),
) -> dict[str, float]:
    conns, streams = (1, 1) if concurrency == 1 else (8, concurrency // 8)
    log = work / f"h2load-{port}-{concurrency}.tsv"
    log.unlink(missing_ok=True)
    cmd = [
        "h2load",
        "-t",
        "1",
        "-c",
        str(conns),
        "-m",
        str(streams),
        "-D",
        f"{seconds:g}",
        "--warm-up-time",
        "1",
        "-d",
        str(body),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        *[arg for name, value in headers for arg in ("-H", f"{name}: {value}")],
        "--log-file",
        str(log),
        f"http://127.0.0.1:{port}{method}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rows = [line.split("\t") for line in log.read_text().splitlines() if line]
    # Status 0: the request was still in flight when the run stopped (h2load's summary, checked
    # below, counts real failures).
    rows = [r for r in rows if int(r[1]) != 0]
    lat_ms = sorted(int(r[2]) / 1000 for r in rows)
    bad = sum(1 for r in rows if int(r[1]) != 200)
    if bad or " 0 failed, 0 errored" not in out:
        raise RuntimeError(f"h2load saw {bad} non-200 responses:\n{out}")
    return {
        "calls": len(lat_ms),
        "rps": len(lat_ms) / seconds,
        "p50_ms": statistics.median(lat_ms),
        "p99_ms": lat_ms[int(len(lat_ms) * 0.99) - 1],
    }


def auth_setups(work: Path) -> dict[str, tuple[str, tuple[tuple[str, str], ...]]]:
    """path name -> (its auth config YAML, the metadata a caller sends)."""
    import jwt as pyjwt
    from cryptography.hazmat.primitives.asymmetric import ec

    from gateway.policy.auth.keys import KeyEntry, digest, locked, new_key

    keys_file = work / "keys.yaml"
    key_id, key = new_key()
    with locked(keys_file) as entries:
        entries[key_id] = KeyEntry(
            id=key_id, hash=digest(key), user="bench", project="bench", roles=("bench",)
        )
    signing = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(signing.public_key()))
    (work / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k1"}]}))
    token = pyjwt.encode(
        {
            "iss": "bench",
            "aud": "meshgate",
            "sub": "bench",
            "roles": ["bench"],
            "exp": int(time.time()) + 7200,
        },
        signing,
        "ES256",
        headers={"kid": "k1"},
    )
    rules = "default: deny, rules: [{who: {roles: [bench]}}]"
    return {
        "meshgate-apikey": (
            f"auth: {{authenticators: [api_key], api_keys: {{file: '{keys_file}'}}, {rules}}}",
            (("authorization", f"Bearer {key}"),),
        ),
        "meshgate-jwt": (
            f"auth: {{authenticators: [jwt], jwt: {{issuer: bench, audience: meshgate,"
            f" jwks_file: '{work / 'jwks.json'}'}}, {rules}}}",
            (("authorization", f"Bearer {token}"),),
        ),
    }


TRACED = ("meshgate-traced", "meshgate-traced-1pct")


def tracing_setups(endpoint: str) -> dict[str, tuple[str, tuple[tuple[str, str], ...]]]:
    """Traced paths: every call sampled, and 1% (a production setting)."""
    return {
        name: (f"tracing: {{enabled: true, endpoint: '{endpoint}', sample_ratio: {ratio}}}", ())
        for name, ratio in zip(TRACED, (1.0, 0.01), strict=True)
    }


def meshgate_config(work: Path, port: int, backend: int, label: str, auth: str = "") -> Path:
    path = work / f"meshgate-{label}.yaml"
    path.write_text(
        f"""
log_level: WARNING
{auth}
server: {{listen: "127.0.0.1:{port}"}}
metrics: {{listen: "127.0.0.1:0"}}
pools:
  bench:
    endpoints:
      - {{id: nginx-backend, address: "127.0.0.1:{backend}", backend: kserve_v2, models: [bench], meta: {{cost_per_hour: "1.0"}}}}
"""
    )
    return path


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="meshgate-bench-"))
    work.chmod(0o755)  # nginx workers run as an unprivileged user and read the replies
    py = sys.executable
    results: dict[str, Any] = {}
    redis: Any = None  # a redis-server for the policy paths, started when first needed
    collector: Any = None  # the OTLP receiver of the traced paths
    baseline = baseline_tree(work, args.baseline) if args.baseline else None
    for label, size in SIZES.items():
        if args.sizes and label not in args.sizes:
            continue
        body = write_payloads(work, label, size)
        backend_port = free_port()
        backend = nginx(
            work, f"backend-{label}", BACKEND_SERVER.format(port=backend_port, root=work / f"replies-{label}")
        )
        targets: dict[str, tuple[int, subprocess.Popen[bytes] | None]] = {"direct": (backend_port, None)}
        v1_body = work / f"request-{label}-v1.bin"
        p = free_port()
        targets["bare-proxy"] = (
            p,
            start(
                [
                    py,
                    "bench/bare_proxy.py",
                    "--listen",
                    f"127.0.0.1:{p}",
                    "--upstream",
                    f"127.0.0.1:{backend_port}",
                ],
                work / "bare.log",
            ),
        )
        gateways = [("meshgate", 1, ROOT), ("meshgate-2w", 2, ROOT)]
        if baseline is not None:
            gateways.insert(1, ("meshgate-before", 1, baseline))
        auths = auth_setups(work) if args.auth else {}
        if args.tracing:
            if collector is None:
                from tests.otlp_collector import OTLPCollector

                collector = OTLPCollector()
            auths |= tracing_setups(collector.endpoint)
        if args.policy:
            if redis is None:
                from tests.redis_server import RedisServer

                redis = RedisServer().start()
            from bench.policy import policy_setups

            apikey = auths.get("meshgate-apikey") or auth_setups(work)["meshgate-apikey"]
            auths |= policy_setups(apikey, redis.url)
        gateways += [(name, 1, ROOT) for name in auths]
        if args.only:  # the plain gateway (1 and 2 workers) always runs: the ratios are against it
            gateways = [
                g
                for g in gateways
                if g[0] in ("meshgate", "meshgate-2w") or any(fnmatch.fnmatch(g[0], p) for p in args.only)
            ]
        for name, workers, tree in gateways:
            p = free_port()
            cfg = meshgate_config(work, p, backend_port, f"{label}-{name}", auths.get(name, ("", ()))[0])
            cmd = [py, "-m", "gateway", "serve", "--config", str(cfg), "--workers", str(workers)]
            targets[name] = (p, start(cmd, work / f"{name}.log", cwd=tree))
            if name == "meshgate":
                targets["meshgate-v1"] = targets[name]
        p = free_port()
        targets["nginx"] = (
            p,
            nginx(work, f"proxy-{label}", PROXY_SERVER.format(port=p, upstream=backend_port)),
        )
        try:
            for name, (port, _) in targets.items():
                headers = auths.get(name, ("", ()))[1]
                verify(port, *((v1_body, V1_METHOD) if name == "meshgate-v1" else (body, METHOD)), headers)
            for conc in args.concurrency:
                # Rounds interleave the paths so that drift (other load, CPU placement) hits all
                # of them alike; each figure is the median over rounds.
                runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
                for _ in range(args.rounds):
                    for name, (port, proc) in targets.items():
                        cpu0 = group_cpu_seconds(proc.pid) if proc else 0.0
                        load = (v1_body, V1_METHOD) if name == "meshgate-v1" else (body, METHOD)
                        headers = auths.get(name, ("", ()))[1]
                        stats = h2load(port, load[0], conc, args.seconds, work, load[1], headers)
                        if proc:
                            # CPU of the proxy (all its processes) per call, warm-up included.
                            used = group_cpu_seconds(proc.pid) - cpu0
                            stats["cpu_ms_per_call"] = used * 1000 / max(stats["calls"], 1)
                        runs[name].append(stats)
                row: dict[str, Any] = {}
                for name, samples in runs.items():
                    row[name] = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
                    st = row[name]
                    print(
                        f"  {label:6} c={conc:<3} {name:12} {st['rps']:9.0f} req/s  p50 {st['p50_ms']:7.3f} ms"
                        f"  p99 {st['p99_ms']:7.3f} ms",
                        flush=True,
                    )
                results[f"{label}/c{conc}"] = row
        finally:
            for _, proc in targets.values():
                if proc:
                    stop(proc)
            stop(backend)
    if redis is not None:
        redis.stop()
    if collector is not None:
        print(f"  the collector received {len(collector.spans)} spans", flush=True)
        collector.close()
    if baseline is not None:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)], check=False)
    return results


def report(results: dict[str, Any]) -> str:
    lines = [
        "| payload / concurrency | path | req/s | p50 ms | p99 ms | added p50 ms | proxy CPU ms/call |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    summary = []
    for key, row in results.items():
        direct = row["direct"]["p50_ms"]
        for name, s in row.items():
            added = "" if name == "direct" else f"{s['p50_ms'] - direct:.3f}"
            cpu = f"{s['cpu_ms_per_call']:.3f}" if "cpu_ms_per_call" in s else ""
            lines.append(
                f"| {key} | {name} | {s['rps']:.0f} | {s['p50_ms']:.3f} | {s['p99_ms']:.3f} | {added} | {cpu} |"
            )
        mg, bare, ng = row["meshgate"], row["bare-proxy"], row["nginx"]
        added_mg, added_bare = mg["p50_ms"] - direct, bare["p50_ms"] - direct
        before = row.get("meshgate-before")
        versus = (
            f" {(before['p50_ms'] - direct) / added_bare:.2f} | {before['rps'] / bare['rps']:.2f} |"
            f" {mg['cpu_ms_per_call'] - before['cpu_ms_per_call']:+.3f} |"
            if before
            else ""
        )
        summary.append(
            f"| {key} | {added_mg / added_bare:.2f} | {mg['rps'] / bare['rps']:.2f} | {mg['rps'] / ng['rps']:.2f} |"
            f" {row['meshgate-v1']['rps'] / bare['rps']:.2f} | {row['meshgate-2w']['rps'] / mg['rps']:.2f} |{versus}"
        )
    auth_rows = [
        f"| {key} | {name} | {row[name]['rps'] / row['meshgate']['rps']:.2f} |"
        f" {(row[name]['p50_ms'] - row['meshgate']['p50_ms']) * 1000:+.0f} |"
        f" {(row[name]['cpu_ms_per_call'] - row['meshgate']['cpu_ms_per_call']) * 1000:+.0f} |"
        for key, row in results.items()
        for name in ("meshgate-apikey", "meshgate-jwt", *TRACED)
        if name in row
    ]
    with_before = any("meshgate-before" in row for row in results.values())
    extra = " before/bare added p50 | before/bare req/s | CPU ms/call now - before |" if with_before else ""
    lines += [
        "",
        "| payload / concurrency | meshgate/bare added p50 | meshgate/bare req/s | meshgate/nginx req/s"
        " | meshgate-v1/bare req/s | 2 workers/1 req/s |" + extra,
        "|---|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if with_before else ""),
        *summary,
    ]
    from bench.policy import report_rows

    policy_rows = report_rows(results)
    if policy_rows:
        lines += [
            "",
            "| payload / concurrency | policy path | req/s | vs no policy | added p50 us | CPU us/call added |",
            "|---|---|---:|---:|---:|---:|",
            *policy_rows,
        ]
    if auth_rows:
        lines += [
            "",
            "| payload / concurrency | authenticated or traced path | req/s vs plain | added p50 us | CPU us/call added |",
            "|---|---|---:|---:|---:|",
            *auth_rows,
        ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per run (after 1 s warm-up)")
    ap.add_argument("--rounds", type=int, default=3, help="runs per path; figures are medians")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--sizes", nargs="*", choices=list(SIZES), default=None)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "overhead.json"))
    ap.add_argument(
        "--baseline",
        default="",
        metavar="REV",
        help="also run the gateway of git revision REV (a worktree), side by side: meshgate-before",
    )
    ap.add_argument("--no-auth", dest="auth", action="store_false", help="leave out the authenticated paths")
    ap.add_argument(
        "--only",
        nargs="*",
        default=None,
        metavar="GLOB",
        help="only these gateway paths (and meshgate, meshgate-2w)",
    )
    ap.add_argument("--no-tracing", dest="tracing", action="store_false", help="leave out the traced paths")
    ap.add_argument(
        "--no-policy", dest="policy", action="store_false", help="leave out the policy paths (limits, cache)"
    )
    args = ap.parse_args()
    print(
        f"meshgate overhead benchmark: {os.cpu_count()} CPUs, {args.rounds} rounds of {args.seconds:g} s per path",
        flush=True,
    )
    results = run(args)
    table = report(results)
    print("\n" + table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    out.with_suffix(".md").write_text(table + "\n")
    print(f"\nwrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
