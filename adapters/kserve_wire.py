"""KServe v2 (Open Inference Protocol) gRPC messages <-> the gateway's dataclasses.

Used by the KServe v2 adapters (towards backends) and by the KServe v2 front door (towards
clients). The message classes come from tritonclient's generated `grpc_service.proto`, which is
a superset of KServe's `grpc_predict_v2.proto` with the same package (`inference`) and field
numbers; registering a second copy of those names in the protobuf pool would clash with it.

Raw tensor bytes and typed contents are moved as bytes objects, never decoded here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tritonclient.grpc import service_pb2 as pb

from .base import NO_PARAMS, Decoded, InferCall, InferResult, ParamValue, RequestedOutput, Tensor

# Which InferTensorContents field carries each datatype's typed values.
CONTENTS_FIELD: Mapping[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_ALL_CONTENTS_FIELDS = tuple(sorted(set(CONTENTS_FIELD.values())))


def count_contents(contents: Any, datatype: str) -> int:
    """Element count of typed contents for `datatype`; -1 when values sit in another field.

    Works on any message with InferTensorContents' field names (meshgate.v1.TensorContents too).
    """
    want = CONTENTS_FIELD.get(datatype)
    n = len(getattr(contents, want)) if want else 0
    total = sum(len(getattr(contents, f)) for f in _ALL_CONTENTS_FIELDS)
    return n if total == n else -1


def params_from_pb(params: Any) -> Mapping[str, ParamValue]:
    """map<string, InferParameter> (or meshgate.v1.Parameter) -> dict; empty stays cheap."""
    if not params:
        return NO_PARAMS
    out: dict[str, ParamValue] = {}
    for key, p in params.items():
        kind = p.WhichOneof("parameter_choice") if hasattr(p, "bool_param") else p.WhichOneof("value")
        out[key] = getattr(p, kind) if kind else ""
    return out


def params_to_pb(params: Mapping[str, ParamValue], target: Any) -> None:
    """Fill a map<string, InferParameter> from a dict."""
    for key, value in params.items():
        p = target[key]
        if isinstance(value, bool):
            p.bool_param = value
        elif isinstance(value, int):
            if value < 0 or value < 2**63:
                p.int64_param = value
            else:
                p.uint64_param = value
        elif isinstance(value, float):
            p.double_param = value
        else:
            p.string_param = value


def call_from_request(req: Any) -> InferCall:
    """ModelInferRequest -> InferCall. Raw contents pair with inputs by position."""
    raws = req.raw_input_contents
    n_raw = len(raws)
    inputs = []
    for i, t in enumerate(req.inputs):
        params = params_from_pb(t.parameters) if t.parameters else NO_PARAMS
        if i < n_raw:
            inputs.append(Tensor(t.name, t.datatype, tuple(t.shape), raws[i], None, 0, params))
        elif t.HasField("contents"):
            contents = t.contents
            n = count_contents(contents, t.datatype)
            inputs.append(
                Tensor(t.name, t.datatype, tuple(t.shape), None, contents.SerializeToString(), n, params)
            )
        else:
            inputs.append(Tensor(t.name, t.datatype, tuple(t.shape), None, None, 0, params))
    outputs = (
        tuple(RequestedOutput(o.name, params_from_pb(o.parameters)) for o in req.outputs)
        if req.outputs
        else ()
    )
    return InferCall(
        model=req.model_name,
        version=req.model_version,
        request_id=req.id,
        inputs=tuple(inputs),
        outputs=outputs,
        parameters=params_from_pb(req.parameters),
        wire=req,
    )


def request_from_call(call: InferCall, *, typed_only: bool = False) -> Any:
    """InferCall -> ModelInferRequest (the caller's own message when it came in as one).

    `typed_only`: for servers that ignore raw_input_contents (TorchServe's OIP), every tensor
    goes in typed contents.
    """
    if type(call.wire) is pb.ModelInferRequest and not (typed_only and call.wire.raw_input_contents):
        return call.wire
    req = pb.ModelInferRequest(model_name=call.model, model_version=call.version, id=call.request_id)
    _fill_tensors(call.inputs, req.inputs, req.raw_input_contents, typed_only=typed_only)
    for o in call.outputs:
        ro = req.outputs.add(name=o.name)
        if o.parameters:
            params_to_pb(o.parameters, ro.parameters)
    if call.parameters:
        params_to_pb(call.parameters, req.parameters)
    return req


def _fill_tensors(
    tensors: tuple[Tensor, ...], target: Any, raw_target: Any, *, typed_only: bool = False
) -> None:
    """Add tensors to a repeated InferInputTensor/InferOutputTensor field.

    All raw (raw bytes in the parallel `raw_target` list) or all typed, as KServe v2 requires:
    a raw tensor mixed with typed ones is decoded into typed contents.
    """
    all_raw = not typed_only and all(t.raw is not None for t in tensors)
    for t in tensors:
        mt = target.add(name=t.name, datatype=t.datatype, shape=t.shape)
        if t.parameters:
            params_to_pb(t.parameters, mt.parameters)
        if all_raw:
            continue
        if t.contents is not None:
            mt.contents.MergeFromString(t.contents)
        elif not raw_into_contents(t, mt.contents):
            raise ValueError(f"{t.datatype} has no typed form and cannot be mixed with typed tensors")
    if all_raw:
        raw_target.extend([t.raw for t in tensors])


def raw_into_contents(t: Tensor, contents: Any) -> bool:
    """Fill typed contents from t's raw bytes; False when the datatype has no typed form (FP16, BF16)."""
    from .tensor_codec import decode_raw

    field = CONTENTS_FIELD.get(t.datatype)
    if field is None or t.raw is None:
        return False
    values = decode_raw(t.raw, t.datatype)
    getattr(contents, field).extend(values if t.datatype == "BYTES" else values.tolist())
    return True


def result_from_response(resp: Any) -> InferResult:
    """ModelInferResponse -> InferResult that carries it; outputs are decoded only if read."""
    return InferResult(resp.model_name, resp.model_version, resp.id, wire=resp, decode=decode_response)


def decode_response(resp: Any) -> Decoded:
    """ModelInferResponse -> (outputs, parameters)."""
    raws = resp.raw_output_contents
    n_raw = len(raws)
    outputs = []
    for i, t in enumerate(resp.outputs):
        raw = raws[i] if i < n_raw else None
        contents = t.contents.SerializeToString() if raw is None and t.HasField("contents") else None
        outputs.append(
            Tensor(
                name=t.name,
                datatype=t.datatype,
                shape=tuple(t.shape),
                raw=raw,
                contents=contents,
                parameters=params_from_pb(t.parameters),
            )
        )
    return tuple(outputs), params_from_pb(resp.parameters)


def response_from_result(result: InferResult) -> Any:
    """InferResult -> ModelInferResponse: the backend's own message when it sent one.

    Outputs always leave as raw_output_contents, as Triton sends them: tritonclient's as_numpy
    reads nothing else. A backend that answers with typed contents (TorchServe's OIP, some
    KServe runtimes) has them converted here; everyone else's response passes untouched.
    """
    if type(result.wire) is pb.ModelInferResponse:
        wire = result.wire
        if wire.raw_output_contents or not wire.outputs:
            return wire
        return _typed_outputs_to_raw(wire)
    resp = pb.ModelInferResponse(model_name=result.model, model_version=result.version, id=result.request_id)
    _fill_tensors(result.outputs, resp.outputs, resp.raw_output_contents)
    if result.parameters:
        params_to_pb(result.parameters, resp.parameters)
    return resp


def _typed_outputs_to_raw(wire: Any) -> Any:
    from .tensor_codec import encode_numpy

    resp = pb.ModelInferResponse()
    resp.CopyFrom(wire)
    raw = []
    for out in resp.outputs:
        field = CONTENTS_FIELD.get(out.datatype)
        if field is None:  # FP16/BF16 have no typed form: nothing to convert, keep as sent
            return wire
        raw.append(encode_numpy(list(getattr(out.contents, field)), out.datatype))
        out.ClearField("contents")
    resp.raw_output_contents.extend(raw)
    return resp
