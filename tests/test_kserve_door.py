"""The KServe v2 door as tritonclient sees it: every method its sync, aio and streaming clients
expose, against the real gateway in front of a real Triton (with a decoupled model) and MLServer."""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.grpc.aio as tca
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from tests.helpers import field_violations
from tests.procs import Gateway, MLServer, Triton, pool_config

DOOR_MODELS = ["add_sub", "echo_text", "countdown", "fail"]


@pytest.fixture(scope="module")
def door(triton_a: Triton, mlserver: MLServer) -> Iterator[Gateway]:
    gw = Gateway(
        pool_config(
            {
                "tritons": [("triton-a", triton_a.address, DOOR_MODELS)],
                "mls": [("mlserver-1", mlserver.address, ["sum"])],
            }
        )
    ).start()
    try:
        gw.wait_serving("tritons").wait_serving("mls")
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def client(door: Gateway) -> Iterator[tc.InferenceServerClient]:
    c = tc.InferenceServerClient(door.address)
    yield c
    c.close()


def _fp32(name: str, values: list[float]) -> tc.InferInput:
    t = tc.InferInput(name, [len(values)], "FP32")
    t.set_data_from_numpy(np.array(values, dtype=np.float32))
    return t


def _count(n: int) -> tc.InferInput:
    t = tc.InferInput("N", [1], "INT64")
    t.set_data_from_numpy(np.array([n], dtype=np.int64))
    return t


