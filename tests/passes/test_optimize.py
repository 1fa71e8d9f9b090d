"""The optimize pipeline on real models and common architectures; simplification passes; the CLI."""
from __future__ import annotations

import gzip
import json

import numpy as np
import onnx_ir as ir
import pytest

from edgepack import io
from edgepack.passes import optimize
from edgepack.passes.simplify import FoldConstantsPass, RemoveNoOpsPass
from tests.helpers import (SHARED_DATA, SHARED_MODELS, assert_one_line_error, check, edgepack_cli,
                           model_from_text, requires_shared, run_ort)


def _mnist_images(count: int) -> np.ndarray:
    with gzip.open(SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz") as f:
        data = np.frombuffer(f.read(), np.uint8, offset=16)
    return data[: count * 784].reshape(count, 1, 28, 28).astype(np.float32)


def _cifar_images(count: int) -> np.ndarray:
    with np.load(SHARED_DATA / "cifar10_test" / "cifar10_test_jpeg_decoded.npz") as d:
        x = d["images"][:count].astype(np.float32) / 255
    x = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    return x.transpose(0, 3, 1, 2).astype(np.float32)


@requires_shared
@pytest.mark.parametrize("name, input_name, images", [
    ("mnist_cntk_fp32.onnx", "Input3", _mnist_images),
    ("resnet20_cifar10.onnx", "input", _cifar_images),
])
def test_real_models_keep_their_outputs(name, input_name, images):
    path = SHARED_MODELS / name
    model = optimize(io.load(path))
    check(model)
    real = images(64)
    rand = np.random.default_rng(0).standard_normal(real.shape).astype(np.float32)
    for x in (real, rand):
        ref, got = run_ort(path, {input_name: x})[0], run_ort(model, {input_name: x})[0]
        assert np.abs(ref - got).max() <= 1e-5 * np.abs(ref).max()
    assert (run_ort(path, {input_name: real})[0].argmax(1) == run_ort(model, {input_name: real})[0].argmax(1)).all()


def test_detector_head_outputs_unchanged():
    # x -> Conv -> Relu -> [cls Conv -> Reshape -> Transpose], [box Conv -> Reshape -> Transpose] -> Concat
    rng = np.random.default_rng(0)
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    det (float[N,3,8,8] x) => (float[N,64,7] y) {
        f = Conv <kernel_shape = [3,3], pads = [1,1,1,1]> (x, w0)
        r = Relu(f)
        c = Conv <kernel_shape = [1,1]> (r, wc)
        b = Conv <kernel_shape = [1,1]> (r, wb)
        cr = Reshape(c, s1)
        br = Reshape(b, s2)
        ct = Transpose <perm = [0,2,1]> (cr)
        bt = Transpose <perm = [0,2,1]> (br)
        y = Concat <axis = 2> (ct, bt)
    }"""
    import onnx

    proto = onnx.parser.parse_model(text)
    w0 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    w0[2] = 0  # a dead channel the heads read: it may go from both heads
    for name, arr in {"w0": w0, "wc": rng.standard_normal((3, 8, 1, 1)), "wb": rng.standard_normal((4, 8, 1, 1)),
                      "s1": np.array([0, 3, 64]), "s2": np.array([0, 4, 64])}.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(
            arr.astype(np.int64 if name.startswith("s") else np.float32), name))
    model = ir.serde.deserialize_model(proto)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    ref = run_ort(model, {"x": x})[0]
    optimized = optimize(model)
    check(optimized)
    np.testing.assert_allclose(run_ort(optimized, {"x": x})[0], ref, rtol=1e-5, atol=1e-5)
    first = next(n for n in optimized.graph if n.op_type == "Conv")
    assert list(first.inputs[1].shape)[0] == 7


def test_remove_no_ops():
    # x -> Identity -> Transpose(0,2,1) -> Transpose(0,2,1) -> Relu -> Dropout -> y
    model = model_from_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,3,4] x) => (float[N,3,4] y) {
        a = Identity(x)
        b = Transpose <perm = [0,2,1]> (a)
        c = Transpose <perm = [0,2,1]> (b)
        d = Relu(c)
        y = Dropout(d)
    }""")
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    ref = run_ort(model, {"x": x})[0]
    assert RemoveNoOpsPass()(model).modified
    assert [n.op_type for n in model.graph] == ["Relu"]
    assert model.graph.outputs[0].name == "y"
    check(model)
    np.testing.assert_array_equal(run_ort(model, {"x": x})[0], ref)
    assert RemoveNoOpsPass()(model).modified is False


