"""Helpers shared by the servicers: deadlines and the error/metrics wrapper."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc

from ..config import ServerConfig
from ..errors import GatewayError, abort
from ..metrics import Metrics

T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]


def call_timeout(context: Context, server: ServerConfig) -> float:
    """The caller's remaining deadline in seconds, defaulted and capped by config."""
    remaining = context.time_remaining()
    if remaining is None:
        return server.default_timeout_s
    return min(float(remaining), server.max_timeout_s)


_OK = grpc.StatusCode.OK


async def fail(method: str, metrics: Metrics, context: Context, err: GatewayError, start: float) -> NoReturn:
    """Count a failed call and end it with err's status."""
    metrics.request_done(method, err.code, time.monotonic() - start)
    await abort(context, err)


def done(method: str, metrics: Metrics, start: float) -> None:
    metrics.request_done(method, _OK, time.monotonic() - start)


async def answer(method: str, metrics: Metrics, context: Context, work: Callable[[], Awaitable[T]]) -> T:
    """Run `work`, turning GatewayError into a gRPC status and counting the outcome."""
    start = time.monotonic()
    try:
        result = await work()
    except GatewayError as err:
        await fail(method, metrics, context, err, start)
    done(method, metrics, start)
    return result
