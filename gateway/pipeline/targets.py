"""What an attempt sends where: a call retargeted to an alias's target, and the LLM adapter a
Generate/Embed call needs."""

from __future__ import annotations

import grpc

from adapters import Adapter, BackendError, InferCall
from adapters.llm import LLMAdapter

from ..errors import echo
from ..routing.aliases import Target


def retarget(call: InferCall, target: Target) -> InferCall:
    """`call` for an alias's target (the caller's wire message names another model)."""
    if (target.model, target.version) != (call.model, call.version):
        return call._replace(model=target.model, version=target.version, wire=None)
    return call


def llm_adapter(adapter: Adapter, model: str) -> LLMAdapter:
    if not isinstance(adapter, LLMAdapter):
        raise BackendError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"model {echo(model)} is served by a tensor backend: use Infer, not Generate/Embed",
            retryable=False,
        )
    return adapter
