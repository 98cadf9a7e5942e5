"""Shared plumbing of the HTTP LLM adapters (OpenAI-compatible, Anthropic).

One HTTPClient per endpoint (http_client.py: aiohttp, keep-alive connection pool). The API key comes
from the environment variable or file the endpoint names (`api_key_env`, `api_key_file`), never
from the config itself, and never appears in a message: the key is registered with adapters.scrub,
which masks it (and any piece of 8+ characters) in every BackendError and log line. Both providers put the error text at `error.message` in the body.

Provider errors -> gRPC codes: 400 INVALID_ARGUMENT, 401 FAILED_PRECONDITION (the gateway's key
is wrong: not the caller's fault), 403 PERMISSION_DENIED, 404 NOT_FOUND, 429 RESOURCE_EXHAUSTED
with Retry-After, 5xx (incl. Anthropic's 529 overloaded) / connection errors / timeouts
UNAVAILABLE (retryable).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import grpc
import orjson

from .base import BackendError, InferCall, InferResult, ModelMetadata
from .http_client import HTTPClient, TransportError
from .llm import Usage
from .scrub import register_secret
from .tls import client_tls

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
    """The endpoint's key, registered with the scrubber: it is masked wherever it shows up."""
    key = None
    if options.get("api_key_file"):
        key = Path(options["api_key_file"]).read_text().strip() or None
    elif options.get("api_key_env"):
        key = os.environ.get(options["api_key_env"]) or None
    register_secret(key)
    return key


class HTTPLLMAdapter:
    """Base of the HTTP LLM adapters: client, errors, readiness; subclasses speak the API."""

    kind: ClassVar[str] = "http"

    def _auth_headers(self, key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"}

    def __init__(
        self,
        endpoint_id: str,
        address: str,
        *,
        max_message_bytes: int,
        options: Mapping[str, str] | None = None,
    ) -> None:
        options = options or {}
        self.options = options
        self.endpoint_id = endpoint_id
        tls = client_tls(options)
        self.base_url = options.get("base_url") or f"{'https' if tls else 'http'}://{address}/v1"
        headers = {"user-agent": "meshgate"}
        key = read_api_key(options)
        if key:
            headers.update(self._auth_headers(key))
        self._client = HTTPClient(self.base_url, tls=tls, headers=headers)
        self._models: set[str] = set()

    # -- errors ---------------------------------------------------------------------------------
    def _where(self, model: str) -> str:
        return f"backend {self.endpoint_id} ({self.kind} at {self.base_url}), model '{model}'"

    def _http_error(self, status: int, body: str, headers: Mapping[str, str], model: str) -> BackendError:
        try:
            detail = orjson.loads(body).get("error", {})
            text = detail.get("message") if isinstance(detail, dict) else str(detail)
        except (ValueError, AttributeError):
            text = body[:200]
        text = str(text or f"HTTP {status}")  # BackendError masks secrets by value
        code = _STATUS.get(status, grpc.StatusCode.UNAVAILABLE if status >= 500 else grpc.StatusCode.INTERNAL)
        retry_after = _retry_after(headers.get("retry-after"))
        return BackendError(
            code,
            f"{self._where(model)}: HTTP {status}: {text}",
            retryable=code == grpc.StatusCode.UNAVAILABLE,
            retry_after=retry_after,
        )

    def _transport_error(self, err: TransportError, model: str, usage: Usage | None = None) -> BackendError:
        return transport_error(self._where(model), err, usage)

    async def _post(
        self,
        path: str,
        body: dict[str, Any],
        timeout: float | None,
        model: str,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> Any:
        """POST JSON; the decoded answer, or BackendError for transport and HTTP errors."""
        try:
            resp = await self._client.request("POST", path, json_body=body, timeout=timeout, headers=headers)
        except TransportError as err:
            raise self._transport_error(err, model) from None
        if resp.status != 200:
            raise self._http_error(resp.status, resp.text, resp.headers, model)
        try:
            return resp.json()
        except ValueError as err:
            raise BackendError(
                grpc.StatusCode.INTERNAL,
                f"{self._where(model)}: response is not JSON: {err}",
                retryable=False,
            ) from None

    # -- Adapter --------------------------------------------------------------------------------
    async def server_live(self, timeout: float) -> bool:
        """GET /models: answers on OpenAI, vLLM, llama.cpp and TGI without spending tokens."""
        try:
            resp = await self._client.request("GET", "/models", timeout=timeout)
        except TransportError as err:
            raise self._transport_error(err, "") from None
        if resp.status != 200:
            raise self._http_error(resp.status, resp.text, resp.headers, "")
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


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from LLM providers; the caller falls back to its own backoff


def seen_usage(usage: Usage, deltas: int) -> Usage:
    """Usage of a broken stream: the provider's own count if it sent one (it comes last), else
    the deltas seen, about one token each (an estimate, for accounting what the caller received)."""
    return usage if usage.completion_tokens else usage._replace(completion_tokens=deltas)


def transport_error(where: str, err: TransportError, usage: Usage | None = None) -> BackendError:
    """No HTTP answer: a timeout is DEADLINE_EXCEEDED, the rest UNAVAILABLE (retryable).

    Shared by every HTTP adapter (LLM APIs, TF Serving)."""
    code = grpc.StatusCode.DEADLINE_EXCEEDED if err.timeout else grpc.StatusCode.UNAVAILABLE
    return BackendError(
        code,
        f"{where}: {err}"[:500],
        retryable=code == grpc.StatusCode.UNAVAILABLE,
        usage=usage,
    )
