"""OpenAI-compatible adapter: /v1/chat/completions (unary and SSE streaming) and /v1/embeddings.

Covers OpenAI, vLLM, llama.cpp server, TGI and most hosted APIs. One httpx.AsyncClient per
endpoint (connection pooling; HTTP/2 for https). The API key comes from the environment
variable or file the endpoint names (`api_key_env`, `api_key_file`), never from the config
itself, and never appears in a message: provider error texts are scrubbed of key-like strings.

Provider errors -> gRPC codes: 400 INVALID_ARGUMENT, 401 FAILED_PRECONDITION (the gateway's key
is wrong: not the caller's fault), 403 PERMISSION_DENIED, 404 NOT_FOUND, 429 RESOURCE_EXHAUSTED
with Retry-After, 5xx / connection errors / timeouts UNAVAILABLE (retryable).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import grpc
import httpx

from .base import BackendError, InferCall, InferResult, ModelMetadata
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

_KEYLIKE = re.compile(r"\b(sk|key|token)[-_][A-Za-z0-9_\-*]{6,}", re.IGNORECASE)
_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.FAILED_PRECONDITION,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def read_api_key(options: Mapping[str, str]) -> str | None:
    if options.get("api_key_file"):
        return Path(options["api_key_file"]).read_text().strip() or None
    if options.get("api_key_env"):
        return os.environ.get(options["api_key_env"]) or None
    return None


class OpenAIAdapter:
    kind: ClassVar[str] = "openai"

    def __init__(
        self,
        endpoint_id: str,
        address: str,
        *,
        max_message_bytes: int,
        options: Mapping[str, str] | None = None,
    ) -> None:
        options = options or {}
        self.endpoint_id = endpoint_id
        self.base_url = options.get("base_url") or f"http://{address}/v1"
        headers = {"user-agent": "meshgate"}
        key = read_api_key(options)
        if key:
            headers["authorization"] = f"Bearer {key}"
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            http2=self.base_url.startswith("https"),
            timeout=httpx.Timeout(None, connect=5.0),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
        )
        self._models: set[str] = set()

    # -- errors ---------------------------------------------------------------------------------
    def _where(self, model: str) -> str:
        return f"backend {self.endpoint_id} ({self.kind} at {self.base_url}), model '{model}'"

    def _http_error(self, status: int, body: str, headers: Mapping[str, str], model: str) -> BackendError:
        try:
            detail = json.loads(body).get("error", {})
            text = detail.get("message") if isinstance(detail, dict) else str(detail)
        except (ValueError, AttributeError):
            text = body[:200]
        text = _KEYLIKE.sub(r"\1-***", str(text or f"HTTP {status}"))
        code = _STATUS.get(status, grpc.StatusCode.UNAVAILABLE if status >= 500 else grpc.StatusCode.INTERNAL)
        retry_after = _retry_after(headers.get("retry-after"))
        return BackendError(
            code,
            f"{self._where(model)}: HTTP {status}: {text}",
            retryable=code == grpc.StatusCode.UNAVAILABLE,
            retry_after=retry_after,
        )

    def _transport_error(self, err: httpx.HTTPError, model: str, usage: Usage | None = None) -> BackendError:
        if isinstance(err, httpx.TimeoutException):
            code = grpc.StatusCode.DEADLINE_EXCEEDED
        else:
            code = grpc.StatusCode.UNAVAILABLE
        return BackendError(
            code,
            f"{self._where(model)}: {type(err).__name__}: {err}"[:500],
            retryable=code == grpc.StatusCode.UNAVAILABLE,
            usage=usage,
        )

    # -- LLMAdapter -----------------------------------------------------------------------------
    async def _post(self, path: str, body: dict[str, Any], timeout: float | None, model: str) -> Any:
        """POST JSON; the decoded answer, or BackendError for transport and HTTP errors."""
        try:
            resp = await self._client.post(path, json=body, timeout=timeout)
        except httpx.HTTPError as err:
            raise self._transport_error(err, model) from None
        if resp.status_code != 200:
            raise self._http_error(resp.status_code, resp.text, resp.headers, model)
        try:
            return resp.json()
        except ValueError as err:
            raise BackendError(
                grpc.StatusCode.INTERNAL,
                f"{self._where(model)}: response is not JSON: {err}",
                retryable=False,
            ) from None

    async def generate(self, call: GenerateCall, timeout: float | None) -> GenerateResult:
        doc = await self._post("/chat/completions", _chat_body(call, stream=False), timeout, call.model)
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

    async def generate_stream(self, call: GenerateCall, timeout: float | None) -> AsyncIterator[StreamEvent]:
        body = _chat_body(call, stream=True)
        usage, finish, model = Usage(), "", call.model
        tools: dict[int, list[str]] = {}
        sent_any, deltas = False, 0
        try:
            async with self._client.stream("POST", "/chat/completions", json=body, timeout=timeout) as resp:
                if resp.status_code != 200:
                    text = (await resp.aread()).decode(errors="replace")
                    raise self._http_error(resp.status_code, text, resp.headers, call.model)
                async for data in _sse_data(resp):
                    if data == "[DONE]":
                        yield StreamEnd(model, finish, usage, _tools(tools))
                        return
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise BackendError(
                            grpc.StatusCode.UNAVAILABLE,
                            f"{self._where(call.model)}: stream error: {chunk['error']}",
                            retryable=not sent_any,
                            usage=usage,
                        )
                    model = str(chunk.get("model") or model)
                    if chunk.get("usage"):
                        usage = _usage(chunk["usage"])
                    for choice in chunk.get("choices") or ():
                        delta = choice.get("delta") or {}
                        if delta.get("content"):
                            sent_any, deltas = True, deltas + 1
                            yield TextDelta(str(delta["content"]))
                        for t in delta.get("tool_calls") or ():
                            parts = tools.setdefault(int(t.get("index", 0)), ["", "", ""])
                            fn = t.get("function") or {}
                            parts[0] = t.get("id") or parts[0]
                            parts[1] = fn.get("name") or parts[1]
                            parts[2] += fn.get("arguments") or ""
                        if choice.get("finish_reason"):
                            finish = _finish(choice["finish_reason"])
        except httpx.HTTPError as err:
            raise self._transport_error(err, call.model, _seen(usage, deltas)) from None
        except (ValueError, TypeError, AttributeError) as err:
            raise BackendError(
                grpc.StatusCode.UNAVAILABLE,
                f"{self._where(call.model)}: malformed stream: {err}",
                retryable=not sent_any,
                usage=_seen(usage, deltas),
            ) from None
        # The connection ended without [DONE]: the stream broke.
        raise BackendError(
            grpc.StatusCode.UNAVAILABLE,
            f"{self._where(call.model)}: stream ended before [DONE]",
            retryable=not sent_any,
            usage=_seen(usage, deltas),
        )

    async def embed(self, call: EmbedCall, timeout: float | None) -> EmbedResult:
        body: dict[str, Any] = {"model": call.model, "input": list(call.inputs), "encoding_format": "float"}
        if call.dimensions:
            body["dimensions"] = call.dimensions
        doc = await self._post("/embeddings", body, timeout, call.model)
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

    # -- Adapter --------------------------------------------------------------------------------
    async def server_live(self, timeout: float) -> bool:
        """GET /models: answers on OpenAI, vLLM, llama.cpp and TGI without spending tokens."""
        try:
            resp = await self._client.get("/models", timeout=timeout)
        except httpx.HTTPError as err:
            raise self._transport_error(err, "") from None
        if resp.status_code != 200:
            raise self._http_error(resp.status_code, resp.text, resp.headers, "")
        try:
            self._models = {str(m.get("id")) for m in resp.json().get("data", [])}
        except (ValueError, AttributeError):
            self._models = set()
        return True

    async def model_ready(self, model: str, version: str, timeout: float) -> bool:
        # Providers list only some models (aliases, fine-tunes): an empty or partial list is no proof.
        return not self._models or model in self._models or any(m.endswith(model) for m in self._models)

    async def infer(self, call: InferCall, timeout: float | None) -> InferResult:
        raise BackendError(
            grpc.StatusCode.UNIMPLEMENTED,
            f"{self._where(call.model)}: serves Generate and Embed, not Infer",
            retryable=False,
        )

    async def model_metadata(self, model: str, version: str, timeout: float | None) -> ModelMetadata:
        raise BackendError(
            grpc.StatusCode.UNIMPLEMENTED, f"{self._where(model)}: no tensor metadata", retryable=False
        )

    async def aclose(self) -> None:
        await self._client.aclose()


class VLLMAdapter(OpenAIAdapter):
    """vLLM serves the OpenAI API (its metrics differ: the load probe reads vllm:* names)."""

    kind: ClassVar[str] = "vllm"


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


async def _sse_data(resp: httpx.Response) -> AsyncIterator[str]:
    """The `data:` payloads of a server-sent event stream (multi-line data joined with newlines)."""
    data: list[str] = []
    async for line in resp.aiter_lines():
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
    if data:
        yield "\n".join(data)


def _seen(usage: Usage, deltas: int) -> Usage:
    """Usage of a broken stream: the provider's own count if it sent one (it comes last), else
    the deltas seen, about one token each (an estimate, for accounting what the caller received)."""
    return usage if usage.completion_tokens else usage._replace(completion_tokens=deltas)


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


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from LLM providers; the caller falls back to its own backoff
