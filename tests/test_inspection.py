"""inspect: params and MACs against hand-computed numbers, sparsity, quantizable nodes."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from edgepack.inspection import inspect_model
from tests.helpers import SHARED_MODELS, edgepack_cli, model_from_text, requires_shared

#   X[N,3,8,8] -> Conv(W1[4,3,3,3], b1, pad 1) -> Relu -> ConvTranspose(W2[4,2,2,2], stride 2)
#     -> GlobalAveragePool -> Flatten -> Gemm(W3[5,2], transB) -> MatMul(W4[5,6]) -> Y[N,6]
# W1 has output channel 1 all zero; W3 is half zeros.
NET = """
<ir_version: 8, opset_import: ["" : 17]>
net (float[N,3,8,8] X) => (float[N,6] Y) {
    C1 = Conv <pads = [1,1,1,1]> (X, W1, b1)
    R1 = Relu(C1)
    T1 = ConvTranspose <strides = [2,2]> (R1, W2)
    P = GlobalAveragePool(T1)
    F = Flatten(P)
    G = Gemm <transB = 1> (F, W3)
    Y = MatMul(G, W4)
}
"""


def _net() -> ir.Model:
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w1[1] = 0
    w3 = rng.standard_normal((5, 2)).astype(np.float32)
    w3[:, 0] = 0
    proto = onnx.parser.parse_model(NET)
    for name, array in {"W1": w1, "b1": np.ones(4, np.float32),
                        "W2": rng.standard_normal((4, 2, 2, 2)).astype(np.float32),
                        "W3": w3, "W4": rng.standard_normal((5, 6)).astype(np.float32)}.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


def test_params_and_macs_match_hand_counts():
    report = inspect_model(_net())
    assert report["params"] == 108 + 4 + 32 + 10 + 30
    layers = {l["op_type"]: l for l in report["layers"]}
    assert layers["Conv"]["macs"] == 4 * 8 * 8 * (3 * 3 * 3)  # outputs x (C * kh * kw)
    assert layers["ConvTranspose"]["macs"] == 4 * 8 * 8 * (2 * 2 * 2)  # inputs x (M * kh * kw)
    assert layers["Gemm"]["macs"] == 5 * 2
    assert layers["MatMul"]["macs"] == 6 * 5
    assert report["macs"] == 6912 + 2048 + 10 + 30
    assert report["macs_dynamic_dims_as_one"] is True
    assert report["nodes"] == 7 and report["ops"]["Conv"] == 1


def test_sparsity_and_dead_channels():
    layers = {l["op_type"]: l for l in inspect_model(_net())["layers"]}
    assert layers["Conv"]["zero_channels"] == 1 and layers["Conv"]["channels"] == 4
    assert layers["Conv"]["sparsity"] == pytest.approx(27 / 108)
    assert layers["Gemm"]["sparsity"] == pytest.approx(0.5)
    assert layers["Gemm"]["zero_channels"] == 0  # transB: rows are outputs, none all zero
    assert layers["MatMul"]["zero_channels"] == 0


def test_constants_count_as_params():
    model = model_from_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3] X) => (float[2,3] Y) {
        C = Constant <value = float[2,3] {1,2,3,4,5,6}> ()
        Y = Add(X, C)
    }""")
    report = inspect_model(model)
    assert report["params"] == 6 and report["macs"] == 0 and report["quantizable"] == []


@requires_shared
def test_real_models_hand_counted():
    from edgepack import io

    # MNIST CNN: conv 5x5 8ch 'same' on 28x28, pool, conv 5x5 16ch on 14x14, pool, FC 256->10.
    mnist = inspect_model(io.load(SHARED_MODELS / "mnist_cntk_fp32.onnx"))
    assert mnist["macs"] == 28 * 28 * 8 * 25 + 14 * 14 * 16 * 8 * 25 + 256 * 10
    assert mnist["params"] == (8 * 25 + 8) + (16 * 8 * 25 + 16) + (256 * 10 + 10) + 2 + 2
    # ResNet-20: 3x3 convs of 16/32/64 channels on 32/16/8 pixels, FC 64->10.
    resnet = inspect_model(io.load(SHARED_MODELS / "resnet20_cifar10.onnx"))
    per_conv = 32 * 32 * 16 * 16 * 9  # each 3x3 conv after the stem costs the same,
    expected = 32 * 32 * 16 * 27 + 16 * per_conv + 2 * (per_conv // 2) + 64 * 10
    assert resnet["macs"] == expected  # but the two stride-2 convs, which cost half
    weights = 16 * 27 + 6 * 16 * 144 + 32 * 144 + 5 * 32 * 288 + 64 * 288 + 5 * 64 * 576
    biases = 16 + 6 * 16 + 6 * 32 + 6 * 64
    assert weights + biases + 64 * 10 + 10 <= resnet["params"] < weights + biases + 650 + 100
    assert len(resnet["quantizable"]) == 20


def test_cli_json_is_stable(tmp_path):
    from edgepack import io

    path = tmp_path / "net.onnx"
    io.save(_net(), path)
    result = edgepack_cli("inspect", path, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["schema"] == "edgepack.inspect/1"
    assert set(data) >= {"path", "size_bytes", "ir_version", "opset", "inputs", "outputs", "nodes",
                         "ops", "params", "initializers", "macs", "layers", "quantizable"}
    assert data["size_bytes"] == path.stat().st_size
    assert data["inputs"] == [{"name": "X", "dtype": "FLOAT", "shape": ["N", 3, 8, 8]}]
    text = edgepack_cli("inspect", path)
    assert "MACs        9,000" in text.stdout
