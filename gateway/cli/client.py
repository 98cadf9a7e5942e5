"""Client side of the `meshgate` CLI: call a gateway through the generated stubs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from meshgate.v1 import (
    inference_pb2,
    inference_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    routing_pb2,
    tensor_pb2,
)

from adapters.kserve_wire import CONTENTS_FIELD
from adapters.tensor_codec import NUMPY_DTYPES, decode_raw, encode_numpy

DEFAULT_TARGET = "127.0.0.1:8700"


class UsageError(Exception):
    pass


def parse_input(spec: str) -> Any:
    """NAME:DTYPE[:SHAPE]=VALUES|@file.npy -> meshgate.v1.Tensor with raw bytes."""
    head, sep, body = spec.partition("=")
    if not sep:
        raise UsageError(f"--input {spec!r}: expected NAME:DTYPE:SHAPE=VALUES or NAME:DTYPE=@file.npy")
    parts = head.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise UsageError(f"--input {spec!r}: expected NAME:DTYPE:SHAPE before '='")
    name, dtype = parts[0], parts[1].upper()
    if dtype not in NUMPY_DTYPES and dtype != "BYTES":
        raise UsageError(f"--input {spec!r}: unknown datatype {dtype}")
    if body.startswith("@"):
        array = np.load(body[1:], allow_pickle=False)
        shape = list(array.shape) if len(parts) == 2 else _shape(parts[2], spec)
        values: Any = array
    else:
        if len(parts) != 3:
            raise UsageError(
                f"--input {spec!r}: a SHAPE is needed with inline values, e.g. {name}:{dtype}:4=1,2,3,4"
            )
        shape = _shape(parts[2], spec)
        items = [v.strip() for v in body.split(",")] if body else []
        expected = int(np.prod(shape)) if all(d >= 0 for d in shape) else len(items)
        if len(items) != expected:
            dims = "x".join(map(str, shape))
            raise UsageError(f"--input {spec!r}: shape {dims} holds {expected} value(s), got {len(items)}")
        values = items if dtype == "BYTES" else np.array([_number(v, spec) for v in items])
    raw = encode_numpy(values, dtype)
    return tensor_pb2.Tensor(name=name, datatype=f"DATA_TYPE_{dtype}", shape=shape, raw=raw)


def _shape(text: str, spec: str) -> list[int]:
    try:
        return [int(d) for d in text.replace(",", "x").split("x") if d]
    except ValueError:
        raise UsageError(f"--input {spec!r}: shape {text!r} should look like 2x3") from None


def _number(text: str, spec: str) -> float | int | bool:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise UsageError(f"--input {spec!r}: {text!r} is not a number") from None


def tensor_values(t: Any) -> Any:
    """Output tensor -> numpy array shaped as declared (list of bytes for BYTES)."""
    dtype = tensor_pb2.DataType.Name(t.datatype).removeprefix("DATA_TYPE_")
    if t.WhichOneof("data") == "raw":
        values = decode_raw(t.raw, dtype)
    else:
        values = list(getattr(t.contents, CONTENTS_FIELD.get(dtype, "bytes_contents")))
    if dtype == "BYTES":
        return [v.decode("utf-8", "replace") for v in values]
    return np.asarray(values, dtype=NUMPY_DTYPES.get(dtype)).reshape(tuple(t.shape))


def _fail(err: grpc.RpcError) -> int:
    call: Any = err
    print(f"error: {call.code().name}: {call.details()}", file=sys.stderr)
    status = rpc_status.from_call(call)
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            for v in bad.field_violations:  # only what the message above did not already say
                if v.description not in call.details():
                    print(f"  field {v.field}: {v.description}", file=sys.stderr)
    return 1


def _metadata(api_key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


def add_connection_arguments(q: argparse.ArgumentParser) -> None:
    """--target, --api-key, TLS and --timeout: how every client command reaches the gateway."""
    env = os.environ.get
    q.add_argument("--target", default=env("MESHGATE_TARGET", DEFAULT_TARGET), help="gateway host:port")
    q.add_argument(
        "--api-key",
        default=env("MESHGATE_API_KEY", ""),
        help="sent as `authorization: Bearer ...` (default $MESHGATE_API_KEY)",
    )
    q.add_argument(
        "--tls-ca",
        default=env("MESHGATE_TLS_CA", ""),
        help="connect with TLS, trusting this CA file (default $MESHGATE_TLS_CA; none: plaintext)",
    )
    q.add_argument("--tls-cert", default=env("MESHGATE_TLS_CERT", ""), help="client certificate (mTLS)")
    q.add_argument("--tls-key", default=env("MESHGATE_TLS_KEY", ""), help="its private key (mTLS)")
    q.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")


def connect(args: argparse.Namespace) -> grpc.Channel:
    """A channel to `args.target`: TLS when a CA or client certificate is given, else plaintext.
    UsageError when a file cannot be read."""
    ca, cert, key = args.tls_ca, args.tls_cert, args.tls_key
    if not (ca or cert):
        return grpc.insecure_channel(args.target)
    if bool(cert) != bool(key):
        raise UsageError("--tls-cert and --tls-key go together")

    def read(path: str) -> bytes | None:
        try:
            return Path(path).read_bytes() if path else None
        except OSError as err:
            raise UsageError(f"{path}: {err.strerror}") from None

    creds = grpc.ssl_channel_credentials(read(ca), read(key), read(cert))
    return grpc.secure_channel(args.target, creds)


def models(args: argparse.Namespace) -> int:
    timeout, as_json, api_key = args.timeout, args.json, args.api_key
    with connect(args) as channel:
        try:
            resp = models_pb2_grpc.ModelsStub(channel).ListModels(
                models_pb2.ListModelsRequest(), timeout=timeout, metadata=_metadata(api_key)
            )
        except grpc.RpcError as err:
            return _fail(err)
    if as_json:
        from google.protobuf.json_format import MessageToDict

        print(json.dumps(MessageToDict(resp), indent=2))
        return 0
    print(f"{'MODEL':24} {'READY':6} {'BACKENDS':18} {'POOLS':16} ENDPOINTS (ready/total)")
    for m in resp.models:
        eps = [e for p in m.pools for e in p.endpoints]
        ready = sum(e.ready for e in eps)
        pools = ",".join(p.name for p in m.pools)
        print(
            f"{m.name:24} {'yes' if m.ready else 'no':6} {','.join(m.backends):18} {pools:16} {ready}/{len(eps)}"
        )
    return 0


def model_endpoints(args: argparse.Namespace) -> int:
    """One model's endpoints and what the scheduler sees of each (why traffic goes where)."""
    model, timeout, as_json, api_key = args.model, args.timeout, args.json, args.api_key
    with connect(args) as channel:
        try:
            resp = models_pb2_grpc.ModelsStub(channel).GetModel(
                models_pb2.GetModelRequest(name=model), timeout=timeout, metadata=_metadata(api_key)
            )
        except grpc.RpcError as err:
            return _fail(err)
    if as_json:
        from google.protobuf.json_format import MessageToDict

        print(json.dumps(MessageToDict(resp.model), indent=2))
        return 0

    def opt(load: models_pb2.EndpointLoad, field: str, fmt: str) -> str:
        return format(getattr(load, field), fmt) if load.HasField(field) else "-"

    print(
        f"{'POOL':12} {'ENDPOINT':16} {'READY':5} {'CAP':>4} {'SLOTS':>5} {'INFLT':>5} {'UNITS':>6}"
        f" {'SCORE':>5} {'GPU':>4} {'QUEUE':>5} {'BUSY':>5} {'OTHERS':>6} {'BG':>4} {'OURS':>4}"
        f" {'AGE':>5}  STATUS"
    )
    for pool in resp.model.pools:
        for e in pool.endpoints:
            load = e.load
            scraped = e.HasField("load")
            status = "ejected" if e.ejected else e.status_message
            print(
                f"{pool.name:12} {e.id:16} {'yes' if e.ready else 'no':5} {e.capacity:4g} {e.slots:5}"
                f" {e.in_flight:5} {e.outstanding_units:6.1f}"
                f" {(format(e.score, '.2f') if e.score >= 0 else '-'):>5}"
                f" {opt(load, 'gpu_utilization', '.0%'):>4} {opt(load, 'queue_depth', 'g'):>5}"
                f" {opt(load, 'busy', '.1f'):>5} {opt(load, 'others_running', '.1f'):>6}"
                f" {opt(load, 'background_load', '.0%'):>4} {opt(load, 'our_share', '.0%'):>4}"
                f" {(format(load.age_seconds, '.1f') + 's') if scraped else '-':>5}  {status}"
            )
    return 0


