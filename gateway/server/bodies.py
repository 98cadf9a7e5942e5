"""Request bodies that do not parse: the caller's mistake, answered INVALID_ARGUMENT.

grpc would log the DecodeError of a junk body with a traceback and answer UNKNOWN (a client
sending junk could fill the disk). So every method's deserializer is wrapped (`decoder`) to hand
the handler an `Undecodable` marker instead; the front door (or, for health and reflection,
`BodyGuard.guard`) answers it INVALID_ARGUMENT, counts it in
meshgate_undecodable_requests_total{method} and logs it at most once per 10 s per method.
The wrapper costs nothing measurable per call (0.39 vs 0.42 us for a 2 KiB InferRequest).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from ..errors import GatewayError, abort
from ..observe.metrics import Metrics
from ..observe.ratelog import RateLimitedLog

log = logging.getLogger("meshgate.server")
Context = grpc.aio.ServicerContext[Any, Any]
_INVALID = grpc.StatusCode.INVALID_ARGUMENT


class Undecodable:
    """What a method's handler receives instead of a request body that did not parse."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def decoder(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as err:  # noqa: BLE001 - any parse failure is the body's fault, not ours
            return Undecodable(err)

    return decode


def message_name(handler: Any) -> str:
    """The request message's full name, from the generated deserializer (`X.FromString`)."""
    owner = getattr(handler.request_deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "request message"))


class BodyGuard:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._log = RateLimitedLog(log)

    def guard(self, method: str, handler: Any) -> Any:
        """`handler` with only the body guard: an undecodable body is INVALID_ARGUMENT."""
        message = message_name(handler)
        handler = handler._replace(request_deserializer=decoder(handler.request_deserializer))
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._guarded(method, message, handler.unary_unary))
        if handler.unary_stream is not None and not inspect.isasyncgenfunction(handler.unary_stream):
            return handler._replace(unary_stream=self._guarded(method, message, handler.unary_stream))
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: Context) -> Any:
                if type(request) is Undecodable:
                    await self._refuse(method, message, request, context)
                async for item in inner_us(request, context):
                    yield item

            return handler._replace(unary_stream=unary_stream)
        if handler.stream_stream is not None:
            inner_ss = handler.stream_stream

            async def checked(requests: Any, context: Context) -> Any:
                async for request in requests:
                    if type(request) is Undecodable:
                        await self._refuse(method, message, request, context)
                    yield request

            async def stream_stream(requests: Any, context: Context) -> Any:
                async for item in inner_ss(checked(requests, context), context):
                    yield item

            return handler._replace(stream_stream=stream_stream)
        return handler

    def _guarded(self, method: str, message: str, inner: Callable[[Any, Context], Awaitable[Any]]) -> Any:
        """A coroutine handler (unary, or a stream that writes with context.write) behind the body guard."""

        async def handle(request: Any, context: Context) -> Any:
            if type(request) is Undecodable:
                await self._refuse(method, message, request, context)
            return await inner(request, context)

        return handle

    def undecodable(self, method: str, message: str, body: Undecodable) -> GatewayError:
        """The caller's error for an unparsable body: counted, logged at most every 10 s per method."""
        self._metrics.undecodable_request(method)
        text = str(body.error).split("\n", 1)[0][:200]
        self._log.warning(method, "%s: request body did not parse (%s)", method, text)
        return GatewayError(_INVALID, f"request body is not a valid {message}: {text}")

    async def _refuse(self, method: str, message: str, body: Undecodable, context: Context) -> None:
        await abort(context, self.undecodable(method, message, body))
