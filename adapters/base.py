"""The Adapter seam: one backend protocol behind one small interface.

Everything the gateway core sees of a backend goes through `Adapter`; library types
(tritonclient, grpc stubs, aiohttp) stay inside the adapter's module.

Error tree::

    BackendError            a backend call failed; `code` is the gRPC code the caller gets,
                            `retryable` says whether another endpoint may succeed
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol, runtime_checkable

import grpc

from .scrub import clean_message

ParamValue = bool | int | str | float
# Shared immutable default for parameter maps.
NO_PARAMS: Mapping[str, ParamValue] = MappingProxyType({})

# KServe v2 datatypes and their size in bytes in raw form (BYTES is variable: 0).
DATATYPE_SIZES: Mapping[str, int] = {
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "FP32": 4,
    "FP64": 8,
    "BF16": 2,
    "BYTES": 0,
}


# Request-path value objects are NamedTuples: immutable like frozen dataclasses, but built ~3x
# faster (a frozen dataclass sets each field through object.__setattr__), which shows in
# bench/overhead.py. Build them with keywords.


class Tensor(NamedTuple):
    """A tensor crossing the gateway.

    Exactly one of `raw` and `contents` is set. `raw` is little-endian row-major bytes
    (BYTES: 4-byte length-prefixed elements). `contents` is a serialized KServe v2
    `InferTensorContents` message (meshgate.v1.TensorContents has the same wire layout), so
    typed data crosses the gateway without being copied element by element; `n_contents` is its
    element count in the field that `datatype` selects, or -1 when that data sits in another field.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes | None = None
    contents: bytes | None = None
    n_contents: int = 0
    parameters: Mapping[str, ParamValue] = NO_PARAMS


class RequestedOutput(NamedTuple):
    name: str
    parameters: Mapping[str, ParamValue] = NO_PARAMS


class InferCall(NamedTuple):
    """One inference, as the director and adapters see it.

    `wire` is the caller's original request message when it arrived in a backend protocol
    (today: a KServe v2 ModelInferRequest at the Triton-compatible door). An adapter that speaks
    that protocol forwards it untouched instead of re-encoding the fields above, which say the
    same thing; every other consumer reads the fields. Nothing may modify it.
    """

    model: str
    version: str
    request_id: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[RequestedOutput, ...] = ()
    parameters: Mapping[str, ParamValue] = NO_PARAMS
    wire: Any = None
    # Sent to the backend with the call, as gRPC metadata or HTTP headers (auth.forward: the
    # caller's identity for the backend's audit; never the caller's credential).
    headers: tuple[tuple[str, str], ...] = ()


Decoded = tuple[tuple[Tensor, ...], Mapping[str, ParamValue]]


class InferResult:
    """The result of an inference.

    `wire` is the backend's own response message when the adapter has one: a front door that
    speaks the same protocol returns it untouched. `outputs` and `parameters` are decoded from it
    on first access (by `decode`), so the pass-through path never pays for them.
    """

    __slots__ = ("_decode", "_outputs", "_parameters", "model", "request_id", "version", "wire")

    def __init__(
        self,
        model: str,
        version: str,
        request_id: str,
        outputs: tuple[Tensor, ...] = (),
        parameters: Mapping[str, ParamValue] | None = None,
        *,
        wire: Any = None,
        decode: Callable[[Any], Decoded] | None = None,
    ) -> None:
        self.model = model
        self.version = version
        self.request_id = request_id
        self._outputs = outputs
        self._parameters: Mapping[str, ParamValue] = parameters or NO_PARAMS
        self.wire = wire
        self._decode = decode

    def for_request(self, request_id: str) -> InferResult:
        """This answer as the answer to another request with the same content (a cached one):
        its request id replaced, in the backend's own message too."""
        if request_id == self.request_id:
            return self
        wire = self.wire
        if wire is not None and hasattr(wire, "CopyFrom") and hasattr(wire, "id"):
            wire = type(wire)()
            wire.CopyFrom(self.wire)
            wire.id = request_id
        if self._decode is not None:
            return InferResult(self.model, self.version, request_id, wire=wire, decode=self._decode)
        return InferResult(self.model, self.version, request_id, self._outputs, self._parameters, wire=wire)

    def _load(self) -> None:
        if self._decode is not None:
            self._outputs, self._parameters = self._decode(self.wire)
            self._decode = None

    @property
    def outputs(self) -> tuple[Tensor, ...]:
        self._load()
        return self._outputs

    @property
    def parameters(self) -> Mapping[str, ParamValue]:
        self._load()
        return self._parameters

    def __repr__(self) -> str:
        return f"InferResult(model={self.model!r}, version={self.version!r}, request_id={self.request_id!r})"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


class BackendError(Exception):
    """A backend call failed. `message` names the endpoint and model; never a credential: it
    is cleaned on the way in (scrub.clean_message: secrets masked, no traceback or server paths,
    bounded), so every adapter's errors are safe to show the caller.

    `retry_after` is the provider's own hint in seconds (HTTP Retry-After), `usage` what a
    stream consumed before it broke (an adapters.llm.Usage), for accounting. `model_error`:
    the model itself failed on this input (the server is fine): it must not count toward
    ejecting the endpoint.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        usage: Any = None,
        model_error: bool = False,
    ) -> None:
        message = clean_message(message)
        super().__init__(message)
        self.model_error = model_error
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.usage = usage


class Adapter(Protocol):
    """Speaks one backend protocol to one endpoint.

    Called by the director (infer, model_metadata) and the readiness checker (server_live,
    model_ready), concurrently from one event loop: implementations must be safe for
    concurrent calls. `timeout` is in seconds; None means no deadline. Every method raises
    only `BackendError`.
    """

    async def infer(self, call: InferCall, timeout: float | None) -> InferResult:
        """Run one inference."""
        ...

    async def server_live(self, timeout: float) -> bool:
        """True when the server answers and says it is live."""
        ...

    async def model_ready(self, model: str, version: str, timeout: float) -> bool:
        """True when the server can run `model` (`version` "" = the server's default)."""
        ...

    async def model_metadata(self, model: str, version: str, timeout: float | None) -> ModelMetadata:
        """Inputs, outputs and versions of a model."""
        ...

    async def aclose(self) -> None:
        """Release connections; the adapter is not used afterwards."""
        ...


# -- optional side interfaces: behaviour only some backends have ---------------------------------


@runtime_checkable
class ModelConfigs(Protocol):
    """A backend that keeps a Triton-style model configuration (Triton; KServe servers that
    implement ModelConfig). Others are described from their metadata by the KServe door."""

    async def model_config(self, model: str, version: str, timeout: float | None) -> bytes:
        """The model's configuration, a serialized `inference.ModelConfig` (Triton's
        model_config.proto), passed through untouched. Raises BackendError (UNIMPLEMENTED where
        the server has no such call)."""
        ...


@runtime_checkable
class InferStreams(Protocol):
    """A backend that streams the responses of one inference (Triton's ModelStreamInfer: a
    decoupled model sends zero or more responses per request). Others answer a stream with
    their one unary response."""

    def infer_stream(self, call: InferCall, timeout: float | None) -> AsyncGenerator[InferResult, None]:
        """Every response to `call`, as the backend sends them; ends after the last. Closing the
        iterator early cancels the backend call. Raises BackendError."""
        ...
