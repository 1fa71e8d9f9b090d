"""Every shipped target loads; a broken target file names the key at fault."""
from __future__ import annotations

import pytest

from edgepack.errors import EdgepackError
from edgepack.targets import list_targets, load_target, target_dir

REQUIRED = {"jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "jetson-xavier-nx", "jetson-nano",
            "nvidia-gpu", "x86-cpu", "x86-cpu-vnni", "arm64-cpu"}


def test_all_shipped_targets_load():
    targets = {t.name: t for t in list_targets()}
    assert REQUIRED <= set(targets)
    for path in target_dir().glob("*.toml"):
        assert targets[path.stem].path == path  # file name and target name agree
    assert targets["jetson-nano"].precisions == ("fp16", "fp32")
    assert targets["jetson-orin-nx"].dla_cores == 2 and targets["jetson-orin-nano"].dla_cores == 0
    assert targets["x86-cpu"].backend == "onnxruntime"
    for t in targets.values():
        if t.is_tensorrt:
            assert t.qdq.activations == "int8-symmetric-per-tensor"


def _write(tmp_path, text):
    path = tmp_path / "mine.toml"
    path.write_text(text)
    return path


GOOD = """
name = "mine"
description = "test"
backend = "onnxruntime"
precisions = ["int8", "fp32"]
[qdq]
activations = "uint8-asymmetric-per-tensor"
weights = "int8-symmetric-per-channel"
"""


def test_user_target_file(tmp_path):
    assert load_target(_write(tmp_path, GOOD)).name == "mine"


@pytest.mark.parametrize("change, key", [
    (("backend = \"onnxruntime\"", "backend = \"tflite\""), "backend"),
    (("precisions = [\"int8\", \"fp32\"]", "precisions = [\"int4\"]"), "precisions"),
    (("name = \"mine\"", "name = \"mine\"\ncolour = \"red\""), "colour"),
    (("name = \"mine\"", "name = \"mine\"\ndla_cores = \"two\""), "dla_cores"),
    (("activations = \"uint8-asymmetric-per-tensor\"", "activations = \"fp8\""), "qdq.activations"),
    (("description = \"test\"\n", ""), "description"),
])
def test_broken_target_names_the_key(tmp_path, change, key):
    path = _write(tmp_path, GOOD.replace(*change))
    with pytest.raises(EdgepackError, match=f"mine.toml: key '{key}'"):
        load_target(path)


def test_tensorrt_target_needs_symmetric_activations(tmp_path):
    text = GOOD.replace("backend = \"onnxruntime\"", "backend = \"tensorrt\"\ncompute_capability = \"8.7\"")
    with pytest.raises(EdgepackError, match="zero point 0"):
        load_target(_write(tmp_path, text))
