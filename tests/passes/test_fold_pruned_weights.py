"""FoldPrunedWeightsPass: dead channels go, consumers shrink, outputs stay."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from edgepack.inspection import inspect_model
from edgepack.passes import optimize
from edgepack.passes.fold_batchnorm import FoldBatchNormPass
from edgepack.passes.fold_pruned_weights import FoldPrunedWeightsPass
from tests.helpers import check, model_from_text, run_ort
from tests.passes.nets import resnet_style


def _outputs(model, x):
    return run_ort(model, {"x": x})[0]


def _relative_error(a, b):
    return float(np.abs(a - b).max() / np.abs(a).max())


def test_pruned_resnet_style_net_shrinks_to_the_small_net_exactly():
    pruned = resnet_style(prune=True)
    x = np.random.default_rng(1).standard_normal((4, 3, 16, 16)).astype(np.float32)
    ref = _outputs(pruned, x)
    optimized = optimize(pruned)
    check(optimized)
    # half of 32 expansion channels, 12 - 4 and 6 - 2 branch channels, half of 32 hidden units
    small = optimize(resnet_style(expand=16, branch_a=8, branch_b=4, hidden=16))
    got, want = inspect_model(optimized), inspect_model(small)
    assert got["params"] == want["params"]
    assert got["macs"] == want["macs"]
    assert got["ops"] == want["ops"]
    assert _relative_error(ref, _outputs(optimized, x)) <= 1e-5
    dw = next(n for n in optimized.graph if n.op_type == "Conv" and n.attributes.get("group")
              and n.attributes["group"].value > 1)
    assert dw.attributes["group"].value == 16 and list(dw.inputs[1].shape)[0] == 16
    assert optimized.graph.inputs[0].shape[0] == ir.SymbolicDim("N")  # dynamic batch kept
    assert optimized.opset_imports[""] == 17


def test_real_data_like_inputs_and_idempotence():
    model = optimize(resnet_style(prune=True))
    params = inspect_model(model)["params"]
    again = optimize(model)
    assert inspect_model(again)["params"] == params
    assert FoldPrunedWeightsPass()(again).modified is False
    x = np.random.default_rng(2).uniform(0, 1, (2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(_outputs(model, x), _outputs(again, x))


# X -> Conv A (W[1]=0, b[1]=c) -> Relu -> Conv B (1x1, no pad) -> Y : the constant Relu(c)
# moves into B's bias, channel 1 goes.
CONST_CHANNEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3,6,6] x) => (float[N,4,{size},{size}] y) {{
    a = Conv <kernel_shape = [3,3], pads = [1,1,1,1]> (x, wa, ba)
    r = Relu(a)
    y = Conv <kernel_shape = [{k},{k}], pads = [{p},{p},{p},{p}]> (r, wb, bb)
}}
"""


def _const_channel_model(k: int, pad: int) -> ir.Model:
    rng = np.random.default_rng(0)
    proto = onnx.parser.parse_model(CONST_CHANNEL.format(size=6 + 2 * pad - k + 1, k=k, p=pad))
    wa = rng.standard_normal((3, 3, 3, 3)).astype(np.float32)
    wa[1] = 0
    ba = np.array([0.1, 1.5, -0.2], np.float32)
    for name, arr in {"wa": wa, "ba": ba, "wb": rng.standard_normal((4, 3, k, k)).astype(np.float32),
                      "bb": rng.standard_normal(4).astype(np.float32)}.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(arr, name))
    return ir.serde.deserialize_model(proto)


