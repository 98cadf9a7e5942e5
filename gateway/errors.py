"""Errors the gateway returns to callers, with google.rpc details.

GatewayError                 a call fails with `code`; `message` is shown to the caller
  field violations           INVALID_ARGUMENT carries google.rpc.BadRequest naming each field

Everything a caller sent and the gateway echoes (a model name, a field's value) goes through
`clip`, and every message is bounded (`MAX_MESSAGE`): gRPC refuses trailing metadata over 16 KiB
(grpc-message and grpc-status-details-bin count together), so a 9,000-character model name echoed
whole turned NOT_FOUND into "Stream removed (received metadata size exceeds hard limit)".
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any, NoReturn

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

MAX_MESSAGE = 1024  # characters of a status message (and of a field violation's description)
MAX_ECHO = 80  # characters of a caller's string echoed in a message


def clip(text: str, limit: int = MAX_ECHO) -> str:
    """`text` cut to `limit` characters, with an ellipsis saying it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def echo(value: str, limit: int = MAX_ECHO) -> str:
    """A caller's string quoted for a message (repr), cut to `limit` characters."""
    return repr(clip(value, limit))


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when a known name is close to `name`, else ''."""
    if len(name) > MAX_ECHO:
        return ""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class GatewayError(Exception):
    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        field: str = "",
        description: str = "",
        retry_after: float | None = None,
    ) -> None:
        message = clip(message, MAX_MESSAGE)
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = clip(field, MAX_ECHO * 2)
        if not description and field and message.startswith(f"{field}: "):
            description = message[len(field) + 2 :]  # the message says the field already
        self.description = clip(description, MAX_MESSAGE) if description else message
        self.retry_after = retry_after

    def to_status(self) -> grpc.Status:
        detail = status_pb2.Status(code=self.code.value[0], message=self.message)
        if self.field:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=self.field, description=self.description
                    )
                ]
            )
            detail.details.add().Pack(bad)
        if self.retry_after is not None:
            info = error_details_pb2.RetryInfo()
            info.retry_delay.FromNanoseconds(int(self.retry_after * 1e9))
            detail.details.add().Pack(info)
        status: grpc.Status = rpc_status.to_status(detail)
        return status


def invalid(field: str, message: str) -> GatewayError:
    """INVALID_ARGUMENT about `field` (dotted path, e.g. inputs[0].shape)."""
    return GatewayError(
        grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {message}", field=field, description=message
    )


async def abort(
    context: grpc.aio.ServicerContext[Any, Any], err: GatewayError, metadata: tuple[tuple[str, str], ...] = ()
) -> NoReturn:
    """End the call with `err`'s status and details; `metadata` joins its trailing metadata."""
    status = err.to_status()
    await context.abort(status.code, status.details, (*status.trailing_metadata, *metadata))
    raise AssertionError("abort returned")  # pragma: no cover


__all__ = ["MAX_MESSAGE", "GatewayError", "abort", "clip", "code_pb2", "did_you_mean", "echo", "invalid"]
