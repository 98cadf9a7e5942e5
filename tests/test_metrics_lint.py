"""The gateway's /metrics page after a varied workload passes Prometheus's own linter
(`promtool check metrics`, Debian's prometheus package; make test installs it): names, types,
HELP, counters ending in _total, units. Every policy family is on: rate limits, cache, budgets,
fair admission, the ledger."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from meshgate.v1 import generate_pb2, inference_pb2, inference_pb2_grpc

from tests.helpers import add_sub_request, api_key_auth, llm_pool, triton_pool
from tests.openai_standin import OpenAIStandIn
from tests.procs import Gateway, Triton, make_key


def test_the_metrics_page_passes_promtool(triton_a: Triton, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: make test installs Debian's prometheus package"
    keys_file = tmp_path / "keys.yaml"
    key = make_key(keys_file, "--user", "bob", "--project", "ads", "--department", "eng")
    llm = OpenAIStandIn()
    config = {
        "pools": {
            "tritons": triton_pool(triton_a.address, ["add_sub"]),
            "llm": llm_pool(llm.base_url),
        },
        "auth": api_key_auth(keys_file),
        "rate_limits": {"limits": [{"name": "per-user", "key": ["user"], "requests_per_s": 1000}]},
        "cache": {},
        "budgets": {"limits": [{"name": "tiny", "scope": "user", "limit": 30, "unit": "tokens"}]},
        "admission": {"pools": ["tritons"]},
        "ledger": {"path": str(tmp_path / "usage.db"), "flush_interval_s": 0.2},
        "prices": {"models": {"echo": {"in_per_1k": 1.0, "out_per_1k": 1.0}}},
    }
    gw = Gateway(config).start()
    try:
        gw.wait_serving("tritons")
        gw.wait_serving("llm")
        md = (("authorization", f"Bearer {key}"),)
        msg = generate_pb2.ChatMessage(role="user", content=[generate_pb2.ContentPart(text="hello metrics")])
        chat = generate_pb2.GenerateRequest(
            model="echo", messages=[msg], sampling=generate_pb2.SamplingParams(max_tokens=5)
        )
        with grpc.insecure_channel(gw.address) as ch:
            stub = inference_pb2_grpc.InferenceStub(ch)
            for _ in range(2):  # a miss, then a cache hit
                stub.Infer(add_sub_request([1.0], [2.0]), timeout=10, metadata=md)
            list(stub.GenerateStream(chat, timeout=10, metadata=md))
            with pytest.raises(grpc.RpcError):
                stub.Infer(inference_pb2.InferRequest(model="nope"), timeout=10, metadata=md)
            with pytest.raises(grpc.RpcError) as refused:  # until the token budget refuses
                for _ in range(20):
                    stub.Generate(chat, timeout=10, metadata=md)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        time.sleep(0.5)  # the ledger's first batch is written
        page = gw.metrics_text()
    finally:
        gw.stop()
        llm.close()
    for family in (
        "meshgate_requests_total",
        "meshgate_cache_requests_total",
        "meshgate_budget_refusals_total",
        "meshgate_ledger_records_total",
        "meshgate_admission_queue_depth",
        "meshgate_cost_total",
    ):
        assert f"\n{family}" in page, family
    done = subprocess.run(
        [promtool, "check", "metrics"], input=page, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0 and done.stdout.strip() == "" and done.stderr.strip() == "", (
        done.stdout + done.stderr
    )