@pytest.mark.parametrize("k, pad, removable", [(1, 0, True), (3, 0, True), (3, 1, False)])
def test_constant_channel_folds_into_bias_only_where_exact(k, pad, removable):
    model = _const_channel_model(k, pad)
    x = np.random.default_rng(3).standard_normal((2, 3, 6, 6)).astype(np.float32)
    ref = run_ort(model, {"x": x})[0]
    result = FoldPrunedWeightsPass()(model)
    assert result.modified is removable
    conv_a = next(n for n in model.graph if n.name == "" and n.outputs[0].name == "a" or n.outputs[0].name == "a")
    assert conv_a.inputs[1].const_value.shape[0] == (2 if removable else 3)
    check(model)
    np.testing.assert_allclose(run_ort(model, {"x": x})[0], ref, rtol=1e-5, atol=1e-5)


def test_channels_used_by_unknown_ops_and_outputs_stay():
    # X -> MatMul(W, col 0 zero) -> Softmax -> Y : Softmax mixes features: nothing may go.
    model = model_from_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,3] x) => (float[N,4] y, float[N,4] z) <float[3,4] w = {0,1,2,3, 0,5,6,7, 0,9,1,2}> {
        z = MatMul(x, w)
        y = Softmax(z)
    }""")
    assert FoldPrunedWeightsPass()(model).modified is False


def test_transformer_ffn_hidden_units_fold():
    # x[N,S,8] -> MatMul W1[8,16] (cols 0..7 zero) -> Add b1 (0 there) -> Relu -> MatMul W2 -> Add -> LayerNorm
    rng = np.random.default_rng(4)
    w1 = rng.standard_normal((8, 16)).astype(np.float32)
    w1[:, :8] = 0
    b1 = rng.standard_normal(16).astype(np.float32)
    b1[:8] = 0
    proto = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    ffn (float[N,5,8] x) => (float[N,5,8] y) {
        h = MatMul(x, w1)
        hb = Add(h, b1)
        r = Relu(hb)
        o = MatMul(r, w2)
        ob = Add(o, b2)
        s = Add(ob, x)
        y = LayerNormalization <axis = -1> (s, g, beta)
    }""")
    for name, arr in {"w1": w1, "b1": b1, "w2": rng.standard_normal((16, 8)).astype(np.float32),
                      "b2": rng.standard_normal(8).astype(np.float32), "g": np.ones(8, np.float32),
                      "beta": np.zeros(8, np.float32)}.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(arr, name))
    model = ir.serde.deserialize_model(proto)
    x = rng.standard_normal((3, 5, 8)).astype(np.float32)
    ref = run_ort(model, {"x": x})[0]
    assert FoldPrunedWeightsPass()(model).modified
    check(model)
    shapes = {n.inputs[1].name: list(n.inputs[1].shape) for n in model.graph if n.op_type == "MatMul"}
    assert sorted(shapes.values()) == [[8, 8], [8, 8]]
    np.testing.assert_allclose(run_ort(model, {"x": x})[0], ref, rtol=1e-5, atol=1e-5)


def test_batchnorm_fold_keeps_outputs():
    model = resnet_style()
    x = np.random.default_rng(5).standard_normal((2, 3, 16, 16)).astype(np.float32)
    ref = _outputs(model, x)
    assert FoldBatchNormPass()(model).modified
    assert not any(n.op_type == "BatchNormalization" for n in model.graph)
    check(model)
    np.testing.assert_allclose(_outputs(model, x), ref, rtol=1e-4, atol=1e-5)
    assert FoldBatchNormPass()(model).modified is False


def _with_weights(text: str, weights: dict) -> ir.Model:
    proto = onnx.parser.parse_model(text)
    for name, arr in weights.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(arr, np.float32), name))
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


