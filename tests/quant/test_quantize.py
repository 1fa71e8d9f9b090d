"""QDQ insertion per target: placement, rules, accuracy on real models, the commands."""
from __future__ import annotations

import dataclasses

import gzip
import json

import numpy as np
import pytest

from edgepack import io, runtime
from edgepack.calib import calibrate
from edgepack.quant import check_qdq, quantize
from edgepack.quant.qdq import QuantPolicy, activation_qparams, insert_qdq, quantize_weight
from edgepack.graph import copy_model
from edgepack.resources import data_dir, example_model
from edgepack.targets import load_target
from tests.helpers import (SHARED_DATA, SHARED_MODELS, assert_one_line_error, check, edgepack_cli,
                           requires_shared)

DIGITS = data_dir("calibration") / "digits"


def _eval():
    with np.load(DIGITS / "eval.npz") as d:
        return d["input"], d["labels"]


def _accuracy(model, x, y, name="input"):
    return float((runtime.session(model).run(None, {name: x})[0].argmax(1) == y).mean())


def test_weights_per_channel_symmetric():
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    w[2] *= 100
    q, scale = quantize_weight(w, 0)
    assert q.dtype == np.int8 and q.min() >= -127 and scale.shape == (4,)
    np.testing.assert_allclose(q * scale[:, None, None, None], w, atol=scale.max() / 2 + 1e-6)
    assert np.abs(q).reshape(4, -1).max(axis=1).tolist() == [127] * 4


def test_activation_params_include_zero():
    ort_policy = QuantPolicy.for_target(load_target("x86-cpu-vnni"))
    scale, zero = activation_qparams(0.0, 2.55, ort_policy)
    assert zero == 0 and scale == pytest.approx(0.01)
    seven_bit = dataclasses.replace(ort_policy, activation_qmax=127)  # codes 0..127: exact u7 x s8 on AVX2
    assert activation_qparams(0.0, 1.27, seven_bit) == (pytest.approx(0.01), 0)
    scale, zero = activation_qparams(-1.0, 0.27, seven_bit)
    assert round(0.27 / scale + zero) == 127
    scale, zero = activation_qparams(-1.0, 1.55, ort_policy)
    assert round(-1.0 / scale + zero) == 0  # -1 maps to the lowest code
    trt = QuantPolicy.for_target(load_target("jetson-orin-nano"))
    assert activation_qparams(-1.0, 2.54, trt) == (pytest.approx(0.02), 0)


@pytest.mark.parametrize("target, rules_ok_for_tensorrt", [("x86-cpu", False), ("jetson-orin-nano", True)])
def test_digits_int8_keeps_accuracy_and_rules(target, rules_ok_for_tensorrt):
    #   input -> Q/DQ -> Conv(W DQ) -> Relu -> Q/DQ -> Conv ... -> Gemm -> logits (float)
    model = io.load(example_model())
    x, y = _eval()
    float_acc = _accuracy(model, x, y)
    result = quantize(model, DIGITS, target=target, method="percentile", placement="rules")
    check(model)
    ops = [n.op_type for n in model.graph]
    assert ops.count("QuantizeLinear") >= 5 and ops[-1] in ("Gemm", "DequantizeLinear")
    assert model.graph.outputs[0].producer().op_type == "Gemm"  # no Q/DQ on the output
    assert not check_qdq(model, load_target(target))
    assert (not check_qdq(model, load_target("jetson-orin-nano"))) is rules_ok_for_tensorrt
    assert abs(_accuracy(model, x, y) - float_acc) <= 0.01
    assert len(result.quantized) >= 5 and not result.skipped


def test_tensorrt_biases_stay_float_and_residual_add_gets_qdq():
    from tests.passes.nets import resnet_style
    from edgepack.passes import optimize

    model = optimize(resnet_style())
    data = [{"x": np.random.default_rng(i).standard_normal((8, 3, 16, 16)).astype(np.float32)} for i in range(2)]
    ranges = calibrate(model, data, method="minmax", symmetric=True, progress=False)
    result = insert_qdq(model, ranges, QuantPolicy.for_target(load_target("jetson-orin-nano")))
    add = next(n for n in model.graph if n.op_type == "Add")
    skip_inputs = [v.producer().op_type for v in add.inputs]
    assert "DequantizeLinear" in skip_inputs and "Conv" in skip_inputs
    for node in model.graph:
        if node.op_type == "Conv" and len(node.inputs) > 2:
            assert node.inputs[2].producer() is None  # float bias initializer
    assert not check_qdq(model, load_target("jetson-orin-nano"))
    assert len(result.quantized) == 9  # 7 Conv + 2 Gemm


def test_node_without_range_stays_float_with_warning(caplog):
    model = io.load(example_model())
    ranges = calibrate(copy_model(model), DIGITS, method="minmax", progress=False)
    del ranges.tensors["relu2_out"]
    result = insert_qdq(model, ranges, QuantPolicy.for_target(load_target("x86-cpu")))
    assert any("/conv3/Conv" == n and "relu2_out" in why for n, why in result.skipped)
    assert "stays float" in caplog.text


