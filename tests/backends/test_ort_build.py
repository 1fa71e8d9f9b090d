"""ONNX Runtime builds: for every CPU target the artifact (.onnx and .ort) loads, runs, and matches
the input model on random and real inputs; the manifest describes what was built."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

import edgepack
from edgepack.backends import load_artifact
from edgepack.backends.manifest import manifest_path, model_sha256
from edgepack.errors import EdgepackError
from edgepack.quant.quantize import quantize
from edgepack.resources import data_dir, example_model
from edgepack.targets import list_targets
from tests.helpers import SHARED_DATA, SHARED_MODELS, model_from_text, requires_shared, run_ort

CPU_TARGETS = [t.name for t in list_targets() if not t.is_tensorrt]

# input x [N,4] -> MatMul(W) -> Add(b) -> Relu -> Mul(2) -> y [N,3]
# ORT's extended optimizations fuse MatMul+Add into Gemm (and more): the graph changes, outputs must not.
TINY = """
<ir_version: 8, opset_import: ["" : 17]>
tiny (float[N, 4] x) => (float[N, 3] y) <float[4, 3] W = {1., -2., 3., 0.5, 0.25, -1., 2., 2., -3., 1., 0., 0.5},
                                        float[3] b = {0.1, -0.2, 0.3}, float two = {2.}> {
    h = MatMul(x, W)
    hb = Add(h, b)
    r = Relu(hb)
    y = Mul(r, two)
}
"""


def _assert_same(artifact_path, model, feeds, atol=1e-5):
    expected = run_ort(model, feeds)
    artifact = load_artifact(artifact_path)
    with artifact:
        got = artifact.run(feeds)
    assert list(got) == [o.name for o in artifact.runner().outputs]
    for want, have in zip(expected, got.values()):
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=atol)
    return artifact


@pytest.mark.parametrize("target", CPU_TARGETS)
def test_every_cpu_target_builds_and_matches(tmp_path, target):
    model = model_from_text(TINY)
    out = tmp_path / "tiny.onnx"
    artifact = edgepack.build(model, target, output=out)
    assert out.is_file() and out.with_suffix(".ort").is_file() and manifest_path(out).is_file()
    assert artifact.backend == "onnxruntime" and artifact.target == target and artifact.precision == "fp32"
    assert artifact.manifest["model"] is None and len(artifact.manifest["model_sha256"]) == 64  # from memory
    optimized = edgepack.load(out, check=False)  # may hold com.microsoft fused ops
    assert len(list(optimized.graph)) < len(list(model.graph))  # MatMul+Add(+Relu) fused offline
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((5, 4)).astype(np.float32)}
    _assert_same(out, model, feeds)
    # the .ort twin (ORT format, for ORT's mobile/edge runtime) loads through the same manifest and runs the same
    _assert_same(out.with_suffix(".ort"), model, feeds)


def test_manifest_describes_the_build(tmp_path):
    src = example_model()
    out = tmp_path / "digits.ort"  # -o X.ort: the artifact is the ORT file, the optimized .onnx beside it
    artifact = edgepack.build(src, "x86-cpu-vnni", output=out, threads=2)
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest == artifact.manifest
    assert manifest["schema"] == "edgepack.build/1"
    for key in ("backend", "target", "precision", "model_sha256", "artifact", "versions", "device",
                "flags", "build_seconds"):
        assert key in manifest
    assert manifest["model_sha256"] == model_sha256(src)
    assert manifest["artifact"] == "digits.ort" and sorted(manifest["files"]) == ["digits.onnx", "digits.ort"]
    assert manifest["files"]["digits.ort"] == manifest["artifact_sha256"]
    import onnxruntime as ort
    assert manifest["versions"]["onnxruntime"] == ort.__version__
    assert manifest["flags"]["threads"] == 2
    assert manifest["flags"]["execution_providers"] == ["CPUExecutionProvider"]
    assert manifest["io"]["inputs"][0]["name"] == "input"


def test_example_model_on_its_eval_set(tmp_path):
    data = np.load(data_dir("calibration") / "digits" / "eval.npz")
    feeds = {"input": data["input"][:200].astype(np.float32)}
    out = tmp_path / "digits.onnx"
    edgepack.build(example_model(), "arm64-cpu", output=out)
    _assert_same(out, str(example_model()), feeds, atol=1e-4)


def test_quantized_model_builds_int8(tmp_path):
    calib = np.load(data_dir("calibration") / "digits" / "calib.npz")["input"][:64].astype(np.float32)
    model = edgepack.load(example_model())
    quantize(model, [{"input": calib}], target="x86-cpu", method="minmax")
    qdq_path = tmp_path / "digits.qdq.onnx"
    edgepack.save(model, qdq_path)
    out = tmp_path / "digits.int8.onnx"
    artifact = edgepack.build(qdq_path, "x86-cpu", output=out)  # best -> int8 for a QDQ model
    assert artifact.precision == "int8"
    ops = {n.op_type for n in edgepack.load(out, check=False).graph}
    assert "QuantizeLinear" in ops or "QLinearConv" in ops
    eval_set = np.load(data_dir("calibration") / "digits" / "eval.npz")
    feeds = {"input": eval_set["input"][:200].astype(np.float32)}
    want = run_ort(qdq_path, feeds)[0]
    got = artifact.run(feeds)["logits"]
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.99
    np.testing.assert_allclose(got, want, atol=0.05 * np.abs(want).max())
    with pytest.raises(EdgepackError, match="Q/DQ"):
        edgepack.build(qdq_path, "x86-cpu", output=tmp_path / "f.onnx", precision="fp32")


def _mnist(n):
    with gzip.open(SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    return images[:n].astype(np.float32)


def _cifar(n):
    data = np.load(SHARED_DATA / "cifar10_test" / "cifar10_test_jpeg_decoded.npz")
    x = data["images"][:n].astype(np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    return x.transpose(0, 3, 1, 2).astype(np.float32)


@requires_shared
@pytest.mark.parametrize("target", CPU_TARGETS)
@pytest.mark.parametrize("name, input_name, real", [("mnist_cntk_fp32.onnx", "Input3", _mnist),
                                                     ("resnet20_cifar10.onnx", "input", _cifar)])
def test_real_models_on_real_and_random_inputs(tmp_path, target, name, input_name, real):
    src = SHARED_MODELS / name
    out = tmp_path / "model.onnx"
    edgepack.build(src, target, output=out)
    x = real(64)
    random = np.random.default_rng(0).uniform(x.min(), x.max(), x.shape).astype(np.float32)
    for batch in (x, random):
        feeds = {input_name: batch}
        want = run_ort(str(src), feeds)[0]
        atol = 1e-4 * max(1.0, np.abs(want).max())
        _assert_same(out, str(src), feeds, atol=atol)
        # the .ort twin too: saved at level `all`, with the NCHWc layout where it fits the target
        np.testing.assert_allclose(run_ort(out.with_suffix(".ort"), feeds)[0], want, rtol=1e-5, atol=atol)


@pytest.mark.skipif(__import__("platform").machine().lower() not in ("x86_64", "amd64"),
                    reason="NCHWc blocking is an x86 (MLAS) layout")
def test_nchwc_layout_only_when_this_cpu_is_the_targets():
    from edgepack.backends.ort import nchwc_block
    from edgepack.targets import load_target

    avx2, vnni, arm = (load_target(n) for n in ("x86-cpu", "x86-cpu-vnni", "arm64-cpu"))
    avx512_machine, avx2_machine = {"avx2", "avx512f"}, {"avx2"}
    assert nchwc_block(vnni, avx512_machine) == 16
    assert nchwc_block(avx2, avx2_machine) == 8
    assert nchwc_block(avx2, avx512_machine) is None  # 16-wide blocks would not run on an AVX2 device
    assert nchwc_block(vnni, avx2_machine) is None
    assert nchwc_block(arm, avx512_machine) is None


@requires_shared
def test_real_int8_model(tmp_path):
    model = edgepack.load(SHARED_MODELS / "resnet20_cifar10.onnx")
    x = _cifar(32)
    quantize(model, [{"input": x[:16]}], target="x86-cpu-vnni", method="minmax")
    edgepack.save(model, tmp_path / "q.onnx")
    artifact = edgepack.build(tmp_path / "q.onnx", "x86-cpu-vnni", output=tmp_path / "built.onnx")
    assert artifact.precision == "int8"
    want = run_ort(tmp_path / "q.onnx", {"input": x})[0]
    for path in (tmp_path / "built.onnx", tmp_path / "built.ort"):
        got = load_artifact(path).run({"input": x})["logits"]
        assert (got.argmax(1) == want.argmax(1)).mean() >= 0.95
        np.testing.assert_allclose(got, want, atol=0.05 * np.abs(want).max())


def test_ort_output_must_be_onnx_or_ort(tmp_path):
    with pytest.raises(EdgepackError, match=r"\.onnx or \.ort"):
        edgepack.build(example_model(), "x86-cpu", output=tmp_path / "m.engine")


def test_tensorrt_only_options_refused_for_cpu_targets(tmp_path):
    with pytest.raises(EdgepackError, match="--dla applies to TensorRT"):
        edgepack.build(example_model(), "x86-cpu", output=tmp_path / "m.onnx", dla=0)
    with pytest.raises(EdgepackError, match="--shapes applies to TensorRT"):
        edgepack.build(example_model(), "x86-cpu", output=tmp_path / "m.onnx", shapes="1x1x8x8")
    assert not list(tmp_path.iterdir())
