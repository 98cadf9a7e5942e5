"""What the KServe door says about models, in Triton's message shapes.

- ModelConfig: the backend's own configuration where it keeps one (Triton), passed through;
  otherwise described from the model's metadata (name, platform, inputs and outputs; a
  dimension of -1 stays -1, as in a Triton config).
- RepositoryIndex: one repository merged over every pool: each (model, version) the gateway
  knows, READY when an endpoint is ready for it, else UNAVAILABLE with the endpoints' reasons.
- ModelStatistics: the gateway's own counts (observe/model_stats.py).
"""

from __future__ import annotations

from typing import Any

from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

from adapters import ModelMetadata

from ...endpoints import EndpointState
from ...errors import clip
from ...observe.model_stats import ModelCounts

# KServe v2 datatype -> Triton config DataType (BYTES is TYPE_STRING in a Triton config).
_TYPES = {name.removeprefix("TYPE_"): value for name, value in mc.DataType.items()} | {
    "BYTES": mc.TYPE_STRING
}


def config_response(value: bytes | ModelMetadata) -> Any:
    if isinstance(value, bytes):
        return pb.ModelConfigResponse(config=mc.ModelConfig.FromString(value))
    config = mc.ModelConfig(name=value.name, platform=value.platform)
    for spec in value.inputs:
        config.input.add(name=spec.name, data_type=_TYPES.get(spec.datatype, 0), dims=spec.shape)
    for spec in value.outputs:
        config.output.add(name=spec.name, data_type=_TYPES.get(spec.datatype, 0), dims=spec.shape)
    return pb.ModelConfigResponse(config=config)


def repository_index(models: dict[str, list[EndpointState]], ready_only: bool) -> Any:
    resp = pb.RepositoryIndexResponse()
    for name in sorted(models):
        states = models[name]
        versions = sorted({r.version for s in states for r in s.endpoint.models if r.name == name}) or [""]
        for version in versions:
            serving = [s for s in states if s.serves(name, version)]
            ready = any(s.ready_for(name, version) for s in serving)
            if ready_only and not ready:
                continue
            reason = (
                "" if ready else clip("; ".join(f"{s.endpoint.id}: {s.health.message}" for s in serving), 400)
            )
            resp.models.add(
                name=name, version=version, state="READY" if ready else "UNAVAILABLE", reason=reason
            )
    return resp


def statistics_response(selected: list[tuple[str, str, ModelCounts]]) -> Any:
    resp = pb.ModelStatisticsResponse()
    for name, version, c in selected:
        stats = resp.model_stats.add(
            name=name,
            version=version,
            last_inference=c.last_ms,
            inference_count=c.inferences,
            execution_count=c.executions,
        )
        stats.inference_stats.success.count = c.success_count
        stats.inference_stats.success.ns = c.success_ns
        stats.inference_stats.fail.count = c.fail_count
        stats.inference_stats.fail.ns = c.fail_ns
    return resp