def infer(args: argparse.Namespace) -> int:
    try:
        inputs = [parse_input(s) for s in args.input]
    except (UsageError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    req = inference_pb2.InferRequest(
        model=args.model,
        model_version=args.version,
        id=args.id,
        inputs=inputs,
        outputs=[inference_pb2.RequestedOutput(name=n) for n in args.output],
        routing=routing_pb2.RoutingHints(
            preferred_region=args.region,
            prefer={"latency": routing_pb2.PREFERENCE_LATENCY, "cost": routing_pb2.PREFERENCE_COST}.get(
                args.prefer or "", routing_pb2.PREFERENCE_UNSPECIFIED
            ),
        ),
    )
    with connect(args) as channel:
        try:
            resp = inference_pb2_grpc.InferenceStub(channel).Infer(
                req, timeout=args.timeout, metadata=_metadata(args.api_key)
            )
        except grpc.RpcError as err:
            return _fail(err)
    outputs = {t.name: tensor_values(t) for t in resp.outputs}
    route = resp.route
    if args.json:
        doc = {
            "model": resp.model,
            "model_version": resp.model_version,
            "id": resp.id,
            "route": {
                "pool": route.pool,
                "endpoint": route.endpoint,
                "backend": route.backend,
                "attempts": route.attempts,
                "model": route.model,
                "skipped": list(route.skipped),
            },
            "outputs": [
                {
                    "name": t.name,
                    "datatype": tensor_pb2.DataType.Name(t.datatype).removeprefix("DATA_TYPE_"),
                    "shape": list(t.shape),
                    "data": v if isinstance(v, list) else v.ravel().tolist(),
                }
                for t, v in zip(resp.outputs, outputs.values(), strict=True)
            ],
        }
        print(json.dumps(doc))
        return 0
    version = f" v{resp.model_version}" if resp.model_version else ""
    print(
        f"{resp.model}{version} answered by {route.pool}/{route.endpoint} ({route.backend}) via meshgate at {args.target}"
    )
    if route.skipped:
        print(f"  passed over: {', '.join(route.skipped)}")
    for t, v in zip(resp.outputs, outputs.values(), strict=True):
        dtype = tensor_pb2.DataType.Name(t.datatype).removeprefix("DATA_TYPE_")
        print(
            f"  {t.name} {dtype} {list(t.shape)}: {v if isinstance(v, list) else np.array2string(v, threshold=50)}"
        )
    return 0


def health(args: argparse.Namespace) -> int:
    """`meshgate health`: 0 when the gateway (or --service, a pool) is SERVING, 1 otherwise."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with connect(args) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=min(args.timeout, 5.0)
            )
    except grpc.RpcError as err:
        print(f"{args.target}: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    print(f"{args.target} {args.service or '(gateway)'}: {status}")
    return 0 if resp.status == health_pb2.HealthCheckResponse.SERVING else 1
