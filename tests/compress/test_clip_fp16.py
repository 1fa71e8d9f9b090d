"""ClipWeightsPass and ConvertToFloat16Pass."""
import numpy as np
import onnx_ir as ir
import pytest

from edgepack.errors import EdgepackError
from edgepack.graph import const_array, weight_input
from edgepack.passes.clip_weights import ClipWeightsPass
from edgepack.passes.fp16 import ConvertToFloat16Pass
from tests.compress.util import copy, model_with_weights, randn
from tests.helpers import SHARED_MODELS, check, requires_shared, run_ort

# x[N,16] -> Gemm w[16,32] + b -> Relu -> MatMul v[32,8] -> Softmax -> y
#                                           +-> ReduceSum -> s
MLP = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 16] x, float[16, 32] w, float[32] b, float[32, 8] v) => (float[N, 8] y, float[N, 1] s) {
  h = Gemm(x, w, b)
  r = Relu(h)
  m = MatMul(r, v)
  y = Softmax(m)
  s = ReduceSum<keepdims=1>(m, axes)
}"""


def mlp(rng, big=False):
    v = randn(rng, 32, 8)
    if big:
        v[0, 0] = 1e6  # beyond float16: the MatMul reading it must stay float32
    text = MLP.replace("float[32, 8] v)", "float[32, 8] v, int64[1] axes)")
    return model_with_weights(text, {"w": randn(rng, 16, 32), "b": randn(rng, 32), "v": v,
                                     "axes": np.array([1], np.int64)})


def test_clip_percentile_moves_outliers_only():
    rng = np.random.default_rng(0)
    model = mlp(rng)
    w = const_array(model.graph.initializers["w"])
    clipped = copy(model)
    p = ClipWeightsPass(percentile=95)
    assert p(clipped).modified
    new = const_array(clipped.graph.initializers["w"])
    t = np.percentile(np.abs(w), 95, method="higher")
    np.testing.assert_array_equal(new, np.clip(w, -t, t))
    layer = next(layer for layer in p.layers if layer["op_type"] == "Gemm")
    assert layer["moved"] == np.count_nonzero(np.abs(w) > t) > 0
    check(clipped)
    x = {"x": rng.standard_normal((4, 16)).astype(np.float32)}
    assert not np.array_equal(run_ort(clipped, x)[0], run_ort(model, x)[0])
    assert not ClipWeightsPass(percentile=95)(clipped).modified


def test_clip_threshold_and_options():
    rng = np.random.default_rng(1)
    model = mlp(rng)
    ClipWeightsPass(threshold=0.05)(model)
    for node in model.graph:
        value = weight_input(node)
        if value is not None:
            assert np.abs(const_array(value)).max() <= 0.05
    with pytest.raises(EdgepackError, match="exactly one"):
        ClipWeightsPass()
    with pytest.raises(EdgepackError, match="--percentile"):
        ClipWeightsPass(percentile=0)


def test_fp16_keeps_fragile_ops_and_large_values_in_float32():
    rng = np.random.default_rng(2)
    model = mlp(rng, big=True)
    x = {"x": rng.standard_normal((4, 16)).astype(np.float32)}
    before = run_ort(model, x)
    half = copy(model)
    p = ConvertToFloat16Pass(keep_io_float=True)
    assert p(half).modified
    ops = {n.op_type: n for n in half.graph}
    assert ops["Gemm"].outputs[0].dtype == ir.DataType.FLOAT16
    assert half.graph.initializers["w"].dtype == ir.DataType.FLOAT16
    assert ops["MatMul"].outputs[0].dtype == ir.DataType.FLOAT  # reads 1e6
    assert half.graph.initializers["v"].dtype == ir.DataType.FLOAT
    assert ops["Softmax"].outputs[0].dtype == ir.DataType.FLOAT
    assert [v.dtype for v in half.graph.inputs] == [ir.DataType.FLOAT]
    check(half)
    after = run_ort(half, x)
    for a, b in zip(before, after):
        assert b.dtype == np.float32
        np.testing.assert_allclose(b, a, rtol=2e-2, atol=2e-2 * np.abs(a).max())
    assert not ConvertToFloat16Pass(keep_io_float=True)(half).modified


def test_fp16_io_float16_when_asked():
    rng = np.random.default_rng(3)
    model = mlp(rng)
    half = copy(model)
    ConvertToFloat16Pass(keep_io_float=False)(half)
    assert half.graph.inputs[0].dtype == ir.DataType.FLOAT16
    check(half)
    x = rng.standard_normal((4, 16)).astype(np.float32)
    out = run_ort(half, {"x": x.astype(np.float16)})
    ref = run_ort(model, {"x": x})
    assert out[0].dtype == np.float16
    np.testing.assert_allclose(out[0].astype(np.float32), ref[0], rtol=2e-2, atol=1e-2)


@requires_shared
def test_fp16_resnet20_real_images():
    from edgepack import io
    from tests.helpers import SHARED_DATA

    data = np.load(SHARED_DATA / "cifar10_test/cifar10_test_jpeg_decoded.npz")
    x = data["images"][:16].astype(np.float32) / 255
    x = ((x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(0, 3, 1, 2).astype(np.float32)
    model = io.load(SHARED_MODELS / "resnet20_cifar10.onnx")
    half = copy(model)
    ConvertToFloat16Pass(keep_io_float=True)(half)
    check(half)
    ref, out = run_ort(model, {"input": x})[0], run_ort(half, {"input": x})[0]
    assert (ref.argmax(1) == out.argmax(1)).mean() >= 0.9
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()
