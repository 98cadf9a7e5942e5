"""Small helpers for building requests and reading errors in tests."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from meshgate.v1 import inference_pb2, inference_pb2_grpc, tensor_pb2


def fp32(name: str, values: list[float], shape: list[int] | None = None) -> Any:
    raw = np.asarray(values, dtype="<f4").tobytes()
    return tensor_pb2.Tensor(name=name, datatype="DATA_TYPE_FP32", shape=shape or [len(values)], raw=raw)


def add_sub_request(a: list[float], b: list[float], model: str = "add_sub", **kw: Any) -> Any:
    return inference_pb2.InferRequest(model=model, inputs=[fp32("INPUT0", a), fp32("INPUT1", b)], **kw)


def infer(channel: grpc.Channel, request: Any, timeout: float = 10, **kw: Any) -> Any:
    return inference_pb2_grpc.InferenceStub(channel).Infer(request, timeout=timeout, **kw)


def output(resp: Any, name: str) -> np.ndarray:
    for t in resp.outputs:
        if t.name == name:
            assert t.WhichOneof("data") == "raw"
            return np.frombuffer(t.raw, dtype="<f4").reshape(tuple(t.shape))
    raise KeyError(name)


def field_violations(err: grpc.RpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    out = []
    for detail in status.details if status else []:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out.extend((v.field, v.description) for v in bad.field_violations)
    return out


def metric_value(page: str, name: str, **labels: str) -> float:
    """The value of one sample on a Prometheus text page; 0 when the sample is absent."""
    want = "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""
    for line in page.splitlines():
        if line.startswith(name + want + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def llm_pool(base_url: str, models: tuple[str, ...] = ("echo",)) -> dict[str, Any]:
    """A pool of one OpenAI-compatible endpoint (a stand-in's base URL): the `llm` pool of most
    LLM test configs."""
    return {
        "endpoints": [
            {
                "id": "llm",
                "address": "127.0.0.1:1",
                "backend": "openai",
                "models": list(models),
                "base_url": base_url,
            }
        ]
    }


def triton_pool(address: str, models: list[str], id: str = "triton-a", **extra: Any) -> dict[str, Any]:
    """A pool of one Triton endpoint (`extra`: slots, metrics_url, meta...)."""
    return {"endpoints": [{"id": id, "address": address, "backend": "triton", "models": models, **extra}]}


def api_key_auth(keys_file: Any) -> dict[str, Any]:
    """auth: API keys from a keys file."""
    return {"authenticators": ["api_key"], "api_keys": {"file": str(keys_file)}}
