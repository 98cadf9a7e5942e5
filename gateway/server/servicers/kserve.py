"""inference.GRPCInferenceService: the Triton/KServe v2 compatible front door.

Code written against tritonclient works unchanged when pointed at the gateway:

- ModelInfer is routed exactly like meshgate.v1.Inference/Infer; ModelStreamInfer routes each
  request of the stream the same way, through the same stages and attempt loop as every stream,
  several at once (up to STREAM_IN_FLIGHT per stream), and answers each with all the responses
  its backend sends (a decoupled model's many; a unary backend's one). A request that fails
  gets an error message in the stream, which goes on, as Triton does.
- ModelMetadata and ModelConfig are answered by a ready endpoint of the model; RepositoryIndex,
  ModelStatistics and ServerMetadata by the gateway itself (kserve_describe.py).
- Field names in errors are KServe's (`model_name`, `name`), not meshgate.v1's (`model`).
- Model repository control, shared memory, trace and log settings belong to the backends:
  they answer UNIMPLEMENTED saying so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from adapters import InferCall, InferResult
from adapters.kserve_wire import call_from_request, response_from_result

from ... import __version__
from ...errors import GatewayError, did_you_mean, echo, invalid
from ...observe.model_stats import ModelCounts, ModelStats
from ...pipeline.attempts import Route
from ...pipeline.context import CallRecord, RequestContext
from ...pipeline.director import Director
from .common import Context, request_context
from .kserve_describe import config_response, repository_index, statistics_response

STREAM_IN_FLIGHT = 64  # requests of one ModelStreamInfer stream routed at once
EXTENSIONS = ("model_configuration", "statistics", "parameters")
_FINAL_ASK = "triton_enable_empty_final_response"
_FINAL_FLAG = "triton_final_response"
# meshgate.v1 field -> the KServe request's field, per kind of request.
_INFER_FIELDS = {"model": "model_name", "model_version": "model_version"}
_MODEL_FIELDS = {"model": "name", "model_version": "version"}


def infer_call(request: Any) -> InferCall:
    """ModelInferRequest -> InferCall. Raw contents pair with inputs by position, so a count that
    matches neither all inputs nor none cannot be converted."""
    n_raw, n_inputs = len(request.raw_input_contents), len(request.inputs)
    if n_raw and n_raw != n_inputs:
        raise invalid(
            "raw_input_contents", f"{n_raw} raw contents for {n_inputs} inputs; send one per input or none"
        )
    return call_from_request(request)


def kserve_fields(err: GatewayError, names: dict[str, str]) -> GatewayError:
    """`err` with meshgate.v1 field names turned into the KServe request's."""
    field = err.field.split(".", 1)[0].split("[", 1)[0]
    renamed = names.get(field)
    if renamed is None:
        return err
    new_field = renamed + err.field[len(field) :]
    message = err.message
    if message.startswith(err.field + ":"):
        message = new_field + message[len(err.field) :]
    return GatewayError(
        err.code, message, field=new_field, description=err.description, retry_after=err.retry_after
    )


def _unimplemented(what: str) -> Callable[..., Awaitable[Any]]:
    async def method(self: Any, request: Any, context: Context) -> Any:
        raise GatewayError(grpc.StatusCode.UNIMPLEMENTED, f"meshgate does not serve {what}")

    return method


