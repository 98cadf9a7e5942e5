"""What an attempt sends where: a call retargeted to an alias's target, and the LLM adapter a
Generate/Embed call needs."""

from __future__ import annotations

from typing import TypeVar, cast

import grpc

from adapters import Adapter, BackendError, InferCall
from adapters.llm import EmbedCall, GenerateCall, LLMAdapter

from ..errors import echo
from ..routing.aliases import Target
from .attempts import Route

LLMCall = TypeVar("LLMCall", GenerateCall, EmbedCall)


def retarget(call: InferCall, target: Target, route: Route) -> InferCall:
    """`call` for an alias's target (the caller's wire message names another model), with the
    attempt's trace context."""
    if (target.model, target.version) != (call.model, call.version):
        call = call._replace(model=target.model, version=target.version, wire=None)
    return call._replace(headers=call.headers + route.trace) if route.trace else call


def for_target(call: LLMCall, target: Target, route: Route) -> LLMCall:
    """A Generate or Embed call for `target`'s model, with the attempt's trace context."""
    if route.trace:
        return call._replace(model=target.model, headers=call.headers + route.trace)
    return call._replace(model=target.model)


def speaks(adapter: Adapter, protocol: type) -> bool:
    """isinstance(adapter, protocol) for a runtime-checkable side interface (LLMAdapter,
    InferStreams, ModelConfigs), answered once per adapter class: the Protocol check walks the
    protocol's members each time (~4 us, 1.8% of a unary Generate's CPU at c=64)."""
    key = (type(adapter), protocol)
    found = _SPEAKS.get(key)
    if found is None:
        found = _SPEAKS[key] = isinstance(adapter, protocol)
    return found


_SPEAKS: dict[tuple[type, type], bool] = {}


def llm_adapter(adapter: Adapter, model: str) -> LLMAdapter:
    if not speaks(adapter, LLMAdapter):
        raise BackendError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"model {echo(model)} is served by a tensor backend: use Infer, not Generate/Embed",
            retryable=False,
        )
    return cast(LLMAdapter, adapter)
