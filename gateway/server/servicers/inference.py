"""meshgate.v1.Inference: the typed front door."""

from __future__ import annotations

from typing import Any

from meshgate.v1 import generate_pb2, inference_pb2, inference_pb2_grpc, tensor_pb2

from adapters import InferCall, InferResult, RequestedOutput, Tensor
from adapters.kserve_wire import count_contents, params_from_pb, raw_into_contents
from adapters.llm import StreamEvent, TextDelta

from ...pipeline.attempts import Route
from ...pipeline.director import Director
from .common import Context, request_context
from .generate import embed_call, end_pb, finish_pb, generate_call, route_pb, tool_calls_pb, usage_pb

_PREFIX = "DATA_TYPE_"
# enum number -> KServe datatype name ("FP32"); UNSPECIFIED maps to "" (rejected by validation).
DTYPE_NAMES: dict[int, str] = {
    v.number: v.name.removeprefix(_PREFIX) for v in tensor_pb2.DataType.DESCRIPTOR.values if v.number
}
DTYPE_NUMBERS: dict[str, int] = {name: number for number, name in DTYPE_NAMES.items()}


def tensor_from_pb(t: Any) -> Tensor:
    datatype = DTYPE_NAMES.get(t.datatype, "")
    which = t.WhichOneof("data")
    if which == "raw":
        raw, contents, n = t.raw, None, 0
    elif which == "contents":
        raw, contents, n = None, t.contents.SerializeToString(), count_contents(t.contents, datatype)
    else:
        raw, contents, n = None, None, 0
    return Tensor(t.name, datatype, tuple(t.shape), raw, contents, n, params_from_pb(t.parameters))


def call_from_pb(req: Any) -> InferCall:
    return InferCall(
        model=req.model,
        version=req.model_version,
        request_id=req.id,
        inputs=tuple(tensor_from_pb(t) for t in req.inputs),
        outputs=tuple(RequestedOutput(o.name, params_from_pb(o.parameters)) for o in req.outputs),
        parameters=params_from_pb(req.parameters),
    )


def _set_params(params: Any, target: Any) -> None:
    for key, value in params.items():
        p = target[key]
        if isinstance(value, bool):
            p.bool_value = value
        elif isinstance(value, int):
            p.int64_value = value
        elif isinstance(value, float):
            p.double_value = value
        else:
            p.string_value = value


def response_to_pb(result: InferResult, route: Route, typed: bool = False) -> Any:
    """InferResult -> InferResponse; `typed` turns raw outputs into typed contents."""
    resp = inference_pb2.InferResponse(
        model=result.model,
        model_version=result.version,
        id=result.request_id,
        route=route_pb(route),
    )
    for t in result.outputs:
        out = resp.outputs.add(name=t.name, datatype=DTYPE_NUMBERS.get(t.datatype, 0), shape=t.shape)
        if t.raw is not None:
            if not (typed and raw_into_contents(t, out.contents)):
                out.raw = t.raw
        elif t.contents is not None:
            out.contents.MergeFromString(t.contents)
        if t.parameters:
            _set_params(t.parameters, out.parameters)
    if result.parameters:
        _set_params(result.parameters, resp.parameters)
    return resp


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    # Methods on a model: authorised by the pipeline (AuthorizeStage), which knows the model.
    routed_methods = frozenset({"Infer", "Generate", "GenerateStream", "Embed"})

    def __init__(self, director: Director) -> None:
        self._director = director

    async def Infer(self, request: Any, context: Context) -> Any:
        call = call_from_pb(request)
        routed = await self._director.infer(request_context(request.routing), call)
        # Callers that send typed contents (JSON clients, buf curl) get typed outputs back.
        typed = all(t.raw is None for t in call.inputs)
        return response_to_pb(routed.value, routed.route, typed)

    async def Generate(self, request: Any, context: Context) -> Any:
        routed = await self._director.generate(request_context(request.routing), generate_call(request))
        r = routed.value
        return generate_pb2.GenerateResponse(
            model=r.model,
            id=request.id,
            text=r.text,
            tool_calls=tool_calls_pb(r.tool_calls),
            finish_reason=finish_pb(r.finish_reason),
            usage=usage_pb(r.usage),
            route=route_pb(routed.route),
        )

    async def GenerateStream(self, request: Any, context: Context) -> None:  # type: ignore[override]
        """Deltas as they come, then one end, written as the backend sends them (grpc.aio takes a
        coroutine that writes with context.write; the generated stub types only the iterator
        style). If the caller cancels, grpc cancels this task: the write raises, and the
        upstream request is closed."""

        async def send(event: StreamEvent, route: Route) -> None:
            if isinstance(event, TextDelta):
                await context.write(generate_pb2.GenerateStreamResponse(delta=event.text))
            else:
                await context.write(end_pb(event, route))

        await self._director.generate_stream(request_context(request.routing), generate_call(request), send)

    async def Embed(self, request: Any, context: Context) -> Any:
        routed = await self._director.embed(request_context(request.routing), embed_call(request))
        r = routed.value
        return generate_pb2.EmbedResponse(
            model=r.model,
            embeddings=[generate_pb2.Embedding(values=v) for v in r.vectors],
            usage=usage_pb(r.usage),
            route=route_pb(routed.route),
        )
