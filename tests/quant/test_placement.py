"""Q/DQ placement per target on a small branchy graph: what ORT fuses, what TensorRT wants."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgepack.calib import calibrate
from edgepack.graph import node_label
from edgepack.quant.check_qdq import check_qdq
from edgepack.quant.qdq import QuantPolicy, insert_qdq, tensors_to_calibrate
from edgepack.graph import copy_model
from edgepack.targets import load_target
from tests.helpers import check, model_from_text, run_ort


def _net():
    #   x ─► Conv1 ─► Relu ─► a ─► Conv2 ─► b ──┐
    #                         └──► Conv3 ─► c ──┴► Concat ─► cat ─► Reshape ─► Gemm ─► Softmax ─► y
    rng = np.random.default_rng(1)
    w = lambda *s: ", ".join(f"{v:.3f}" for v in rng.standard_normal(s).reshape(-1) * 0.5)  # noqa: E731
    return model_from_text(f"""
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 2, 6, 6] x) => (float[N, 5] y) <float[4, 2, 3, 3] W1 = {{{w(4, 2, 3, 3)}}}, float[4] b1 = {{{w(4)}}},
    float[3, 4, 1, 1] W2 = {{{w(3, 4, 1, 1)}}}, float[3, 4, 1, 1] W3 = {{{w(3, 4, 1, 1)}}},
    float[216, 5] Wg = {{{w(216, 5)}}}, float[5] bg = {{{w(5)}}}, int64[2] shape = {{-1, 216}}> {{
  h = Conv <pads = [1, 1, 1, 1]> (x, W1, b1)
  a = Relu (h)
  b = Conv (a, W2)
  c3 = Conv (a, W3)
  c = Mul (c3, c3)
  cat = Concat <axis = 1> (b, c)
  flat = Reshape (cat, shape)
  logits = Gemm (flat, Wg, bg)
  y = Softmax (logits)
}}
""")


def _data(n=3):
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((8, 2, 6, 6)).astype(np.float32)} for _ in range(n)]


@pytest.mark.parametrize("target", ["x86-cpu", "jetson-orin-nano"])
def test_placement_rules_and_numerics(target):
    model = _net()
    policy = QuantPolicy.for_target(load_target(target))
    ranges = calibrate(copy_model(model), _data(), method="minmax", symmetric=policy.symmetric_activations,
                       progress=False, only=tensors_to_calibrate(model, policy))
    result = insert_qdq(model, ranges, policy)
    check(model)
    assert not check_qdq(model, load_target(target))
    assert model.graph.outputs[0].producer().op_type == "Softmax"  # nothing quantized at the output
    softmax = model.graph.outputs[0].producer()
    assert softmax.inputs[0].producer().op_type == "Gemm"  # no Q/DQ between Gemm and Softmax
    reshape = next(n for n in model.graph if n.op_type == "Reshape")
    if policy.tensorrt:
        assert reshape.inputs[0].producer().op_type == "Concat"  # Concat-only chain stays float
        assert sorted(result.quantized) == sorted(node_label(n) for n in model.graph if n.op_type in ("Conv", "Gemm"))
    else:
        concat = next(n for n in model.graph if n.op_type == "Concat")
        assert all(v.producer().op_type == "DequantizeLinear" for v in concat.inputs)  # QLinearConcat
        for conv in (n for n in model.graph if n.op_type == "Conv"):  # every Conv's output quantized
            out = conv.outputs[0]
            users = [u.node for u in out.uses()]
            relu_out = users[0].outputs[0] if users[0].op_type == "Relu" else out
            assert all(u.node.op_type == "QuantizeLinear" for u in relu_out.uses())
    x = _data(1)[0]
    ref, out = run_ort(_net(), x)[0], run_ort(model, x)[0]
    sqnr_db = 10 * np.log10(np.sum(ref**2) / np.sum((ref - out) ** 2))
    assert sqnr_db > 15 and (ref.argmax(1) == out.argmax(1)).mean() >= 0.75


def test_x86_form_fuses_into_onnxruntime_integer_kernels(tmp_path):
    model = _net()
    policy = QuantPolicy.for_target(load_target("x86-cpu"))
    insert_qdq(model, calibrate(copy_model(model), _data(), method="minmax", progress=False), policy)
    import onnx_ir as ir

    ir.save(model, tmp_path / "q.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "fused.onnx")
    ort.InferenceSession(str(tmp_path / "q.onnx"), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(tmp_path / "fused.onnx").graph.node]
    assert ops.count("QLinearConv") == 3, ops  # Conv1 with its Relu fused, Conv2, Conv3
    assert "Conv" not in ops and "Relu" not in ops, ops
    from edgepack.quant.ort_fusion import fusion_report

    report = fusion_report(tmp_path / "q.onnx")
    assert report.clean and not report.float_weighted, report.to_json()  # no weight dequantized at run time
    assert report.ops.get("com.microsoft::QLinearConcat") == 1 and report.ops.get("com.microsoft::QLinearMul") == 1
    # what is left: the input's Q and the DQ before the float Softmax (QGemm gives a float output)
    assert len(report.activation_qdq) <= 2, report.activation_qdq


@pytest.mark.parametrize("target", ["x86-cpu", "jetson-orin-nano"])
def test_bias_correction_removes_the_mean_shift_of_weight_quantization(target):
    #   x (mean 3 per channel) ─► Conv(W per-tensor int8, b) ─► y
    # One scale for all channels rounds the small weights coarsely; their error times E[x] = 3 shifts
    # every output by a constant that the corrected bias takes back.
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 3, 3, 3)) * np.array([1.0, 0.05, 0.03, 0.02])[:, None, None, None]
    text = f"""
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) <float[4, 3, 3, 3] W = {{{", ".join(f"{v:.4f}" for v in w.reshape(-1))}}},
    float[4] b = {{0.1, 0.2, 0.3, 0.4}}> {{
  y = Conv <pads = [1, 1, 1, 1]> (x, W, b)
}}
"""
    data = [{"x": (3 + rng.standard_normal((16, 3, 8, 8))).astype(np.float32)} for _ in range(2)]
    shifts = {}
    for correct in (False, True):
        model = model_from_text(text)
        policy = QuantPolicy.for_target(load_target(target), per_tensor=True, bias_correction=correct)
        ranges = calibrate(copy_model(model), data, method="minmax", symmetric=policy.symmetric_activations,
                           progress=False)
        assert set(ranges.means) == {"x"} and np.allclose(ranges.means["x"], 3, atol=0.05)
        insert_qdq(model, ranges, policy)
        check(model)
        assert not check_qdq(model, load_target(target))
        ref, out = run_ort(model_from_text(text), data[0])[0], run_ort(model, data[0])[0]
        shifts[correct] = np.abs((out - ref)[:, :, 1:-1, 1:-1].mean(axis=(0, 2, 3)))  # inner pixels: no padding
    assert shifts[True].max() < 0.25 * shifts[False].max(), shifts
