"""LLM calls (chat generation, streaming, embeddings) as the director and adapters see them.

`LLMAdapter` is a side interface: an adapter that speaks an LLM protocol implements it on top of
`Adapter`; the director checks for it before routing Generate/Embed to an endpoint.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import NamedTuple, Protocol, runtime_checkable

from .base import NO_PARAMS


class ChatMessage(NamedTuple):
    role: str  # system | user | assistant | tool
    text: str
    tool_call_id: str = ""


class ToolDefinition(NamedTuple):
    name: str
    description: str
    parameters_json: str  # a JSON object, validated by the gateway


class ToolCall(NamedTuple):
    id: str
    name: str
    arguments_json: str


class Usage(NamedTuple):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


class GenerateCall(NamedTuple):
    model: str
    messages: tuple[ChatMessage, ...]
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    tools: tuple[ToolDefinition, ...] = ()
    request_id: str = ""
    metadata: Mapping[str, str] = NO_PARAMS  # type: ignore[assignment]
    headers: tuple[tuple[str, str], ...] = ()  # as InferCall.headers


# Finish reasons, as the API names them (FINISH_REASON_<upper>).
STOP, LENGTH, TOOL_CALLS, CONTENT_FILTER, UNKNOWN = "stop", "length", "tool_calls", "content_filter", ""


class GenerateResult(NamedTuple):
    model: str
    text: str
    finish_reason: str
    usage: Usage
    tool_calls: tuple[ToolCall, ...] = ()


class TextDelta(NamedTuple):
    """The next piece of generated text: the provider's deltas that arrived together, joined
    (`pieces` of them, about one token each: what a stream cut short is charged for)."""

    text: str
    pieces: int = 1


class StreamEnd(NamedTuple):
    """The last event of a stream."""

    model: str
    finish_reason: str
    usage: Usage
    tool_calls: tuple[ToolCall, ...] = ()


StreamEvent = TextDelta | StreamEnd


class EmbedCall(NamedTuple):
    model: str
    inputs: tuple[str, ...]
    dimensions: int = 0
    headers: tuple[tuple[str, str], ...] = ()  # as InferCall.headers


class EmbedResult(NamedTuple):
    model: str
    vectors: tuple[tuple[float, ...], ...]
    usage: Usage


@runtime_checkable
class LLMAdapter(Protocol):
    """Chat and embeddings. Same rules as Adapter: seconds, BackendError only, concurrency-safe.

    `generate_stream` yields TextDelta events as the backend sends them and one StreamEnd last.
    Closing the iterator early (the caller went away) must cancel the upstream request. A failure
    after the first delta raises BackendError with `usage` set to what was seen so far.
    """

    async def generate(self, call: GenerateCall, timeout: float | None) -> GenerateResult: ...

    def generate_stream(self, call: GenerateCall, timeout: float | None) -> AsyncGenerator[StreamEvent, None]:
        """Deltas, then one StreamEnd. The caller closes it (aclose) when it stops early: that
        closes the upstream request."""
        ...

    async def embed(self, call: EmbedCall, timeout: float | None) -> EmbedResult: ...
