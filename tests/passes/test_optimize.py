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
