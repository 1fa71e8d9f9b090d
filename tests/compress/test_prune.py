"""PruneWeightsPass: element, 2:4 and channel pruning; bias correction; fold after channel pruning."""
import numpy as np
import onnx_ir as ir
import pytest

from edgepack import cost
from edgepack.errors import EdgepackError
from edgepack.graph import const_array, weight_input
from edgepack.passes.prune import PruneWeightsPass, correct_biases, prune
from tests.compress.util import copy, model_with_weights, randn
from tests.helpers import SHARED_MODELS, check, requires_shared, run_ort

# x[N,8,6,6] -> Conv w1[16,8,3,3] -> Relu -> Flatten -> Gemm wf[576,10] -> y
#                                    and x -> ReduceMean -> MatMul wm[8,12] -> z
CNN = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 8, 6, 6] x, float[16, 8, 3, 3] w1, float[16] b1, float[576, 10] wf, float[8, 12] wm)
  => (float[N, 10] y, float[N, 12] z) {
  c = Conv<pads=[1, 1, 1, 1]>(x, w1, b1)
  r = Relu(c)
  f = Flatten(r)
  y = Gemm(f, wf)
  m = ReduceMean<axes=[2, 3], keepdims=0>(x)
  z = MatMul(m, wm)
}"""

# A residual CNN: the stem and conv b meet at the Add, so they lose the same channels.
#   x[N,3,8,8] -> Conv s[8,3,3,3] -> Relu -> r0 -----------------------+
#                                     +-> Conv a[16,8,3,3] -> BN -> Relu -> Conv b[8,16,3,3] -> Add -> Relu
#   -> GlobalAveragePool -> Flatten -> Gemm fc[10,8] (transB) -> logits
RESNET = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 3, 8, 8] x, float[8, 3, 3, 3] s, float[8] sb, float[16, 8, 3, 3] a, float[16] ab,
   float[16] g1, float[16] b1, float[16] m1, float[16] v1, float[8, 16, 3, 3] b, float[8] bb,
   float[10, 8] fc, float[10] fcb) => (float[N, 10] logits) {
  c0 = Conv<pads=[1, 1, 1, 1]>(x, s, sb)
  r0 = Relu(c0)
  c1 = Conv<pads=[1, 1, 1, 1]>(r0, a, ab)
  n1 = BatchNormalization(c1, g1, b1, m1, v1)
  r1 = Relu(n1)
  c2 = Conv<pads=[1, 1, 1, 1]>(r1, b, bb)
  sum = Add(c2, r0)
  r2 = Relu(sum)
  p = GlobalAveragePool(r2)
  f = Flatten(p)
  logits = Gemm<transB=1>(f, fc, fcb)
}"""


def cnn(rng):
    return model_with_weights(CNN, {"w1": randn(rng, 16, 8, 3, 3), "b1": randn(rng, 16),
                                    "wf": randn(rng, 576, 10), "wm": randn(rng, 8, 12)})


def resnet(rng):
    return model_with_weights(RESNET, {
        "s": randn(rng, 8, 3, 3, 3, scale=0.5), "sb": randn(rng, 8), "a": randn(rng, 16, 8, 3, 3),
        "ab": randn(rng, 16), "g1": 1 + randn(rng, 16), "b1": randn(rng, 16), "m1": randn(rng, 16),
        "v1": 1 + np.abs(randn(rng, 16)), "b": randn(rng, 8, 16, 3, 3), "bb": randn(rng, 8),
        "fc": randn(rng, 10, 8), "fcb": randn(rng, 10)})


def weights(model):
    return {n.name or n.op_type: const_array(weight_input(n)) for n in model.graph if weight_input(n) is not None}


def assert_same_as_original_with(model, new_weights, pruned, rng):
    """ORT on the pruned graph == ORT on the original graph with the new weights set by hand."""
    reference = copy(model)
    for node in reference.graph:
        value = weight_input(node)
        if value is not None:
            value.const_value = ir.tensor(new_weights[node.name or node.op_type].copy(), name=value.name)
    x = feeds_for(model, rng)
    for a, b in zip(run_ort(pruned, x), run_ort(reference, x)):
        np.testing.assert_array_equal(a, b)


def feeds_for(model, rng, batch=4):
    x = model.graph.inputs[0]
    return {x.name: rng.standard_normal([batch, *x.shape[1:]]).astype(np.float32)}


def test_element_pruning_per_layer_zeroes_the_smallest():
    rng = np.random.default_rng(0)
    model = cnn(rng)
    before = weights(model)
    pruned = copy(model)
    assert PruneWeightsPass(sparsity=0.75)(pruned).modified
    after = weights(pruned)
    for key, w in before.items():
        p = after[key]
        assert np.count_nonzero(p == 0) == round(0.75 * w.size)
        kept = np.abs(w[p != 0])
        assert kept.min() >= np.abs(w[p == 0]).max()  # the largest ones survive
        np.testing.assert_array_equal(p[p != 0], w[p != 0])
    check(pruned)
    assert_same_as_original_with(model, after, pruned, rng)
    assert not PruneWeightsPass(sparsity=0.75)(pruned).modified


def test_global_scope_uses_one_threshold():
    rng = np.random.default_rng(1)
    model = cnn(rng)
    before = weights(model)
    pruned = copy(model)
    PruneWeightsPass(sparsity=0.5, scope="global")(pruned)
    after = weights(pruned)
    everything = np.concatenate([np.abs(w).ravel() for w in before.values()])
    threshold = np.sort(everything)[round(0.5 * everything.size) - 1]
    for key, w in before.items():
        np.testing.assert_array_equal(after[key] == 0, np.abs(w) <= threshold)


