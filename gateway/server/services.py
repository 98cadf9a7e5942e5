"""The gRPC services the gateway serves, registered on its server: ours through the front door
(authentication, authorisation, limits), health, reflection and KEDA's external scaler with the
body guard only."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer
from meshgate.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)
from tritonclient.grpc import service_pb2 as kserve_pb
from tritonclient.grpc import service_pb2_grpc as kserve_grpc

from .keda_proto import externalscaler_pb2 as scaler_pb
from .keda_proto import externalscaler_pb2_grpc as scaler_grpc
from .servicers.admin import AdminServicer
from .servicers.inference import InferenceServicer
from .servicers.kserve import KServeServicer
from .servicers.models import ModelsServicer
from .servicers.scaler import ExternalScalerServicer

if TYPE_CHECKING:
    from .app import Gateway


def register(gw: Gateway, server: grpc.aio.Server) -> None:
    cfg = gw.config.server
    ours: tuple[str, ...] = (
        inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name,
        models_pb2.DESCRIPTOR.services_by_name["Models"].full_name,
        kserve_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
        admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
    )
    door = gw.door
    door.register(inference_pb2_grpc.add_InferenceServicer_to_server, InferenceServicer(gw.director), server)
    door.register(models_pb2_grpc.add_ModelsServicer_to_server, ModelsServicer(gw.director), server)
    door.register(
        kserve_grpc.add_GRPCInferenceServiceServicer_to_server,
        KServeServicer(gw.director, gw.any_ready, gw.metrics.models, cfg.default_timeout_s),
        server,
    )
    admin = AdminServicer(gw.table, gw.director.scheduler, gw.reload_everywhere, gw.principals, gw.shared)
    door.register(admin_pb2_grpc.add_AdminServicer_to_server, admin, server, admin=True)
    door.register(health_pb2_grpc.add_HealthServicer_to_server, gw.health, server, front_door=False)
    if gw.config.autoscaling.keda:  # KEDA brings no credentials of ours (servicers/scaler.py)
        scaler = ExternalScalerServicer(gw.autoscaling)
        door.register(scaler_grpc.add_ExternalScalerServicer_to_server, scaler, server, front_door=False)
        ours = (*ours, scaler_pb.DESCRIPTOR.services_by_name["ExternalScaler"].full_name)
    door.register(
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
        ReflectionServicer((*ours, health.SERVICE_NAME, reflection.SERVICE_NAME)),
        server,
        front_door=False,
    )
