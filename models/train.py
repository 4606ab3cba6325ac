#!/usr/bin/env python3
"""Train Ferry's shipped models on data sets that ship inside scikit-learn and export them to ONNX.

Writes, next to this file:
  iris-v1.onnx   logistic regression on iris (4 FP32 inputs -> label INT64, probabilities FP32[3])
  iris-v2.onnx   an MLP on iris with the same inputs and outputs (a second revision for rollouts)
  digits.onnx    a random forest on the 8x8 digits (64 FP32 inputs -> label, probabilities FP32[10])
  broken.onnx    loads and type-checks, but every inference fails (a Gather index out of range)
  faulty.onnx    passes the server's warm-up (all-zero input), then fails every real request
  iris-slow.onnx iris-v1 with the same inputs and outputs, plus a chain of 384x384 matmuls that
                 makes each call milliseconds slower (a canary that fails the latency rules)
  datatypes.onnx one input and output per OIP datatype: out_T = in_T twice side by side
  expected.json  inputs and scikit-learn's own outputs, so tests check Ferry's answers against them

With --joblib-dir DIR it also writes the fitted estimators as joblib files for the Python peers
of the benchmark (bench/), so every server answers with the very same fit.
"""
import argparse
import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_digits, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

HERE = os.path.dirname(os.path.abspath(__file__))
OPSETS = {"": 17, "ai.onnx.ml": 3}


def export(est, n_features, path, doc):
    # zipmap=False: tract runs LinearClassifier / TreeEnsembleClassifier but not ZipMap; the
    # probabilities come out as a plain FP32 tensor. The batch dimension stays unnamed (None).
    model = to_onnx(
        est,
        initial_types=[("input", FloatTensorType([None, n_features]))],
        options={id(est): {"zipmap": False}},
        target_opset=OPSETS,
    )
    model.doc_string = doc
    model.producer_name = "ferry-models"
    onnx.checker.check_model(model)
    onnx.save(model, path)


