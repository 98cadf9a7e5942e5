"""Backend adapters, one module per backend kind, listed in one explicit registry."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .anthropic import AnthropicAdapter
from .base import (
    Adapter,
    BackendError,
    InferCall,
    InferResult,
    InferStreams,
    ModelConfigs,
    ModelMetadata,
    ParamValue,
    RequestedOutput,
    Tensor,
    TensorSpec,
)
from .kserve_v2 import KServeV2Adapter
from .llm import LLMAdapter
from .openai import OpenAIAdapter, VLLMAdapter
from .tfserving import TFServingAdapter
from .torchserve import TorchServeOIPAdapter, TorchServePredictionsAdapter, torchserve_adapter
from .triton import TritonAdapter

AdapterFactory = Callable[..., Adapter]

# backend kind (as in config and Consul Meta `backend`) -> adapter class.
REGISTRY: Mapping[str, AdapterFactory] = {
    "triton": TritonAdapter,
    "kserve_v2": KServeV2Adapter,
    "tfserving": TFServingAdapter,
    "openai": OpenAIAdapter,
    "anthropic": AnthropicAdapter,
    "vllm": VLLMAdapter,
    "torchserve": torchserve_adapter,
}

__all__ = [
    "REGISTRY",
    "Adapter",
    "AdapterFactory",
    "AnthropicAdapter",
    "BackendError",
    "InferCall",
    "InferResult",
    "InferStreams",
    "KServeV2Adapter",
    "LLMAdapter",
    "ModelConfigs",
    "ModelMetadata",
    "OpenAIAdapter",
    "ParamValue",
    "RequestedOutput",
    "TFServingAdapter",
    "Tensor",
    "TensorSpec",
    "TorchServeOIPAdapter",
    "TorchServePredictionsAdapter",
    "TritonAdapter",
    "VLLMAdapter",
]
