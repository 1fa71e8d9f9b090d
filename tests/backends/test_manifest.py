"""Manifests: written beside every artifact, checked on load; an engine built for another GPU or
TensorRT version is refused with a message naming both."""
from __future__ import annotations

import json

import numpy as np
import pytest

import edgepack
from edgepack.backends import load_artifact
from edgepack.backends.manifest import check_runtime, manifest_path
from edgepack.errors import EdgepackError
from edgepack.resources import example_model
from tests.helpers import assert_one_line_error, edgepack_cli

ENGINE = {"schema": "edgepack.build/1", "backend": "tensorrt", "target": "jetson-orin-nano",
          "precision": "int8", "artifact": "m.engine", "versions": {"tensorrt": "10.3.0"},
          "device": {"name": "Orin", "compute_capability": "8.7"}}


def test_runtime_check_refuses_other_tensorrt_version():
    with pytest.raises(EdgepackError, match="built with TensorRT 10.3.0, this machine has TensorRT 10.7.0"):
        check_runtime(ENGINE, tensorrt_version="10.7.0", device={"name": "Orin", "compute_capability": "8.7"})


def test_runtime_check_refuses_other_gpu():
    with pytest.raises(EdgepackError, match=r"compute capability 8.7 \(Orin\), this GPU is NVIDIA H100 with 9.0"):
        check_runtime(ENGINE, tensorrt_version="10.3.0", device={"name": "NVIDIA H100", "compute_capability": "9.0"})
    with pytest.raises(EdgepackError, match="no NVIDIA GPU"):
        check_runtime(ENGINE, tensorrt_version="10.3.0", device=None)


def test_runtime_check_same_gpu_family_warns():
    assert check_runtime(ENGINE, tensorrt_version="10.3.0", device={"name": "Orin", "compute_capability": "8.7"}) == []
    warnings = check_runtime(ENGINE, tensorrt_version="10.3.0",
                             device={"name": "Orin NX", "compute_capability": "8.7"})
    assert len(warnings) == 1 and "Orin NX" in warnings[0]


@pytest.fixture()
def built(tmp_path):
    out = tmp_path / "digits.onnx"
    edgepack.build(example_model(), "x86-cpu", output=out)
    return out


def test_load_artifact_runs(built):
    artifact = load_artifact(built)
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    with artifact:
        assert artifact.run({"input": x})["logits"].shape == (3, 10)
    with pytest.raises(EdgepackError, match="missing \\['input'\\], unknown \\['x'\\]"):
        artifact.run({"x": x})


def test_load_refuses_a_changed_artifact(built):
    data = bytearray(built.read_bytes())
    data[-1] ^= 1
    built.write_bytes(bytes(data))
    with pytest.raises(EdgepackError, match="does not match its manifest"):
        load_artifact(built)


def test_load_refuses_a_changed_twin(built):
    assert load_artifact(built.with_suffix(".ort")).manifest["artifact"] == "digits.onnx"
    built.with_suffix(".ort").write_bytes(b"not a flatbuffer")
    with pytest.raises(EdgepackError, match="digits.ort: does not match its manifest"):
        load_artifact(built.with_suffix(".ort"))


def test_load_refuses_missing_or_foreign_manifest(built):
    path = manifest_path(built)
    path.write_text(json.dumps({"schema": "something/1"}))
    with pytest.raises(EdgepackError, match="not an edgepack build manifest"):
        load_artifact(built)
    path.unlink()
    with pytest.raises(EdgepackError, match="no manifest beside it"):
        load_artifact(built)


def test_cli_build_json(tmp_path):
    out, report = tmp_path / "d.onnx", tmp_path / "step.json"
    result = edgepack_cli("build", example_model(), "--target", "x86-cpu", "-o", out, "--json", report)
    assert result.returncode == 0, result.stderr
    assert "d.onnx" in result.stdout and "x86-cpu" in result.stdout
    written = json.loads(report.read_text())
    assert written == json.loads(manifest_path(out).read_text())
    assert written["schema"] == "edgepack.build/1" and written["precision"] == "fp32"


def test_cli_errors(tmp_path):
    assert_one_line_error(edgepack_cli("build", tmp_path / "nope.onnx", "-t", "x86-cpu", "-o", tmp_path / "o.onnx"),
                          "nope.onnx")
    assert_one_line_error(edgepack_cli("build", example_model(), "-t", "tpu", "-o", tmp_path / "o.onnx"),
                          "unknown target 'tpu'")
    created = edgepack_cli("build", example_model(), "-t", "x86-cpu", "-o", tmp_path / "new" / "dir" / "o.onnx")
    assert created.returncode == 0 and (tmp_path / "new" / "dir" / "o.onnx.manifest.json").is_file(), created.stderr
    (tmp_path / "file").write_text("")
    assert_one_line_error(edgepack_cli("build", example_model(), "-t", "x86-cpu", "-o", tmp_path / "file" / "o.onnx"),
                          "cannot create the output folder")
    assert_one_line_error(edgepack_cli("build", example_model(), "-t", "x86-cpu", "-o", tmp_path / "o.onnx",
                                       "--precision", "fp16"), "does not support --precision fp16")
    model = tmp_path / "m.onnx"
    model.write_bytes(example_model().read_bytes())
    for out in ("m.onnx", "m.ort"):  # -o m.ort would write its .onnx twin over the input
        assert_one_line_error(edgepack_cli("build", model, "-t", "x86-cpu", "-o", tmp_path / out),
                              "the input")
    assert model.read_bytes() == example_model().read_bytes()
