"""Contract suite: one set of behavioural tests over every backend kind the registry lists.

Real servers where one runs here (Triton, MLServer, TorchServe); stand-ins faithful to the
documented HTTP APIs elsewhere (TF Serving, OpenAI, vLLM, Anthropic). Every kind must: answer a
call, say NOT_FOUND for a model it does not serve, map its own errors to the gRPC code a caller
can act on, report readiness per model, report a dead server as UNAVAILABLE (retryable), and
close cleanly, raising only BackendError even when used after close.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest

from adapters import REGISTRY, Adapter, BackendError, InferCall, Tensor
from adapters.llm import ChatMessage, GenerateCall
from tests.anthropic_standin import AnthropicStandIn
from tests.openai_standin import OpenAIStandIn
from tests.procs import free_ports
from tests.tfserving_standin import TFServingStandIn

MAX = 1 << 20
LLM_KINDS = {"openai", "vllm", "anthropic"}


@dataclass
class Case:
    """One backend kind behind its server: what to send it, and a request it refuses."""

    kind: str
    address: str
    model: str
    options: dict[str, str]
    standin: Any = None  # an HTTP stand-in (fail_next injects provider errors)
    refused: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT  # the code its refusal maps to

    def adapter(self) -> Adapter:
        return REGISTRY[self.kind](
            f"{self.kind}-1", self.address, max_message_bytes=MAX, options=self.options
        )

    async def call(self, a: Adapter, model: str | None = None, *, bad: bool = False) -> Any:
        """One call of the kind's own API; `bad` sends one the backend refuses."""
        model = model or self.model
        if self.kind in LLM_KINDS:
            return await a.generate(GenerateCall(model, (ChatMessage("user", "hi there"),)), 5.0)  # type: ignore[attr-defined]
        return await a.infer(_tensor_call(self.kind, model, bad), 5.0)


def _tensor_call(kind: str, model: str, bad: bool) -> InferCall:
    raw = np.array([1, 2], dtype="<f4").tobytes()
    if kind == "tfserving" and bad:  # half_plus_two of a string: TF Serving's 400
        text = struct.pack("<I", 3) + b"abc"
        return InferCall(model, "", "r1", (Tensor("x", "BYTES", (1,), raw=text),))
    if kind == "tfserving":
        return InferCall(model, "", "r1", (Tensor("x", "FP32", (2,), raw=raw),))
    if kind == "torchserve":  # the test handler raises on an input named "fail"
        names = ["fail"] if bad else ["INPUT0", "INPUT1"]
    elif kind == "kserve_v2":
        names = ["NOPE" if bad else "x"]
    else:
        names = ["NOPE" if bad else "INPUT0", "INPUT1"]
    return InferCall(model, "", "r1", tuple(Tensor(n, "FP32", (2,), raw=raw) for n in names))


KINDS = sorted(REGISTRY)


@pytest.fixture(scope="module")
def standins() -> Iterator[dict[str, Any]]:
    key = "sk-contract-0123456789abcdef"
    openai, anthropic, tfs = OpenAIStandIn(api_key=key), AnthropicStandIn(api_key=key), TFServingStandIn()
    anthropic.model_ids = ["claude-echo"]
    yield {"key": key, "openai": openai, "anthropic": anthropic, "tfserving": tfs}
    for s in (openai, anthropic, tfs):
        s.close()


