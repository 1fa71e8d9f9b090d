"""TensorRT engines built and run for real: needs TensorRT, pycuda and an NVIDIA GPU.

The nvidia-gpu target (compute capability >= 8.0) is used so that any recent GPU qualifies."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

import edgepack
from edgepack.backends.manifest import manifest_path
from edgepack.resources import data_dir, example_model
from tests.helpers import run_ort


def _gpu_ready() -> bool:
    if not all(importlib.util.find_spec(m) for m in ("tensorrt", "pycuda")):
        return False
    try:
        import pycuda.driver as cuda

        cuda.init()
        return cuda.Device.count() > 0
    except Exception:
        return False


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _gpu_ready(), reason="needs TensorRT and an NVIDIA GPU")]


def _eval(n=64):
    return {"input": np.load(data_dir("calibration") / "digits" / "eval.npz")["input"][:n].astype(np.float32)}


@pytest.mark.parametrize("precision, atol", [("fp32", 1e-3), ("fp16", 5e-2)])
def test_float_engine_matches_ort(tmp_path, precision, atol):
    out, cache = tmp_path / "digits.engine", tmp_path / "timing.cache"
    artifact = edgepack.build(example_model(), "nvidia-gpu", output=out, precision=precision,
                              shapes="input:1x1x8x8/16x1x8x8/64x1x8x8", timing_cache=cache)
    assert cache.is_file()
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["versions"]["tensorrt"] and manifest["device"]["compute_capability"]
    feeds = _eval()
    want = run_ort(str(example_model()), feeds)[0]
    with artifact:
        got = artifact.run(feeds)["logits"]
        np.testing.assert_allclose(got, want, atol=atol * np.abs(want).max())
        host_ms, gpu_ms = artifact._runner.time_once()
        assert host_ms >= gpu_ms > 0


def test_int8_engine_from_qdq(tmp_path):
    from edgepack.quant.quantize import quantize

    model = edgepack.load(example_model())
    calib = np.load(data_dir("calibration") / "digits" / "calib.npz")["input"][:64].astype(np.float32)
    quantize(model, [{"input": calib}], target="nvidia-gpu", method="minmax")
    qdq = tmp_path / "digits.qdq.onnx"
    edgepack.save(model, qdq)
    artifact = edgepack.build(qdq, "nvidia-gpu", output=tmp_path / "digits.int8.engine", precision="int8",
                              shapes="input:1x1x8x8/64x1x8x8/64x1x8x8")
    feeds = _eval()
    want = run_ort(qdq, feeds)[0]
    with artifact:
        got = artifact.run(feeds)["logits"]
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.95


def test_parser_error_names_the_node(tmp_path):
    from edgepack.errors import EdgepackError
    from tests.helpers import save_text_model

    # x -> Custom (domain "my.ops", unknown to TensorRT's parser) -> y
    path = save_text_model("""
    <ir_version: 8, opset_import: ["" : 17, "my.ops" : 1]>
    g (float[1, 4] x) => (float[1, 4] y) { y = my.ops.Mystery (x) }
    """, tmp_path / "bad.onnx")
    with pytest.raises(EdgepackError, match="ONNX parser refused"):
        edgepack.build(path, "nvidia-gpu", output=tmp_path / "bad.engine", precision="fp32")


def test_engine_from_another_tensorrt_is_refused(tmp_path):
    from edgepack.backends.tensorrt import TensorRTRunner
    from edgepack.errors import EdgepackError

    out = tmp_path / "d.engine"
    edgepack.build(example_model(), "nvidia-gpu", output=out, precision="fp32")
    path = manifest_path(out)
    manifest = json.loads(path.read_text())
    manifest["versions"]["tensorrt"] = "7.0.0"
    path.write_text(json.dumps(manifest))
    with pytest.raises(EdgepackError, match="built with TensorRT 7.0.0"):
        with TensorRTRunner(out):
            pass


def _tensorrt_major() -> int:
    try:
        import tensorrt

        return int(tensorrt.__version__.split(".")[0])
    except Exception:
        return 0


requires_tensorrt_11 = pytest.mark.skipif(_tensorrt_major() < 11,
                                          reason="needs TensorRT 11 (strongly typed only) and an NVIDIA GPU")


@requires_tensorrt_11
def test_tensorrt_11_fp16_engine_is_strongly_typed_from_a_float16_onnx(tmp_path):
    from edgepack.io import load
    from edgepack.passes.fp16 import to_fp16

    out = tmp_path / "digits.fp16.engine"
    artifact = edgepack.build(example_model(), "nvidia-gpu", output=out, precision="fp16",
                              shapes="input:1x1x8x8/64x1x8x8/64x1x8x8")
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["flags"]["strongly_typed"] and manifest["flags"]["convert_to_fp16"]
    assert "FP16" not in manifest["flags"]["flags"] and manifest["parsed_model_sha256"]
    assert {layer["precision"] for layer in manifest["layers"]} == {"fp16"}
    feeds = _eval()
    half, _ = to_fp16(load(example_model()))
    want16, want32 = run_ort(half, feeds)[0], run_ort(str(example_model()), feeds)[0]
    with artifact:
        got = artifact.run(feeds)["logits"]
    np.testing.assert_allclose(got, want16, atol=2e-2 * np.abs(want16).max())
    assert (got.argmax(1) == want32.argmax(1)).mean() >= 0.98


@requires_tensorrt_11
@pytest.mark.parametrize("precision", ["int8", "best"])
def test_tensorrt_11_int8_engine_from_qdq(tmp_path, precision):
    from edgepack.quant.quantize import quantize

    model = edgepack.load(example_model())
    calib = np.load(data_dir("calibration") / "digits" / "calib.npz")["input"][:64].astype(np.float32)
    quantize(model, [{"input": calib}], target="nvidia-gpu", method="minmax")
    qdq = tmp_path / "digits.qdq.onnx"
    edgepack.save(model, qdq)
    out = tmp_path / f"digits.{precision}.engine"
    artifact = edgepack.build(qdq, "nvidia-gpu", output=out, precision=precision,
                              shapes="input:1x1x8x8/64x1x8x8/64x1x8x8")
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["flags"]["strongly_typed"] and not {"INT8", "FP16"} & set(manifest["flags"]["flags"])
    assert {layer["precision"] for layer in manifest["layers"] if layer["op_type"] == "Conv"} == {"int8"}
    feeds = _eval()
    want = run_ort(qdq, feeds)[0]
    with artifact:
        got = artifact.run(feeds)["logits"]
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.95
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()
