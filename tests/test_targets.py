"""Every shipped target loads; a broken target file names the key at fault."""
from __future__ import annotations

import pytest

from edgepack.errors import EdgepackError
from edgepack.targets import list_targets, load_target, target_dir

REQUIRED = {"jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "jetson-xavier-nx", "jetson-nano",
            "jetson-agx-orin-jp7", "jetson-agx-thor", "nvidia-gpu", "x86-cpu", "x86-cpu-vnni", "arm64-cpu"}


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
            assert t.tensorrt_major in (8, 10, 11) and "allows" in t.summary()


def test_jetpack_7_targets():
    thor, agx7, agx6 = (load_target(n) for n in ("jetson-agx-thor", "jetson-agx-orin-jp7", "jetson-agx-orin"))
    assert thor.compute_capability == "11.0" and thor.dla_cores == 0 and thor.tensorrt_major == 11
    assert thor.allows() == {"weak_typing": False, "strongly_typed": True, "int8_calibrator": False, "dla": False}
    assert agx7.tensorrt_major == 11 and agx7.jetpack == "7.2.2" and agx7.allows()["dla"]
    assert agx6.tensorrt_major == 10 and agx6.allows() == {"weak_typing": True, "strongly_typed": True,
                                                          "int8_calibrator": True, "dla": True}


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
    (("precisions = [\"int8\", \"fp32\"]", "precisions = [\"int2\"]"), "precisions"),
    (("name = \"mine\"", "name = \"mine\"\ncolour = \"red\""), "colour"),
    (("name = \"mine\"", "name = \"mine\"\ndla_cores = \"two\""), "dla_cores"),
    (("activations = \"uint8-asymmetric-per-tensor\"", "activations = \"fp8\""), "qdq.activations"),
    (("description = \"test\"\n", ""), "description"),
])
def test_broken_target_names_the_key(tmp_path, change, key):
    path = _write(tmp_path, GOOD.replace(*change))
    with pytest.raises(EdgepackError, match=f"mine.toml: key '{key}'"):
        load_target(path)


TRT = """
name = "mine"
description = "test"
backend = "tensorrt"
compute_capability = "8.7"
precisions = ["int8", "fp16", "fp32"]
dla_cores = 2
tensorrt_version = "11.4.1"
jetpack = "7.2.2"
board = "agx-orin"
[qdq]
activations = "int8-symmetric-per-tensor"
weights = "int8-symmetric-per-channel"
"""


@pytest.mark.parametrize("change, key, why", [
    (('tensorrt_version = "11.4.1"\n', ""), "tensorrt_version", "must be like"),
    (('"11.4.1"', '"9.1"'), "tensorrt_version", "TensorRT 9.1 is not supported"),
    (('"11.4.1"', '"eleven"'), "tensorrt_version", "must be like"),
    (('jetpack = "7.2.2"', 'jetpack = "6.1"'), "jetpack", "needs JetPack 7.2.2"),
    (('jetpack = "7.2.2"', 'jetpack = "seven"'), "jetpack", "must be like"),
    (('board = "agx-orin"', 'board = "agx-thor"'), "dla_cores", "AGX Orin only"),
    (('board = "agx-orin"', 'board = "AGX Orin"'), "board", "lowercase"),
    (('"11.4.1"', '"11.2.0"'), "jetpack", "does not support JetPack"),
])
def test_tensorrt_version_rules_name_the_key(tmp_path, change, key, why):
    load_target(_write(tmp_path, TRT))  # the unchanged file is valid
    path = _write(tmp_path, TRT.replace(*change))
    with pytest.raises(EdgepackError, match=f"mine.toml: key '{key}' .*{why}"):
        load_target(path)


def test_blackwell_needs_tensorrt_10_8(tmp_path):
    text = TRT.replace('compute_capability = "8.7"', 'compute_capability = "10.0"').replace(
        '"11.4.1"', '"10.3"').replace('jetpack = "7.2.2"\n', "").replace("dla_cores = 2", "dla_cores = 0")
    with pytest.raises(EdgepackError, match="key 'tensorrt_version' .*Blackwell"):
        load_target(_write(tmp_path, text))
    assert load_target(_write(tmp_path, text.replace('"10.3"', '"10.8"'))).tensorrt_major == 10


def test_tensorrt_keys_on_a_cpu_target_are_refused(tmp_path):
    with pytest.raises(EdgepackError, match="key 'tensorrt_version' applies to tensorrt targets only"):
        load_target(_write(tmp_path, GOOD.replace('name = "mine"', 'name = "mine"\ntensorrt_version = "10.3"')))


def test_tensorrt_target_needs_symmetric_activations(tmp_path):
    text = GOOD.replace("backend = \"onnxruntime\"",
                        "backend = \"tensorrt\"\ncompute_capability = \"8.7\"\ntensorrt_version = \"10.3\"")
    with pytest.raises(EdgepackError, match="zero point 0"):
        load_target(_write(tmp_path, text))


def test_host_names_the_cpu_target_of_this_machine(monkeypatch):
    from edgepack.targets import load_target

    monkeypatch.setattr("edgepack.cpu.cpu_flags", lambda: frozenset({"avx2", "avx512_vnni"}))
    assert load_target("host").name == "x86-cpu-vnni"
    monkeypatch.setattr("edgepack.cpu.cpu_flags", lambda: frozenset({"avx2"}))
    assert load_target("host").name == "x86-cpu"
