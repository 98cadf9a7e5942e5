"""Anthropic Messages API adapter: POST /v1/messages, unary and SSE streaming.

Differences from the OpenAI shape that matter here: `system` is a top-level field, `max_tokens`
is required (the gateway sends `default_max_tokens` from the endpoint options, else 1024, when
the caller sets none), tool results are `tool_result` blocks in a user message, and usage comes
from `message_start` (input and cache tokens) and `message_delta` (output tokens). The key goes in
`x-api-key` with an `anthropic-version` header. Anthropic has no embeddings API: Embed is
UNIMPLEMENTED here.
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

API_VERSION = "2023-06-01"
_STOP = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


class AnthropicAdapter(HTTPLLMAdapter):
    kind: ClassVar[str] = "anthropic"

    def _auth_headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key, "anthropic-version": API_VERSION}

    def _body(self, call: GenerateCall, *, stream: bool) -> dict[str, Any]:
        system = "\n\n".join(m.text for m in call.messages if m.role == "system")
        messages: list[dict[str, Any]] = []
        for m in call.messages:
            if m.role == "system":
                continue
            if m.role == "tool":
                block = {"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.text}
                messages.append({"role": "user", "content": [block]})
            else:
                messages.append({"role": m.role, "content": m.text})
        default_max = int(self.options.get("default_max_tokens", "1024"))
        body: dict[str, Any] = {
            "model": call.model,
            "messages": messages,
            "max_tokens": call.max_tokens or default_max,
            "stream": stream,
        }
        if system:
            body["system"] = system
        if call.temperature is not None:
            body["temperature"] = min(call.temperature, 1.0)  # Anthropic's range is [0, 1]
        if call.top_p is not None:
            body["top_p"] = call.top_p
        if call.stop:
            body["stop_sequences"] = list(call.stop)
        if call.tools:
            body["tools"] = [
                {
                    "name": t.name,
                    "description": t.description,
                    "input_schema": json.loads(t.parameters_json or "{}") or {"type": "object"},
                }
                for t in call.tools
            ]
        return body

    async def generate(self, call: GenerateCall, timeout: float | None) -> GenerateResult:
        doc = await self._post("/messages", self._body(call, stream=False), timeout, call.model, call.headers)
        try:
            blocks = doc.get("content") or []
            text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
            tools = tuple(
                ToolCall(str(b.get("id", "")), str(b.get("name", "")), json.dumps(b.get("input", {})))
                for b in blocks
                if b.get("type") == "tool_use"
            )
            return GenerateResult(
                str(doc.get("model") or call.model),
                text,
                _STOP.get(str(doc.get("stop_reason")), ""),
                _usage(doc.get("usage")),
                tools,
            )
        except (AttributeError, TypeError, ValueError) as err:
            raise BackendError(
                grpc.StatusCode.INTERNAL,
                f"{self._where(call.model)}: malformed response: {err}",
                retryable=False,
            ) from None

    async def generate_stream(
        self, call: GenerateCall, timeout: float | None
    ) -> AsyncGenerator[StreamEvent, None]:
        usage, finish, model = Usage(), "", call.model
        tools: dict[int, list[str]] = {}
        deltas = 0
        try:
            async with self._client.stream(
                "POST",
                "/messages",
                json_body=self._body(call, stream=True),
                timeout=timeout,
                headers=call.headers,
            ) as resp:
                if resp.status != 200:
                    text = (await resp.read()).decode(errors="replace")
                    raise self._http_error(resp.status, text, resp.headers, call.model)
                async for batch in sse_batches(resp):
                    texts: list[str] = []  # text deltas that arrived together: one TextDelta
                    for data in batch:
                        event = orjson.loads(data)
                        kind = event.get("type")
                        if kind == "content_block_delta":
                            delta = event.get("delta") or {}
                            if delta.get("type") == "text_delta" and delta.get("text"):
                                texts.append(str(delta["text"]))
                            elif delta.get("type") == "input_json_delta":
                                tools.setdefault(int(event.get("index", 0)), ["", "", ""])[2] += str(
                                    delta.get("partial_json", "")
                                )
                            continue
                        if texts:
                            deltas += len(texts)
                            yield TextDelta("".join(texts), len(texts))
                            texts = []
                        if kind == "message_start":
                            message = event.get("message") or {}
                            model = str(message.get("model") or model)
                            usage = _usage(message.get("usage"))
                        elif kind == "content_block_start":
                            _start_tool(tools, event)
                        elif kind == "message_delta":
                            reason = (event.get("delta") or {}).get("stop_reason")
                            finish = _STOP.get(str(reason), finish)
                            out = (event.get("usage") or {}).get("output_tokens")
                            if out is not None:
                                usage = usage._replace(completion_tokens=int(out))
                        elif kind == "message_stop":
                            yield StreamEnd(
                                model, finish, usage, tuple(ToolCall(*tools[i]) for i in sorted(tools))
                            )
                            return
                        elif kind == "error":
                            err = event.get("error") or {}
                            what = f"stream error {err.get('type')}: {err.get('message')}"
                            raise self._broken(call, what, usage, deltas)
                    if texts:
                        deltas += len(texts)
                        yield TextDelta("".join(texts), len(texts))
        except TransportError as err:
            raise self._transport_error(err, call.model, seen_usage(usage, deltas)) from None
        except (ValueError, TypeError, AttributeError) as err:
            raise self._broken(call, f"malformed stream: {err}", usage, deltas) from None
        raise self._broken(call, "stream ended before message_stop", usage, deltas)

    def _broken(self, call: GenerateCall, what: str, usage: Usage, deltas: int) -> BackendError:
        """A stream that broke: retryable only before its first delta; usage is what it used."""
        return BackendError(
            grpc.StatusCode.UNAVAILABLE,
            f"{self._where(call.model)}: {what}",
            retryable=deltas == 0,
            usage=seen_usage(usage, deltas),
        )

    async def embed(self, call: EmbedCall, timeout: float | None) -> EmbedResult:
        raise BackendError(
            grpc.StatusCode.UNIMPLEMENTED,
            f"{self._where(call.model)}: Anthropic has no embeddings API",
            retryable=False,
        )


def _usage(doc: Any) -> Usage:
    if not isinstance(doc, dict):
        return Usage()
    return Usage(
        int(doc.get("input_tokens") or 0),
        int(doc.get("output_tokens") or 0),
        int(doc.get("cache_read_input_tokens") or 0),
    )


def _start_tool(tools: dict[int, list[str]], event: dict[str, Any]) -> None:
    """content_block_start: a tool_use block opens (id, name; its JSON input follows in deltas)."""
    block = event.get("content_block") or {}
    if block.get("type") == "tool_use":
        tools[int(event.get("index", 0))] = [str(block.get("id", "")), str(block.get("name", "")), ""]
