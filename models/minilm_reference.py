#!/usr/bin/env python3
"""Reference embeddings for the MiniLM ONNX graph, computed by onnxruntime (an independent engine)
with the same tokenizer.json, so Ferry's tract + tokenizers path can be checked against them.

usage: minilm_reference.py MODEL.onnx TOKENIZER.json OUT.json
"""
import json
import sys

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "A man is riding a horse.",
    "The new movie is awesome, I loved every minute of it!",
    "Ferry ships machine-learning models to production.",
]


def main():
    model, tokenizer_path, out = sys.argv[1:4]
    tok = Tokenizer.from_file(tokenizer_path)
    tok.no_padding()
    tok.enable_truncation(256)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    embeddings = []
    for sentence in SENTENCES:  # one at a time: no padding at all in the reference
        enc = tok.encode(sentence)
        feed = {
            "input_ids": np.array([enc.ids], np.int64),
            "attention_mask": np.array([enc.attention_mask], np.int64),
            "token_type_ids": np.array([enc.type_ids], np.int64),
        }
        (embedding,) = session.run(["sentence_embedding"], feed)
        embeddings.append(embedding[0].tolist())
    with open(out, "w") as f:
        json.dump({"sentences": SENTENCES, "embeddings": embeddings}, f)
    print("wrote", out)


if __name__ == "__main__":
    main()
