"""TensorFlow Serving adapter, over its REST API.

    POST /v1/models/<name>[/versions/<v> | /labels/<label>]:predict   {"inputs": {name: nested list}}
    GET  /v1/models/<name>[/versions/<v>]                              model_version_status

Tensors go in TF Serving's columnar ("inputs") format, so raw tensors are decoded here (JSON has
no raw bytes); outputs come back as JSON numbers and are re-encoded as raw tensors with the
datatype the caller's inputs suggest (floats: FP32, ints: INT64, strings: BYTES, bools: BOOL).
A version that is not a number is sent as a label (`/labels/stable`). Metadata comes from
GET .../metadata (the `serving_default` signature, or Meta `signature_name`). Errors come as
{"error": "..."}: 400 INVALID_ARGUMENT, 404 NOT_FOUND, 5xx and connection errors UNAVAILABLE.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import grpc
import numpy as np

from .base import BackendError, InferCall, InferResult, ModelMetadata, Tensor, TensorSpec
from .http_client import HTTPClient, HTTPResponse, TransportError
from .http_llm import transport_error
from .tensor_codec import encode_numpy, tensor_to_list
from .tls import client_tls

_STATUS = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND}


class TFServingAdapter:
    kind: ClassVar[str] = "tfserving"

    def __init__(
        self,
        endpoint_id: str,
        address: str,
        *,
        max_message_bytes: int,
        options: Mapping[str, str] | None = None,
    ) -> None:
        self.endpoint_id = endpoint_id
        tls = client_tls(options or {})
        self.base_url = (options or {}).get("base_url") or f"{'https' if tls else 'http'}://{address}"
        self.signature_name = (options or {}).get("signature_name") or "serving_default"
        self._client = HTTPClient(self.base_url, tls=tls)

    def _where(self, model: str) -> str:
        return f"backend {self.endpoint_id} ({self.kind} at {self.base_url}), model '{model}'"

    def _error(self, resp: HTTPResponse, model: str) -> BackendError:
        try:
            text = str(resp.json().get("error", resp.text))
        except (ValueError, AttributeError):
            text = resp.text[:200]
        code = _STATUS.get(
            resp.status,
            grpc.StatusCode.UNAVAILABLE if resp.status >= 500 else grpc.StatusCode.INTERNAL,
        )
        return BackendError(
            code,
            f"{self._where(model)}: HTTP {resp.status}: {text}",
            retryable=code == grpc.StatusCode.UNAVAILABLE,
        )

    @staticmethod
    def _path(model: str, version: str) -> str:
        if not version:
            return f"/v1/models/{model}"
        return (
            f"/v1/models/{model}/versions/{version}"
            if version.isdigit()
            else f"/v1/models/{model}/labels/{version}"
        )

    async def infer(self, call: InferCall, timeout: float | None) -> InferResult:
        inputs = {t.name: tensor_to_list(t) for t in call.inputs}
        body: dict[str, Any] = {"inputs": inputs}
        try:
            resp = await self._client.request(
                "POST",
                f"{self._path(call.model, call.version)}:predict",
                json_body=body,
                timeout=timeout,
                headers=call.headers,
            )
        except TransportError as err:
            raise transport_error(self._where(call.model), err) from None
        if resp.status != 200:
            raise self._error(resp, call.model)
        try:
            outputs = resp.json()["outputs"]
        except (ValueError, KeyError) as err:
            raise BackendError(
                grpc.StatusCode.INTERNAL,
                f"{self._where(call.model)}: malformed response: {err}",
                retryable=False,
            ) from None
        if not isinstance(outputs, dict):
            outputs = {"outputs": outputs}  # a model with one output answers with the bare value
        wanted = {o.name for o in call.outputs}
        tensors = tuple(
            _from_list(name, value) for name, value in outputs.items() if not wanted or name in wanted
        )
        return InferResult(call.model, call.version, call.request_id, tensors)

    async def server_live(self, timeout: float) -> bool:
        """TF Serving's REST API has no liveness route: any HTTP answer means the server is up."""
        try:
            await self._client.request("GET", "/v1/models/__meshgate_probe__", timeout=timeout)
        except TransportError as err:
            raise transport_error(self._where(""), err) from None
        return True

    async def model_ready(self, model: str, version: str, timeout: float) -> bool:
        try:
            resp = await self._client.request("GET", self._path(model, version), timeout=timeout)
        except TransportError as err:
            raise transport_error(self._where(model), err) from None
        if resp.status != 200:
            return False
        try:
            states = [v.get("state") for v in resp.json().get("model_version_status", [])]
        except (ValueError, AttributeError):
            return False
        return "AVAILABLE" in states

    async def model_metadata(self, model: str, version: str, timeout: float | None) -> ModelMetadata:
        """GET .../metadata: the `serving_default` SignatureDef (or Meta `signature_name`)."""
        try:
            status = await self._client.request("GET", self._path(model, version), timeout=timeout)
            resp = await self._client.request(
                "GET", f"{self._path(model, version)}/metadata", timeout=timeout
            )
        except TransportError as err:
            raise transport_error(self._where(model), err) from None
        for r in (status, resp):
            if r.status != 200:
                raise self._error(r, model)
        try:
            versions = tuple(str(v["version"]) for v in status.json().get("model_version_status", []))
            signatures = resp.json()["metadata"]["signature_def"]["signature_def"]
            signature = signatures[self.signature_name]
            inputs = tuple(_spec(n, t) for n, t in sorted(signature.get("inputs", {}).items()))
            outputs = tuple(_spec(n, t) for n, t in sorted(signature.get("outputs", {}).items()))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise BackendError(
                grpc.StatusCode.INTERNAL,
                f"{self._where(model)}: malformed metadata (signature {self.signature_name!r}): {err!r}",
                retryable=False,
            ) from None
        return ModelMetadata(
            name=model, versions=versions, platform="tensorflow_serving", inputs=inputs, outputs=outputs
        )

    async def aclose(self) -> None:
        await self._client.aclose()


