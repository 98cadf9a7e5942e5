"""Request validation: every call is checked here before it reaches a backend."""

from __future__ import annotations

import json
import struct

from adapters import InferCall, Tensor
from adapters.base import DATATYPE_SIZES
from adapters.kserve_wire import CONTENTS_FIELD
from adapters.llm import EmbedCall, GenerateCall

from ..config import LimitsConfig
from ..errors import echo, invalid


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
            raise invalid(f"{where}.name", f"duplicate input name {echo(t.name)}")
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


_ROLES = frozenset({"system", "user", "assistant", "tool"})


def validate_generate(call: GenerateCall) -> None:
    """Raise GatewayError(INVALID_ARGUMENT) naming the first bad field of a GenerateRequest."""
    if not call.model:
        raise invalid("model", "required")
    if not call.messages:
        raise invalid("messages", "at least one message is required")
    for i, m in enumerate(call.messages):
        if m.role not in _ROLES:
            raise invalid(
                f"messages[{i}].role", f"{m.role or '(empty)'} is not one of system, user, assistant, tool"
            )
        if not m.text and m.role != "assistant":
            raise invalid(f"messages[{i}].content", "needs at least one non-empty text part")
        if m.role == "tool" and not m.tool_call_id:
            raise invalid(f"messages[{i}].tool_call_id", "required for role tool")
    if call.temperature is not None and not 0 <= call.temperature <= 2:
        raise invalid("sampling.temperature", f"{call.temperature} is outside [0, 2]")
    if call.top_p is not None and not 0 < call.top_p <= 1:
        raise invalid("sampling.top_p", f"{call.top_p} is outside (0, 1]")
    if call.max_tokens is not None and call.max_tokens < 1:
        raise invalid("sampling.max_tokens", f"{call.max_tokens} must be >= 1")
    if len(call.stop) > 4:
        raise invalid("sampling.stop", f"{len(call.stop)} stop sequences; at most 4")
    for i, t in enumerate(call.tools):
        if not t.name:
            raise invalid(f"tools[{i}].name", "required")
        try:
            schema = json.loads(t.parameters_json or "{}")
        except ValueError as err:
            raise invalid(f"tools[{i}].parameters_json", f"not valid JSON: {err}") from None
        if not isinstance(schema, dict):
            raise invalid(f"tools[{i}].parameters_json", "must be a JSON object")


def validate_embed(call: EmbedCall) -> None:
    if not call.model:
        raise invalid("model", "required")
    if not call.inputs:
        raise invalid("inputs", "at least one input is required")
    for i, text in enumerate(call.inputs):
        if not text:
            raise invalid(f"inputs[{i}]", "empty text")
    if call.dimensions < 0:
        raise invalid("dimensions", f"{call.dimensions} must be >= 0")
