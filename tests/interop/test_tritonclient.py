"""Interop: the real Open Inference Protocol client from PyPI (tritonclient) against `ferry server`.

Both of its transports are used with their defaults: the HTTP client sends and asks for binary
tensors (the binary tensor data extension), the gRPC client sends raw_input_contents and reads
raw_output_contents. Answers are checked against scikit-learn's own, from models/expected.json.
"""
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = json.loads((ROOT / "models" / "expected.json").read_text())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    binary = os.environ.get("FERRY_BIN", str(ROOT / "target" / "debug" / "ferry"))
    http_port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen(
        [
            binary, "server",
            "--model", f"iris={ROOT / 'models' / 'iris-v1.onnx'}",
            "--model", f"digits={ROOT / 'models' / 'digits.onnx'},max_batch_size=16,max_queue_delay_ms=2",
            "--http-addr", f"127.0.0.1:{http_port}",
            "--grpc-addr", f"127.0.0.1:{grpc_port}",
        ],
    )
    http = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
    deadline = time.time() + 60
    while True:
        try:
            if http.is_server_ready():
                break
        except Exception:
            pass
        assert proc.poll() is None, "ferry server exited"
        assert time.time() < deadline, "ferry server did not become ready"
        time.sleep(0.1)
    yield {"http": http, "grpc": grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")}
    proc.terminate()
    assert proc.wait(timeout=30) == 0, "graceful shutdown exits 0"


def check(name, result):
    e = EXPECTED[name]
    assert result.as_numpy("label").tolist() == e["label"]
    np.testing.assert_allclose(result.as_numpy("probabilities"), np.array(e["probabilities"], np.float32), atol=1e-4)


@pytest.mark.parametrize("model,onnx_name", [("iris", "iris-v1"), ("digits", "digits")])
def test_http_client_with_binary_defaults(server, model, onnx_name):
    x = np.array(EXPECTED[onnx_name]["input"], dtype=np.float32)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)  # binary_data=True is the client's default
    result = server["http"].infer(model, [inp], request_id="req-1")
    assert result.get_response()["id"] == "req-1"
    check(onnx_name, result)
    # Explicit binary outputs, and JSON outputs, both decode.
    outs = [httpclient.InferRequestedOutput("label", binary_data=True),
            httpclient.InferRequestedOutput("probabilities", binary_data=False)]
    check(onnx_name, server["http"].infer(model, [inp], outputs=outs))


@pytest.mark.parametrize("model,onnx_name", [("iris", "iris-v1"), ("digits", "digits")])
def test_grpc_client_with_raw_defaults(server, model, onnx_name):
    x = np.array(EXPECTED[onnx_name]["input"], dtype=np.float32)
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    check(onnx_name, server["grpc"].infer(model, [inp]))


def test_metadata_and_health_through_both_clients(server):
    assert server["http"].is_server_live() and server["grpc"].is_server_live()
    assert server["http"].is_model_ready("iris") and server["grpc"].is_model_ready("iris")
    meta = server["grpc"].get_model_metadata("digits", as_json=True)
    assert meta["inputs"][0]["shape"] == ["-1", "64"]
    meta = server["http"].get_model_metadata("iris")
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
    index = server["http"].get_model_repository_index()
    assert sorted(m["name"] for m in index) == ["digits", "iris"]


def test_errors_reach_the_client_with_their_reason(server):
    x = np.zeros((1, 3), dtype=np.float32)
    for client, mod in ((server["http"], httpclient), (server["grpc"], grpcclient)):
        inp = mod.InferInput("input", [1, 3], "FP32")
        inp.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException, match=r"shape \[1, 3\] does not match"):
            client.infer("iris", [inp])
        with pytest.raises(InferenceServerException, match="not found"):
            client.infer("nope", [inp])
