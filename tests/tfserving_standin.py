"""A stand-in for TensorFlow Serving's REST API (no TF Serving server is obtainable here).

Serves the classic example model `half_plus_two` (y = 0.5 x + 2) in versions 1 and 2 (version 2
answers y = 0.5 x + 3) with label `stable` -> 1, per the documented API:
GET /v1/models/<m>[/versions/<v>|/labels/<l>] (model_version_status), GET .../metadata (the
SignatureDef map, as TF Serving prints it from protobuf JSON), POST ...:predict with the
row ("instances") or columnar ("inputs") format, errors as {"error": "..."} with 400/404.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.standin_server import ThreadedServer

VERSIONS = {"1": 2.0, "2": 3.0}
LABELS = {"stable": "1", "canary": "2"}


class TFServingStandIn(ThreadedServer):
    def __init__(self) -> None:
        super().__init__("tfserving-standin")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/models/{spec:.*}", self._status)
        app.router.add_post("/v1/models/{spec:.*}", self._predict)

    def _resolve(self, spec: str) -> tuple[str | None, str | None, str]:
        """'m', 'm/versions/2', 'm/labels/stable' -> (model, version, error)."""
        parts = spec.split("/")
        if parts[0] != "half_plus_two":
            return None, None, f"Servable not found for request: Latest({parts[0]})"
        if len(parts) == 1:
            return parts[0], max(VERSIONS), ""
        if len(parts) == 3 and parts[1] == "versions":
            return (
                (parts[0], parts[2], "")
                if parts[2] in VERSIONS
                else (None, None, f"Servable not found for request: Specific(half_plus_two, {parts[2]})")
            )
        if len(parts) == 3 and parts[1] == "labels" and parts[2] in LABELS:
            return parts[0], LABELS[parts[2]], ""
        return None, None, f"Malformed request: {spec}"

    async def _status(self, request: web.Request) -> web.Response:
        spec = request.match_info["spec"]
        if spec.endswith("/metadata"):
            return self._metadata(spec.removesuffix("/metadata"))
        model, version, error = self._resolve(spec)
        if model is None:
            return web.json_response({"error": error}, status=404)
        if len(spec.split("/")) == 1:  # every loaded version, as TF Serving lists them
            return web.json_response(
                {
                    "model_version_status": [
                        {
                            "version": v,
                            "state": "AVAILABLE",
                            "status": {"error_code": "OK", "error_message": ""},
                        }
                        for v in sorted(VERSIONS, reverse=True)
                    ]
                }
            )
        return web.json_response(
            {
                "model_version_status": [
                    {
                        "version": version,
                        "state": "AVAILABLE",
                        "status": {"error_code": "OK", "error_message": ""},
                    }
                ]
            }
        )

    def _metadata(self, spec: str) -> web.Response:
        model, version, error = self._resolve(spec)
        if model is None:
            return web.json_response({"error": error}, status=404)

        def tensor(name: str) -> dict[str, Any]:
            dims = [{"size": "-1", "name": ""}, {"size": "1", "name": ""}]
            return {
                "dtype": "DT_FLOAT",
                "tensor_shape": {"dim": dims, "unknown_rank": False},
                "name": f"{name}:0",
            }

        signature = {
            "inputs": {"x": tensor("x")},
            "outputs": {"y": tensor("y")},
            "method_name": "tensorflow/serving/predict",
        }
        return web.json_response(
            {
                "model_spec": {"name": model, "signature_name": "", "version": version},
                "metadata": {"signature_def": {"signature_def": {"serving_default": signature}}},
            }
        )

    async def _predict(self, request: web.Request) -> web.Response:
        spec = request.match_info["spec"]
        if not spec.endswith(":predict"):
            return web.json_response({"error": "Malformed request: POST " + spec}, status=400)
        model, version, error = self._resolve(spec.removesuffix(":predict"))
        if model is None or version is None:
            return web.json_response({"error": error}, status=404)
        body: dict[str, Any] = await request.json()
        offset = VERSIONS[version]
        if "instances" in body:
            xs = body["instances"]
        elif "inputs" in body:
            inputs = body["inputs"]
            xs = inputs.get("x") if isinstance(inputs, dict) else inputs
        else:
            return web.json_response({"error": "Missing 'inputs' or 'instances' key"}, status=400)
        try:
            ys = _apply(xs, offset)
        except TypeError:
            return web.json_response(
                {"error": 'JSON Value: "abc" Type: String is not of expected type: float'}, status=400
            )
        return web.json_response({"predictions": ys} if "instances" in body else {"outputs": ys})


def _apply(x: Any, offset: float) -> Any:
    if isinstance(x, list):
        return [_apply(v, offset) for v in x]
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(x)
    return 0.5 * x + offset
