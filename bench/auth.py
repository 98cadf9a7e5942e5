#!/usr/bin/env python3
"""make bench-auth: what TLS, mutual TLS and each authenticator cost, side by side in one run.

The same gateway config and the same backend (nginx answering a pre-encoded 1 KiB
ModelInferResponse, as in bench-overhead), with five front doors:

  plain       no TLS, no authenticator (the reference)
  apikey      no TLS, an API key in `authorization`
  jwt         no TLS, an ES256 JWT (verified once, then cached until it expires)
  tls-apikey  TLS, an API key
  mtls        mutual TLS, the client certificate mapped to a principal (mtls authenticator)

Every path is loaded by the same client (bench/grpc_load.py: grpc.aio, which can present a
client certificate; h2load cannot) so that the client's cost is the same for all of them. On
this 2-core machine the client runs pinned to CPU 0 and the gateway to CPU 1, which keeps the
two from trading places between rounds (the noise that hid the c=1 difference in
bench-overhead). Rounds interleave the paths; each figure is the median over rounds. The
gateway's CPU per call is read from /proc for its process group.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.overhead import (
    BACKEND_SERVER,
    METHOD,
    ROOT,
    auth_setups,
    free_port,
    group_cpu_seconds,
    meshgate_config,
    nginx,
    start,
    stop,
    write_payloads,
)

PATHS = ("plain", "apikey", "jwt", "tls-apikey", "mtls")


def pki(work: Path) -> dict[str, str]:
    from tests.certs import CA, write

    ca = CA("bench CA")
    (work / "ca.crt").write_bytes(ca.pem())
    server = write(work, "server", *ca.issue("gateway", ips=("127.0.0.1",), server=True)[:2])
    client = write(work, "client", *ca.issue("bench-client")[:2])
    return {
        "ca": str(work / "ca.crt"),
        "server_cert": str(server[0]),
        "server_key": str(server[1]),
        "client_cert": str(client[0]),
        "client_key": str(client[1]),
    }


def setups(work: Path) -> dict[str, tuple[str, list[str]]]:
    """path -> (config YAML lines, grpc_load arguments)."""
    files = pki(work)
    auths = auth_setups(work)
    key_yaml, key_md = auths["meshgate-apikey"]
    jwt_yaml, jwt_md = auths["meshgate-jwt"]
    key_args = ["--header", f"authorization: {key_md[0][1]}"]
    tls = f"tls: {{cert_file: '{files['server_cert']}', key_file: '{files['server_key']}'"
    return {
        "plain": ("", []),
        "apikey": (key_yaml, key_args),
        "jwt": (jwt_yaml, ["--header", f"authorization: {jwt_md[0][1]}"]),
        "tls-apikey": (f"{key_yaml}\nserver_tls: {{{tls}}}}}", [*key_args, "--ca", files["ca"]]),
        "mtls": (
            "auth: {authenticators: [mtls], mtls: {identities: [{common_name: bench-client, user: bench,"
            " roles: [bench]}]}, default: deny, rules: [{who: {roles: [bench]}}]}\n"
            f"server_tls: {{{tls}, client_ca_file: '{files['ca']}'}}}}",
            ["--ca", files["ca"], "--cert", files["client_cert"], "--key", files["client_key"]],
        ),
    }


def config_for(work: Path, port: int, backend: int, name: str, extra: str) -> Path:
    """bench-overhead's gateway config, with this path's auth and (server_tls:) TLS."""
    auth, _, tls = extra.partition("server_tls: ")
    path = meshgate_config(work, port, backend, f"auth-{name}", auth)
    if tls:
        text = path.read_text().replace(
            f'server: {{listen: "127.0.0.1:{port}"}}', f'server: {{listen: "127.0.0.1:{port}", {tls[1:-1]}}}'
        )
        path.write_text(text)
    return path


def load(
    port: int, body: Path, concurrency: int, seconds: float, args: list[str], pin: str
) -> dict[str, float]:
    cmd = [
        *pin.split(),
        sys.executable,
        "-m",
        "bench.grpc_load",
        "--target",
        f"127.0.0.1:{port}",
        "--method",
        METHOD,
        "--body",
        str(body),
        "--concurrency",
        str(concurrency),
        "--seconds",
        str(seconds),
        *args,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    result: dict[str, float] = json.loads(out)
    if result["errors"]:
        raise RuntimeError(f"port {port}: {result['errors']} failed calls")
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="meshgate-bench-auth-"))
    work.chmod(0o755)
    body = write_payloads(work, "1KiB", 1024)
    backend_port = free_port()
    backend = nginx(work, "backend", BACKEND_SERVER.format(port=backend_port, root=work / "replies-1KiB"))
    cores = os.cpu_count() or 1
    client_pin, gateway_pin = ("taskset -c 0", "taskset -c 1") if cores >= 2 and not args.no_pin else ("", "")
    paths = setups(work)
    gateways: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    results: dict[str, Any] = {}
    try:
        for name in PATHS:
            port = free_port()
            cfg = config_for(work, port, backend_port, name, paths[name][0])
            cmd = [*gateway_pin.split(), sys.executable, "-m", "gateway", "serve", "--config", str(cfg)]
            gateways[name] = (port, start(cmd, work / f"{name}.log"))
        for name, (port, _) in gateways.items():  # each path answers before anything is timed
            deadline = time.monotonic() + 30
            while True:
                try:
                    load(port, body, 1, 0.5, paths[name][1], client_pin)
                    break
                except RuntimeError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{name} never answered: see {work / (name + '.log')}") from None
                    time.sleep(0.5)
        for conc in args.concurrency:
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in gateways}
            for _ in range(args.rounds):
                for name, (port, proc) in gateways.items():
                    cpu0 = group_cpu_seconds(proc.pid)
                    stats = load(port, body, conc, args.seconds, paths[name][1], client_pin)
                    stats["cpu_us_per_call"] = (
                        (group_cpu_seconds(proc.pid) - cpu0) * 1e6 / max(stats["calls"], 1)
                    )
                    runs[name].append(stats)
            row = {
                name: {k: statistics.median(s[k] for s in samples) for k in samples[0]}
                for name, samples in runs.items()
            }
            for name, st in row.items():
                print(
                    f"  c={conc:<3} {name:11} {st['rps']:7.0f} req/s  p50 {st['p50_ms']:6.3f} ms"
                    f"  p99 {st['p99_ms']:6.3f} ms  {st['cpu_us_per_call']:5.0f} us CPU/call",
                    flush=True,
                )
            results[f"c{conc}"] = row
    finally:
        for _, proc in gateways.values():
            stop(proc)
        stop(backend)
    return results


def report(results: dict[str, Any]) -> str:
    lines = [
        "| concurrency | path | req/s | vs plain | p50 ms | added p50 | gateway CPU/call | added CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, row in results.items():
        base = row["plain"]
        for name in PATHS:
            st = row[name]
            lines.append(
                f"| {key[1:]} | {name} | {st['rps']:.0f} | {st['rps'] / base['rps']:.2f} | {st['p50_ms']:.3f} |"
                f" {(st['p50_ms'] - base['p50_ms']) * 1000:+.0f} us | {st['cpu_us_per_call']:.0f} us |"
                f" {st['cpu_us_per_call'] - base['cpu_us_per_call']:+.0f} us |"
            )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-pin", action="store_true", help="do not pin client and gateway to separate cores")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    results = run(args)
    print()
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
