"""Backend adapters, one module per backend kind, listed in one explicit registry."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .base import (
    Adapter,
    BackendError,
    InferCall,
    InferResult,
    ModelMetadata,
    ParamValue,
    RequestedOutput,
    Tensor,
    TensorSpec,
)
from .kserve_v2 import KServeV2Adapter
from .triton import TritonAdapter

AdapterFactory = Callable[..., Adapter]

# backend kind (as in config and Consul Meta `backend`) -> adapter class.
REGISTRY: Mapping[str, AdapterFactory] = {
    "triton": TritonAdapter,
    "kserve_v2": KServeV2Adapter,
}

__all__ = [
    "REGISTRY",
    "Adapter",
    "AdapterFactory",
    "BackendError",
    "InferCall",
    "InferResult",
    "KServeV2Adapter",
    "ModelMetadata",
    "ParamValue",
    "RequestedOutput",
    "Tensor",
    "TensorSpec",
    "TritonAdapter",
]
