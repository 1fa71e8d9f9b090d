"""Everything about TensorRT builds that needs no GPU: target -> builder settings, shapes,
precision rules, and the one-line error on a machine without TensorRT/pycuda/GPU."""
from __future__ import annotations

import importlib.util

import pytest

from edgepack.backends.common import parse_shapes, resolve_precision
from edgepack.backends.tensorrt import builder_settings, check_device, require_tensorrt
from edgepack.errors import EdgepackError, UsageError
from edgepack.resources import example_model
from edgepack.targets import load_target
from tests.helpers import assert_one_line_error, edgepack_cli

ORIN_NANO, ORIN_NX, XAVIER, NANO = (load_target(n) for n in
                                    ("jetson-orin-nano", "jetson-orin-nx", "jetson-xavier-nx", "jetson-nano"))


def test_int8_qdq_is_strongly_typed_on_tensorrt_10():
    s = builder_settings(ORIN_NANO, "int8", model_has_qdq=True)  # target written for TensorRT 10.3
    assert s["strongly_typed"] and not s["explicit_batch"]
    assert "INT8" not in s["flags"] and "FP16" not in s["flags"]  # strongly typed: types come from the graph
    assert "SPARSE_WEIGHTS" in s["flags"]  # Ampere: 2:4 sparsity on by default
    assert s["workspace_bytes"] == ORIN_NANO.workspace_mb * 2**20


def test_int8_qdq_uses_the_int8_flag_on_tensorrt_8():
    s = builder_settings(XAVIER, "int8", model_has_qdq=True)  # TensorRT 8.5
    assert not s["strongly_typed"] and s["explicit_batch"]
    assert s["flags"] == ["INT8"]  # Volta: no sparse tensor cores
    assert builder_settings(ORIN_NANO, "int8", tensorrt_version="8.6.1", model_has_qdq=True)["flags"][0] == "INT8"


def test_best_lets_tensorrt_choose_between_int8_and_fp16():
    best = builder_settings(ORIN_NX, "best", model_has_qdq=True)
    assert best["flags"][:2] == ["INT8", "FP16"] and not best["strongly_typed"]  # float layers may run FP16
    assert builder_settings(ORIN_NX, "best", model_has_qdq=False)["flags"][:1] == ["FP16"]
    assert "INT8" not in builder_settings(NANO, "best", model_has_qdq=True)["flags"]


def test_dla_core_with_gpu_fallback():
    s = builder_settings(ORIN_NX, "fp16", dla=1)
    assert s["dla_core"] == 1 and "GPU_FALLBACK" in s["flags"] and "FP16" in s["flags"]
    s = builder_settings(ORIN_NX, "int8", dla=0, model_has_qdq=True)
    assert not s["strongly_typed"] and {"INT8", "FP16", "GPU_FALLBACK"} <= set(s["flags"])
    with pytest.raises(EdgepackError, match="--dla 2: target 'jetson-orin-nx' has DLA cores 0..1"):
        builder_settings(ORIN_NX, "fp16", dla=2)
    with pytest.raises(EdgepackError, match="has no DLA cores"):
        builder_settings(ORIN_NANO, "fp16", dla=0)
    with pytest.raises(EdgepackError, match="not fp32"):
        builder_settings(ORIN_NX, "fp32", dla=0)


def test_sparsity_follows_the_target():
    assert "SPARSE_WEIGHTS" not in builder_settings(ORIN_NANO, "fp16", sparsity=False)["flags"]
    assert "SPARSE_WEIGHTS" not in builder_settings(XAVIER, "fp16")["flags"]
    with pytest.raises(EdgepackError, match="no 2:4 sparse tensor cores"):
        builder_settings(XAVIER, "fp16", sparsity=True)


def test_profiles_timing_cache_workspace(tmp_path):
    shapes = parse_shapes("input:1x1x8x8/4x1x8x8/16x1x8x8", {"input": (None, 1, 8, 8)})
    s = builder_settings(ORIN_NANO, "fp16", shapes=shapes, timing_cache=tmp_path / "t.cache", workspace_mb=64)
    assert s["profiles"] == {"input": {"min": [1, 1, 8, 8], "opt": [4, 1, 8, 8], "max": [16, 1, 8, 8]}}
    assert s["timing_cache"] == str(tmp_path / "t.cache") and s["workspace_bytes"] == 64 * 2**20
    with pytest.raises(EdgepackError, match="onnxruntime, not TensorRT"):
        builder_settings(load_target("x86-cpu"), "fp32")


