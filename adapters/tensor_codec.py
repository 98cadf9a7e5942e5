"""Raw KServe v2 tensor bytes <-> numpy, for the CLI and the rare mixed raw/typed call.

The request path never calls this for raw-to-raw traffic.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from .base import Tensor
from .kserve_wire import CONTENTS_FIELD

NUMPY_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


def split_bytes_elements(raw: bytes) -> list[bytes]:
    """Split BYTES raw data (4-byte little-endian length + payload, repeated).

    Raises ValueError when a length runs past the end.
    """
    out: list[bytes] = []
    i, n = 0, len(raw)
    while i < n:
        if i + 4 > n:
            raise ValueError(f"truncated length prefix at byte {i}")
        (size,) = struct.unpack_from("<I", raw, i)
        i += 4
        if i + size > n:
            raise ValueError(f"element at byte {i - 4} declares {size} bytes, {n - i} remain")
        out.append(raw[i : i + size])
        i += size
    return out


def join_bytes_elements(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


def decode_raw(raw: bytes, datatype: str) -> Any:
    """Raw bytes -> flat numpy array (or list[bytes] for BYTES)."""
    if datatype == "BYTES":
        return split_bytes_elements(raw)
    if datatype == "BF16":
        as_u16 = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return as_u16.view(np.float32)
    return np.frombuffer(raw, dtype=np.dtype(NUMPY_DTYPES[datatype]).newbyteorder("<"))


def encode_numpy(array: Any, datatype: str) -> bytes:
    """numpy array (or sequence of bytes/str for BYTES) -> raw bytes in row-major order."""
    if datatype == "BYTES":
        flat = np.asarray(array, dtype=object).ravel()
        return join_bytes_elements([x.encode() if isinstance(x, str) else bytes(x) for x in flat])
    dtype = np.dtype(NUMPY_DTYPES[datatype]).newbyteorder("<")
    return np.ascontiguousarray(np.asarray(array, dtype=dtype)).tobytes()


def tensor_values(t: Tensor) -> Any:
    """A tensor's elements, flat: a numpy array, or list[bytes] for BYTES."""
    if t.raw is not None:
        return decode_raw(t.raw, t.datatype)
    from tritonclient.grpc import service_pb2 as pb

    contents = pb.InferTensorContents.FromString(t.contents or b"")
    values = list(getattr(contents, CONTENTS_FIELD.get(t.datatype, "fp32_contents")))
    return values if t.datatype == "BYTES" else np.asarray(values)


def tensor_to_list(t: Tensor) -> Any:
    """A tensor as nested JSON-ready lists in its shape (BYTES elements as UTF-8 text)."""
    values = tensor_values(t)
    if t.datatype == "BYTES":
        text = [v.decode("utf-8", "replace") for v in values]
        return np.array(text, dtype=object).reshape(t.shape).tolist()
    return np.asarray(values).reshape(t.shape).tolist()
