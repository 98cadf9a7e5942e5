"""Registrar: how the front door wraps every method of a generated servicer at registration."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import grpc

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # not subscriptable at run time
Generic: TypeAlias = "grpc.GenericRpcHandler[Any, Any]"


class Registrar:
    """Stands in for the server while generated code registers a servicer. The generated code
    hands over the same method handlers twice: as a generic handler, then as a dict
    (add_registered_method_handlers, a no-op in grpc.aio 1.81); the dict is wrapped and
    registered as grpc's own generic handler, the plain one dropped."""

    def __init__(self, server: grpc.aio.Server, wrap: Callable[[str, str, Any], Any]) -> None:
        self._server = server
        self._wrap = wrap
        self._generic: list[Generic] = []

    def add_generic_rpc_handlers(self, handlers: tuple[Generic, ...]) -> None:
        self._generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Handler]) -> None:
        wrapped = {method: self._wrap(service, method, h) for method, h in handlers.items()}
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))
        self._server.add_registered_method_handlers(service, wrapped)  # type: ignore[attr-defined]
        self._generic.clear()

    def close(self) -> None:
        """Generated code that registered no method dict cannot be wrapped: say so at start-up
        rather than serve its calls past the front door."""
        if self._generic:
            raise TypeError(
                "a servicer registered only generic handlers; regenerate it with grpcio-tools >= 1.62"
            )