def test_fold_constants():
    model = model_from_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,4] x) => (float[N,4] y) <float[4] a = {1,2,3,4}, float[4] b = {1,1,1,1}> {
        c = Add(a, b)
        d = Mul(c, c)
        y = Add(x, d)
    }""")
    x = np.ones((2, 4), np.float32)
    ref = run_ort(model, {"x": x})[0]
    assert FoldConstantsPass()(model).modified
    assert [n.op_type for n in model.graph] == ["Add"]
    np.testing.assert_array_equal(run_ort(model, {"x": x})[0], ref)


def test_cli_optimize_reports_and_writes(tmp_path):
    from tests.passes.nets import resnet_style

    src = tmp_path / "pruned.onnx"
    io.save(resnet_style(prune=True), src)
    out = tmp_path / "opt.onnx"
    result = edgepack_cli("optimize", src, "-o", out, "--json", tmp_path / "report.json")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["schema"] == "edgepack.optimize/1"
    assert report["after"]["params"] == 5568 and report["before"]["params"] == 9142
    assert report["max_abs_error"] <= 1e-5
    assert "params" in result.stdout and out.is_file()
    assert_one_line_error(edgepack_cli("optimize", tmp_path / "none.onnx", "-o", out), "none.onnx")
    before = src.read_bytes()
    assert_one_line_error(edgepack_cli("optimize", src, "-o", src), "pruned.onnx", "input")
    assert src.read_bytes() == before


def _encoder_layer(d=16, heads=2, hidden=32, pruned=(), seed=0):
    """One transformer encoder layer with a GELU (Erf) FFN; `pruned` hidden units have zero W1
    columns and zero b1 entries:

      x[N,S,d] -> Q,K,V = MatMul+Add -> Reshape[0,0,h,dh] -> Transpose -> MatMul(Q,K^T) -> Div
        -> Softmax -> MatMul V -> Transpose -> Reshape[0,0,d] -> MatMul+Add -> +x -> LayerNorm = a
      a -> MatMul W1 + b1 -> GELU (Div, Erf, Add, Mul, Mul) -> MatMul W2 + b2 -> +a -> LayerNorm -> y
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    dh = d // heads
    inits = {}

    def w(name, shape, scale=None):
        arr = rng.standard_normal(shape) * (scale if scale is not None else 1 / np.sqrt(shape[0]))
        inits[name] = arr.astype(np.float32)
        return name

    w1, b1 = rng.standard_normal((d, hidden)) / np.sqrt(d), rng.standard_normal(hidden) * 0.1
    w1[:, list(pruned)], b1[list(pruned)] = 0, 0
    inits.update(w1=w1.astype(np.float32), b1=b1.astype(np.float32))
    for name, arr in {"heads_shape": [0, 0, heads, dh], "model_shape": [0, 0, d]}.items():
        inits[name] = np.array(arr, np.int64)
    for name, value in {"sqrt_dh": np.sqrt(dh), "sqrt2": np.sqrt(2), "one": 1.0, "half": 0.5}.items():
        inits[name] = np.array(value, np.float32)
    inits.update(g1=np.ones(d, np.float32), be1=np.zeros(d, np.float32),
                 g2=rng.uniform(0.5, 1.5, d).astype(np.float32), be2=np.zeros(d, np.float32))
    n = helper.make_node
    nodes = []
    for p in "qkv":
        nodes += [n("MatMul", ["x", w(f"w{p}", (d, d))], [f"{p}0"]), n("Add", [f"{p}0", w(f"b{p}", (d,), 0.1)], [f"{p}1"]),
                  n("Reshape", [f"{p}1", "heads_shape"], [f"{p}2"]),
                  n("Transpose", [f"{p}2"], [p], perm=[0, 2, 3, 1] if p == "k" else [0, 2, 1, 3])]
    nodes += [
        n("MatMul", ["q", "k"], ["s0"]), n("Div", ["s0", "sqrt_dh"], ["s1"]), n("Softmax", ["s1"], ["s"], axis=-1),
        n("MatMul", ["s", "v"], ["c0"]), n("Transpose", ["c0"], ["c1"], perm=[0, 2, 1, 3]),
        n("Reshape", ["c1", "model_shape"], ["c"]), n("MatMul", ["c", w("wo", (d, d))], ["o0"]),
        n("Add", ["o0", w("bo", (d,), 0.1)], ["o1"]), n("Add", ["o1", "x"], ["r1"]),
        n("LayerNormalization", ["r1", "g1", "be1"], ["a"], axis=-1),
        n("MatMul", ["a", "w1"], ["h0"]), n("Add", ["h0", "b1"], ["h1"]),
        n("Div", ["h1", "sqrt2"], ["e0"]), n("Erf", ["e0"], ["e1"]), n("Add", ["e1", "one"], ["e2"]),
        n("Mul", ["h1", "e2"], ["e3"]), n("Mul", ["e3", "half"], ["h"]),
        n("MatMul", ["h", w("w2", (hidden, d))], ["f0"]), n("Add", ["f0", w("b2", (d,), 0.1)], ["f1"]),
        n("Add", ["f1", "a"], ["r2"]), n("LayerNormalization", ["r2", "g2", "be2"], ["y"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "encoder", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S", d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S", d])],
        [numpy_helper.from_array(a, k) for k, a in inits.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return ir.serde.deserialize_model(proto)


def test_transformer_encoder_keeps_outputs_and_drops_pruned_ffn_units():
    from edgepack.inspection import inspect_model

    model = _encoder_layer(pruned=range(0, 32, 2))
    x = np.random.default_rng(1).standard_normal((2, 7, 16)).astype(np.float32)
    ref = run_ort(model, {"x": x})[0]
    optimized = optimize(model)
    check(optimized)
    # onnxsim alone fuses the attention into com.microsoft::Attention, which TensorRT cannot run
    assert {n.domain for n in optimized.graph} == {""} and set(optimized.opset_imports) == {""}
    np.testing.assert_allclose(run_ort(optimized, {"x": x})[0], ref, rtol=1e-5, atol=1e-5)
    x_other = np.random.default_rng(2).standard_normal((1, 3, 16)).astype(np.float32)  # dynamic N, S
    np.testing.assert_allclose(run_ort(optimized, {"x": x_other})[0], run_ort(model, {"x": x_other})[0],
                               rtol=1e-5, atol=1e-5)
    small = optimize(_encoder_layer(hidden=16))
    assert inspect_model(optimized)["params"] == inspect_model(small)["params"]
    assert [str(d) for d in optimized.graph.inputs[0].shape] == ["N", "S", "16"]


def test_fold_constants_folds_static_shapes():
    # x[N,3,4] -> Shape <start=1> -> [3,4] (static) -> Concat([-1]) -> Reshape(x) -> y
    # Shape(x) over the dynamic N stays; Shape <start=1> becomes a constant and the chain folds.
    model = model_from_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,3,4] x) => (float[N,3,4] y, int64[3] s) <int64[1] minus_one = {-1}> {
        tail = Shape <start = 1> (x)
        shape = Concat <axis = 0> (minus_one, tail)
        y = Reshape(x, shape)
        s = Shape(x)
    }""")
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    ref = run_ort(model, {"x": x})
    assert FoldConstantsPass()(model).modified
    assert sorted(n.op_type for n in model.graph) == ["Reshape", "Shape"]
    check(model)
    for got, want in zip(run_ort(model, {"x": x}), ref):
        np.testing.assert_array_equal(got, want)


def test_external_data_model_optimizes_without_onnxsim_and_input_untouched(tmp_path):
    import hashlib

    import onnx

    from edgepack.passes import verify
    from edgepack.passes.simplify import OnnxSimplifyPass
    from tests.passes.nets import resnet_style

    src = io.save(resnet_style(prune=True), tmp_path / "ext.onnx", external_data=True)
    inputs = [src, tmp_path / "ext.onnx.data"]
    digest = lambda: [hashlib.sha256(p.read_bytes()).hexdigest() for p in inputs]  # noqa: E731
    before = digest()
    model = io.load(src)
    assert OnnxSimplifyPass()(model).modified is False  # weights stay mapped: no protobuf copy
    optimized = optimize(model)
    out = io.save(optimized, tmp_path / "out.onnx")
    onnx.checker.check_model(str(out), full_check=True)  # by path: some weights are still external
    assert verify.max_abs_error(src, out, relative=True) <= 1e-5
    assert digest() == before


def test_onnxsim_pass_twice_is_stable():
    from edgepack.passes.simplify import OnnxSimplifyPass
    from tests.passes.nets import resnet_style

    model = resnet_style()
    OnnxSimplifyPass()(model)
    nodes = len(list(model.graph))
    result = OnnxSimplifyPass()(model)  # nothing left to do: must not fail, must not change
    assert result.model is model and len(list(model.graph)) == nodes


def test_cli_custom_op_model_is_optimized_around_the_op_and_reported_unverified(tmp_path):
    # x -> Conv (W[1] = 0) -> Relu -> custom.Plugin -> Conv 1x1 -> y
    # The custom op may mix channels: channel 1 must stay. ONNX Runtime cannot run the model, so
    # the report says the outputs were not verified (max_abs_error null) instead of failing.
    import onnx

    proto = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17, "custom" : 1]>
    g (float[N,3,6,6] x) => (float[N,4,6,6] y) {
        a = Conv <kernel_shape = [3,3], pads = [1,1,1,1]> (x, w1)
        r = Relu(a)
        p = custom.Plugin(r)
        y = Conv <kernel_shape = [1,1]> (p, w2)
    }""")
    rng = np.random.default_rng(12)
    w1 = rng.standard_normal((3, 3, 3, 3)).astype(np.float32)
    w1[1] = 0
    proto.graph.initializer.extend([onnx.numpy_helper.from_array(w1, "w1"), onnx.numpy_helper.from_array(
        rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "w2")])
    src, out = tmp_path / "custom.onnx", tmp_path / "out.onnx"
    onnx.save(proto, src)
    result = edgepack_cli("optimize", src, "-o", out, "--json", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    assert "not verified" in result.stderr + result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["max_abs_error"] is None
    optimized = onnx.load(out)
    assert [n.op_type for n in optimized.graph.node] == ["Conv", "Relu", "Plugin", "Conv"]
    assert list(next(i for i in optimized.graph.initializer if i.name.startswith("w1")).dims)[0] == 3


def test_bundled_digits_example_halves_and_keeps_its_accuracy():
    # digits_cnn: Conv+BN+Relu x2, half of conv2's filters and half of fc1's units pruned to zero
    from edgepack.inspection import inspect_model
    from tests.helpers import REPO

    path = REPO / "edgepack" / "examples" / "digits_cnn.onnx"  # optimize takes a path too
    with np.load(REPO / "calibration" / "digits" / "eval.npz") as data:
        x, labels = data["input"], data["labels"]
    ref = run_ort(path, {"input": x})[0]
    params = inspect_model(io.load(path))["params"]
    optimized = optimize(path)
    check(optimized)
    got = run_ort(optimized, {"input": x})[0]
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    assert (got.argmax(1) == labels).mean() == (ref.argmax(1) == labels).mean()
    assert inspect_model(optimized)["params"] < 0.55 * params