def test_parse_shapes():
    inputs = {"a": (None, 3), "b": (2, None)}
    assert parse_shapes("a:1x3/2x3/8x3", inputs) == {"a": ((1, 3), (2, 3), (8, 3)), "b": ((2, 1),) * 3}
    assert parse_shapes("4x3", {"a": (None, 3)}) == {"a": ((4, 3),) * 3}  # one input: name optional
    assert parse_shapes(None, {"x": (1, 3)}) == {}  # static inputs need no profile
    for bad, match in [("c:1x3", "no input 'c'"), ("a:1x4", "dim 1 is fixed at 3"),
                       ("a:8x3/2x3/1x3", "min <= opt <= max"), ("a:1x3x1", "rank 2"),
                       ("a:1x3/2x3", "NAME:MIN/OPT/MAX"), ("a:1xy", "NAME:MIN/OPT/MAX"), ("1x3", "name the input")]:
        with pytest.raises(UsageError, match=match):
            parse_shapes(bad, inputs)


def test_resolve_precision():
    assert resolve_precision(ORIN_NANO, "best", True) == "int8"
    assert resolve_precision(ORIN_NANO, "best", False) == "fp16"
    assert resolve_precision(load_target("x86-cpu"), "best", False) == "fp32"
    with pytest.raises(EdgepackError, match="'jetson-nano' does not support --precision int8"):
        resolve_precision(NANO, "int8", True)
    with pytest.raises(EdgepackError, match="jetson-nano' has no int8"):
        resolve_precision(NANO, "best", True)
    with pytest.raises(EdgepackError, match="needs a quantized"):
        resolve_precision(ORIN_NANO, "int8", False)


def test_device_check(tmp_path):
    orin = {"name": "Orin", "compute_capability": "8.7"}
    check_device(ORIN_NANO, orin)
    with pytest.raises(EdgepackError, match=r"not target 'jetson-orin-nano' \(compute capability 8.7\)"):
        check_device(ORIN_NANO, {"name": "NVIDIA H100", "compute_capability": "9.0"})
    generic = load_target("nvidia-gpu")  # device_match = "minimum"
    check_device(generic, {"name": "NVIDIA H100", "compute_capability": "9.0"})
    with pytest.raises(EdgepackError, match=">= 8.0"):
        check_device(generic, {"name": "Tesla T4", "compute_capability": "7.5"})


HAVE_TRT = all(importlib.util.find_spec(m) for m in ("tensorrt", "pycuda"))


@pytest.mark.skipif(HAVE_TRT, reason="this machine has tensorrt and pycuda: the missing-TensorRT message cannot show")
def test_without_tensorrt_one_clear_line(tmp_path):
    with pytest.raises(EdgepackError) as info:
        require_tensorrt(ORIN_NANO)
    text = str(info.value)
    assert "tensorrt Python package" in text and "pycuda" in text
    assert "must run on the target device" in text and "pip install edgepack[tensorrt]" in text
    result = edgepack_cli("build", example_model(), "--target", "jetson-orin-nano", "-o", tmp_path / "m.engine")
    assert_one_line_error(result, "jetson-orin-nano", "tensorrt", "target device")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_option_errors_come_before_the_tensorrt_check(tmp_path):
    result = edgepack_cli("build", example_model(), "-t", "jetson-orin-nx", "-o", tmp_path / "m.engine",
                          "--precision", "fp16", "--dla", "5")
    assert_one_line_error(result, "--dla 5", "jetson-orin-nx")
    result = edgepack_cli("build", example_model(), "-t", "jetson-nano", "-o", tmp_path / "m.engine",
                          "--precision", "int8")
    assert_one_line_error(result, "jetson-nano", "int8")
    result = edgepack_cli("build", example_model(), "-t", "jetson-orin-nano", "-o", tmp_path / "m.engine",
                          "--shapes", "input:1x1x8")
    assert_one_line_error(result, "--shapes", "rank 4", code=2)
    result = edgepack_cli("build", example_model(), "-t", "jetson-orin-nano", "-o", tmp_path / "m.onnx")
    assert_one_line_error(result, "m.onnx", ".engine or .plan")
    result = edgepack_cli("build", example_model(), "-t", "jetson-orin-nano", "-o", tmp_path / "m.engine",
                          "--threads", "2")
    assert_one_line_error(result, "--threads", "ONNX Runtime targets")


def test_device_match_is_validated(tmp_path):
    text = (load_target("nvidia-gpu").path.read_text()
            .replace('device_match = "minimum"', 'device_match = "close-enough"'))
    path = tmp_path / "gpu.toml"
    path.write_text(text)
    with pytest.raises(EdgepackError, match="gpu.toml: key 'device_match'"):
        load_target(path)
