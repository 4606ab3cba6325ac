#!/usr/bin/env python3
"""Generate many distinct small models for the pool tests and benchmark: a generator, not files.

Model i is a logistic regression trained on iris through k random Fourier features
(x -> cos(x W + b) -> softmax(f C + i)), with its own seed, feature width and regularization, so
models differ in fit, in answers and in size: k runs log-uniformly from 8 to 8192 features
(files of about 1 KB to 400 KB). Each has iris's inputs and outputs (input FP32[N, 4] ->
label INT64[N], probabilities FP32[N, 3]).

Writes into --out-dir: m-000.onnx ... and expected.json ({name: {input, label, probabilities,
features}}) with scikit-learn's own answers on four fixed rows, which the tests compare to
Ferry's. Deterministic: the same --count gives the same files.
"""
import argparse
import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

ROWS = [0, 50, 100, 149]


def features(x, w, b):
    return np.cos(x @ w + b)


def graph(name, w, b, coef, intercept):
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])
    label = helper.make_tensor_value_info("label", TensorProto.INT64, [None])
    probs = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])
    inits = [
        numpy_helper.from_array(w.astype(np.float32), "w"),
        numpy_helper.from_array(b.astype(np.float32), "b"),
        numpy_helper.from_array(coef.T.astype(np.float32), "coef"),
        numpy_helper.from_array(intercept.astype(np.float32), "intercept"),
    ]
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["projected"]),
        helper.make_node("Add", ["projected", "b"], ["shifted"]),
        helper.make_node("Cos", ["shifted"], ["features"]),
        helper.make_node("MatMul", ["features", "coef"], ["scores"]),
        helper.make_node("Add", ["scores", "intercept"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    g = helper.make_graph(nodes, name, [inp], [label, probs], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.producer_name = "ferry-models"
    model.doc_string = f"iris logistic regression on {w.shape[1]} random Fourier features"
    onnx.checker.check_model(model)
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--out-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "many"))
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    iris = load_iris()
    x, y = iris.data.astype(np.float32), iris.target
    sample = x[ROWS]
    expected = {}
    for i in range(args.count):
        rng = np.random.default_rng(i)
        k = int(round(8 * 1024 ** rng.random()))
        gamma = 0.2 + rng.random()
        w = (rng.normal(size=(4, k)) * gamma).astype(np.float32)
        b = rng.uniform(0, 2 * np.pi, size=k).astype(np.float32)
        est = LogisticRegression(C=0.05 + 2 * rng.random(), max_iter=300).fit(features(x, w, b), y)
        name = f"m-{i:03d}"
        onnx.save(graph(name, w, b, est.coef_, est.intercept_), os.path.join(args.out_dir, f"{name}.onnx"))
        f = features(sample, w, b)
        expected[name] = {
            "input": sample.tolist(),
            "label": est.predict(f).astype(int).tolist(),
            "probabilities": est.predict_proba(f).astype(np.float32).tolist(),
            "features": k,
        }
    with open(os.path.join(args.out_dir, "expected.json"), "w") as out:
        json.dump(expected, out)
    print(f"wrote {args.count} models and expected.json to {args.out_dir}")


if __name__ == "__main__":
    main()
