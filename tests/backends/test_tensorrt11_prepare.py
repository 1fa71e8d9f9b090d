"""TensorRT 11 precision made in ONNX, before the build: no GPU needed to check it.

fp16 -> the model converted to float16 (fragile ops float32); best on a QDQ model -> INT8 where
the Q/DQ are, float16 elsewhere, Q/DQ scales float16 (opset raised to 19); each layer's precision
and why is what the build manifest records."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import edgepack
from edgepack.backends.tensorrt import builder_settings, layer_precisions, prepare_model
from edgepack.resources import data_dir, example_model
from edgepack.targets import load_target
from tests.helpers import check, run_ort

THOR = load_target("jetson-agx-thor")


def _eval(n=200):
    return {"input": np.load(data_dir("calibration") / "digits" / "eval.npz")["input"][:n].astype(np.float32)}


@pytest.fixture(scope="module")
def qdq_digits():
    from edgepack.quant.quantize import quantize

    model = edgepack.load(example_model())
    calib = np.load(data_dir("calibration") / "digits" / "calib.npz")["input"][:64].astype(np.float32)
    quantize(model, [{"input": calib}], target=THOR, method="minmax")
    return model


def test_best_on_tensorrt_11_is_int8_where_qdq_and_float16_elsewhere(qdq_digits):
    settings = builder_settings(THOR, "best", model_has_qdq=True)
    assert settings["convert_to_fp16"] and settings["strongly_typed"] and settings["network_flags"] == []
    parsed, layers = prepare_model(qdq_digits, settings)
    assert qdq_digits.opset_imports[""] == 17 and parsed.opset_imports[""] == 19  # input untouched
    by_op = {}
    for layer in layers:
        by_op.setdefault(layer["op_type"], set()).add(layer["precision"])
    assert by_op["Conv"] == {"int8"} and by_op["Gemm"] == {"int8"} and by_op["Relu"] == {"fp16"}
    dq_scales = [n.inputs[1].dtype for n in parsed.graph if n.op_type == "DequantizeLinear"]
    assert ir.DataType.FLOAT16 in dq_scales  # Q/DQ carry float16 scales (none can be when tiny)
    check(parsed)
    x = _eval()
    want, got = run_ort(qdq_digits, x)[0], run_ort(parsed, x)[0]
    assert got.dtype == np.float32  # float32 graph I/O kept
    assert (want.argmax(1) == got.argmax(1)).mean() >= 0.97
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


def test_int8_on_tensorrt_11_builds_the_qdq_model_as_it_is(qdq_digits):
    settings = builder_settings(THOR, "int8", model_has_qdq=True)
    parsed, layers = prepare_model(qdq_digits, settings)
    assert parsed is qdq_digits and not settings["convert_to_fp16"]
    assert {l["precision"] for l in layers if l["op_type"] == "Relu"} == {"fp32"}
    assert {l["precision"] for l in layers if l["op_type"] == "Conv"} == {"int8"}


def test_fp16_on_tensorrt_11_converts_in_onnx_and_says_why_per_layer():
    model = edgepack.load(example_model())
    settings = builder_settings(THOR, "fp16")
    parsed, layers = prepare_model(model, settings)
    assert all(l["precision"] == "fp16" for l in layers), layers
    assert [v.dtype for v in parsed.graph.inputs] == [ir.DataType.FLOAT]
    check(parsed)
    x = _eval()
    want, got = run_ort(model, x)[0], run_ort(parsed, x)[0]
    assert (want.argmax(1) == got.argmax(1)).mean() >= 0.99


def test_weakly_typed_layers_say_what_tensorrt_may_pick():
    model = edgepack.load(example_model())
    layers = layer_precisions(model, builder_settings(load_target("jetson-orin-nano"), "fp16"))
    assert {l["precision"] for l in layers} == {"fp16/fp32"}
    assert "TensorRT picks" in layers[0]["reason"]
