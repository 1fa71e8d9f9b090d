"""Channel equalization around depthwise convs: exact in float, better INT8."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

import onnx_ir as ir

from edgepack.graph import const_array
from edgepack.quant import quantize
from edgepack.quant.compare import compare
from edgepack.quant.equalize import balance_depthwise_outputs, equalize_depthwise_inputs
from edgepack.graph import copy_model
from tests.helpers import check, run_ort


def _mobile_block(seed: int = 0) -> ir.Model:
    #   x[1,8,12,12] -> Conv1x1(16) -> Relu -> DWConv3x3(16) -> Conv1x1(8) -> y
    # channel ranges after the first conv span 1000x: per-tensor INT8 starves the small ones
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((16, 8, 1, 1)).astype(np.float32) * np.logspace(-2, 1, 16, dtype=np.float32)[:, None, None, None]
    b1 = rng.standard_normal(16).astype(np.float32) * 0.01
    dw = rng.standard_normal((16, 1, 3, 3)).astype(np.float32) / np.logspace(-2, 1, 16, dtype=np.float32)[:, None, None, None]
    w3 = rng.standard_normal((8, 16, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="pw1"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "dw"], ["d"], name="dw", group=16, pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["d", "w3"], ["y"], name="pw2")]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 8, 12, 12])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 8, 12, 12])],
                              [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (dw, "dw"), (w3, "w3"))])
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _data(n=64, seed=1):
    x = np.random.default_rng(seed).standard_normal((n, 8, 12, 12)).astype(np.float32)
    return [{"x": x[i:i + 16]} for i in range(0, n, 16)]


def test_equalization_is_exact_in_float_and_evens_the_channel_ranges():
    model = _mobile_block()
    before = copy_model(model)
    assert equalize_depthwise_inputs(model, _data()) == 1
    assert balance_depthwise_outputs(model, _data()) == 1
    check(model)
    x = _data(8, seed=7)[0]
    np.testing.assert_allclose(run_ort(model, x)[0], run_ort(before, x)[0], rtol=1e-4, atol=1e-4)
    # the depthwise input's channels now span one range
    from edgepack.calib.calibrate import _with_outputs

    def spread(m):  # smallest / largest channel peak of the depthwise input, on unseen data
        relu = next(n for n in m.graph if n.op_type == "Relu").outputs[0]
        peak = np.abs(run_ort(_with_outputs(m, [relu]), _data(16, seed=3)[0])[1]).max(axis=(0, 2, 3))
        return peak.min() / peak.max()

    assert spread(before) < 0.01 and spread(model) > 0.25
    assert not np.allclose(const_array(model.graph.node("pw1").inputs[1]), const_array(before.graph.node("pw1").inputs[1]))


def test_equalization_raises_int8_accuracy_for_both_target_styles():
    for target in ("jetson-orin-nano", "x86-cpu"):
        sqnr = {}
        for equalize in (False, True):
            q = quantize(_mobile_block(), _data(), target=target, method="minmax", equalize=equalize,
                         runtime_check=False)
            sqnr[equalize] = compare(_mobile_block(), q.model, _data(32, seed=9), target=target,
                                     layers=False).outputs[0]["sqnr_db"]
        assert sqnr[True] > sqnr[False] + 6, (target, sqnr)
