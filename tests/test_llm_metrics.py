"""Known LLM traffic through the real gateway, then its metrics page: time to first token, time
per output token, tokens per call and request duration, under meshgate's names and the
OpenTelemetry GenAI conventions' (counts and sums that match what was sent, not just presence),
and the admission queue's wait histogram."""

from __future__ import annotations

import re
from collections.abc import Iterator

import grpc
import pytest
from meshgate.v1 import generate_pb2, inference_pb2_grpc

from tests.helpers import add_sub_request, api_key_auth, llm_pool, triton_pool
from tests.openai_standin import OpenAIStandIn
from tests.procs import Gateway, Triton, make_key

STREAMS, UNARY = 3, 2
FIRST_TOKEN_S, TOKEN_S = 0.2, 0.02
WORDS = "one two three four five six seven"  # the stand-in answers "echo: " + these: 8 tokens


def value(page: str, name: str, **labels: str) -> float:
    """The sample `name{labels}` (labels in any order, all of them given)."""
    for m in re.finditer(rf"^{re.escape(name)}\{{([^}}]*)\}} (\S+)$", page, re.M):
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if have == labels:
            return float(m.group(2))
    raise AssertionError(f"no {name}{labels} on the page")


@pytest.fixture(scope="module")
def page(triton_a: Triton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("llm-metrics")
    keys = tmp / "keys.yaml"
    key = make_key(keys, "--user", "bob", "--project", "ads", "--department", "eng")
    llm = OpenAIStandIn()
    llm.first_token_delay_s, llm.token_interval_s = FIRST_TOKEN_S, TOKEN_S
    config = {
        "pools": {
            "llm": llm_pool(llm.base_url),
            "tritons": triton_pool(triton_a.address, ["add_sub"], id="t"),
        },
        "admission": {"pools": ["tritons"]},
        "auth": api_key_auth(keys),
        "metrics": {"principal_labels": ["project", "department"]},
        "prices": {"models": {"echo": {"in_per_1k": 1.0, "out_per_1k": 2.0}}},
        "ledger": {"path": str(tmp / "usage.db")},
    }
    gw = Gateway(config).start()
    try:
        gw.wait_serving("llm")
        gw.wait_serving("tritons")
        msg = generate_pb2.ChatMessage(role="user", content=[generate_pb2.ContentPart(text=WORDS)])
        chat = generate_pb2.GenerateRequest(model="echo", messages=[msg])
        md = (("authorization", f"Bearer {key}"),)
        with grpc.insecure_channel(gw.address) as ch:
            stub = inference_pb2_grpc.InferenceStub(ch)
            for _ in range(STREAMS):
                list(stub.GenerateStream(chat, timeout=10, metadata=md))
            for _ in range(UNARY):
                stub.Generate(chat, timeout=10, metadata=md)
            for _ in range(4):
                stub.Infer(add_sub_request([1.0], [2.0]), timeout=10, metadata=md)
            with pytest.raises(grpc.RpcError):
                stub.Infer(add_sub_request([1.0], [2.0], model="nope"), timeout=10, metadata=md)
        yield gw.metrics_text()
    finally:
        gw.stop()
        llm.close()


def test_time_to_first_token_and_per_output_token_count_every_stream(page: str) -> None:
    pool = {"pool": "llm", "model": "echo"}
    assert value(page, "meshgate_time_to_first_token_seconds_count", **pool) == STREAMS
    ttft = value(page, "meshgate_time_to_first_token_seconds_sum", **pool) / STREAMS
    assert FIRST_TOKEN_S <= ttft < FIRST_TOKEN_S + 0.5
    # Under 200 ms nothing: the stand-in waits that long before the first word.
    assert value(page, "meshgate_time_to_first_token_seconds_bucket", **pool, le="0.1") == 0
    assert value(page, "meshgate_time_to_first_token_seconds_bucket", **pool, le="+Inf") == STREAMS
    assert value(page, "meshgate_time_per_output_token_seconds_count", **pool) == STREAMS
    tpot = value(page, "meshgate_time_per_output_token_seconds_sum", **pool) / STREAMS
    assert TOKEN_S * 0.5 <= tpot < TOKEN_S + 0.05  # 8 words, 20 ms apart


def test_the_genai_conventions_names_carry_the_same_counts(page: str) -> None:
    chat = {"gen_ai_operation_name": "chat", "gen_ai_request_model": "echo"}
    assert value(page, "gen_ai_server_time_to_first_token_seconds_count", **chat) == STREAMS
    assert value(page, "gen_ai_server_time_per_output_token_seconds_count", **chat) == STREAMS
    assert value(page, "gen_ai_server_request_duration_seconds_count", **chat) == STREAMS + UNARY
    out = {**chat, "gen_ai_token_type": "output"}
    assert value(page, "gen_ai_client_token_usage_count", **out) == STREAMS + UNARY
    assert value(page, "gen_ai_client_token_usage_sum", **out) == 8 * (STREAMS + UNARY)
    prompt = {**chat, "gen_ai_token_type": "input"}
    assert value(page, "gen_ai_client_token_usage_sum", **prompt) == 7 * (STREAMS + UNARY)
    # Token buckets are powers of 4: 8 output tokens fall in le=16, not le=4.
    assert value(page, "gen_ai_client_token_usage_bucket", **out, le="4.0") == 0
    assert value(page, "gen_ai_client_token_usage_bucket", **out, le="16.0") == STREAMS + UNARY


def test_admitted_calls_are_counted_with_their_wait(page: str) -> None:
    assert value(page, "meshgate_admission_wait_seconds_count", pool="tritons") == 4
    assert value(page, "meshgate_admission_wait_seconds_bucket", pool="tritons", le="0.001") == 4
    # Inference-fit latency buckets: 1 ms to 120 s.
    bounds = re.findall(r'meshgate_request_duration_seconds_bucket\{[^}]*le="([^"]+)"', page)
    assert bounds[0] == "0.001" and "120.0" in bounds and bounds[-1] == "+Inf"


def test_calls_by_service_method_model_pool_and_code(page: str) -> None:
    inference = {"service": "meshgate.v1.Inference", "model": "echo", "pool": "llm", "code": "OK"}
    assert value(page, "meshgate_model_requests_total", **inference, method="GenerateStream") == STREAMS
    assert value(page, "meshgate_model_requests_total", **inference, method="Generate") == UNARY
    tensor = {"service": "meshgate.v1.Inference", "method": "Infer", "model": "add_sub", "pool": "tritons"}
    assert value(page, "meshgate_model_requests_total", **tensor, code="OK") == 4
    unknown = {"service": "meshgate.v1.Inference", "method": "Infer", "model": "nope", "pool": ""}
    assert value(page, "meshgate_model_requests_total", **unknown, code="NOT_FOUND") == 1


def test_per_project_labels_count_calls_and_cost_when_enabled(page: str) -> None:
    who = {"project": "ads", "department": "eng"}
    assert value(page, "meshgate_principal_requests_total", **who, code="OK") == STREAMS + UNARY + 4
    assert value(page, "meshgate_principal_requests_total", **who, code="NOT_FOUND") == 1
    # 5 chat calls of 7 prompt and 8 output tokens at 1 and 2 per 1k tokens.
    assert value(page, "meshgate_principal_cost_total", **who) == pytest.approx(
        5 * (7 * 1.0 + 8 * 2.0) / 1000
    )
    assert 'user="' not in page.split("meshgate_principal")[1]  # never per user
