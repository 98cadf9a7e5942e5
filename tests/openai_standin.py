"""A stand-in for an OpenAI-compatible HTTP API (no paid API is reachable from tests).

Follows the documented wire format: POST /v1/chat/completions (JSON, or SSE with `data: {...}`
chunks, a final usage chunk with empty `choices` when stream_options.include_usage is set, then
`data: [DONE]`), POST /v1/embeddings, GET /v1/models, error bodies
`{"error": {"message", "type", "param", "code"}}`, 401 for a wrong key (its message echoes part of
the key, as OpenAI's does), 429 with Retry-After.

The model echoes: the answer is "echo: " + the last user message, one word per token.
Knobs for tests: `token_interval_s`, `first_token_delay_s`, `fail_next(status, n, retry_after)`,
`break_after` (drop the connection after N deltas), `api_key`. Injected failures apply to POSTs
(model calls), not to GET /v1/models. It records request bodies and how
many streams the client abandoned (`cancelled`).

Runs in its own thread with its own event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
import time
from typing import Any

from aiohttp import web

from tests.standin_server import ThreadedServer


class OpenAIStandIn(ThreadedServer):
    def __init__(self, api_key: str | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self.api_key = api_key
        self.model_ids = ["echo", "embed-small"]  # what GET /v1/models lists
        self.token_interval_s = 0.0
        self.first_token_delay_s = 0.0
        self.break_after: int | None = None
        # 401s echo the key given in odd shapes too (after Bearer, without its first characters,
        # cut in two), as some OpenAI-compatible servers and proxies do.
        self.echo_key_oddly = False
        self.requests: list[dict[str, Any]] = []
        self.model_list_calls = 0  # GET /v1/models: what the gateway's readiness probe costs
        self.cancelled = 0
        self.completed_streams = 0
        self._fail: tuple[int, int, str | None] = (0, 0, None)
        self.headers_seen: list[dict[str, str]] = []  # each model call's request headers
        self.peer_certs: list[dict[str, Any] | None] = []  # each model call's client certificate (HTTPS)
        super().__init__("openai-standin", ssl_context)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def fail_next(self, status: int, n: int = 1, retry_after: str | None = None) -> None:
        self._fail = (status, n, retry_after)

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)

    # -- errors ----------------------------------------------------------------------------------
    def _error(
        self,
        status: int,
        message: str,
        kind: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        return web.json_response(body, status=status, headers=headers)

    def _check(self, request: web.Request) -> web.Response | None:
        if request.method == "POST":
            self.headers_seen.append(dict(request.headers))
            ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
            self.peer_certs.append(ssl_object.getpeercert() if ssl_object is not None else None)
        status, left, retry_after = self._fail
        # Injected failures hit model calls only: the gateway's readiness probe (GET /models) must
        # not consume them.
        if left > 0 and request.method == "POST":
            self._fail = (status, left - 1, retry_after)
            if status == 429:
                return self._error(
                    429,
                    "Rate limit reached for requests",
                    "requests",
                    "rate_limit_exceeded",
                    {"retry-after": retry_after or "1"},
                )
            if status == 404:
                return self._error(
                    404,
                    "The model does not exist or you do not have access to it.",
                    "invalid_request_error",
                    "model_not_found",
                )
            if status == 403:
                return self._error(403, "Project does not have access to this model", "invalid_request_error")
            return self._error(
                status, "The server had an error while processing your request.", "server_error"
            )
        if self.api_key is not None:
            auth = request.headers.get("Authorization", "")
            given = request.headers.get("x-api-key") or auth.removeprefix("Bearer ")
            if given != self.api_key:
                shown = f"{given[:6]}****{given[-4:]}" if len(given) > 10 else "****"
                odd = ""
                if self.echo_key_oddly:
                    half = len(given) // 2
                    odd = f" Header was: Bearer {given}; key body {given[3:]}; parts {given[:half]} / {given[half:]}."
                return self._error(
                    401,
                    f"Incorrect API key provided: {given}. Masked: {shown}.{odd}",
                    "invalid_request_error",
                    "invalid_api_key",
                )
        return None

    def _unknown_model(self, body: dict[str, Any]) -> web.Response | None:
        """A model the provider does not serve: 404 model_not_found, as OpenAI answers."""
        model = str(body.get("model", ""))
        if model in self.model_ids:
            return None
        return self._error(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            "invalid_request_error",
            "model_not_found",
        )

    # -- endpoints -------------------------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.Response:
        self.model_list_calls += 1
        rejected = self._check(request)
        if rejected is not None:
            return rejected
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": m, "object": "model"} for m in self.model_ids],
            }
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        rejected = self._check(request)
        if rejected is not None:
            return rejected
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return self._error(
                400, "We could not parse the JSON body of your request.", "invalid_request_error"
            )
        self.requests.append(body)
        unknown = self._unknown_model(body)
        if unknown is not None:
            return unknown
        if not body.get("messages"):
            return self._error(400, "'messages' is a required property", "invalid_request_error")
        last = next((m.get("content", "") for m in reversed(body["messages"]) if m.get("role") == "user"), "")
        words = ["echo:", *str(last).split()]
        limit = body.get("max_tokens")
        finish = "stop"
        if limit is not None and len(words) > limit:
            words, finish = words[:limit], "length"
        prompt = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": len(words),
            "total_tokens": prompt + len(words),
            "prompt_tokens_details": {"cached_tokens": 0},
        }
        created, cid = int(time.time()), f"chatcmpl-{len(self.requests)}"
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": body.get("model"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": " ".join(words)},
                            "finish_reason": finish,
                        }
                    ],
                    "usage": usage,
                }
            )
        resp = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await resp.prepare(request)

        def chunk(delta: dict[str, Any], reason: str | None = None) -> bytes:
            doc = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body.get("model"),
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
            }
            return f"data: {json.dumps(doc)}\n\n".encode()

        try:
            await resp.write(chunk({"role": "assistant", "content": ""}))
            await asyncio.sleep(self.first_token_delay_s)
            for i, word in enumerate(words):
                if self.break_after is not None and i >= self.break_after:
                    assert request.transport is not None
                    request.transport.close()  # the connection drops mid-stream
                    return resp
                await resp.write(chunk({"content": word if i == 0 else " " + word}))
                if self.token_interval_s:
                    await asyncio.sleep(self.token_interval_s)
            await resp.write(chunk({}, finish))
            if (body.get("stream_options") or {}).get("include_usage"):
                doc = {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": body.get("model"),
                    "choices": [],
                    "usage": usage,
                }
                await resp.write(f"data: {json.dumps(doc)}\n\n".encode())
            await resp.write(b"data: [DONE]\n\n")
            self.completed_streams += 1
        except (ConnectionResetError, asyncio.CancelledError):
            self.cancelled += 1  # the client went away: stop generating
        return resp

    async def _embeddings(self, request: web.Request) -> web.Response:
        rejected = self._check(request)
        if rejected is not None:
            return rejected
        body = await request.json()
        self.requests.append(body)
        unknown = self._unknown_model(body)
        if unknown is not None:
            return unknown
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        dims = int(body.get("dimensions") or 4)
        data = []
        for i, text in enumerate(inputs or []):
            digest = hashlib.sha256(str(text).encode()).digest()
            data.append({"object": "embedding", "index": i, "embedding": [b / 255 for b in digest[:dims]]})
        tokens = sum(len(str(t).split()) for t in inputs or [])
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body.get("model"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )
