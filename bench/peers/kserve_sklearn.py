"""The KServe Python model server on the same scikit-learn fit (its sklearn server is not
published on PyPI; this kserve.Model subclass does what it does for OIP v2)."""
import argparse
import uuid

import joblib
import kserve
import numpy as np
from kserve import InferOutput, InferRequest, InferResponse


class SklearnModel(kserve.Model):
    def __init__(self, name, path):
        super().__init__(name)
        self.model = joblib.load(path)
        self.ready = True

    def predict(self, payload: InferRequest, headers=None, response_headers=None):
        x = payload.inputs[0].as_numpy().astype(np.float32)
        labels = self.model.predict(x).astype(np.int64)
        probabilities = self.model.predict_proba(x).astype(np.float32)
        outputs = [InferOutput("label", list(labels.shape), "INT64"), InferOutput("probabilities", list(probabilities.shape), "FP32")]
        outputs[0].set_data_from_numpy(labels, binary_data=False)
        outputs[1].set_data_from_numpy(probabilities, binary_data=False)
        return InferResponse(model_name=self.name, infer_outputs=outputs, response_id=payload.id or str(uuid.uuid4()))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="iris")
    ap.add_argument("--path", required=True)
    ap.add_argument("--http-port", type=int, default=8080)
    ap.add_argument("--grpc-port", type=int, default=8081)
    a = ap.parse_args()
    kserve.ModelServer(http_port=a.http_port, grpc_port=a.grpc_port, workers=1).start([SklearnModel(a.name, a.path)])
