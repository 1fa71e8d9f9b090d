"""The float16 keep-in-float32 rules (AutoCast's): fragile ops, values out of range on the data, Q/DQ."""
import numpy as np
import onnx_ir as ir
import pytest

from edgepack.passes.fp16 import ConvertToFloat16Pass, observed_absmax, to_fp16
from tests.compress.util import copy, model_with_weights, randn
from tests.helpers import check, run_ort

F16, F32 = ir.DataType.FLOAT16, ir.DataType.FLOAT

# x[N,8] -> Mul(s) -> Relu -> MatMul(w) -> Add(b) -> Softmax -> y
#                    big only when x is large:  |x * s| reaches 9e4 > 65504 on the data
SCALED = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 8] x, float[1] s, float[8, 4] w, float[4] b) => (float[N, 4] y, float[N, 4] z) {
  m = Mul(x, s)
  r = Relu(m)
  h = MatMul(r, w)
  z = Add(h, b)
  y = Softmax(z)
}"""


def scaled(rng):
    return model_with_weights(SCALED, {"s": np.array([300.0], np.float32), "w": randn(rng, 8, 4, scale=1e-3),
                                       "b": randn(rng, 4)})


def test_values_beyond_float16_on_the_data_keep_their_nodes_in_float32():
    rng = np.random.default_rng(0)
    model = scaled(rng)
    x = (rng.standard_normal((16, 8)) * 100 + 200).astype(np.float32)  # x * 300 reaches ~1e5
    want = run_ort(model, {"x": x})
    blind, _ = to_fp16(model)  # no data: Mul's output is float16, and these values overflow it
    assert {n.op_type: n.outputs[0].dtype for n in blind.graph}["Mul"] == F16
    with np.errstate(over="ignore"):
        assert np.isinf((x * 300).astype(np.float16)).any()  # (ORT CPU computes such chains in float32 inside)
    absmax = observed_absmax(model, [{"x": x}])
    assert absmax["m"] == pytest.approx(np.abs(x * 300).max(), rel=1e-6)
    half, report = to_fp16(model, data=[{"x": x}])
    kept = {k["op_type"]: k["reason"] for k in report["kept_float32"]}
    assert "on the data" in kept["Mul"] and "65504" in kept["Mul"]  # the producer of the large values
    assert "input 'm'" in kept["Relu"] and "input 'r'" in kept["MatMul"]  # their readers too
    assert "softmax" in kept["Softmax"]
    ops = {n.op_type: n.outputs[0].dtype for n in half.graph if n.op_type != "Cast"}
    assert ops["Mul"] == ops["Relu"] == ops["MatMul"] == F32 and ops["Add"] == F16
    check(half)
    got = run_ort(half, {"x": x})
    for a, b in zip(want, got):
        assert np.isfinite(b).all()
        np.testing.assert_allclose(b, a, rtol=1e-2, atol=1e-2 * np.abs(a).max())
    assert report["error"]["max_abs_error"] < 1e-2 * np.abs(want[0]).max()


def test_data_max_follows_autocast_threshold():
    rng = np.random.default_rng(1)
    model = scaled(rng)
    x = rng.uniform(1, 2, (8, 8)).astype(np.float32)  # x * 300: 300..600, inside float16
    _, report = to_fp16(model, data=[{"x": x}])
    assert "Mul" not in {k["op_type"] for k in report["kept_float32"]}
    _, report = to_fp16(model, data=[{"x": x}], data_max=512)  # Model Optimizer AutoCast's default
    assert {"Mul", "Relu"} <= {k["op_type"] for k in report["kept_float32"]}


# x -> Q -> DQ -> Conv(DQ(w_q) , b) -> Relu -> ReduceMean -> y
def qdq_conv(opset: int, w_scale: float = 0.01) -> ir.Model:
    text = f"""<ir_version: 9, opset_import: ["" : {opset}]>
g (float[N, 2, 6, 6] x, float xs, int8 xz, int8[3, 2, 3, 3] wq, float[3] ws, float[3] b, int64[2] axes)
  => (float[N, 3] y) {{
  q = QuantizeLinear(x, xs, xz)
  d = DequantizeLinear(q, xs, xz)
  w = DequantizeLinear<axis=0>(wq, ws)
  c = Conv(d, w, b)
  r = Relu(c)
  y = ReduceMean<keepdims=0>(r, axes)
}}"""
    if opset >= 18:
        return model_with_weights(text, _qdq_weights(w_scale))
    text = text.replace(", int64[2] axes", "").replace("ReduceMean<keepdims=0>(r, axes)",
                                                        "ReduceMean<keepdims=0, axes=[2, 3]>(r)")
    weights = _qdq_weights(w_scale)
    weights.pop("axes")
    return model_with_weights(text, weights)


def _qdq_weights(w_scale):
    rng = np.random.default_rng(2)
    return {"xs": np.array(0.02, np.float32), "xz": np.array(0, np.int8),
            "wq": rng.integers(-127, 128, (3, 2, 3, 3)).astype(np.int8),
            "ws": np.array([w_scale, w_scale / 2, w_scale * 2], np.float32), "b": randn(rng, 3),
            "axes": np.array([2, 3], np.int64)}


def test_qdq_scales_become_float16_from_opset_19():
    x = {"x": np.random.default_rng(3).standard_normal((4, 2, 6, 6)).astype(np.float32)}
    model = qdq_conv(19)
    half = copy(model)
    p = ConvertToFloat16Pass()
    assert p(half).modified
    dtypes = {n.name or n.op_type: n.outputs[0].dtype for n in half.graph}
    assert half.graph.initializers["ws"].dtype == half.graph.initializers["xs"].dtype == F16
    assert dtypes["Conv"] == dtypes["Relu"] == F16 and dtypes["ReduceMean"] == F32
    assert [k["op_type"] for k in p.kept] == ["ReduceMean"] and "reduction" in p.kept[0]["reason"]
    check(half)
    want, got = run_ort(model, x)[0], run_ort(half, x)[0]
    np.testing.assert_allclose(got, want, atol=2e-2 * np.abs(want).max())


@pytest.mark.parametrize("opset, w_scale, why", [(13, 0.01, "before opset 19"),
                                                 (19, 1e-6, "below float16's normal range")])
def test_qdq_that_cannot_be_float16_stay_float32(opset, w_scale, why):
    x = {"x": np.random.default_rng(4).standard_normal((4, 2, 6, 6)).astype(np.float32)}
    model = qdq_conv(opset, w_scale)
    half = copy(model)
    p = ConvertToFloat16Pass()
    p(half)
    kept = {k["node"]: k["reason"] for k in p.kept}
    assert any(why in reason for reason in kept.values())
    assert half.graph.initializers["ws"].dtype == F32
    conv = next(n for n in half.graph if n.op_type == "Conv")
    assert conv.outputs[0].dtype == F16 and conv.inputs[1].producer().op_type == "Cast"
    check(half)
    want, got = run_ort(model, x)[0], run_ort(half, x)[0]
    np.testing.assert_allclose(got, want, atol=2e-2 * np.abs(want).max())
