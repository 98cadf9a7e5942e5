"""The deploy/ monitoring files against the real thing: a real Prometheus (Debian's package)
scrapes a real gateway under traffic (every policy on, a real Triton, an OpenAI stand-in, a DCGM
page, a Consul stand-in), and every PromQL expression of every Grafana panel and of every alert
returns data from it. A panel that would show "No data" fails here; so does an alert whose
metric names drifted from the gateway's."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml
from meshgate.v1 import generate_pb2, inference_pb2, inference_pb2_grpc, tensor_pb2

from tests.consul_standin import ConsulStandIn
from tests.dcgm_standin import DCGMStandIn
from tests.helpers import add_sub_request, api_key_auth, llm_pool, triton_pool
from tests.openai_standin import OpenAIStandIn
from tests.procs import ROOT, Gateway, Triton, make_key, wait_until
from tests.prometheus_server import PrometheusServer

DASHBOARD = ROOT / "deploy" / "grafana" / "meshgate-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
# Grafana's own variables, as a dashboard over the last minutes would set them.
GRAFANA_VARS = {"$__rate_interval": "15s", "$__range": "2m", "$__interval": "5s"}


def panel_queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            out.append((f"{panel['title']} [{target['refId']}]", expr))
    return out


def alert_queries() -> list[tuple[str, str]]:
    """Each alert's expression without its threshold: what it compares must exist."""
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    out = []
    for rule in rules:
        lhs = re.sub(r"\s*(==|!=|>=|<=|>|<)\s*[0-9.e+-]+\s*$", "", rule["expr"].strip())
        assert lhs != rule["expr"].strip(), f"{rule['alert']}: no threshold found"
        out.append((rule["alert"], lhs))
    return out


class Workload:
    """Callers of every kind, in the background: cached and uncached tensor calls, a call whose
    model fails, calls refused by a rate limit, LLM streams until a token budget refuses them."""

    def __init__(self, gw: Gateway, key: str) -> None:
        self.address, self.md = gw.address, (("authorization", f"Bearer {key}"),)
        self.codes: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _call(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args, timeout=10, metadata=self.md)
            code = "OK"
        except grpc.RpcError as err:
            code = err.code().name
        self.codes[code] = self.codes.get(code, 0) + 1

    def _run(self) -> None:
        msg = generate_pb2.ChatMessage(role="user", content=[generate_pb2.ContentPart(text="hello")])
        chat = generate_pb2.GenerateRequest(
            model="echo", messages=[msg], sampling=generate_pb2.SamplingParams(max_tokens=5)
        )
        x = tensor_pb2.Tensor(name="X", datatype="DATA_TYPE_FP32", shape=[1], raw=np.float32([1]).tobytes())
        failing = inference_pb2.InferRequest(model="fail", inputs=[x])
        limited = add_sub_request([1.0], [1.0])
        limited.model = "add_sub_limited"
        with grpc.insecure_channel(self.address) as ch:
            stub = inference_pb2_grpc.InferenceStub(ch)
            i = 0
            while not self._stop.is_set():
                i += 1
                self._call(stub.Infer, add_sub_request([1.0], [2.0]))  # a cache hit after the first
                self._call(stub.Infer, add_sub_request([float(i)], [2.0]))  # a miss
                self._call(lambda *a, **k: list(stub.GenerateStream(*a, **k)), chat)
                self._call(stub.Infer, failing)
                self._call(stub.Infer, limited)
                time.sleep(0.05)

    def __enter__(self) -> Workload:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


@pytest.fixture(scope="module")
def observed(triton_a: Triton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    tmp = tmp_path_factory.mktemp("observability")
    keys_file = tmp / "keys.yaml"
    key = make_key(keys_file, "--user", "bob", "--project", "ads", "--department", "eng")
    llm, dcgm, consul = OpenAIStandIn(), DCGMStandIn(util_percent=40), ConsulStandIn()
    config = {
        "pools": {
            "tritons": triton_pool(
                triton_a.address,
                ["add_sub", "fail"],
                metrics_url=f"http://127.0.0.1:{triton_a.metrics_port}/metrics,{dcgm.url}",
                meta={"cost_per_hour": "3.6"},
            ),
            "llm": llm_pool(llm.base_url),
        },
        "discovery": {"consul": {"address": consul.address, "backoff_max_s": 1.0}},
        "routing": {
            "load_probe": {"interval_s": 0.5},
            "aliases": {"add_sub_limited": {"split": [{"model": "add_sub"}]}},
        },
        "auth": api_key_auth(keys_file),
        "metrics": {"principal_labels": ["project", "department"]},
        "rate_limits": {
            "limits": [
                {"name": "per-user", "key": ["user"], "requests_per_s": 1000},
                {"name": "limited", "key": ["user"], "models": ["add_sub_limited"], "requests_per_s": 1},
            ]
        },
        "cache": {},
        "budgets": {"limits": [{"name": "tiny", "scope": "user", "limit": 30, "unit": "tokens"}]},
        "admission": {"pools": ["tritons"]},
        "ledger": {"path": str(tmp / "usage.db"), "flush_interval_s": 0.2},
        "prices": {"models": {"echo": {"in_per_1k": 1.0, "out_per_1k": 1.0}}},
    }
    gw = Gateway(config).start()
    prom = PrometheusServer([f"127.0.0.1:{gw.metrics_port}"], rule_files=(ALERTS,)).start()
    try:
        gw.wait_serving("tritons")
        gw.wait_serving("llm")
        with Workload(gw, key) as work:
            # Enough scrapes under traffic for every rate() window, and each kind of outcome.
            # OK, RESOURCE_EXHAUSTED (the rate limit, the token budget), the failing model's error.
            wait_until(lambda: len(work.codes) >= 3, 30, "every kind of outcome")
            wait_until(lambda: prom.query('count_over_time(up{job="meshgate"}[1m]) >= 20'), 60, "20 scrapes")
            yield prom
    finally:
        prom.stop()
        gw.stop()
        for s in (llm, dcgm):
            s.close()
        consul.close()


@pytest.mark.parametrize(("name", "expr"), panel_queries() + alert_queries())
def test_every_panel_and_alert_expression_returns_data(
    observed: PrometheusServer, name: str, expr: str
) -> None:
    result = observed.query(expr)
    assert result, f"{name}: no data for {expr}"
    values = [float(r["value"][1]) for r in result]
    assert any(math.isfinite(v) for v in values), f"{name}: only {values} for {expr}"


def test_the_dashboard_is_well_formed() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    assert dash["uid"] == "meshgate"
    assert Path(ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "meshgate.yml").exists()