def test_2_4_every_group_of_four_along_reduction_axis():
    rng = np.random.default_rng(2)
    model = cnn(rng)
    pruned = copy(model)
    p = PruneWeightsPass(sparsity=0.5, granularity="2:4")
    assert p(pruned).modified
    after = weights(pruned)
    by_op = {n.op_type: const_array(weight_input(n)) for n in pruned.graph if weight_input(n) is not None}
    orig = {n.op_type: const_array(weight_input(n)) for n in model.graph if weight_input(n) is not None}
    for op, axis in (("Conv", 1), ("Gemm", 0), ("MatMul", 0)):
        w, o = np.moveaxis(by_op[op], axis, -1), np.moveaxis(orig[op], axis, -1)
        g, go = w.reshape(*w.shape[:-1], -1, 4), o.reshape(*o.shape[:-1], -1, 4)
        assert (np.count_nonzero(g, axis=-1) <= 2).all(), op
        # the 2 kept are the 2 largest of each group
        kept = np.sort(np.abs(g), axis=-1)[..., 2:]
        np.testing.assert_array_equal(kept, np.sort(np.abs(go), axis=-1)[..., 2:])
    check(pruned)
    assert_same_as_original_with(model, after, pruned, rng)
    assert not PruneWeightsPass(sparsity=0.5, granularity="2:4")(pruned).modified


def test_2_4_skips_layers_whose_reduction_is_not_a_multiple_of_4():
    rng = np.random.default_rng(3)
    model = resnet(rng)  # stem has 3 input channels
    p = PruneWeightsPass(sparsity=0.5, granularity="2:4")
    p(model)
    stem = next(layer for layer in p.layers if layer["params"] == 8 * 3 * 9)
    assert not stem["modified"] and "multiple of 4" in stem["skipped"]


def test_channel_pruning_residual_cnn_joint_channels_and_fold():
    rng = np.random.default_rng(4)
    model = resnet(rng)
    zeroed, report = prune(model, sparsity=0.5, granularity="channel", fold=False)
    convs = [n for n in zeroed.graph if n.op_type == "Conv"]
    stem, a, b = (const_array(weight_input(n)) for n in convs)
    dead_stem = ~stem.reshape(8, -1).any(1)
    dead_b = ~b.reshape(8, -1).any(1)
    assert dead_stem.sum() == 4 and (dead_stem == dead_b).all()  # joined at the Add
    dead_a = ~a.reshape(16, -1).any(1)
    assert dead_a.sum() == 8
    bn = next(n for n in zeroed.graph if n.op_type == "BatchNormalization")
    assert not const_array(bn.inputs[1])[dead_a].any() and not const_array(bn.inputs[2])[dead_a].any()
    assert not const_array(convs[0].inputs[2])[dead_stem].any()
    fc = next(n for n in zeroed.graph if n.op_type == "Gemm")
    assert const_array(weight_input(fc)).all()  # feeds the graph output: left whole
    folded, report = prune(model, sparsity=0.5, granularity="channel")
    assert report["folded"]
    check(folded)
    ratio = report["after"]["macs"] / report["before"]["macs"]
    # stem: half its outputs; a and b: half their inputs and outputs; fc: half its inputs
    n = 64  # output pixels
    expected = (n * 4 * 27 + n * 8 * 36 + n * 4 * 72 + 10 * 4) / (n * 8 * 27 + n * 16 * 72 + n * 8 * 144 + 80)
    assert ratio == pytest.approx(expected), ratio
    x = feeds_for(model, rng)
    np.testing.assert_allclose(run_ort(folded, x)[0], run_ort(zeroed, x)[0], rtol=1e-5, atol=1e-5)
    assert report["error"]["max_abs_error"] > 0


def test_bias_correction_removes_the_mean_output_shift():
    rng = np.random.default_rng(5)
    # x[N,64] (mean 1) -> Gemm w[64,32] + b -> y
    text = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 64] x, float[64, 32] w, float[32] b) => (float[N, 32] y) { y = Gemm(x, w, b) }"""
    model = model_with_weights(text, {"w": randn(rng, 64, 32), "b": randn(rng, 32)})
    feeds = [{"x": (1 + rng.standard_normal((256, 64))).astype(np.float32)}]
    pruned = copy(model)
    PruneWeightsPass(sparsity=0.6)(pruned)
    shift = lambda m: np.abs((cost.run(m, feeds)[0][0] - cost.run(model, feeds)[0][0]).mean(0)).max()
    before = shift(pruned)
    assert correct_biases(model, pruned, feeds) == 1
    assert shift(pruned) < before / 100
    check(pruned)


def test_bad_options():
    rng = np.random.default_rng(6)
    with pytest.raises(EdgepackError, match="--sparsity"):
        PruneWeightsPass(sparsity=1.5)
    with pytest.raises(EdgepackError, match="nope"):
        PruneWeightsPass(sparsity=0.5, include=["nope"])(cnn(rng))


@requires_shared
def test_resnet20_channel_half_the_macs():
    from edgepack import io

    model = io.load(SHARED_MODELS / "resnet20_cifar10.onnx")
    pruned, report = prune(model, sparsity=0.5, granularity="channel")
    check(pruned)
    ratio = report["after"]["macs"] / report["before"]["macs"]
    assert 0.45 < ratio < 0.56, ratio
    assert report["error"]["max_abs_error"] > 0
    run_ort(pruned, {"input": np.zeros((1, 3, 32, 32), np.float32)})
