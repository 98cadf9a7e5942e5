"""Errors the gateway returns to callers, with google.rpc details.

GatewayError                 a call fails with `code`; `message` is shown to the caller
  field violations           INVALID_ARGUMENT carries google.rpc.BadRequest naming each field
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


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
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.description = description or message
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


__all__ = ["GatewayError", "abort", "code_pb2", "invalid"]
