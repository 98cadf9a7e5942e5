"""The `meshgate` command against the real gateway, as a user runs it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import numpy as np

from tests.helpers import add_sub_request, infer, metric_value
from tests.procs import ROOT, Gateway, Triton, free_ports, pool_config, wait_until


def meshgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, cwd=ROOT, timeout=60
    )


def test_models_table(gateway: Gateway) -> None:
    out = meshgate("models", "--target", gateway.address)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:4] == ["MODEL", "READY", "BACKENDS", "POOLS"]
    add_sub = next(line for line in lines if line.startswith("add_sub"))
    assert add_sub.split() == ["add_sub", "yes", "triton", "tritons", "2/2"]


def test_models_of_one_model_shows_what_routing_sees_per_endpoint(gateway: Gateway) -> None:
    with grpc.insecure_channel(gateway.address) as ch:
        for _ in range(4):
            infer(ch, add_sub_request([1.0], [2.0]))
    out = meshgate("models", "add_sub", "--target", gateway.address)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:6] == ["POOL", "ENDPOINT", "READY", "CAP", "SLOTS", "INFLT"]
    rows = {line.split()[1]: line.split() for line in lines[1:]}
    assert set(rows) == {"triton-a", "triton-b"}
    a = rows["triton-a"]
    assert a[0] == "tritons" and a[2] == "yes" and a[-1] == "ready"
    assert a[8] == "-"  # no metrics_url: nothing scraped
    assert any(r[7] != "-" for r in rows.values())  # a score from the calls just made
    missing = meshgate("models", "nope", "--target", gateway.address)
    assert missing.returncode != 0 and "NOT_FOUND" in missing.stderr and "nope" in missing.stderr


def test_infer_prints_outputs_and_route(gateway: Gateway) -> None:
    out = meshgate(
        "infer",
        "--target",
        gateway.address,
        "--model",
        "add_sub",
        "--input",
        "INPUT0:FP32:4=1,2,3,4",
        "--input",
        "INPUT1:FP32:4=10,20,30,40",
    )
    assert out.returncode == 0, out.stderr
    assert "add_sub v1 answered by tritons/triton-" in out.stdout
    assert f"via meshgate at {gateway.address}" in out.stdout
    assert "OUTPUT0 FP32 [4]: [11. 22. 33. 44.]" in out.stdout
    assert "OUTPUT1 FP32 [4]: [ -9. -18. -27. -36.]" in out.stdout


def test_backend_errors_reach_the_cli_with_backend_and_model(gateway: Gateway) -> None:
    out = meshgate(
        "infer",
        "--target",
        gateway.address,
        "--model",
        "add_sub",
        "--input",
        "INPUT0:FP32:2x2=1,2,3,4",
        "--input",
        "INPUT1:FP32:2x2=1,2,3,4",
    )
    assert out.returncode == 1
    assert "error: INVALID_ARGUMENT: backend triton-" in out.stderr
    assert "model 'add_sub'" in out.stderr
    assert "unexpected shape for input" in out.stderr


def test_infer_json_with_npy_file(gateway: Gateway, tmp_path: Path) -> None:
    a = tmp_path / "a.npy"
    np.save(a, np.array([0.5, 1.5, 2.5], dtype=np.float32))
    out = meshgate(
        "infer",
        "--target",
        gateway.address,
        "--model",
        "add_sub",
        "--json",
        "--id",
        "cli-1",
        "--input",
        f"INPUT0:FP32=@{a}",
        "--input",
        "INPUT1:FP32:3=1,1,1",
        "--output",
        "OUTPUT1",
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["id"] == "cli-1"
    assert doc["route"]["pool"] == "tritons"
    assert doc["outputs"] == [{"name": "OUTPUT1", "datatype": "FP32", "shape": [3], "data": [-0.5, 0.5, 1.5]}]


def test_infer_bytes(gateway: Gateway) -> None:
    out = meshgate(
        "infer",
        "--target",
        gateway.address,
        "--model",
        "echo_text",
        "--json",
        "--input",
        "TEXT:BYTES:2=mesh,gate",
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["outputs"][0]["data"] == ["MESH", "GATE"]


def test_server_errors_are_printed_once_with_the_field(gateway: Gateway) -> None:
    out = meshgate(
        "infer",
        "--target",
        gateway.address,
        "--model",
        "add_sub",
        "--input",
        "X:FP32:1=1",
        "--input",
        "X:FP32:1=2",
    )
    assert out.returncode == 1
    assert "error: INVALID_ARGUMENT: inputs[1].name: duplicate input name 'X'" in out.stderr
    assert out.stderr.count("duplicate input name") == 1, out.stderr
    assert "Traceback" not in out.stderr


def test_a_mistyped_model_gets_a_suggestion_once(gateway: Gateway) -> None:
    out = meshgate("infer", "--target", gateway.address, "--model", "add_subb", "--input", "INPUT0:FP32:1=1")
    assert out.returncode == 1
    assert (
        "error: NOT_FOUND: model: 'add_subb' is not served by any pool (did you mean 'add_sub'?)"
        in out.stderr
    )
    assert out.stderr.count("add_subb") == 1, out.stderr


def test_bad_input_spec_is_a_usage_error() -> None:
    for spec, message in [
        ("INPUT0", "expected NAME:DTYPE:SHAPE=VALUES"),
        ("INPUT0:FP99:2=1,2", "unknown datatype FP99"),
        ("INPUT0:FP32=1,2", "a SHAPE is needed with inline values"),
        ("INPUT0:FP32:2=1,x", "'x' is not a number"),
        ("INPUT0:FP32:4=1,2", "shape 4 holds 4 value(s), got 2"),
        ("INPUT0:FP32:2x3=1,2", "shape 2x3 holds 6 value(s), got 2"),
    ]:
        out = meshgate("infer", "--model", "m", "--input", spec)
        assert out.returncode == 2, spec
        assert message in out.stderr, (spec, out.stderr)
        assert "Traceback" not in out.stderr


def test_unreachable_gateway() -> None:
    out = meshgate("models", "--target", "127.0.0.1:1", "--timeout", "2")
    assert out.returncode == 1
    assert out.stderr.startswith("error: UNAVAILABLE")


def test_workers_share_one_port(triton_a: Triton) -> None:
    """--workers 2: two processes on one port (SO_REUSEPORT); connections land on both."""
    gw = Gateway(pool_config({"p": [("triton-a", triton_a.address, ["add_sub"])]}))
    gw.spawn(
        [sys.executable, "-m", "gateway", "serve", "--config", str(gw.config_path), "--workers", "2"],
        cwd=str(ROOT),
    )
    try:
        wait_until(lambda: gw.log().count("pool p is SERVING") == 2, 30, "both workers serving")
        for _ in range(40):  # separate connections: the kernel spreads them over the workers
            with grpc.insecure_channel(gw.address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                infer(ch, add_sub_request([1], [1]))
        served = []
        for port in (gw.metrics_port, gw.metrics_port + 1):
            page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            line = next(
                (
                    x
                    for x in page.splitlines()
                    if x.startswith('meshgate_requests_total{code="OK",method="Infer"}')
                ),
                "",
            )
            served.append(float(line.split()[-1]) if line else 0.0)
        assert sum(served) == 40
        assert min(served) > 0, served
    finally:
        gw.stop()


def test_another_process_cannot_take_the_port(triton_a: Triton) -> None:
    """Only `serve --workers`' own processes share a port: a second, unrelated meshgate on the
    same address fails naming the holder, with or without --workers, and takes no connection."""
    first = Gateway(pool_config({"p": [("triton-a", triton_a.address, ["add_sub"])]})).start()
    try:
        first.wait_serving("p")
        for extra in ([], ["--workers", "2"]):
            second = first.serve_once(*extra)
            assert second.returncode == 1, (extra, second.stderr)
            assert (
                f"cannot listen on {first.address}: address in use, held by pid {first.proc.pid}"
                in second.stderr
            ), (
                extra,
                second.stderr,
            )
            assert "Traceback" not in second.stderr
        for _ in range(10):  # every fresh connection still lands on the first gateway
            with grpc.insecure_channel(first.address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                infer(ch, add_sub_request([1], [1]))
        assert metric_value(first.metrics_text(), "meshgate_requests_total", method="Infer", code="OK") == 10
    finally:
        first.stop()


def test_a_taken_metrics_port_is_named(triton_a: Triton) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        gw = Gateway(
            pool_config(
                {"p": [("triton-a", triton_a.address, ["add_sub"])]}, metrics={"listen": f"127.0.0.1:{port}"}
            )
        )
        out = gw.serve_once()
    assert out.returncode == 1
    assert (
        f"metrics: cannot listen on 127.0.0.1:{port}: address in use, held by pid {os.getpid()}" in out.stderr
    )
    assert "Traceback" not in out.stderr


def test_the_banner_shows_where_metrics_really_listen(triton_a: Triton) -> None:
    (port,) = free_ports(1)
    config = pool_config(
        {"p": [("triton-a", triton_a.address, ["add_sub"])]},
        server={"listen": f"0.0.0.0:{port}", "allow_unauthenticated": True},
    )
    gw = Gateway(config).start()
    try:
        assert f"serving on 0.0.0.0:{port}" in gw.log()
        assert f"metrics on http://127.0.0.1:{gw.metrics_port}/metrics" in gw.log()  # not 0.0.0.0
    finally:
        gw.stop()
