"""The newcomer's job (issue 22), from flags only: ShuffleNetV2 on the COCO JPEG folder of
../shared (a read-only copy), quantized for x86-cpu and a Jetson target, compared, built, profiled
and checked in six commands; the build manifest and the model metadata carry resize and crop.
Also the fast things a newcomer meets first: start-up imports and the NaN rule of `optimize`."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO, SHARED, requires_shared

MODEL = SHARED / "models" / "shufflenet-v2-12_from_int8_fp32.onnx"
COCO = SHARED / "data" / "coco_val2017_100"
FLAGS = ["--resize", "256", "--crop", "224", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]


def _edgepack(*args, cwd, env) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "edgepack", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1200)
    return done


@pytest.mark.slow
@requires_shared
def test_own_photos_in_six_commands(tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(COCO, photos)
    for file in photos.iterdir():
        file.chmod(stat.S_IRUSR | stat.S_IRGRP)
    photos.chmod(stat.S_IRUSR | stat.S_IXUSR)  # read-only, as the shared copy
    env = {**os.environ, "PYTHONPATH": str(REPO), "EDGEPACK_HISTORY": str(tmp_path / "history.sqlite")}
    commands = [
        ["quantize", MODEL, "-t", "x86-cpu", "-o", "s.x86.onnx", "--data", photos, *FLAGS],
        ["quantize", MODEL, "-t", "jetson-orin-nano", "-o", "s.jetson.onnx", "--data", photos, *FLAGS,
         "--min-agreement", "0.9"],
        ["compare", MODEL, "s.jetson.onnx", "--data", photos, "--no-layers", "--json", "compare.json"],
        ["build", "s.x86.onnx", "-o", "s.x86.built.onnx"],
        ["profile", "s.x86.built.onnx", "--vs", MODEL, "--runs", "50", "--warmup", "5", "--layer-runs", "0",
         "--json", "run.json"],
        ["check", "run.json", "--baseline", "vs", "--json", "check.json"],
    ]
    for command in commands:
        done = _edgepack(*command, cwd=tmp_path, env=env)
        assert done.returncode in ((0, 1) if command[0] == "check" else (0,)), (command, done.stderr)
    assert len(commands) <= 6
    compare = json.loads((tmp_path / "compare.json").read_text())
    assert compare["from_model"]["target"] == "jetson-orin-nano"  # read from the model, not a flag
    assert compare["outputs"][0]["top1_agreement"] >= 0.9
    manifest = json.loads((tmp_path / "s.x86.built.onnx.manifest.json").read_text())
    assert manifest["target"] == "x86-cpu" and manifest["from_model"]["target"] == "x86-cpu"
    import onnx

    for name in ("s.x86.onnx", "s.jetson.onnx"):
        props = {p.key: p.value for p in onnx.load(str(tmp_path / name), load_external_data=False).metadata_props}
        recorded = json.loads(props["edgepack.preprocess"])
        assert recorded["resize"] == 256 and recorded["crop"] == 224 and recorded["interpolation"] == "bilinear"
    assert manifest["preprocess"]["resize"] == 256 and manifest["preprocess"]["crop"] == 224
    check = json.loads((tmp_path / "check.json").read_text())
    assert check["verdict"] in ("slower", "same", "faster")


@requires_shared
def test_the_api_takes_the_flags_names(tmp_path):
    """`edgepack.quantize(model, "photos/", target=..., resize=256, crop=224, scale=1,
    mean=(104, 117, 123), channel_order="BGR")`, on a few of the COCO photos."""
    import edgepack

    photos = tmp_path / "photos"
    photos.mkdir()
    for file in sorted(COCO.iterdir())[:4]:
        shutil.copy(file, photos)
    result = edgepack.quantize(str(MODEL), str(photos), target="x86-cpu", resize=256, crop=224, scale=1,
                               mean=(104, 117, 123), channel_order="BGR", runtime_check=False, equalize=False,
                               rounding="nearest")
    recorded = json.loads(result.model.metadata_props["edgepack.preprocess"])
    assert recorded == {"resize": 256, "interpolation": "bilinear", "crop": 224, "scale": 1.0,
                        "channel_order": "BGR", "mean": [104.0, 117.0, 123.0], "layout": "NHWC:NCHW"}
    assert result.quantized


def test_help_and_version_import_no_heavy_library():
    """`edgepack --help` / `--version` start fast: the parser of every command is built without
    onnx, onnx-ir, ONNX Runtime or PIL (those load inside the commands)."""
    code = ("import sys\nfrom edgepack.cli import build_parser\nbuild_parser()\n"
            "print(sorted(m for m in ('onnx', 'onnx_ir', 'onnxruntime', 'PIL', 'scipy', 'sympy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_nan_where_the_original_gives_nan_is_equal():
    """The node suite's rule (equal_nan): NaN against NaN and inf against the same inf are equal;
    NaN or inf against a number is not; an infinite output does not make errors relative zero."""
    from edgepack.runtime import max_abs_error, output_scale

    a = [np.array([np.nan, 1.0, np.inf, -np.inf], np.float32)]
    assert max_abs_error(a, [a[0].copy()]) == 0.0
    assert max_abs_error(a, [np.array([0.0, 1.0, np.inf, -np.inf], np.float32)]) == float("inf")
    assert max_abs_error(a, [np.array([np.nan, 1.0, -np.inf, -np.inf], np.float32)]) == float("inf")
    assert max_abs_error(a, [np.array([np.nan, 1.5, np.inf, -np.inf], np.float32)]) == 0.5
    assert output_scale(a) == 1.0


def test_optimize_keeps_a_model_whose_outputs_are_nan(tmp_path):
    """acos of values outside [-1, 1] is NaN in the original and the optimized model alike: kept."""
    import edgepack
    from tests.helpers import save_text_model

    model = save_text_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x) => (float[2,3] y) {
            three = Constant <value = float {3.0}> ()
            big = Mul(x, three)
            y = Acos(big)
        }""", tmp_path / "acos.onnx")
    report = edgepack.optimize(model, output=tmp_path / "opt.onnx")
    assert report.max_abs_error == 0.0 and (tmp_path / "opt.onnx").is_file()
