"""A KServe v2 model for MLServer: total = sum of input `x`, as one FP32 element."""

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse


class SumModel(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        names = [i.name for i in payload.inputs]
        if names != ["x"]:
            # InferenceError is MLServer's 400: clients see INVALID_ARGUMENT.
            raise InferenceError(f"model 'sum' takes one input named 'x', got {names}")
        x = NumpyCodec.decode_input(payload.inputs[0])
        total = np.array([x.sum()], dtype=np.float32)
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("total", total)])
