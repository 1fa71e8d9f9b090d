"""FactorizeLowRankPass: SVD factors of MatMul / Gemm / 1x1 Conv weights."""
import numpy as np
import pytest

from edgepack.errors import EdgepackError
from edgepack.passes.lowrank import FactorizeLowRankPass, choose_rank
from tests.compress.util import copy, model_with_weights, randn
from tests.helpers import check, run_ort

# A transformer-style feed-forward block and a classifier head:
#   x[N,16,64] -> MatMul(w1 64x128) -> Relu -> MatMul(w2 128x64) -> y
#   mean over tokens -> Gemm(wg^T 32x64, bg, alpha=2) -> z
FFN = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 16, 64] x, float[64, 128] w1, float[128, 64] w2, float[32, 64] wg, float[32] bg)
  => (float[N, 16, 64] y, float[N, 32] z) {
  h = MatMul(x, w1)
  r = Relu(h)
  y = MatMul(r, w2)
  f = ReduceMean<axes=[1], keepdims=0>(x)
  z = Gemm<transB=1, alpha=2.0>(f, wg, bg)
}"""

# x[N,32,8,8] -> Conv 1x1 (w 48x32, bias, stride 2, pads 1) -> y
CONV = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 32, 8, 8] x, float[48, 32, 1, 1] w, float[48] b) => (float[N, 48, 5, 5] y) {
  y = Conv<strides=[2, 2], pads=[1, 1, 1, 1]>(x, w, b)
}"""


def ffn(rng):
    # w1 is close to rank 8, so a rank-8 factorization keeps most of it
    w1 = randn(rng, 64, 8) @ randn(rng, 8, 128) + randn(rng, 64, 128, scale=0.001)
    return _ffn(rng, w1)


def _ffn(rng, w1):
    return model_with_weights(FFN, {"w1": w1.astype(np.float32), "w2": randn(rng, 128, 64),
                                     "wg": randn(rng, 32, 64), "bg": randn(rng, 32)})


def outputs(model, x):
    return run_ort(model, {"x": x})


def test_full_rank_reproduces_outputs():
    rng = np.random.default_rng(0)
    model = ffn(rng)
    x = rng.standard_normal((2, 16, 64)).astype(np.float32)
    before = outputs(model, x)
    factored = copy(model)
    p = FactorizeLowRankPass(full=True)
    assert p(factored).modified
    ops = [n.op_type for n in factored.graph]
    assert ops.count("MatMul") == 4 and ops.count("Gemm") == 2
    check(factored)
    for a, b in zip(before, outputs(factored, x)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
    assert not FactorizeLowRankPass(full=True)(factored).modified  # second run: nothing to do


def test_rank_saves_macs_and_keeps_low_rank_layer_accurate():
    rng = np.random.default_rng(1)
    model = ffn(rng)
    x = rng.standard_normal((2, 16, 64)).astype(np.float32)
    before = outputs(model, x)
    factored = copy(model)
    p = FactorizeLowRankPass(rank=8, min_saving=0.3)
    assert p(factored).modified
    by_node = {layer["node"]: layer for layer in p.layers}
    assert len(by_node) == 3
    assert all(layer["factorized"] == (layer["mac_saving"] >= 0.3) for layer in p.layers)
    assert sum(layer["factorized"] for layer in p.layers) == 3
    check(factored)
    z_err = np.abs(outputs(factored, x)[1] - before[1]).max()
    assert z_err > 1e-3  # wg is full rank: truncation to 8 is lossy and the report must show it


def test_energy_picks_rank():
    s = np.array([10.0, 1.0, 0.1, 0.01])
    assert choose_rank(s, rank=None, energy=0.99) == 1
    assert choose_rank(s, rank=None, energy=0.9999) == 2
    assert choose_rank(s, rank=None, energy=1.0) == 4
    assert choose_rank(s, rank=9, energy=None) == 4


def test_conv_1x1_factorized_exactly_at_full_rank():
    rng = np.random.default_rng(2)
    model = model_with_weights(CONV, {"w": randn(rng, 48, 32, 1, 1), "b": randn(rng, 48)})
    x = rng.standard_normal((1, 32, 8, 8)).astype(np.float32)
    before = run_ort(model, {"x": x})[0]
    factored = copy(model)
    assert FactorizeLowRankPass(full=True)(factored).modified
    assert [n.op_type for n in factored.graph] == ["Conv", "Conv"]
    check(factored)
    np.testing.assert_allclose(run_ort(factored, {"x": x})[0], before, rtol=1e-4, atol=1e-4)


def test_options_are_checked():
    with pytest.raises(EdgepackError, match="exactly one"):
        FactorizeLowRankPass(rank=4, energy=0.9)
    with pytest.raises(EdgepackError, match="--energy"):
        FactorizeLowRankPass(energy=1.5)


# A one-head transformer encoder layer, D=64, T=16, FFN 256:
#   x -> LayerNorm -> MatMul wq / wk / wv -> q @ k^T / 8 -> Softmax -> @ v -> MatMul wo -> + x = h
#   h -> LayerNorm -> MatMul w1 -> Relu -> MatMul w2 -> + h -> y
ENCODER = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 16, 64] x, float[64] g1, float[64] b1, float[64, 64] wq, float[64, 64] wk, float[64, 64] wv,
   float[64, 64] wo, float[64] g2, float[64] b2, float[64, 256] w1, float[256, 64] w2, float[1] scale)
  => (float[N, 16, 64] y) {
  n1 = LayerNormalization<axis=-1>(x, g1, b1)
  q = MatMul(n1, wq)
  k = MatMul(n1, wk)
  v = MatMul(n1, wv)
  kt = Transpose<perm=[0, 2, 1]>(k)
  s = MatMul(q, kt)
  ss = Mul(s, scale)
  a = Softmax<axis=-1>(ss)
  c = MatMul(a, v)
  o = MatMul(c, wo)
  h = Add(o, x)
  n2 = LayerNormalization<axis=-1>(h, g2, b2)
  f = MatMul(n2, w1)
  r = Relu(f)
  f2 = MatMul(r, w2)
  y = Add(f2, h)
}"""


def encoder(rng):
    def low_rank(k, n, r):  # trained transformer weights have decaying spectra; imitate that
        return (randn(rng, k, r) @ randn(rng, r, n) + randn(rng, k, n, scale=0.005)).astype(np.float32)

    return model_with_weights(ENCODER, {
        "g1": np.ones(64, np.float32), "b1": np.zeros(64, np.float32), "g2": np.ones(64, np.float32),
        "b2": np.zeros(64, np.float32), "wq": low_rank(64, 64, 8), "wk": low_rank(64, 64, 8),
        "wv": low_rank(64, 64, 8), "wo": low_rank(64, 64, 8), "w1": low_rank(64, 256, 16),
        "w2": low_rank(256, 64, 16), "scale": np.array([0.125], np.float32)})


def test_transformer_encoder_fewer_macs_and_error_reported():
    from edgepack.passes.lowrank import lowrank

    rng = np.random.default_rng(5)
    model = encoder(rng)
    factored, report = lowrank(model, energy=0.99)
    assert sum(layer["factorized"] for layer in report["layers"]) == 6
    assert report["after"]["macs"] < 0.6 * report["before"]["macs"]
    assert report["error"]["max_abs_error"] > 0 and report["error"]["sqnr_db"] > 20
    check(factored)
    exact, report = lowrank(model, full=True)
    x = {"x": rng.standard_normal((2, 16, 64)).astype(np.float32)}
    np.testing.assert_allclose(run_ort(exact, x)[0], run_ort(model, x)[0], rtol=1e-4, atol=1e-4)