@pytest.mark.parametrize("beta1", [0.0, 0.8])
def test_conv_transpose_channels_fold(beta1):
    # x -> ConvTranspose (W[:, 1] = W[:, 4] = 0) -> BN (gamma 0 there, beta[1] = beta1) -> Relu
    #   -> ConvTranspose 1x1 -> y
    # Channel 4 is 0 and goes from both ConvTransposes. Channel 1 carries Relu(beta1): a constant
    # that a ConvTranspose consumer cannot absorb exactly (border outputs), so it stays unless 0.
    rng = np.random.default_rng(7)
    w1 = rng.standard_normal((3, 6, 3, 3))
    w1[:, [1, 4]] = 0
    gamma, beta = rng.uniform(0.5, 1.5, 6), rng.standard_normal(6) * 0.1
    gamma[[1, 4]], beta[[1, 4]] = 0, [beta1, 0]
    model = _with_weights("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,3,5,5] x) => (float[N,4,9,9] y) {
        t = ConvTranspose <kernel_shape = [3,3], strides = [2,2], pads = [1,1,1,1]> (x, w1, b1)
        n = BatchNormalization(t, gamma, beta, mean, var)
        r = Relu(n)
        y = ConvTranspose <kernel_shape = [1,1]> (r, w2)
    }""", {"w1": w1, "b1": np.zeros(6), "gamma": gamma, "beta": beta, "mean": rng.standard_normal(6) * 0.1,
           "var": rng.uniform(0.5, 2, 6), "w2": rng.standard_normal((6, 4, 1, 1))})
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    ref = run_ort(model, {"x": x})[0]
    optimized = optimize(model)
    check(optimized)
    convs = [n for n in optimized.graph if n.op_type == "ConvTranspose"]
    kept = 4 if beta1 == 0 else 5
    assert list(convs[0].inputs[1].const_value.shape) == [3, kept, 3, 3]
    assert list(convs[1].inputs[1].const_value.shape) == [kept, 4, 1, 1]
    assert _relative_error(ref, run_ort(optimized, {"x": x})[0]) <= 1e-5


def test_clip_bounds_from_attributes_opset_10():
    # x -> Conv (W[1] = 0, b[1] = 8) -> Clip<min=0, max=6> (opset 10: attributes) -> Conv 1x1 -> y
    # Channel 1 carries Clip(8) = 6, not 8: the consumer's bias must take 6 * sum(W2[:, 1]).
    rng = np.random.default_rng(8)
    w1 = rng.standard_normal((3, 3, 3, 3))
    w1[1] = 0
    model = _with_weights("""
    <ir_version: 7, opset_import: ["" : 10]>
    g (float[N,3,6,6] x) => (float[N,4,6,6] y) {
        a = Conv <kernel_shape = [3,3], pads = [1,1,1,1]> (x, w1, b1)
        r = Clip <min = 0.0, max = 6.0> (a)
        y = Conv <kernel_shape = [1,1]> (r, w2, b2)
    }""", {"w1": w1, "b1": [0.1, 8.0, -0.2], "w2": rng.standard_normal((4, 3, 1, 1)), "b2": np.zeros(4)})
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    ref = run_ort(model, {"x": x})[0]
    assert FoldPrunedWeightsPass()(model).modified
    check(model)
    assert model.opset_imports[""] == 10
    assert _relative_error(ref, run_ort(model, {"x": x})[0]) <= 1e-5


@pytest.mark.parametrize("beta_attr", [1.0, 0.0, 0.5])
def test_batchnorm_folds_into_gemm_whatever_its_beta(beta_attr):
    # x -> Gemm <alpha=0.7, beta, transB=1> (W, C) -> BN -> y : C' = (s (beta C - mean) + bn_beta) / beta
    rng = np.random.default_rng(9)
    model = _with_weights(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,5] x) => (float[N,4] y) {{
        h = Gemm <alpha = 0.7, beta = {beta_attr}, transB = 1> (x, w, c)
        y = BatchNormalization(h, gamma, bnb, mean, var)
    }}""", {"w": rng.standard_normal((4, 5)), "c": rng.standard_normal(4), "gamma": rng.uniform(0.5, 2, 4),
           "bnb": rng.standard_normal(4), "mean": rng.standard_normal(4), "var": rng.uniform(0.5, 2, 4)})
    x = rng.standard_normal((3, 5)).astype(np.float32)
    ref = run_ort(model, {"x": x})[0]
    assert FoldBatchNormPass()(model).modified
    assert [n.op_type for n in model.graph] == ["Gemm"]
    check(model)
    np.testing.assert_allclose(run_ort(model, {"x": x})[0], ref, rtol=1e-5, atol=1e-5)


