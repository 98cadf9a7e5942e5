"""A stand-in for Anthropic's Messages API (POST /v1/messages), per its documentation.

Unary answers are `{"type": "message", "content": [{"type": "text", ...}], "stop_reason",
"usage": {"input_tokens", "output_tokens", "cache_read_input_tokens"}}`; streams are SSE with
`event:` lines and the documented sequence message_start, content_block_start, ping,
content_block_delta (text_delta)..., content_block_stop, message_delta (stop_reason, output
tokens), message_stop. Errors are `{"type": "error", "error": {"type", "message"}}`; the key is
checked in `x-api-key`, and `anthropic-version` is required. `max_tokens` is required.

Same knobs as OpenAIStandIn (it reuses its server, failure injection and recording).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from tests.openai_standin import OpenAIStandIn

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}


class AnthropicStandIn(OpenAIStandIn):
    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_get("/v1/models", self._models)

    def _error(
        self,
        status: int,
        message: str,
        kind: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        body = {"type": "error", "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}}
        return web.json_response(body, status=status, headers=headers)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        rejected = self._check(request)
        if rejected is not None:
            return rejected
        if not request.headers.get("anthropic-version"):
            return self._error(400, "anthropic-version: header is required", "")
        body: dict[str, Any] = await request.json()
        self.requests.append(body)
        if str(body.get("model", "")) not in self.model_ids:  # Anthropic: 404 not_found_error
            return self._error(404, f"model: {body.get('model', '')}", "")
        if "max_tokens" not in body:
            return self._error(400, "max_tokens: Field required", "")
        last = next(
            (
                m["content"]
                for m in reversed(body.get("messages", []))
                if m.get("role") == "user" and isinstance(m.get("content"), str)
            ),
            "",
        )
        words = ["echo:", *str(last).split()]
        stop = "end_turn"
        if len(words) > int(body["max_tokens"]):
            words, stop = words[: int(body["max_tokens"])], "max_tokens"
        prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        prompt += len(str(body.get("system", "")).split())
        msg_id = f"msg_{len(self.requests):04d}"
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": body.get("model"),
                    "content": [{"type": "text", "text": " ".join(words)}],
                    "stop_reason": stop,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": prompt,
                        "output_tokens": len(words),
                        "cache_read_input_tokens": 2,
                    },
                }
            )
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)

        async def send(event: str, data: dict[str, Any]) -> None:
            await resp.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())

        try:
            await send(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": msg_id,
                        "type": "message",
                        "role": "assistant",
                        "model": body.get("model"),
                        "content": [],
                        "stop_reason": None,
                        "usage": {"input_tokens": prompt, "output_tokens": 1, "cache_read_input_tokens": 2},
                    },
                },
            )
            await send(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            )
            await send("ping", {"type": "ping"})
            await asyncio.sleep(self.first_token_delay_s)
            for i, word in enumerate(words):
                if self.break_after is not None and i >= self.break_after:
                    assert request.transport is not None
                    request.transport.close()
                    return resp
                await send(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": word if i == 0 else " " + word},
                    },
                )
                if self.token_interval_s:
                    await asyncio.sleep(self.token_interval_s)
            await send("content_block_stop", {"type": "content_block_stop", "index": 0})
            await send(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": len(words)},
                },
            )
            await send("message_stop", {"type": "message_stop"})
            self.completed_streams += 1
        except (ConnectionResetError, asyncio.CancelledError):
            self.cancelled += 1
        return resp
