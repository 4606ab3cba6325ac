"""The Python peer for MiniLM: a KServe model server running onnxruntime on the same ONNX file
Ferry serves, with the same tokenizer.json (tokenizers), sentences in, embeddings out."""
import argparse
import uuid

import kserve
import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse
from tokenizers import Tokenizer


class MiniLM(kserve.Model):
    def __init__(self, name, model, tokenizer):
        super().__init__(name)
        self.tokenizer = Tokenizer.from_file(tokenizer)
        self.tokenizer.enable_padding()
        self.tokenizer.enable_truncation(256)
        self.session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        self.ready = True

    def predict(self, payload: InferRequest, headers=None, response_headers=None):
        texts = [t.decode() if isinstance(t, bytes) else t for t in payload.inputs[0].data]
        enc = self.tokenizer.encode_batch(texts)
        feed = {
            "input_ids": np.array([e.ids for e in enc], np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], np.int64),
        }
        (emb,) = self.session.run(["sentence_embedding"], feed)
        out = InferOutput("sentence_embedding", list(emb.shape), "FP32")
        out.set_data_from_numpy(emb.astype(np.float32), binary_data=False)
        return InferResponse(model_name=self.name, infer_outputs=[out], response_id=payload.id or str(uuid.uuid4()))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--http-port", type=int, default=8080)
    ap.add_argument("--grpc-port", type=int, default=8081)
    a = ap.parse_args()
    kserve.ModelServer(http_port=a.http_port, grpc_port=a.grpc_port, workers=1).start([MiniLM("minilm", a.model, a.tokenizer)])
