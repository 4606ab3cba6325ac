#!/usr/bin/env python3
"""Write all-MiniLM-L6-v2 as an ONNX graph, offline and without torch.

Reads model.safetensors (BERT: 6 layers, hidden 384, 12 heads) and writes an ONNX file with
inputs input_ids / attention_mask / token_type_ids (INT64 [batch, sequence]) and outputs
last_hidden_state and sentence_embedding (masked mean pooling, then L2 normalisation: what the
sentence-transformers pipeline of this model does).

usage: minilm.py MODEL.safetensors OUT.onnx
"""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

HIDDEN, HEADS, LAYERS = 384, 12, 6
HEAD_DIM = HIDDEN // HEADS


class Graph:
    def __init__(self, weights):
        self.w = weights
        self.nodes = []
        self.initializers = []

    def const(self, name, value):
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type, inputs, output=None, **attrs):
        output = output or f"{op_type.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, inputs, [output], **attrs))
        return output

    def dense(self, x, prefix):
        # safetensors keep a Linear weight as [out, in]; MatMul wants [in, out].
        weight = self.const(prefix + ".w", self.w[prefix + ".weight"].T.copy())
        return self.op("Add", [self.op("MatMul", [x, weight]), self.const(prefix + ".b", self.w[prefix + ".bias"])])

    def layer_norm(self, x, prefix):
        scale = self.const(prefix + ".gamma", self.w[prefix + ".weight"])
        bias = self.const(prefix + ".beta", self.w[prefix + ".bias"])
        return self.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=1e-12)

    def gelu(self, x, tag):
        # exact GELU: 0.5 * x * (1 + erf(x / sqrt(2)))
        erf = self.op("Erf", [self.op("Div", [x, self.const(f"sqrt2.{tag}", np.float32(np.sqrt(2.0)))])])
        one_plus = self.op("Add", [erf, self.const(f"one.{tag}", np.float32(1.0))])
        return self.op("Mul", [self.op("Mul", [x, self.const(f"half.{tag}", np.float32(0.5))]), one_plus])


def build(weights):
    g = Graph(weights)
    words = g.op("Gather", [g.const("word_embeddings", weights["embeddings.word_embeddings.weight"]), "input_ids"])
    seq_len = g.op("Shape", ["input_ids"], start=1, end=2)
    positions = g.op(
        "Slice",
        [
            g.const("position_embeddings", weights["embeddings.position_embeddings.weight"]),
            g.const("slice.start", np.array([0], np.int64)),
            seq_len,
            g.const("slice.axis", np.array([0], np.int64)),
        ],
    )
    types = g.op("Gather", [g.const("token_type_embeddings", weights["embeddings.token_type_embeddings.weight"]), "token_type_ids"])
    x = g.layer_norm(g.op("Add", [g.op("Add", [words, positions]), types]), "embeddings.LayerNorm")

    mask = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    # additive attention bias: 0 where attended, -10000 on padding; broadcast over heads and queries
    bias = g.op("Mul", [g.op("Sub", [g.const("mask.one", np.float32(1.0)), mask]), g.const("mask.neg", np.float32(-10000.0))])
    bias = g.op("Unsqueeze", [bias, g.const("mask.axes", np.array([1, 2], np.int64))])
    to_heads = g.const("shape.heads", np.array([0, 0, HEADS, HEAD_DIM], np.int64))
    to_hidden = g.const("shape.hidden", np.array([0, 0, HIDDEN], np.int64))
    scale = g.const("attention.scale", np.float32(1.0 / np.sqrt(HEAD_DIM)))

    for i in range(LAYERS):
        p = f"encoder.layer.{i}."

        def split(t, perm):
            return g.op("Transpose", [g.op("Reshape", [t, to_heads])], perm=perm)

        q = split(g.dense(x, p + "attention.self.query"), [0, 2, 1, 3])
        k = split(g.dense(x, p + "attention.self.key"), [0, 2, 3, 1])
        v = split(g.dense(x, p + "attention.self.value"), [0, 2, 1, 3])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), scale]), bias])
        context = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        context = g.op("Reshape", [g.op("Transpose", [context], perm=[0, 2, 1, 3]), to_hidden])
        x = g.layer_norm(g.op("Add", [g.dense(context, p + "attention.output.dense"), x]), p + "attention.output.LayerNorm")
        hidden = g.gelu(g.dense(x, p + "intermediate.dense"), str(i))
        x = g.layer_norm(g.op("Add", [g.dense(hidden, p + "output.dense"), x]), p + "output.LayerNorm")

    g.op("Identity", [x], "last_hidden_state")
    mask3 = g.op("Unsqueeze", [mask, g.const("pool.axis2", np.array([2], np.int64))])
    axis1 = g.const("pool.axis1", np.array([1], np.int64))
    summed = g.op("ReduceSum", [g.op("Mul", [x, mask3]), axis1], keepdims=0)
    counts = g.op("Max", [g.op("ReduceSum", [mask3, axis1], keepdims=0), g.const("pool.eps", np.float32(1e-9))])
    mean = g.op("Div", [summed, counts])
    norm = g.op(
        "Sqrt",
        [g.op("ReduceSum", [g.op("Mul", [mean, mean]), g.const("norm.axis", np.array([1], np.int64))], keepdims=1)],
    )
    g.op("Div", [mean, g.op("Max", [norm, g.const("norm.eps", np.float32(1e-12))])], "sentence_embedding")

    ids = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in ("input_ids", "attention_mask", "token_type_ids")]
    outs = [
        helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", HIDDEN]),
        helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", HIDDEN]),
    ]
    graph = helper.make_graph(g.nodes, "all-MiniLM-L6-v2", ids, outs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="ferry-models")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    src, dst = sys.argv[1], sys.argv[2]
    onnx.save(build(load_file(src)), dst)
    print("wrote", dst)