# TensorFlow DataType enum names (tensor_shape/dtype in SignatureDef JSON) -> KServe v2 datatypes.
_TF_DTYPES = {
    "DT_FLOAT": "FP32",
    "DT_DOUBLE": "FP64",
    "DT_HALF": "FP16",
    "DT_BFLOAT16": "BF16",
    "DT_INT8": "INT8",
    "DT_INT16": "INT16",
    "DT_INT32": "INT32",
    "DT_INT64": "INT64",
    "DT_UINT8": "UINT8",
    "DT_UINT16": "UINT16",
    "DT_UINT32": "UINT32",
    "DT_UINT64": "UINT64",
    "DT_BOOL": "BOOL",
    "DT_STRING": "BYTES",
}


def _spec(name: str, info: Mapping[str, Any]) -> TensorSpec:
    """A SignatureDef TensorInfo -> TensorSpec; -1 dims stay -1, an unknown rank is shape ()."""
    shape = info.get("tensor_shape", {})
    dims = () if shape.get("unknown_rank") else tuple(int(d.get("size", -1)) for d in shape.get("dim", []))
    return TensorSpec(name, _TF_DTYPES.get(str(info.get("dtype")), str(info.get("dtype"))), dims)


def _from_list(name: str, value: Any) -> Tensor:
    array = np.asarray(value)
    if array.dtype.kind == "f":
        datatype = "FP32"
    elif array.dtype.kind in "iu":
        datatype = "INT64"
    elif array.dtype.kind == "b":
        datatype = "BOOL"
    else:
        datatype = "BYTES"
    shape = tuple(int(d) for d in array.shape) or (1,)
    return Tensor(name, datatype, shape, raw=encode_numpy(array.reshape(shape), datatype))