def broken(path):
    # Same input as iris, but the Gather reads column (100 + |sum of the input|) of a 4-column input.
    # The index depends on the data, so the graph loads and types (output [N, 1]) and every
    # inference fails at run time, warm-up included.
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1])
    offset = helper.make_tensor("offset", TensorProto.FLOAT, [1], [100.0])
    nodes = [
        helper.make_node("Abs", ["input"], ["magnitude"]),
        helper.make_node("ReduceSum", ["magnitude"], ["total"], keepdims=0),
        helper.make_node("Add", ["total", "offset"], ["shifted"]),
        helper.make_node("Cast", ["shifted"], ["bad_index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["input", "bad_index"], ["output"], axis=1),
    ]
    graph = helper.make_graph(nodes, "broken", [inp], [out], [offset])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.producer_name = "ferry-models"
    onnx.checker.check_model(model)
    onnx.save(model, path)


def faulty(path):
    # As broken, but the Gather reads column 1000 x |sum of the input|: 0 for the all-zero warm-up
    # input, out of range for any real row. The model turns READY and fails in service.
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1])
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [1], [1000.0])
    nodes = [
        helper.make_node("Abs", ["input"], ["magnitude"]),
        helper.make_node("ReduceSum", ["magnitude"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "scale"], ["scaled"]),
        helper.make_node("Cast", ["scaled"], ["bad_index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["input", "bad_index"], ["output"], axis=1),
    ]
    graph = helper.make_graph(nodes, "faulty", [inp], [out], [scale])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.producer_name = "ferry-models"
    onnx.checker.check_model(model)
    onnx.save(model, path)


def slow(iris_path, path, layers=480, width=384):
    # iris-v1's graph, its probabilities plus 1e-30 x (a tanh-MLP of `layers` shared 384x384
    # layers over the input): the answers are iris-v1's, each call costs ~layers x 147k MACs more.
    model = onnx.load(iris_path)
    graph = model.graph
    probabilities = next(o for o in graph.output if o.name == "probabilities")
    for node in graph.node:
        node.output[:] = ["probabilities_fast" if o == "probabilities" else o for o in node.output]
    rng = np.random.default_rng(0)
    w_in = (rng.standard_normal((4, width)) / 2.0).astype(np.float32)
    w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    graph.initializer.extend([
        onnx.numpy_helper.from_array(w_in, "slow_w_in"),
        onnx.numpy_helper.from_array(w, "slow_w"),
        onnx.numpy_helper.from_array(np.array([1e-30], dtype=np.float32), "slow_tiny"),
    ])
    nodes = [helper.make_node("MatMul", ["input", "slow_w_in"], ["slow_0"])]
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"slow_{i}", "slow_w"], [f"slow_mm_{i}"]))
        nodes.append(helper.make_node("Tanh", [f"slow_mm_{i}"], [f"slow_{i + 1}"]))
    nodes += [
        helper.make_node("ReduceMean", [f"slow_{layers}"], ["slow_sum"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["slow_sum", "slow_tiny"], ["slow_nothing"]),
        helper.make_node("Add", ["probabilities_fast", "slow_nothing"], [probabilities.name]),
    ]
    graph.node.extend(nodes)
    model.doc_string = "iris logistic regression, slowed down by a discarded matmul chain"
    onnx.checker.check_model(model)
    onnx.save(model, path)


# Every OIP datatype, for the end-to-end datatype tests: output out_T = Concat(in_T, in_T) on axis 1.
TYPES = {
    "BOOL": TensorProto.BOOL, "UINT8": TensorProto.UINT8, "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32, "UINT64": TensorProto.UINT64, "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16, "INT32": TensorProto.INT32, "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def datatypes(path):
    inputs, outputs, nodes = [], [], []
    for name, proto in TYPES.items():
        inputs.append(helper.make_tensor_value_info(f"in_{name}", proto, ["N", 2]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", proto, ["N", 4]))
        nodes.append(helper.make_node("Concat", [f"in_{name}", f"in_{name}"], [f"out_{name}"], axis=1))
    graph = helper.make_graph(nodes, "datatypes", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.producer_name = "ferry-models"
    onnx.checker.check_model(model)
    onnx.save(model, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", default=HERE)
    ap.add_argument("--joblib-dir")
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)

    iris = load_iris()
    xi, yi = iris.data.astype(np.float32), iris.target
    digits = load_digits()
    xd, yd = digits.data.astype(np.float32), digits.target

    fits = {
        "iris-v1": (LogisticRegression(max_iter=1000).fit(xi, yi), xi, yi, "iris logistic regression"),
        "iris-v2": (
            MLPClassifier(hidden_layer_sizes=(16,), max_iter=3000, random_state=0).fit(xi, yi),
            xi,
            yi,
            "iris MLP (16 hidden units)",
        ),
        "digits": (
            RandomForestClassifier(n_estimators=16, max_depth=10, random_state=0).fit(xd, yd),
            xd,
            yd,
            "digits random forest (16 trees)",
        ),
    }
    expected = {}
    rows = {"iris-v1": [0, 50, 100, 149], "iris-v2": [0, 50, 100, 149], "digits": [0, 1, 2, 3]}
    for name, (est, x, y, doc) in fits.items():
        export(est, x.shape[1], os.path.join(args.out_dir, f"{name}.onnx"), doc)
        sample = x[rows[name]]
        expected[name] = {
            "input": sample.tolist(),
            "label": est.predict(sample).astype(int).tolist(),
            "probabilities": est.predict_proba(sample).astype(np.float32).tolist(),
            "accuracy": float(est.score(x, y)),
        }
    broken(os.path.join(args.out_dir, "broken.onnx"))
    faulty(os.path.join(args.out_dir, "faulty.onnx"))
    slow(os.path.join(args.out_dir, "iris-v1.onnx"), os.path.join(args.out_dir, "iris-slow.onnx"))
    datatypes(os.path.join(args.out_dir, "datatypes.onnx"))
    with open(os.path.join(args.out_dir, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")

    if args.joblib_dir:
        import joblib

        os.makedirs(args.joblib_dir, exist_ok=True)
        for name, (est, *_rest) in fits.items():
            joblib.dump(est, os.path.join(args.joblib_dir, f"{name}.joblib"))
    print("wrote", ", ".join(list(fits) + ["broken", "faulty", "iris-slow"]), "to", args.out_dir)


if __name__ == "__main__":
    main()