# x -> Conv (W[1] = W[3] = 0) -> Relu = r -> Reshape(r, Concat(Unsqueeze(Gather(Shape(r), 0)), [-1]))
#   -> Gemm -> y          (PyTorch's x.view(x.size(0), -1) with a dynamic batch)
VIEW_FLATTEN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3,4,4] x) => (float[N,5] y) <int64 zero = {0}, int64[1] m1 = {-1}, int64[1] ax = {0}> {
    c = Conv <kernel_shape = [3,3], pads = [1,1,1,1]> (x, w)
    r = Relu(c)
    s = Shape(r)
    n = Gather(s, zero)
    nu = Unsqueeze(n, ax)
    shape = Concat <axis = 0> (nu, m1)
    f = Reshape(r, shape)
    y = Gemm <transB = 1> (f, w2)
}"""


@pytest.mark.parametrize("shape_reads", ["batch", "all"])
def test_view_flatten_with_dynamic_batch(shape_reads):
    rng = np.random.default_rng(10)
    w = rng.standard_normal((6, 3, 3, 3))
    w[[1, 3]] = 0
    text = VIEW_FLATTEN if shape_reads == "batch" else VIEW_FLATTEN.replace(
        "y = Gemm <transB = 1> (f, w2)", "y = Gemm <transB = 1> (f, w2)\n    t = Cast <to = 1> (s)").replace(
        "=> (float[N,5] y)", "=> (float[N,5] y, float[4] t)")
    model = _with_weights(text, {"w": w, "w2": rng.standard_normal((5, 96))})
    x = rng.standard_normal((3, 3, 4, 4)).astype(np.float32)
    ref = run_ort(model, {"x": x})
    assert FoldPrunedWeightsPass()(model).modified is (shape_reads == "batch")
    check(model)
    gemm = next(n for n in model.graph if n.op_type == "Gemm")
    assert list(gemm.inputs[1].const_value.shape) == [5, 64 if shape_reads == "batch" else 96]
    for got, want in zip(run_ort(model, {"x": x}), ref):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_depthwise_with_channel_multiplier_drops_whole_groups():
    # x -> Conv 1x1 (W[1] = 0) -> Relu -> depthwise Conv <group=4> W[8,1,3,3] (multiplier 2)
    #   -> Relu -> Conv 1x1 (8 -> 5) -> y
    # Input channel 1 is 0, so depthwise outputs 2 and 3 carry their bias only (Relu of it):
    # constant, absorbed by the last 1x1 Conv. Channel 1 and outputs 2, 3 go; group becomes 3.
    rng = np.random.default_rng(11)
    w1 = rng.standard_normal((4, 3, 1, 1))
    w1[1] = 0
    model = _with_weights("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,3,6,6] x) => (float[N,5,6,6] y) {
        a = Conv <kernel_shape = [1,1]> (x, w1)
        r = Relu(a)
        d = Conv <kernel_shape = [3,3], pads = [1,1,1,1], group = 4> (r, wd, bd)
        e = Relu(d)
        y = Conv <kernel_shape = [1,1]> (e, w3, b3)
    }""", {"w1": w1, "wd": rng.standard_normal((8, 1, 3, 3)), "bd": rng.standard_normal(8),
           "w3": rng.standard_normal((5, 8, 1, 1)), "b3": rng.standard_normal(5)})
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    ref = run_ort(model, {"x": x})[0]
    assert FoldPrunedWeightsPass()(model).modified
    check(model)
    dw = next(n for n in model.graph if n.attributes.get("group") is not None)
    assert dw.attributes["group"].value == 3 and list(dw.inputs[1].const_value.shape) == [6, 1, 3, 3]
    assert _relative_error(ref, run_ort(model, {"x": x})[0]) <= 1e-5


