"""Contract suite: every KServe v2 adapter against its real server, errors mapped the same way."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest

from adapters import REGISTRY, Adapter, BackendError, InferCall, Tensor
from tests.procs import MLServer, Triton, free_ports

# backend kind -> (fixture with the real server, model)
CASES = {
    "triton": ("triton_a", "add_sub"),
    "kserve_v2": ("mlserver", "sum"),
}


def _call(model: str, backend: str, *, bad_name: bool = False) -> InferCall:
    raw = np.array([1, 2], dtype="<f4").tobytes()
    if backend == "triton":
        names = ["NOPE" if bad_name else "INPUT0", "INPUT1"]
        inputs = tuple(Tensor(n, "FP32", (2,), raw=raw) for n in names)
    else:
        inputs = (Tensor("NOPE" if bad_name else "x", "FP32", (2,), raw=raw),)
    return InferCall(model=model, version="", request_id="r1", inputs=inputs)


@pytest.fixture(params=sorted(CASES))
async def adapter(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, str, Adapter]]:
    kind = request.param
    fixture, model = CASES[kind]
    server: Triton | MLServer = request.getfixturevalue(fixture)
    a = REGISTRY[kind](f"{kind}-1", server.address, max_message_bytes=1 << 20)
    yield kind, model, a
    await a.aclose()


async def test_live_and_ready(adapter: tuple[str, str, Adapter]) -> None:
    _, model, a = adapter
    assert await a.server_live(2.0)
    assert await a.model_ready(model, "", 2.0)
    assert not await a.model_ready("no_such_model", "", 2.0)


async def test_infer(adapter: tuple[str, str, Adapter]) -> None:
    kind, model, a = adapter
    result = await a.infer(_call(model, kind), 5.0)
    assert result.outputs
    assert result.request_id == "r1"


async def test_unknown_model_is_not_found(adapter: tuple[str, str, Adapter]) -> None:
    kind, _, a = adapter
    with pytest.raises(BackendError) as caught:
        await a.infer(_call("no_such_model", kind), 5.0)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert not caught.value.retryable
    assert f"backend {kind}-1 ({kind} at 127.0.0.1:" in caught.value.message
    assert "model 'no_such_model'" in caught.value.message


async def test_bad_tensor_is_invalid_argument(adapter: tuple[str, str, Adapter]) -> None:
    kind, model, a = adapter
    with pytest.raises(BackendError) as caught:
        await a.infer(_call(model, kind, bad_name=True), 5.0)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT, caught.value.message
    assert f"model '{model}'" in caught.value.message


async def test_metadata(adapter: tuple[str, str, Adapter]) -> None:
    _, model, a = adapter
    md = await a.model_metadata(model, "", 5.0)
    assert md.name == model


@pytest.mark.parametrize("kind", sorted(CASES))
async def test_backend_down_is_unavailable_and_retryable(kind: str) -> None:
    (port,) = free_ports(1)
    a = REGISTRY[kind]("down-1", f"127.0.0.1:{port}", max_message_bytes=1 << 20)
    try:
        with pytest.raises(BackendError) as caught:
            await a.infer(_call("m", kind), 2.0)
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        assert caught.value.retryable
        assert f"backend down-1 ({kind} at 127.0.0.1:{port})" in caught.value.message
        with pytest.raises(BackendError):
            await a.server_live(0.5)
    finally:
        await a.aclose()


@pytest.mark.parametrize("kind", ["openai", "vllm"])
async def test_llm_backend_down_is_unavailable_and_retryable(kind: str) -> None:
    from adapters.llm import ChatMessage, GenerateCall

    (port,) = free_ports(1)
    a = REGISTRY[kind]("down-1", f"127.0.0.1:{port}", max_message_bytes=1 << 20, options={})
    try:
        with pytest.raises(BackendError) as caught:
            await a.generate(GenerateCall("m", (ChatMessage("user", "hi"),)), 2.0)  # type: ignore[attr-defined]
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        assert caught.value.retryable
        assert (
            f"backend down-1 ({kind} at http://127.0.0.1:{port}/v1), model 'm': ConnectError"
            in caught.value.message
        )
        with pytest.raises(BackendError) as infer_err:
            await a.infer(_call("m", "triton"), 1.0)
        assert infer_err.value.code == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await a.aclose()


def test_httpcore_finds_sniffio_so_its_locks_do_not_search_sys_path() -> None:
    """httpcore imports sniffio each time it sets up a lock, an event or a cancellation shield
    (several times per HTTP request: every HTTP adapter call and every load-probe scrape).
    Without sniffio (anyio 4 no longer installs it) each failing import searches sys.path:
    ~37 us, ~250 us per request measured. pyproject.toml declares it; this keeps it declared."""
    assert importlib.util.find_spec("sniffio") is not None
