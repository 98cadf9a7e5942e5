"""Cache entries as bytes, for a cache shared through Redis: data only, never pickle (a
poisoned Redis must not run code in the gateway).

An entry is (answer, route). The answer is an InferResult (kept as the KServe v2
ModelInferResponse it is sent as), a GenerateResult, an EmbedResult, or a stream's messages (a
tuple of those and TextDelta / StreamEnd). The format is a 4-byte version tag, the length of a
JSON header, the header, then the ModelInferResponses' bytes back to back (tensor bytes are
never base64'd). Anything that does not parse as this format is no entry (a miss), never an error.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2 as pb

from adapters import InferResult
from adapters.kserve_wire import response_from_result, result_from_response
from adapters.llm import EmbedResult, GenerateResult, StreamEnd, TextDelta, ToolCall, Usage

from ...pipeline.attempts import Route

_TAG = b"MGC1"
_LEN = struct.Struct("<I")


def encode(entry: tuple[Any, Route]) -> bytes:
    answer, route = entry
    blobs: list[bytes] = []
    header = {"r": list(route), "a": _item(answer, blobs), "b": [len(b) for b in blobs]}
    head = json.dumps(header, separators=(",", ":")).encode()  # ASCII: lone surrogates survive too
    return b"".join((_TAG, _LEN.pack(len(head)), head, *blobs))


def decode(data: bytes) -> tuple[Any, Route] | None:
    """The entry, or None when `data` is not one (another version, corrupt)."""
    try:
        if data[:4] != _TAG:
            return None
        (n,) = _LEN.unpack_from(data, 4)
        header = json.loads(data[8 : 8 + n])
        view = memoryview(data)
        blobs, at = [], 8 + n
        for size in header["b"]:
            blobs.append(bytes(view[at : at + size]))
            at += size
        if at != len(data):
            return None
        r = header["r"]
        route = Route(r[0], r[1], r[2], r[3], r[4], tuple(r[5]), bool(r[6]))
        return _value(header["a"], blobs), route
    except (ValueError, KeyError, IndexError, TypeError, struct.error):
        return None


def _item(value: Any, blobs: list[bytes]) -> list[Any]:
    if isinstance(value, InferResult):
        blobs.append(response_from_result(value).SerializeToString())
        return ["i", len(blobs) - 1]
    if isinstance(value, TextDelta):
        return ["d", value.text]
    if isinstance(value, GenerateResult):
        return [
            "g",
            value.model,
            value.text,
            value.finish_reason,
            list(value.usage),
            _tools(value.tool_calls),
        ]
    if isinstance(value, StreamEnd):
        return ["e", value.model, value.finish_reason, list(value.usage), _tools(value.tool_calls)]
    if isinstance(value, EmbedResult):
        return ["m", value.model, [list(v) for v in value.vectors], list(value.usage)]
    if isinstance(value, tuple):
        return ["s", [_item(v, blobs) for v in value]]
    raise TypeError(f"cannot cache a {type(value).__name__}")


def _tools(calls: tuple[ToolCall, ...]) -> list[list[str]]:
    return [list(c) for c in calls]


def _value(item: list[Any], blobs: list[bytes]) -> Any:
    kind = item[0]
    if kind == "i":
        resp = pb.ModelInferResponse()
        try:
            resp.ParseFromString(blobs[item[1]])
        except DecodeError as err:
            raise ValueError(str(err)) from None
        return result_from_response(resp)
    if kind == "d":
        return TextDelta(str(item[1]))
    if kind == "g":
        tools = tuple(ToolCall(*c) for c in item[5])
        return GenerateResult(item[1], item[2], item[3], Usage(*item[4]), tools)
    if kind == "e":
        return StreamEnd(item[1], item[2], Usage(*item[3]), tuple(ToolCall(*c) for c in item[4]))
    if kind == "m":
        return EmbedResult(item[1], tuple(tuple(v) for v in item[2]), Usage(*item[3]))
    if kind == "s":
        return tuple(_value(v, blobs) for v in item[1])
    raise ValueError(f"unknown item {kind!r}")