def test_channels_read_inside_a_subgraph_stay():
    # x -> Conv (W[1] = 0) -> Relu = r -> If(c) { then: Conv 1x1 (r) } { else: Neg(Conv 1x1 (r)) } -> y
    # r is read from inside the branches (outer scope): its channels are not followed there.
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(13)
    w1 = rng.standard_normal((3, 3, 3, 3)).astype(np.float32)
    w1[1] = 0
    w2 = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)

    def vi(name):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 4, 6, 6])

    then = helper.make_graph([helper.make_node("Conv", ["r", "w2"], ["t"], kernel_shape=[1, 1])], "then", [], [vi("t")])
    other = helper.make_graph([helper.make_node("Conv", ["r", "w2"], ["e0"], kernel_shape=[1, 1]),
                               helper.make_node("Neg", ["e0"], ["e"])], "else", [], [vi("e")])
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["a"], ["r"]),
         helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6]),
         helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [vi("y")], [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model = ir.serde.deserialize_model(proto)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    refs = [run_ort(model, {"x": x, "c": np.array(c)})[0] for c in (True, False)]
    optimized = optimize(model)
    check(optimized)
    assert list(next(n for n in optimized.graph if n.op_type == "Conv").inputs[1].shape)[0] == 3
    for c, ref in zip((True, False), refs):
        np.testing.assert_array_equal(run_ort(optimized, {"x": x, "c": np.array(c)})[0], ref)


@pytest.mark.parametrize("producer", [
    "a = Conv <kernel_shape = [1,1]> (x, wc)",
    "a = Conv <kernel_shape = [1,1]> (x, wc, bias)",
    "a = ConvTranspose <kernel_shape = [1,1]> (x, wt, bias)",
])
def test_batchnorm_chain_folds_into_conv(producer):
    # x -> Conv | Conv+bias | ConvTranspose -> BN1 -> BN2 -> y : BN2 follows a folded op and folds too
    rng = np.random.default_rng(14)
    stats = {f"{k}{i}": rng.uniform(0.5, 2, 4) if k in ("g", "v") else rng.standard_normal(4)
             for i in (1, 2) for k in ("g", "b", "m", "v")}
    model = _with_weights(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,3,5,5] x) => (float[N,4,5,5] y) {{
        {producer}
        n = BatchNormalization <epsilon = 0.001> (a, g1, b1, m1, v1)
        y = BatchNormalization(n, g2, b2, m2, v2)
    }}""", {"wc": rng.standard_normal((4, 3, 1, 1)), "wt": rng.standard_normal((3, 4, 1, 1)),
           "bias": rng.standard_normal(4), **stats})
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    ref = run_ort(model, {"x": x})[0]
    assert FoldBatchNormPass()(model).modified
    assert [n.op_type for n in model.graph] == [producer.split()[2]]
    assert model.graph.outputs[0].name == "y"
    check(model)
    np.testing.assert_allclose(run_ort(model, {"x": x})[0], ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode, pad_value, kept", [("nearest", 0.0, 3), ("linear", 0.0, 3), ("linear", 0.5, 4)])
def test_channels_follow_through_resize_and_pad(mode, pad_value, kept):
    # x -> Conv (W[1] = 0) -> Relu -> Resize x2 (FPN-style upsampling) -> Pad 1 (value v) -> Conv 1x1 -> y
    # Channel 1 is 0 after Resize; after Pad it stays 0 only when v = 0 (else border pixels are v).
    rng = np.random.default_rng(15)
    w = rng.standard_normal((4, 3, 3, 3))
    w[1] = 0
    model = _with_weights(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,3,4,4] x) => (float[N,5,10,10] y) <float[4] scales = {{1,1,2,2}}, int64[8] pads = {{0,0,1,1,0,0,1,1}}> {{
        a = Conv <kernel_shape = [3,3], pads = [1,1,1,1]> (x, w)
        r = Relu(a)
        u = Resize <mode = "{mode}"> (r, , scales)
        p = Pad(u, pads, v)
        y = Conv <kernel_shape = [1,1]> (p, w2)
    }}""", {"w": w, "w2": rng.standard_normal((5, 4, 1, 1)), "v": np.array(pad_value)})
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    ref = run_ort(model, {"x": x})[0]
    assert FoldPrunedWeightsPass()(model).modified is (kept < 4)
    check(model)
    assert list(next(n for n in model.graph if n.op_type == "Conv").inputs[1].shape)[0] == kept
    assert _relative_error(ref, run_ort(model, {"x": x})[0]) <= 1e-5