def test_check_qdq_finds_broken_rules():
    model = io.load(example_model())
    quantize(model, DIGITS, target="jetson-orin-nano", method="minmax")
    q = next(n for n in model.graph if n.op_type == "QuantizeLinear")
    from edgepack.passes.rewrite import set_input_constant

    set_input_constant(model.graph, q, 1, np.array(-1.0, np.float32), "bad_scale")
    problems = check_qdq(model, load_target("jetson-orin-nano"))
    assert any("finite and > 0" in p for p in problems)


@requires_shared
def test_mnist_per_channel_works_where_ort_quantize_static_fails():
    with gzip.open(SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28).astype(np.float32)
    with gzip.open(SHARED_DATA / "mnist" / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    model = io.load(SHARED_MODELS / "mnist_cntk_fp32.onnx")
    calib = [{"Input3": images[i:i + 64]} for i in range(0, 256, 64)]
    x, y = images[5000:7000], labels[5000:7000]
    float_acc = _accuracy(model, x, y, "Input3")
    quantize(model, calib, target="x86-cpu", method="entropy")
    assert abs(_accuracy(model, x, y, "Input3") - float_acc) <= 0.005


def test_cli_quantize_compare_check(tmp_path):
    out = tmp_path / "q.onnx"
    r = edgepack_cli("quantize", example_model(), "--data", DIGITS, "-t", "jetson-orin-nano", "-o", out,
                     "--json", tmp_path / "q.json", "-q")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "q.json").read_text())
    assert report["schema"] == "edgepack.quantize/1" and report["check_qdq"]["ok"]
    assert edgepack_cli("check-qdq", out, "-t", "jetson-orin-nano").returncode == 0
    c = edgepack_cli("compare", example_model(), out, "--data", DIGITS, "--json")
    comparison = json.loads(c.stdout)
    assert comparison["schema"] == "edgepack.compare/1"
    accuracy = comparison["accuracy"]
    assert accuracy["samples"] == 500 and accuracy["b"] >= accuracy["a"] - 0.01
    assert comparison["outputs"][0]["sqnr_db"] > 10 and comparison["outputs"][0]["top1_agreement"] > 0.97
    assert any(layer["tensor"] == "relu1_out" for layer in comparison["layers"])
    assert_one_line_error(edgepack_cli("quantize", example_model(), "-t", "x86-cpu", "-o", out), "--data", code=2)
    assert_one_line_error(edgepack_cli("quantize", example_model(), "--data", DIGITS, "-t", "jetson-nano", "-o", out),
                          "jetson-nano", "INT8")
    assert_one_line_error(edgepack_cli("calibrate", example_model(), "--data", tmp_path / "none.npz", "-o",
                                       tmp_path / "r.json"), "none.npz")


def test_mixed_precision_meets_the_floor(tmp_path):
    out = tmp_path / "q.onnx"
    r = edgepack_cli("quantize", example_model(), "--data", DIGITS, "-t", "x86-cpu", "-o", out, "--method",
                     "minmax", "--max-error", "45", "--json", tmp_path / "q.json", "-q")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "q.json").read_text())
    assert report["output_sqnr_db"] >= 45 or not report["quantized_nodes"]
    assert report["float_nodes"], "a 45 dB floor needs some layers in float"
    assert report["sensitivity"][0]["sqnr_db"] <= report["sensitivity"][-1]["sqnr_db"]


def test_compare_skips_tensors_whose_shape_changed(tmp_path):
    # optimize removes pruned channels: conv2's output keeps its name with 16 channels, not 32
    from edgepack.passes import optimize
    from edgepack.quant.compare import compare_models

    small = optimize(io.load(example_model()))
    result = compare_models(io.load(example_model()), small, DIGITS)
    assert result["reshaped_tensors"] and all(l["tensor"] not in result["reshaped_tensors"] for l in result["layers"])
    assert result["outputs"][0]["sqnr_db"] > 60 and result["accuracy"]["a"] == result["accuracy"]["b"]


def test_compare_on_a_corrupt_npz_is_a_clean_error(tmp_path):
    (tmp_path / "broken.npz").write_bytes(b"not a zip at all")
    assert_one_line_error(edgepack_cli("compare", example_model(), example_model(), "--data",
                                       tmp_path / "broken.npz"), "broken.npz", "not a valid .npz")


def test_an_all_zero_weight_channel_keeps_its_bias():
    # Conv channel 1: weights all 0, bias 5 -> its output is the constant 5 and must stay so
    text = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 2, 4, 4] x) => (float[N, 2, 4, 4] y) <float[2, 2, 1, 1] W = {0.5, -0.25, 0.0, 0.0}, float[2] b = {0.1, 5.0}> {
  y = Conv (x, W, b)
}
"""
    from tests.helpers import model_from_text, run_ort

    model = model_from_text(text)
    data = [{"x": np.random.default_rng(0).standard_normal((4, 2, 4, 4)).astype(np.float32)}]
    quantize(model, data, target="x86-cpu-vnni", runtime_check=False, speed_check=False, placement="rules",
             equalize=False)
    out = run_ort(model, data[0])[0]
    np.testing.assert_allclose(out[:, 1], 5.0, atol=0.05)
