"""INT8 that is faster than FP32: what ONNX Runtime fuses, placement by measured layer times, the verdict.

Times are never asserted: the tests check what ORT's optimized graph holds (no weight dequantized
at run time, every weighted layer an integer kernel) and that each decision carries its figures."""
from __future__ import annotations

import numpy as np
import pytest

from edgepack import io
from edgepack.quant import quantize
from edgepack.quant.ort_fusion import fusion_report
from edgepack.quant.speed import LayerSpeed, _model_name
from edgepack.resources import data_dir, example_model
from tests.helpers import SHARED_DATA, SHARED_MODELS, requires_shared

DIGITS = data_dir("calibration") / "digits"


def _cifar(n):
    with np.load(SHARED_DATA / "cifar10_test" / "cifar10_test_jpeg_decoded.npz") as d:
        images = d["images"][:n]
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    return ((images / np.float32(255) - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)


@pytest.mark.parametrize("target", ["x86-cpu", "x86-cpu-vnni"])
def test_digits_artifact_dequantizes_no_weight_at_run_time_and_records_every_choice(tmp_path, target):
    result = quantize(example_model(), DIGITS, target=target, runtime_check=False, output=tmp_path / "q.onnx")
    report = fusion_report(tmp_path / "q.onnx")
    assert report.clean, report.to_json()  # no weight dequantized at run time, float layers keep float weights
    weighted = [n for n in io.load(example_model()).graph if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert report.integer_kernels + len(report.float_weighted) == len(weighted)
    rows = {d["node"]: d for d in result.to_json()["decisions"]}
    floats = [n.name for n in weighted if rows[n.name]["choice"] == "float"]
    assert len(floats) == len(report.float_weighted)  # each float layer is one the measurement chose
    assert all(rows[n]["reason"].startswith("measured") and rows[n]["figures"]["int8_ms"] > 0 for n in floats)
    assert set(result.quantized) <= set(rows) and all(rows[n]["choice"] == "int8" for n in result.quantized)
    assert all(d["reason"] for d in rows.values())
    speed = result.to_json()["speed"]
    assert speed["ratio"] > 0 and 0 < speed["low"] <= speed["high"]
    assert speed["verdict"] in ("faster", "slower", "same") and speed["cpu_flags"]
    assert ("INT8 vs FP32 on this CPU" in result.text()) and ("choice" in result.text(explain=True))


@requires_shared
@pytest.mark.parametrize("model", ["resnet20_cifar10.onnx", "mnist_cntk_fp32.onnx"])
def test_shared_models_run_every_weighted_layer_as_an_integer_kernel(tmp_path, model):
    if model.startswith("resnet"):
        data = [{"input": x[None]} for x in _cifar(16)]
    else:
        rng = np.random.default_rng(0)
        data = [{"Input3": rng.uniform(0, 255, (1, 1, 28, 28)).astype(np.float32)} for _ in range(8)]
    # placement by the rules: what this checks is that they give ORT a fully fusable graph (the
    # measured placement may move a layer float on a busy machine, and says why: tested above)
    quantize(SHARED_MODELS / model, data, target="x86-cpu", runtime_check=False, speed_check=False,
             placement="rules", output=tmp_path / "q.onnx")
    report = fusion_report(tmp_path / "q.onnx")
    assert report.clean, report.dq_on_constants
    assert not report.float_weighted, report.float_weighted


@requires_shared
def test_shufflenet_fc_becomes_qgemm_and_nothing_is_dequantized_per_run(tmp_path):
    # before: MatMul + Add fused by ORT into a float Gemm that dequantized fc.weight on every call
    rng = np.random.default_rng(0)
    data = [{"input": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(2)]
    quantize(SHARED_MODELS / "shufflenet-v2-12_from_int8_fp32.onnx", data, target="x86-cpu", runtime_check=False,
             speed_check=False, placement="rules", equalize=False, rounding="nearest", output=tmp_path / "q.onnx")
    report = fusion_report(tmp_path / "q.onnx")
    assert report.clean and not report.float_weighted, report.to_json()
    assert report.ops.get("com.microsoft::QGemm") == 1 and report.ops.get("com.microsoft::QLinearConcat") == 16
    assert len(report.activation_qdq) <= 4, report.activation_qdq  # input Q, around ReduceMean, output


def test_a_layer_is_float_only_when_its_int8_kernel_is_clearly_slower():
    assert LayerSpeed("c", "Conv", int8_ms=0.20, float_ms=0.10).int8_slower
    assert not LayerSpeed("c", "Conv", int8_ms=0.105, float_ms=0.10).int8_slower  # inside the timer's noise
    assert not LayerSpeed("c", "Conv", int8_ms=None, float_ms=0.10).int8_slower


def test_ort_kernel_names_map_back_to_the_model_nodes():
    names = {"fused Conv_0_quant": "fused Conv_0_quant", "/c/Conv": "/c/Conv", "relu_out": "/c/Conv"}
    assert _model_name("fused fused Conv_0_quant", names) == "fused Conv_0_quant"
    assert _model_name("fused Conv_0_quant_token_3", names) == "fused Conv_0_quant"
    assert _model_name("relu_out_nchwc", names) == "/c/Conv"
    assert _model_name("Reorder_1", names) is None


def test_placement_rules_and_tensorrt_targets_are_not_timed():
    result = quantize(example_model(), DIGITS, target="jetson-orin-nano")
    assert result.speed is None
    assert all("rules" in d.reason for d in result.decisions)
    from edgepack.errors import EdgepackError

    with pytest.raises(EdgepackError, match="TensorRT target"):
        quantize(example_model(), DIGITS, target="jetson-orin-nano", placement="measured")


def test_if_slower_refuses_or_keeps_the_float_model(tmp_path, monkeypatch):
    from edgepack.errors import EdgepackError
    from edgepack.quant import speed

    def slower(fp32, int8, feeds, **kw):
        return speed.SpeedVerdict(1.4, 1.3, 1.5, "slower", "p10", 1, 0.014, 0.01, "avx2", "too small")

    monkeypatch.setattr(speed, "latency_verdict", slower)
    with pytest.raises(EdgepackError, match="not faster.*nothing was written"):
        quantize(example_model(), DIGITS, target="x86-cpu", if_slower="error", output=tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()
    result = quantize(example_model(), DIGITS, target="x86-cpu", if_slower="float", output=tmp_path / "f.onnx")
    saved = io.load(tmp_path / "f.onnx")
    assert not [n for n in saved.graph if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert all(d.choice == "float" and "slower than FP32" in d.reason for d in result.decisions)
    warned = quantize(example_model(), DIGITS, target="x86-cpu", output=tmp_path / "w.onnx")  # default: warn
    assert "not faster" in warned.text() and "likely cause: too small" in warned.text()


def test_regions_tried_in_float_as_a_whole_are_the_focus_input_and_silu():
    #   images ─► Slice ×2 ─► Concat ─► Conv ─► y ─► Sigmoid ─► s ─► Mul(y, s) ─► out
    from edgepack.quant.speed import op_groups
    from tests.helpers import model_from_text

    model = model_from_text("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 3, 8, 8] images) => (float[1, 4, 4, 8] out) <float[4, 6, 1, 1] W = {%s},
    int64[1] s0 = {0}, int64[1] s1 = {1}, int64[1] e = {8}, int64[1] ax = {2}, int64[1] st = {2}> {
  a = Slice (images, s0, e, ax, st)
  b = Slice (images, s1, e, ax, st)
  cat = Concat <axis = 1> (a, b)
  y = Conv (cat, W)
  s = Sigmoid (y)
  out = Mul (y, s)
}
""" % ", ".join(["0.1"] * 24))
    groups = op_groups(model)
    from edgepack.graph import node_label

    by_op = {node_label(n): n.op_type for n in model.graph}
    assert sorted(by_op[n] for n in groups["input region"]) == ["Concat", "Slice", "Slice"]  # not the Conv
    assert sorted(by_op[n] for n in groups["SiLU (Sigmoid·Mul)"]) == ["Mul", "Sigmoid"]
