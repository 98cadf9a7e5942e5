"""Triton Inference Server adapter.

Triton speaks KServe v2 gRPC (plus extensions), so this adapter is the generic one with Triton's
error vocabulary: Triton reports an unknown model as NOT_FOUND or UNAVAILABLE ("Request for unknown
model"), a model that is loading as UNAVAILABLE, and bad tensors as INVALID_ARGUMENT.
"""

from __future__ import annotations

from typing import ClassVar

import grpc

from .kserve_v2 import KServeV2Adapter


class TritonAdapter(KServeV2Adapter):
    kind: ClassVar[str] = "triton"

    def _classify_unknown(self, detail: str) -> grpc.StatusCode:
        lowered = detail.lower()
        if "unknown model" in lowered or "is not found" in lowered:
            return grpc.StatusCode.NOT_FOUND
        if "unexpected shape" in lowered or "unexpected datatype" in lowered:
            return grpc.StatusCode.INVALID_ARGUMENT
        return grpc.StatusCode.INTERNAL
