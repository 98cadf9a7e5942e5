"""OpenAI-compatible adapter: /v1/chat/completions (unary and SSE streaming) and /v1/embeddings.

Covers OpenAI, vLLM, llama.cpp server, TGI and most hosted APIs. Client, key handling, error
mapping and readiness are shared with the other HTTP LLM adapters (http_llm.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any, ClassVar

import grpc
import orjson

from .base import BackendError
from .http_client import TransportError, sse_batches
from .http_llm import HTTPLLMAdapter, seen_usage
from .llm import (
    EmbedCall,
    EmbedResult,
    GenerateCall,
    GenerateResult,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCall,
    Usage,
)


class OpenAIAdapter(HTTPLLMAdapter):
    kind: ClassVar[str] = "openai"

    async def generate(self, call: GenerateCall, timeout: float | None) -> GenerateResult:
        doc = await self._post(
            "/chat/completions", _chat_body(call, stream=False), timeout, call.model, call.headers
        )
        try:
            choice = doc["choices"][0]
            message = choice.get("message") or {}
            return GenerateResult(
                model=str(doc.get("model") or call.model),
                text=str(message.get("content") or ""),
                finish_reason=_finish(choice.get("finish_reason")),
                usage=_usage(doc.get("usage")),
                tool_calls=tuple(_tool_call(t) for t in message.get("tool_calls") or ()),
            )
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
            raise BackendError(
                grpc.StatusCode.INTERNAL,
                f"{self._where(call.model)}: malformed response: {err}",
                retryable=False,
            ) from None

    async def generate_stream(
        self, call: GenerateCall, timeout: float | None
    ) -> AsyncGenerator[StreamEvent, None]:
        """Chunks that arrive together are one TextDelta (their texts joined): a burst of
        tokens costs the caller one message, and nothing waits to fill a batch."""
        body = _chat_body(call, stream=True)
        state = _Stream(call.model)
        try:
            async with self._client.stream(
                "POST", "/chat/completions", json_body=body, timeout=timeout, headers=call.headers
            ) as resp:
                if resp.status != 200:
                    text = (await resp.read()).decode(errors="replace")
                    raise self._http_error(resp.status, text, resp.headers, call.model)
                async for batch in sse_batches(resp):
                    texts: list[str] = []
                    done = False
                    for data in batch:
                        if data == b"[DONE]":
                            done = True
                            break
                        chunk = orjson.loads(data)
                        if "error" in chunk:
                            if texts:
                                yield state.delta(texts)
                            raise BackendError(
                                grpc.StatusCode.UNAVAILABLE,
                                f"{self._where(call.model)}: stream error: {chunk['error']}",
                                retryable=not state.deltas,
                                usage=state.usage,
                            )
                        state.read(chunk, texts)
                    if texts:
                        yield state.delta(texts)
                    if done:
                        yield StreamEnd(state.model, state.finish, state.usage, _tools(state.tools))
                        return
        except TransportError as err:
            raise self._transport_error(err, call.model, seen_usage(state.usage, state.deltas)) from None
        except (ValueError, TypeError, AttributeError) as err:
            raise BackendError(
                grpc.StatusCode.UNAVAILABLE,
                f"{self._where(call.model)}: malformed stream: {err}",
                retryable=not state.deltas,
                usage=seen_usage(state.usage, state.deltas),
            ) from None
        # The connection ended without [DONE]: the stream broke.
        raise BackendError(
            grpc.StatusCode.UNAVAILABLE,
            f"{self._where(call.model)}: stream ended before [DONE]",
            retryable=not state.deltas,
            usage=seen_usage(state.usage, state.deltas),
        )

    async def embed(self, call: EmbedCall, timeout: float | None) -> EmbedResult:
        body: dict[str, Any] = {"model": call.model, "input": list(call.inputs), "encoding_format": "float"}
        if call.dimensions:
            body["dimensions"] = call.dimensions
        doc = await self._post("/embeddings", body, timeout, call.model, call.headers)
        try:
            rows = sorted(doc["data"], key=lambda r: r.get("index", 0))
            vectors = tuple(tuple(float(v) for v in r["embedding"]) for r in rows)
            return EmbedResult(str(doc.get("model") or call.model), vectors, _usage(doc.get("usage")))
        except (ValueError, KeyError, TypeError) as err:
            raise BackendError(
                grpc.StatusCode.INTERNAL,
                f"{self._where(call.model)}: malformed response: {err}",
                retryable=False,
            ) from None


class VLLMAdapter(OpenAIAdapter):
    """vLLM serves the OpenAI API (its metrics differ: the load probe reads vllm:* names)."""

    kind: ClassVar[str] = "vllm"


class _Stream:
    """What a chat stream has said so far."""

    __slots__ = ("deltas", "finish", "model", "tools", "usage")

    def __init__(self, model: str) -> None:
        self.model, self.finish, self.usage = model, "", Usage()
        self.tools: dict[int, list[str]] = {}
        self.deltas = 0  # provider deltas (~ tokens) passed on

    def read(self, chunk: dict[str, Any], texts: list[str]) -> None:
        """One chunk: its text appended to `texts`, the rest kept."""
        self.model = str(chunk.get("model") or self.model)
        if chunk.get("usage"):
            self.usage = _usage(chunk["usage"])
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                texts.append(str(content))
            for t in delta.get("tool_calls") or ():
                parts = self.tools.setdefault(int(t.get("index", 0)), ["", "", ""])
                fn = t.get("function") or {}
                parts[0] = t.get("id") or parts[0]
                parts[1] = fn.get("name") or parts[1]
                parts[2] += fn.get("arguments") or ""
            if choice.get("finish_reason"):
                self.finish = _finish(choice["finish_reason"])

    def delta(self, texts: list[str]) -> TextDelta:
        self.deltas += len(texts)
        return TextDelta("".join(texts), len(texts))


def _chat_body(call: GenerateCall, *, stream: bool) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    for m in call.messages:
        msg: dict[str, Any] = {"role": m.role, "content": m.text}
        if m.tool_call_id:
            msg["tool_call_id"] = m.tool_call_id
        messages.append(msg)
    body: dict[str, Any] = {"model": call.model, "messages": messages, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    for key, value in (
        ("temperature", call.temperature),
        ("top_p", call.top_p),
        ("max_tokens", call.max_tokens),
        ("seed", call.seed),
    ):
        if value is not None:
            body[key] = value
    if call.stop:
        body["stop"] = list(call.stop)
    if call.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": json.loads(t.parameters_json or "{}"),
                },
            }
            for t in call.tools
        ]
    return body


def _usage(doc: Any) -> Usage:
    if not isinstance(doc, dict):
        return Usage()
    cached = (doc.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return Usage(int(doc.get("prompt_tokens") or 0), int(doc.get("completion_tokens") or 0), int(cached))


def _finish(reason: Any) -> str:
    return {
        "stop": "stop",
        "length": "length",
        "tool_calls": "tool_calls",
        "function_call": "tool_calls",
        "content_filter": "content_filter",
    }.get(str(reason or ""), "")


def _tool_call(t: Any) -> ToolCall:
    fn = t.get("function") or {}
    return ToolCall(str(t.get("id") or ""), str(fn.get("name") or ""), str(fn.get("arguments") or ""))


def _tools(parts: dict[int, list[str]]) -> tuple[ToolCall, ...]:
    return tuple(ToolCall(*parts[i]) for i in sorted(parts))
