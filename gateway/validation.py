"""Request validation: every call is checked here before it reaches a backend."""

from __future__ import annotations

import struct

from adapters import InferCall, Tensor
from adapters.base import DATATYPE_SIZES
from adapters.kserve_wire import CONTENTS_FIELD

from .config import LimitsConfig
from .errors import invalid


def validate_infer(call: InferCall, limits: LimitsConfig) -> None:
    """Raise GatewayError(INVALID_ARGUMENT) naming the first bad field."""
    if not call.model:
        raise invalid("model", "required")
    if not call.inputs:
        raise invalid("inputs", "at least one input tensor is required")
    if len(call.inputs) > limits.max_inputs:
        raise invalid("inputs", f"{len(call.inputs)} inputs exceed the limit of {limits.max_inputs}")
    seen: set[str] = set()
    total = 0
    for i, t in enumerate(call.inputs):
        where = f"inputs[{i}]"
        if not t.name:
            raise invalid(f"{where}.name", "required")
        if t.name in seen:
            raise invalid(f"{where}.name", f"duplicate input name {t.name!r}")
        seen.add(t.name)
        total += _validate_tensor(where, t, limits)
        if total > limits.max_request_bytes:
            raise invalid(
                f"{where}.data",
                f"request data is {total} bytes, over the limit of {limits.max_request_bytes} bytes",
            )
    for i, o in enumerate(call.outputs):
        if not o.name:
            raise invalid(f"outputs[{i}].name", "required")


def _validate_tensor(where: str, t: Tensor, limits: LimitsConfig) -> int:
    """Check one tensor; return its data size in bytes."""
    size = DATATYPE_SIZES.get(t.datatype)
    if size is None:
        shown = t.datatype or "(empty)"
        raise invalid(f"{where}.datatype", f"unsupported datatype {shown}; expected one of {_DTYPES}")
    if not t.shape:
        raise invalid(f"{where}.shape", "must have at least one dimension")
    if len(t.shape) > limits.max_dims:
        raise invalid(f"{where}.shape", f"{len(t.shape)} dimensions exceed the limit of {limits.max_dims}")
    count = 1
    for d, dim in enumerate(t.shape):
        if dim < 0:
            raise invalid(f"{where}.shape", f"dimension {d} is {dim}; dimensions must be >= 0")
        count *= dim
    if t.raw is not None:
        return _check_raw(where, t, count, size)
    if t.contents is None:
        raise invalid(f"{where}.data", "no data: set raw bytes or typed contents")
    if t.n_contents < 0:
        want = CONTENTS_FIELD.get(t.datatype)
        hint = f"values go in contents.{want}" if want else "this datatype has no typed form; send raw bytes"
        raise invalid(f"{where}.contents", f"contents do not match datatype {t.datatype}: {hint}")
    if t.n_contents != count:
        raise invalid(
            f"{where}.contents",
            f"shape {list(t.shape)} holds {count} elements but contents has {t.n_contents}",
        )
    return len(t.contents)


def _check_raw(where: str, t: Tensor, count: int, size: int) -> int:
    raw = t.raw
    assert raw is not None
    if size:
        if len(raw) != count * size:
            raise invalid(
                f"{where}.raw",
                f"shape {list(t.shape)} of {t.datatype} needs {count * size} bytes, got {len(raw)}",
            )
        return len(raw)
    # BYTES: walk the length prefixes without copying.
    n, i, end = 0, 0, len(raw)
    while i < end:
        if i + 4 > end:
            raise invalid(f"{where}.raw", f"BYTES element {n} has a truncated 4-byte length prefix")
        (length,) = struct.unpack_from("<I", raw, i)
        i += 4 + length
        if i > end:
            raise invalid(
                f"{where}.raw", f"BYTES element {n} declares {length} bytes past the end of the data"
            )
        n += 1
    if n != count:
        raise invalid(
            f"{where}.raw", f"shape {list(t.shape)} holds {count} elements but raw has {n} BYTES elements"
        )
    return end


_DTYPES = ", ".join(DATATYPE_SIZES)