class KServeServicer(pb_grpc.GRPCInferenceServiceServicer):
    # Methods on a model: authorised by the pipeline (AuthorizeStage), which knows the model.
    # Authorised by model: in the pipeline (the first four), or here (a caller sees only the
    # models it may call the method on).
    routed_methods = frozenset(
        {
            "ModelInfer",
            "ModelStreamInfer",
            "ModelMetadata",
            "ModelConfig",
            "ModelReady",
            "RepositoryIndex",
            "ModelStatistics",
        }
    )

    def __init__(
        self, director: Director, any_ready: Callable[[], bool], stats: ModelStats, request_timeout_s: float
    ) -> None:
        self._director = director
        self._any_ready = any_ready
        self._stats = stats
        self._request_timeout_s = request_timeout_s

    async def ServerLive(self, request: Any, context: Context) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Context) -> Any:
        return pb.ServerReadyResponse(ready=bool(self._any_ready()))

    async def ServerMetadata(self, request: Any, context: Context) -> Any:
        return pb.ServerMetadataResponse(name="meshgate", version=__version__, extensions=EXTENSIONS)

    async def ModelReady(self, request: Any, context: Context) -> Any:
        self._director.authorize(request_context(), request.name)
        return pb.ModelReadyResponse(ready=self._director.model_ready(request.name, request.version))

    async def ModelMetadata(self, request: Any, context: Context) -> Any:
        try:
            routed = await self._director.model_metadata(request_context(), request.name, request.version)
        except GatewayError as err:
            raise kserve_fields(err, _MODEL_FIELDS) from None
        md = routed.value
        resp = pb.ModelMetadataResponse(name=md.name, versions=md.versions, platform=md.platform)
        for spec in md.inputs:
            resp.inputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        for spec in md.outputs:
            resp.outputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        return resp

    async def ModelConfig(self, request: Any, context: Context) -> Any:
        try:
            routed = await self._director.model_config(request_context(), request.name, request.version)
        except GatewayError as err:
            raise kserve_fields(err, _MODEL_FIELDS) from None
        return config_response(routed.value)

    async def RepositoryIndex(self, request: Any, context: Context) -> Any:
        if request.repository_name:
            raise invalid(
                "repository_name", "meshgate serves one repository merged over its pools; leave it empty"
            )
        return repository_index(self._director.visible(request_context()), request.ready)

    async def ModelStatistics(self, request: Any, context: Context) -> Any:
        ctx = request_context()
        name, version = request.name, request.version
        if name:
            self._director.authorize(ctx, name)
        known = self._director.visible(ctx)
        if name and name not in known:
            raise GatewayError(
                grpc.StatusCode.NOT_FOUND,
                f"name: model {echo(name)} is not served by any pool{did_you_mean(name, known)}",
                field="name",
            )
        selected = [s for s in self._stats.select(name, version) if s[0] in known]
        seen = {n for n, _, _ in selected}
        selected += [(n, version, ModelCounts()) for n in ([name] if name else known) if n not in seen]
        return statistics_response(sorted(selected, key=lambda s: (s[0], s[1])))

    async def ModelInfer(self, request: Any, context: Context) -> Any:
        try:
            routed = await self._director.infer(request_context(), infer_call(request))
        except GatewayError as err:
            raise kserve_fields(err, _INFER_FIELDS) from None
        return response_from_result(routed.value)

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[Any], context: Context) -> None:
        ctx = request_context()
        lock = asyncio.Lock()
        slots = asyncio.Semaphore(STREAM_IN_FLIGHT)
        tasks: set[asyncio.Task[None]] = set()

        async def write(message: Any) -> None:
            async with lock:  # one writer at a time on the stream
                await context.write(message)

        caller_deadline = context.time_remaining() is not None
        try:
            n = 0
            async for request in request_iterator:
                await slots.acquire()
                n += 1
                now = time.monotonic()
                deadline = now + self._request_timeout_s
                sub = ctx._replace(
                    request_id=f"{ctx.request_id}.{n}",
                    record=CallRecord(),
                    deadline=min(deadline, ctx.deadline) if caller_deadline else deadline,
                )
                task = asyncio.create_task(self._stream_one(sub, request, write))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(lambda _t: slots.release())
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    async def _stream_one(
        self, ctx: RequestContext, request: Any, write: Callable[[Any], Awaitable[None]]
    ) -> None:
        """One request of a stream: every response, or one error message."""
        ask = request.parameters.get(_FINAL_ASK)
        wants_final = ask is not None and ask.bool_param
        final_sent = False

        async def send(result: InferResult, route: Route) -> None:
            nonlocal final_sent
            resp = response_from_result(result)
            flag = resp.parameters.get(_FINAL_FLAG)
            if flag is not None:
                final = flag.bool_param
                if not wants_final:  # we asked the backend for the marker; the caller did not
                    del resp.parameters[_FINAL_FLAG]
                    if final and not resp.outputs:
                        return
                final_sent = final_sent or final
            await write(pb.ModelStreamInferResponse(infer_response=resp))

        try:
            await self._director.infer_stream(ctx, infer_call(request), send)
            if wants_final and not final_sent:  # a unary backend: mark its one response's end
                end = pb.ModelInferResponse(
                    model_name=request.model_name, model_version=request.model_version, id=request.id
                )
                end.parameters[_FINAL_FLAG].bool_param = True
                await write(pb.ModelStreamInferResponse(infer_response=end))
        except GatewayError as err:
            err = kserve_fields(err, _INFER_FIELDS)
            about = pb.ModelInferResponse(
                model_name=request.model_name, model_version=request.model_version, id=request.id
            )
            if wants_final:
                about.parameters[_FINAL_FLAG].bool_param = True
            await write(
                pb.ModelStreamInferResponse(
                    error_message=f"{err.code.name}: {err.message}", infer_response=about
                )
            )

    RepositoryModelLoad = _unimplemented("model loading: each backend owns its model repository")
    RepositoryModelUnload = _unimplemented("model unloading: each backend owns its model repository")
    SystemSharedMemoryStatus = _unimplemented(
        "shared memory: the gateway runs apart from its callers; send tensors in the request"
    )
    SystemSharedMemoryRegister = SystemSharedMemoryStatus
    SystemSharedMemoryUnregister = SystemSharedMemoryStatus
    CudaSharedMemoryStatus = _unimplemented(
        "CUDA shared memory: the gateway runs apart from its callers; send tensors in the request"
    )
    CudaSharedMemoryRegister = CudaSharedMemoryStatus
    CudaSharedMemoryUnregister = CudaSharedMemoryStatus
    TraceSetting = _unimplemented("trace settings: set them on the backends")
    LogSettings = _unimplemented("log settings: set them on the backends")
