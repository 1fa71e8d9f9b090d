"""Every command on a model with external data, given by absolute and by relative path, run from
another folder that holds a decoy data file of the same name.

    x [N,3,8,8] -> Conv(8, 3x3) -> BatchNorm -> Relu -> GlobalAveragePool -> Flatten -> Gemm(4) -> y
    every weight in m.onnx.data (model folder); elsewhere/m.onnx.data holds 1e30s of the same size

A command that read weights from the current folder instead of the model's would write outputs
built from the decoy (1e30 weights: non-finite or huge outputs) or fail to find the file.
"""
from __future__ import annotations

import contextlib
import io as stdio
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgepack import io
from edgepack.cli import main
from tests.helpers import run_ort
from tests.passes.nets import NetBuilder

# command template -> output it writes (relative to the output folder), or None
COMMANDS = {
    "inspect": (["inspect", "{m}"], None),
    "optimize": (["optimize", "{m}", "-o", "{o}/opt.onnx"], "opt.onnx"),
    "prune": (["prune", "{m}", "-o", "{o}/p.onnx", "--sparsity", "0.25"], "p.onnx"),
    "compress-clip": (["compress", "clip", "{m}", "-o", "{o}/c.onnx", "--percentile", "99.9"], "c.onnx"),
    "compress-lowrank": (["compress", "lowrank", "{m}", "-o", "{o}/l.onnx", "--rank", "4"], "l.onnx"),
    "compress-fp16": (["compress", "fp16", "{m}", "-o", "{o}/f.onnx"], "f.onnx"),
    "calibrate": (["calibrate", "{m}", "--data", "{d}", "-o", "{o}/r.ranges"], "r.ranges"),
    "quantize": (["quantize", "{m}", "-t", "x86-cpu", "--data", "{d}", "-o", "{o}/q.onnx"], "q.onnx"),
    "compare": (["compare", "{m}", "{m}", "--data", "{d}"], None),
    "build": (["build", "{m}", "-t", "x86-cpu", "-o", "{o}/b.onnx"], "b.onnx"),
    "profile": (["profile", "{m}", "-t", "x86-cpu", "--runs", "3", "--warmup", "1", "--no-history",
                 "--no-progress"], None),
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("anywhere")
    (root / "models").mkdir()
    b = NetBuilder(0)
    y = b.conv_bn("x", 3, 8, 3)
    y = b.node("Flatten", [b.node("GlobalAveragePool", [y])])
    model_path = root / "models" / "m.onnx"
    io.save(b.model(["N", 3, 8, 8], b.gemm(y, 8, 4), ["N", 4]), model_path, external_data=True)
    data = root / "models" / "m.onnx.data"
    assert data.stat().st_size > 0
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "m.onnx.data").write_bytes(
        np.full(data.stat().st_size // 4, 1e30, np.float32).tobytes())
    rng = np.random.default_rng(0)
    np.savez(root / "models" / "d.npz", x=rng.standard_normal((4, 3, 8, 8)).astype(np.float32))
    feeds = {"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)}
    return root, model_path, feeds, run_ort(model_path, feeds)[0]


def _run(argv: list[str]) -> tuple[int, str]:
    err = stdio.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdio.StringIO()):
        code = main(argv)
    return code, err.getvalue()


@pytest.mark.parametrize("form", ["absolute", "relative"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_reads_external_data_from_the_models_folder(setup, command, form, tmp_path, monkeypatch):
    root, model_path, feeds, expected = setup
    monkeypatch.chdir(root / "elsewhere")
    out = tmp_path / "out"
    out.mkdir()
    if form == "absolute":
        m, d, o = str(model_path), str(model_path.with_name("d.npz")), str(out)
    else:
        m = os.path.relpath(model_path)
        d, o = os.path.relpath(model_path.with_name("d.npz")), os.path.relpath(out)
        assert not Path(m).is_absolute() and m.startswith("..")
    template, written = COMMANDS[command]
    code, err = _run([part.format(m=m, d=d, o=o) for part in template])
    assert code == 0, err
    assert "Traceback" not in err and "error:" not in err, err
    if written is None or not written.endswith(".onnx"):
        return
    result = out / written
    assert result.is_file()
    # Weights of the output live in the output's own data file, never in the input's or the cwd's.
    proto = onnx.load(result, load_external_data=False)
    locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations <= {result.name + ".data"}, locations
    onnx.checker.check_model(str(result))
    if command == "compress-fp16":  # inputs and outputs become float16 too (no --keep-io-float)
        feeds = {k: v.astype(np.float16) for k, v in feeds.items()}
    got = run_ort(result, feeds)[0].astype(np.float32)
    assert np.isfinite(got).all() and np.abs(got).max() < 1e6, got
    if command in ("optimize", "build"):  # exact rewrites: same outputs as the input model
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