GROUPED = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3,6,6] x) => (float[N,5,6,6] y) {{
    a = Conv <kernel_shape = [1,1]> (x, w1, b1)
    r = Relu(a)
    c = Conv <kernel_shape = [{k},{k}], pads = [{p},{p},{p},{p}], group = {g}> (r, wg, bg)
    s = Relu(c)
    y = Conv <kernel_shape = [1,1]> (s, w3)
}}"""


def _grouped_model(rng, groups, k, dead_in, dead_out, const_in=()):
    w1, b1 = rng.standard_normal((8, 3, 1, 1)), rng.standard_normal(8)
    w1[list(dead_in) + list(const_in)] = 0
    b1[list(dead_in)] = 0
    wg, bg = rng.standard_normal((8, 8 // groups, k, k)), rng.standard_normal(8)
    wg[list(dead_out)], bg[list(dead_out)] = 0, 0
    return _with_weights(GROUPED.format(k=k, p=k // 2, g=groups), {
        "w1": w1, "b1": b1, "wg": wg, "bg": bg, "w3": rng.standard_normal((5, 8, 1, 1))})


def test_grouped_conv_drops_the_same_number_of_channels_in_every_group():
    # x -> Conv 1x1 (8) -> Relu -> Conv 1x1 <group=2> (8 -> 8) -> Relu -> Conv 1x1 (8 -> 5) -> y
    # Dead inputs: 1, 2 (group 0) and 5 (group 1): one per group can go (2 stays, 5 goes with 1).
    # Dead outputs: 0 (group 0), 4 and 5 (group 1): one per group goes.
    rng = np.random.default_rng(16)
    model = _grouped_model(rng, 2, 1, dead_in=(1, 2, 5), dead_out=(0, 4, 5))
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    ref = run_ort(model, {"x": x})[0]
    assert FoldPrunedWeightsPass()(model).modified
    check(model)
    grouped = next(n for n in model.graph if n.attributes.get("group") is not None)
    assert grouped.attributes["group"].value == 2
    assert list(grouped.inputs[1].const_value.shape) == [6, 3, 1, 1]
    assert _relative_error(ref, run_ort(model, {"x": x})[0]) <= 1e-5


@pytest.mark.parametrize("seed", range(20))
def test_grouped_conv_random_pruning_keeps_outputs(seed):
    rng = np.random.default_rng(100 + seed)
    groups, k = int(rng.choice([2, 4])), int(rng.choice([1, 3]))
    pick = lambda n, p: [i for i in range(n) if rng.random() < p]  # noqa: E731
    model = _grouped_model(rng, groups, k, dead_in=pick(8, 0.4), dead_out=pick(8, 0.4),
                           const_in=pick(8, 0.2))
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    ref = run_ort(model, {"x": x})[0]
    FoldPrunedWeightsPass()(model)
    check(model)
    assert _relative_error(ref, run_ort(model, {"x": x})[0]) <= 1e-5
    assert FoldPrunedWeightsPass()(model).modified is False
