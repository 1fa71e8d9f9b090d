"""build: ONNX Runtime artifacts for every CPU target; TensorRT settings, manifests and errors
without a GPU; real TensorRT builds where TensorRT and a GPU exist."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from edgepack import io
from edgepack.backends import build, load_artifact
from edgepack.backends.manifest import check_engine_compatible, model_sha256
from edgepack.backends.tensorrt import builder_settings, parse_shapes
from edgepack.errors import EdgepackError
from edgepack.quant import quantize
from edgepack.resources import data_dir, example_model
from edgepack.targets import list_targets, load_target
from tests.helpers import SHARED_MODELS, assert_one_line_error, edgepack_cli, requires_shared, run_ort

CPU_TARGETS = [t.name for t in list_targets() if not t.is_tensorrt]
DIGITS = data_dir("calibration") / "digits"


def _has_gpu_tensorrt() -> bool:
    if not (importlib.util.find_spec("tensorrt") and importlib.util.find_spec("pycuda")):
        return False
    try:
        import pycuda.driver as cuda

        cuda.init()
        return cuda.Device.count() > 0
    except Exception:
        return False


gpu = pytest.mark.skipif(not _has_gpu_tensorrt(), reason="needs TensorRT, pycuda and an NVIDIA GPU")


@pytest.mark.parametrize("target", CPU_TARGETS)
def test_ort_artifact_runs_and_matches(tmp_path, target):
    x = np.load(DIGITS / "eval.npz")["input"][:16]
    artifact = build(example_model(), target=target, output=tmp_path / "m.onnx")
    assert (tmp_path / "m.ort").is_file()
    manifest = json.loads((tmp_path / "m.onnx.manifest.json").read_text())
    assert manifest["schema"] == "edgepack.build/1" and manifest["target"] == target
    assert manifest["model_sha256"] == model_sha256(example_model())
    assert manifest["versions"]["onnxruntime"]
    ref = run_ort(example_model(), {"input": x})[0]
    for path in (tmp_path / "m.onnx", tmp_path / "m.ort"):
        got = load_artifact(path).run({"input": x})["logits"]
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    assert artifact.manifest["precision"] == "fp32"


@requires_shared
def test_ort_artifact_of_real_int8_model(tmp_path):
    model = io.load(SHARED_MODELS / "resnet20_cifar10.onnx")
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    quantize(model, [{"input": x}], target="x86-cpu", method="minmax")
    io.save(model, tmp_path / "q.onnx")
    artifact = build(tmp_path / "q.onnx", target="x86-cpu", output=tmp_path / "built.onnx")
    assert artifact.manifest["precision"] == "int8"
    got = artifact.run({"input": x})["logits"]
    np.testing.assert_allclose(got, run_ort(tmp_path / "q.onnx", {"input": x})[0], rtol=1e-3, atol=1e-3)


def test_builder_settings_follow_the_target():
    orin, nano, xavier = (load_target(n) for n in ("jetson-orin-nano", "jetson-nano", "jetson-xavier-nx"))
    s = builder_settings(orin, model_has_qdq=True)
    assert s.precision == "int8" and s.strongly_typed and "SPARSE_WEIGHTS" in s.flags and "INT8" not in s.flags
    s8 = builder_settings(xavier, model_has_qdq=True, tensorrt_major=8, dla=1)
    assert s8.flags == ("FP16", "INT8", "GPU_FALLBACK") and not s8.strongly_typed and s8.dla_core == 1
    assert builder_settings(nano, model_has_qdq=True).precision == "fp16"  # no fast INT8 on Maxwell
    assert builder_settings(orin).precision == "fp16"
    assert builder_settings(orin).workspace_bytes == orin.workspace_mb << 20
    with pytest.raises(EdgepackError, match="no DLA"):
        builder_settings(orin, dla=0)
    with pytest.raises(EdgepackError, match="DLA cores 0..1"):
        builder_settings(xavier, dla=2, precision="fp16")
    with pytest.raises(EdgepackError, match="does not support int8"):
        builder_settings(nano, precision="int8", model_has_qdq=True)
    with pytest.raises(EdgepackError, match="needs a QDQ model"):
        builder_settings(orin, precision="int8")
    with pytest.raises(EdgepackError, match="2:4"):
        builder_settings(xavier, sparsity=True)


def test_shapes_parsing():
    (p,) = parse_shapes("input:1x3x32x32/8x3x32x32/32x3x32x32")
    assert p.min == (1, 3, 32, 32) and p.max == (32, 3, 32, 32)
    for bad in ("input:1x3/2x3/1x3", "input", "input:axb"):
        with pytest.raises(EdgepackError, match="--shapes"):
            parse_shapes(bad)


def test_engine_compatibility_check():
    manifest = {"versions": {"tensorrt": "10.3.0"}, "device": {"name": "Orin", "compute_capability": "8.7"}}
    check_engine_compatible(manifest, tensorrt_version="10.3.0", device_name="Orin", compute_capability="8.7",
                            artifact="m.engine")
    with pytest.raises(EdgepackError, match="TensorRT 10.3.0, this machine has 8.6.1"):
        check_engine_compatible(manifest, tensorrt_version="8.6.1", device_name="Orin", compute_capability="8.7",
                                artifact="m.engine")
    with pytest.raises(EdgepackError, match="compute capability 8.7"):
        check_engine_compatible(manifest, tensorrt_version="10.3.0", device_name="A100", compute_capability="8.0",
                                artifact="m.engine")


@pytest.mark.skipif(_has_gpu_tensorrt(), reason="this machine has TensorRT and a GPU")
def test_tensorrt_target_without_tensorrt_says_what_is_missing(tmp_path):
    result = edgepack_cli("build", example_model(), "-t", "jetson-orin-nano", "-o", tmp_path / "m.engine")
    assert_one_line_error(result, "jetson-orin-nano", "TensorRT", "target device")
    assert not (tmp_path / "m.engine").exists()
    assert_one_line_error(edgepack_cli("build", example_model(), "-t", "jetson-orin-nano", "-o",
                                       tmp_path / "m.engine", "--dla", "0"), "no DLA")
    assert_one_line_error(edgepack_cli("build", example_model(), "-t", "x86-cpu", "-o", tmp_path / "m.onnx",
                                       "--precision", "int8"), "int8")


@pytest.mark.gpu
@gpu
def test_tensorrt_engine_builds_and_matches(tmp_path):
    from edgepack.backends.tensorrt import TensorRTRunner

    model = io.load(example_model())
    quantize(model, DIGITS, target="nvidia-gpu", method="entropy")
    io.save(model, tmp_path / "q.onnx")
    x = np.load(DIGITS / "eval.npz")["input"][:1]
    artifact = build(tmp_path / "q.onnx", target="nvidia-gpu", output=tmp_path / "m.engine",
                     shapes="input:1x1x8x8/8x1x8x8/32x1x8x8", timing_cache=tmp_path / "timing.cache")
    assert (tmp_path / "timing.cache").stat().st_size > 0
    with TensorRTRunner(artifact.path) as runner:
        got = runner.infer({"input": x})["logits"]
        host_ms, gpu_ms = runner.time_once()
    ref = run_ort(tmp_path / "q.onnx", {"input": x})[0]
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()
    assert 0 < gpu_ms <= host_ms
