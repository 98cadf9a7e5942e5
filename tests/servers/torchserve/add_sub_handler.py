"""TorchServe handler for the tests: add_sub over JSON inputs, in both TorchServe protocols.

Native gRPC `Predictions`: each request is {"INPUT0": b"[1, 2]", "INPUT1": b"[3, 4]"} (JSON lists);
the reply is JSON {"OUTPUT0": [...sum], "OUTPUT1": [...difference]}.
Open Inference Protocol (TS_OPEN_INFERENCE_PROTOCOL=oip): the request arrives as the v2 JSON body
and the reply must be v2 JSON ({"id", "model_name", "model_version", "outputs": [{name, shape, datatype, data}]}).
An input named "fail" makes the handler raise, as a broken model would.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import torch
from ts.torch_handler.base_handler import BaseHandler


def _values(raw: Any) -> list[float]:
    if isinstance(raw, (bytes, bytearray)):
        raw = json.loads(bytes(raw).decode())
    return [float(v) for v in raw]


class AddSub(BaseHandler):  # type: ignore[misc]
    def initialize(self, context: Any) -> None:
        self.context = context
        self.initialized = True

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        out: list[Any] = []
        for item in data:
            if os.environ.get("MESHGATE_TS_DEBUG"):
                print("REQUEST", repr(item)[:2000], flush=True)
            body = item.get("body") or item.get("data")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(bytes(body).decode())
            if isinstance(body, dict) and "inputs" in body:  # Open Inference Protocol (v2 JSON)
                tensors = {t["name"]: t for t in body["inputs"]}
                a, b = (
                    torch.tensor(_values(tensors["INPUT0"]["data"])),
                    torch.tensor(_values(tensors["INPUT1"]["data"])),
                )
                n = len(a)
                out.append(
                    {
                        # TorchServe's OIP frontend reads all four keys; a missing one kills the worker.
                        "model_name": context.manifest["model"]["modelName"],
                        "model_version": context.manifest["model"].get("modelVersion", ""),
                        "id": body.get("id", ""),
                        "outputs": [
                            {"name": "OUTPUT0", "shape": [n], "datatype": "FP32", "data": (a + b).tolist()},
                            {"name": "OUTPUT1", "shape": [n], "datatype": "FP32", "data": (a - b).tolist()},
                        ],
                    }
                )
                continue
            if "fail" in item:
                raise ValueError("the model failed on purpose")
            if "sleep" in item:
                time.sleep(float(bytes(item["sleep"]).decode()))
            a, b = torch.tensor(_values(item["INPUT0"])), torch.tensor(_values(item["INPUT1"]))
            out.append({"OUTPUT0": (a + b).tolist(), "OUTPUT1": (a - b).tolist()})
        return out
