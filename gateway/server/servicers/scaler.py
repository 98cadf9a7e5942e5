"""KEDA's external scaler (externalscaler.ExternalScaler, the proto vendored unchanged): a
ScaledObject of type `external` points at the gateway, with the pool in its metadata:

    triggers:
      - type: external
        metadata:
          scalerAddress: meshgate.inference.svc:8700
          pool: llama                 # required
          metric: outstanding_units   # or queue_depth, predicted_wait_seconds, desired_replicas
          target: "16"                # per replica (HPA AverageValue); default per metric below
          activationThreshold: "0"    # active (scale from zero) above this

The values are the pool's autoscaling signals (observe/autoscale.py). KEDA sends no
credentials of its own kind, so this service is served like grpc.health: without the front
door's authentication (`autoscaling.keda: false` turns it off; mTLS on the port still applies).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc

from ...observe.autoscale import SIGNALS, Autoscaling
from ..keda_proto import externalscaler_pb2 as pb
from ..keda_proto import externalscaler_pb2_grpc as pb_grpc
from .common import Context

# What one replica should carry when the ScaledObject does not say (`target`).
DEFAULT_TARGETS = {
    "queue_depth": 4.0,
    "outstanding_units": 0.0,  # 0: the pool's own per-replica target (Autoscaling)
    "predicted_wait_seconds": 1.0,
    "desired_replicas": 1.0,
}


class ScalerError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class ExternalScalerServicer(pb_grpc.ExternalScalerServicer):
    def __init__(self, autoscaling: Autoscaling) -> None:
        self._autoscaling = autoscaling

    def _read(self, ref: Any) -> tuple[str, str, float, float]:
        """(pool, metric, value now, activation threshold) for a ScaledObjectRef."""
        meta: Mapping[str, str] = ref.scalerMetadata
        pool = meta.get("pool", "")
        if not pool:
            raise ScalerError(grpc.StatusCode.INVALID_ARGUMENT, "scalerMetadata.pool is required")
        metric = meta.get("metric", "outstanding_units")
        if metric not in SIGNALS:
            raise ScalerError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"scalerMetadata.metric: unknown {metric!r}; expected one of {', '.join(SIGNALS)}",
            )
        activation = _number(meta, "activationThreshold", 0.0)
        signals = self._autoscaling.signals(pool)
        if signals is None:
            known = ", ".join(self._autoscaling.pools()) or "none"
            raise ScalerError(grpc.StatusCode.NOT_FOUND, f"pool {pool!r} is not known (pools: {known})")
        return pool, metric, float(getattr(signals, metric)), activation

    def _target(self, ref: Any, pool: str, metric: str) -> float:
        if not ref.scalerMetadata.get("target"):
            default = DEFAULT_TARGETS[metric]
            return default if default > 0 else self._autoscaling.target_for(pool)
        target = _number(ref.scalerMetadata, "target", 0.0)
        if target <= 0:
            raise ScalerError(grpc.StatusCode.INVALID_ARGUMENT, "scalerMetadata.target must be > 0")
        return target

    async def IsActive(self, request: Any, context: Context) -> Any:
        try:
            _, _, value, activation = self._read(request)
        except ScalerError as err:
            await context.abort(err.code, str(err))
        return pb.IsActiveResponse(result=value > activation)

    async def StreamIsActive(self, request: Any, context: Context) -> AsyncIterator[Any]:
        """The current answer at once, then each change (checked every stream_interval_s)."""
        last: bool | None = None
        while True:
            try:
                _, _, value, activation = self._read(request)
            except ScalerError as err:
                await context.abort(err.code, str(err))
            active = value > activation
            if active != last:
                last = active
                yield pb.IsActiveResponse(result=active)
            await asyncio.sleep(self._autoscaling.config.stream_interval_s)

    async def GetMetricSpec(self, request: Any, context: Context) -> Any:
        try:
            pool, metric, _, _ = self._read(request)
            target = self._target(request, pool, metric)
        except ScalerError as err:
            await context.abort(err.code, str(err))
        spec = pb.MetricSpec(metricName=metric_name(pool, metric), targetSizeFloat=target)
        spec.targetSize = max(1, round(target))
        return pb.GetMetricSpecResponse(metricSpecs=[spec])

    async def GetMetrics(self, request: Any, context: Context) -> Any:
        try:
            pool, metric, value, _ = self._read(request.scaledObjectRef)
        except ScalerError as err:
            await context.abort(err.code, str(err))
        name = request.metricName or metric_name(pool, metric)
        return pb.GetMetricsResponse(
            metricValues=[pb.MetricValue(metricName=name, metricValue=round(value), metricValueFloat=value)]
        )


def metric_name(pool: str, metric: str) -> str:
    """A name the HPA accepts (lower case, digits, '-'), unique per pool and metric."""
    safe = "".join(c if c.isalnum() else "-" for c in pool.lower()).strip("-") or "pool"
    return f"meshgate-{safe}-{metric.replace('_', '-')}"


def _number(meta: Mapping[str, str], key: str, default: float) -> float:
    raw = meta.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ScalerError(
            grpc.StatusCode.INVALID_ARGUMENT, f"scalerMetadata.{key}: {raw!r} is not a number"
        ) from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ScalerError(grpc.StatusCode.INVALID_ARGUMENT, f"scalerMetadata.{key}: {raw!r} is not a number")
    return value