def test_server_and_model_questions(client: tc.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "meshgate"
    assert set(meta.extensions) == {"model_configuration", "statistics", "parameters"}
    assert client.is_model_ready("add_sub") and not client.is_model_ready("nosuch")
    md = client.get_model_metadata("add_sub")
    assert [i.name for i in md.inputs] == ["INPUT0", "INPUT1"]
    index = client.get_model_repository_index()
    states = {(m.name, m.state) for m in index.models}
    assert {("add_sub", "READY"), ("countdown", "READY"), ("sum", "READY")} <= states
    assert {m.name for m in client.get_model_repository_index().models} >= set(DOOR_MODELS)


def test_model_config_from_triton_and_described_for_mlserver(client: tc.InferenceServerClient) -> None:
    config = client.get_model_config("countdown").config
    assert config.name == "countdown" and config.backend == "python"
    assert config.model_transaction_policy.decoupled  # Triton's own config, passed through
    described = client.get_model_config("sum", as_json=True)["config"]  # MLServer has no ModelConfig
    assert described["name"] == "sum"  # from its metadata (MLServer declares no tensors for it)
    assert "backend" not in described
    with pytest.raises(InferenceServerException) as missing:
        client.get_model_config("add_subb")
    assert "did you mean 'add_sub'?" in str(missing.value)


def test_infer_and_statistics_count_exactly_the_calls(client: tc.InferenceServerClient) -> None:
    def successes() -> tuple[int, int]:
        stats = client.get_inference_statistics("add_sub").model_stats
        return sum(s.inference_stats.success.count for s in stats), sum(s.inference_count for s in stats)

    before, items_before = successes()
    for _ in range(3):
        result = client.infer("add_sub", [_fp32("INPUT0", [1, 2]), _fp32("INPUT1", [3, 4])])
        assert result.as_numpy("OUTPUT0").tolist() == [4.0, 6.0]
    done: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.async_infer(
        "add_sub",
        [_fp32("INPUT0", [1, 2]), _fp32("INPUT1", [3, 4])],
        callback=lambda result, error: done.put((result, error)),
    )
    result, error = done.get(timeout=10)
    assert error is None and result.as_numpy("OUTPUT1").tolist() == [-2.0, -2.0]
    after, items_after = successes()
    assert after - before == 4
    assert items_after - items_before == 8  # a batch of 2 counts 2 inferences
    everything = {s.name for s in client.get_inference_statistics().model_stats}
    assert set(DOOR_MODELS) | {"sum"} <= everything
    with pytest.raises(InferenceServerException) as unknown:
        client.get_inference_statistics("nosuch")
    assert "NOT_FOUND" in str(unknown.value)


def test_a_model_error_keeps_its_message_but_not_the_servers_traceback(
    client: tc.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException) as err:
        client.infer("fail", [_fp32("X", [1.0])])
    text = str(err.value)
    assert "ValueError: fail: this model always fails" in text
    assert "Traceback" not in text and "/tmp/" not in text and 'model.py", line' not in text
    assert "(backend traceback omitted)" in text


def test_stream_infer_decoupled_unary_and_errors(client: tc.InferenceServerClient) -> None:
    got: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    try:
        client.async_stream_infer("countdown", [_count(3)], request_id="c1")
        client.async_stream_infer("nosuch", [_count(1)], request_id="n1")
        client.async_stream_infer(
            "add_sub",
            [_fp32("INPUT0", [1]), _fp32("INPUT1", [2])],
            request_id="a1",
            enable_empty_final_response=True,
        )
        client.async_stream_infer("countdown", [_count(2)], request_id="c2", enable_empty_final_response=True)
        responses: dict[str, list[Any]] = {}
        errors: list[str] = []
        deadline = time.monotonic() + 20
        # c1: 3, n1: 1 error, a1: 1 with its final marker, c2: 2 + an empty final: 8
        while sum(len(v) for v in responses.values()) + len(errors) < 8 and time.monotonic() < deadline:
            result, error = got.get(timeout=max(0.1, deadline - time.monotonic()))
            if error is not None:
                errors.append(str(error))
                continue
            resp = result.get_response()
            final = (
                resp.parameters["triton_final_response"].bool_param
                if "triton_final_response" in resp.parameters
                else None
            )
            value = result.as_numpy("COUNT") if resp.model_name == "countdown" else result.as_numpy("OUTPUT0")
            responses.setdefault(resp.id, []).append((None if value is None else value.tolist(), final))
    finally:
        client.stop_stream()
    assert responses["c1"] == [([3], None), ([2], None), ([1], None)]  # no marker asked, none sent
    assert responses["a1"] == [([3.0], True)]
    assert responses["c2"] == [([2], False), ([1], False), (None, True)]
    assert len(errors) == 1 and "NOT_FOUND: model_name: 'nosuch' is not served by any pool" in errors[0]


def test_aio_client_infer_and_stream(door: Gateway) -> None:
    async def run() -> tuple[list[float], list[int]]:
        client = tca.InferenceServerClient(door.address)
        try:
            assert await client.is_server_live() and await client.is_server_ready()
            assert await client.is_model_ready("add_sub")
            assert (await client.get_server_metadata()).name == "meshgate"
            assert (await client.get_model_metadata("countdown")).name == "countdown"
            assert (await client.get_model_config("countdown")).config.model_transaction_policy.decoupled
            assert "add_sub" in {m.name for m in (await client.get_model_repository_index()).models}
            assert (await client.get_inference_statistics("add_sub")).model_stats[0].name == "add_sub"
            with pytest.raises(InferenceServerException):
                await client.load_model("add_sub")
            result = await client.infer("add_sub", [_fp32("INPUT0", [5]), _fp32("INPUT1", [1])])
            sums = result.as_numpy("OUTPUT0").tolist()

            async def requests() -> Any:
                yield {"model_name": "countdown", "inputs": [_count(4)], "request_id": "s1"}

            counts = []
            async for res, err in client.stream_infer(requests()):
                assert err is None, err
                counts.append(int(res.as_numpy("COUNT")[0]))
                if len(counts) == 4:
                    break
            return sums, counts
        finally:
            await client.close()

    sums, counts = asyncio.run(run())
    assert sums == [6.0]
    assert counts == [4, 3, 2, 1]


def test_control_methods_say_plainly_they_are_not_served(client: tc.InferenceServerClient) -> None:
    for call, words in [
        (lambda: client.load_model("add_sub"), "model loading"),
        (lambda: client.unload_model("add_sub"), "model unloading"),
        (lambda: client.get_system_shared_memory_status(), "shared memory"),
        (lambda: client.get_cuda_shared_memory_status(), "CUDA shared memory"),
        (lambda: client.get_trace_settings(), "trace settings"),
        (lambda: client.update_trace_settings(settings={"trace_rate": "1"}), "trace settings"),
        (lambda: client.get_log_settings(), "log settings"),
        (lambda: client.update_log_settings(settings={"log_verbose_level": 1}), "log settings"),
        (lambda: client.register_system_shared_memory("r", "/k", 64), "shared memory"),
        (lambda: client.unregister_system_shared_memory("r"), "shared memory"),
        (lambda: client.register_cuda_shared_memory("r", b"\0" * 64, 0, 64), "CUDA shared memory"),
        (lambda: client.unregister_cuda_shared_memory("r"), "CUDA shared memory"),
    ]:
        with pytest.raises(InferenceServerException) as err:
            call()
        assert "UNIMPLEMENTED" in str(err.value) and words in str(err.value), str(err.value)
        assert "Method not implemented" not in str(err.value)


def test_kserve_field_names_in_errors(door: Gateway) -> None:
    with grpc.insecure_channel(door.address) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        with pytest.raises(grpc.RpcError) as empty:
            stub.ModelInfer(pb.ModelInferRequest(), timeout=5)
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in field_violations(empty.value)] == ["model_name"]
        with pytest.raises(grpc.RpcError) as meta:
            stub.ModelMetadata(pb.ModelMetadataRequest(name="nosuch"), timeout=5)
        assert meta.value.code() == grpc.StatusCode.NOT_FOUND
        assert [f for f, _ in field_violations(meta.value)] == ["name"]
        long_name = "m" * 9000
        with pytest.raises(grpc.RpcError) as long:
            stub.ModelMetadata(pb.ModelMetadataRequest(name=long_name), timeout=5)
        assert long.value.code() == grpc.StatusCode.NOT_FOUND  # not "metadata size exceeds hard limit"
        assert len(long.value.details()) < 300 and "\u2026" in long.value.details()