@pytest.fixture(params=KINDS)
def case(request: pytest.FixtureRequest, standins: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Case:
    kind = request.param
    monkeypatch.setenv("MESHGATE_CONTRACT_KEY", standins["key"])
    llm = {"api_key_env": "MESHGATE_CONTRACT_KEY"}
    if kind == "triton":
        return Case(kind, request.getfixturevalue("triton_a").address, "add_sub", {})
    if kind == "kserve_v2":
        return Case(kind, request.getfixturevalue("mlserver").address, "sum", {})
    if kind == "torchserve":
        ts = request.getfixturevalue("torchserve")
        opts = {"management_port": str(ts.management_port)}
        return Case(kind, ts.address, "add_sub", opts, refused=grpc.StatusCode.INTERNAL)
    if kind == "tfserving":
        return Case(kind, standins["tfserving"].address, "half_plus_two", {}, standins["tfserving"])
    s = standins["anthropic" if kind == "anthropic" else "openai"]
    model = "claude-echo" if kind == "anthropic" else "echo"
    # Provider refusals are exercised with a 429: RESOURCE_EXHAUSTED, with the provider's wait.
    return Case(
        kind, "127.0.0.1:1", model, {"base_url": s.base_url, **llm}, s, grpc.StatusCode.RESOURCE_EXHAUSTED
    )


@pytest.fixture
async def adapter(case: Case) -> AsyncIterator[Adapter]:
    a = case.adapter()
    yield a
    await a.aclose()
    if case.standin is not None and hasattr(case.standin, "fail_next"):
        case.standin.fail_next(0, 0)


async def test_a_call_is_answered(case: Case, adapter: Adapter) -> None:
    result = await case.call(adapter)
    if case.kind in LLM_KINDS:
        assert result.text.startswith("echo:") and result.usage.completion_tokens > 0
    else:
        assert result.outputs and result.request_id in ("r1", "")


async def test_readiness_per_model(case: Case, adapter: Adapter) -> None:
    assert await adapter.server_live(2.0)
    assert await adapter.model_ready(case.model, "", 2.0)
    assert not await adapter.model_ready("no_such_model", "", 2.0)


async def test_an_unknown_model_is_not_found(case: Case, adapter: Adapter) -> None:
    await adapter.server_live(2.0)  # HTTP adapters learn the served models from their list
    with pytest.raises(BackendError) as caught:
        await case.call(adapter, "no_such_model")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND, caught.value.message
    assert not caught.value.retryable
    assert f"{case.kind}-1" in caught.value.message and "no_such_model" in caught.value.message


async def test_a_refused_request_maps_to_its_code(case: Case, adapter: Adapter) -> None:
    if case.kind in LLM_KINDS:
        case.standin.fail_next(429, 1, retry_after="7")
    with pytest.raises(BackendError) as caught:
        await case.call(adapter, bad=True)
    err = caught.value
    assert err.code == case.refused, err.message
    assert not err.retryable
    assert f"{case.kind}-1" in err.message and "\n" not in err.message.strip()
    if case.kind in LLM_KINDS:
        assert err.retry_after == 7.0
    if case.kind == "torchserve":
        assert err.model_error  # the model failed on this input: the endpoint is fine


@pytest.mark.parametrize("kind", KINDS)
async def test_a_dead_server_is_unavailable_and_retryable(kind: str) -> None:
    (port,) = free_ports(1)
    options = {"base_url": f"http://127.0.0.1:{port}/v1", "management_port": str(port)}
    a = REGISTRY[kind]("down-1", f"127.0.0.1:{port}", max_message_bytes=MAX, options=options)
    try:
        case = Case(kind, "", "m", {})
        with pytest.raises(BackendError) as caught:
            await case.call(a)
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE, caught.value.message
        assert caught.value.retryable
        assert "down-1" in caught.value.message
        with pytest.raises(BackendError):
            await a.server_live(0.5)
    finally:
        await a.aclose()


async def test_close_is_idempotent_and_a_closed_adapter_raises_only_backend_errors(case: Case) -> None:
    a = case.adapter()
    await case.call(a)
    await a.aclose()
    await a.aclose()
    with pytest.raises(BackendError):
        await case.call(a)


async def test_llm_adapters_refuse_tensor_calls() -> None:
    for kind in sorted(LLM_KINDS):
        a = REGISTRY[kind]("llm-1", "127.0.0.1:1", max_message_bytes=MAX, options={})
        try:
            with pytest.raises(BackendError) as caught:
                await a.infer(_tensor_call("triton", "m", False), 1.0)
            assert caught.value.code == grpc.StatusCode.UNIMPLEMENTED
        finally:
            await a.aclose()
