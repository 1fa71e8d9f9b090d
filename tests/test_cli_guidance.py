"""A CLI that guides: what was probably meant, the cause of a failure, one-line verdicts, clean logs."""
from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest

from edgepack import io
from edgepack.cli import main
from edgepack.errors import EdgepackError
from edgepack.quant.quantize import quantize
from edgepack.recipe import load_recipe, run_recipe
from edgepack.resources import example_model
from edgepack.targets import load_target
from tests.helpers import model_from_text

#   x[N,3] ─► Gemm(W, b) ─► Relu ─► y[N,4]
GEMM = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3] x) => (float[N,4] y)
  <float[4,3] w = {1,2,3, -1,0,1, 2,-2,1, 0.5,0.5,-1}, float[4] b = {0.1,-0.2,0.3,0.0}> {
  h = Gemm <transB: int = 1> (x, w, b)
  y = Relu(h)
}
"""


def _usage_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err  # one line, as every error
    return err


def test_mistyped_option_prints_the_subcommands_usage_and_the_nearest_option(capsys):
    err = _usage_error(capsys, "calibrate", "m.onnx", "-o", "r.json", "--metod", "entropy")
    assert err.startswith("error: edgepack calibrate: unrecognized arguments: --metod entropy")
    assert "usage: edgepack calibrate MODEL -o OUT [options]" in err and "hint: did you mean --method?" in err


def test_a_missing_option_names_it_with_the_short_usage(capsys):
    err = _usage_error(capsys, "quantize", "m.onnx", "--data", "d")
    assert "required: -t/--target, -o/--output" in err and "usage: edgepack quantize MODEL -t T -o OUT" in err
    assert "hint: see `edgepack quantize --help`" in err


def test_mistyped_option_that_leaves_a_required_one_missing_is_suggested_too(capsys):
    err = _usage_error(capsys, "compress", "lowrank", "m.onnx", "-o", "x.onnx", "--rnk", "3")
    assert "usage: edgepack compress lowrank MODEL" in err and "did you mean --rank?" in err


def test_mistyped_command_suggests_the_nearest(capsys):
    err = _usage_error(capsys, "quantise", "m.onnx")
    assert "invalid choice: 'quantise'" in err and "did you mean quantize?" in err


def test_unknown_target_suggests_the_nearest_names():
    with pytest.raises(EdgepackError, match=r"unknown target 'jetson-orin-nan'.*did you mean jetson-orin-nano"):
        load_target("jetson-orin-nan")


@pytest.fixture
def cpu_int8(tmp_path):
    """The GEMM model quantized for x86-cpu (uint8 activations, int32 bias): ORT's QDQ form."""
    data = [{"x": np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)}]
    model = model_from_text(GEMM)
    quantize(model, data, target="x86-cpu", method="minmax")
    path = tmp_path / "g.x86.onnx"
    io.save(model, path)
    return path


def test_check_qdq_groups_findings_by_rule_and_names_the_cause(cpu_int8, capsys):
    assert main(["check-qdq", str(cpu_int8), "-t", "jetson-orin-nano"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "quantized for x86-cpu" in out[1] and "re-quantize with -t jetson-orin-nano" in out[1]
    rules = [line for line in out if " x " in line]
    assert len(rules) == len({line.split(" x ", 1)[1].split(" (first")[0] for line in rules}) >= 2
    assert any("int32" in line for line in rules) and any("zero point" in line for line in rules)
    counts = sum(int(line.split(" x ")[0]) for line in rules)
    assert out[0].split(": ")[1].startswith(f"{counts} problem(s)")


@pytest.mark.parametrize("stamped", [True, False])
def test_build_for_tensorrt_of_a_cpu_quantized_model_says_so_first(cpu_int8, capsys, stamped):
    if not stamped:  # a model quantized elsewhere: the QDQ form gives it away
        model = io.load(cpu_int8)
        model.metadata_props.clear()
        io.save(model, cpu_int8)
    code = main(["build", str(cpu_int8), "-t", "jetson-orin-nano", "-o", str(cpu_int8.with_suffix(".engine"))])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert ("quantized for x86-cpu" if stamped else "uint8 activation") in err[0]
    assert "re-quantize the float model with `edgepack quantize -t jetson-orin-nano`" in err[0]


def _profile(samples: np.ndarray) -> dict:
    return {"schema": "edgepack.profile/1", "model": {"name": "g.onnx", "sha256": "0" * 64},
            "target": "x86-cpu", "batch": 1, "samples_ms": samples.tolist()}


def test_a_failed_check_inside_run_names_the_regression_not_an_exit_code(tmp_path):
    base = 1.0 + 0.01 * np.random.default_rng(0).random(200)
    (tmp_path / "baseline.json").write_text(json.dumps(_profile(base)))
    (tmp_path / "current.json").write_text(json.dumps(_profile(base * 1.41)))
    (tmp_path / "r.toml").write_text(
        f'model = "{example_model()}"\ntargets = ["x86-cpu"]\n[[step]]\nrun = "check"\n'
        'input = "current.json"\nbaseline = "baseline.json"\nmetric = "p50"\nthreshold = "5%"\n')
    with pytest.raises(EdgepackError) as failed:
        run_recipe(load_recipe(tmp_path / "r.toml"), tmp_path / "out")
    assert str(failed.value).startswith(
        "step 'check' for target x86-cpu failed: latency slower: current/baseline 1.410x at p50, 99% interval")


def test_step_logs_hold_no_progress_bar_control_characters(tmp_path):
    (tmp_path / "r.toml").write_text(
        f'model = "{example_model()}"\ntargets = ["x86-cpu"]\n'
        '[[step]]\nrun = "profile"\nruns = 300\nno-history = true\nlayer-runs = 0\n')
    (result,) = run_recipe(load_recipe(tmp_path / "r.toml"), tmp_path / "out")
    assert result.status == "done", result.note
    log = (tmp_path / "out" / "x86-cpu" / "profile.log").read_bytes()  # bytes: read_text turns \r into \n
    assert b"latency" in log and b"\r" not in log and b"\x1b[" not in log and b"%|" not in log


def test_the_quantized_model_records_its_target_and_preprocessing(cpu_int8):
    from edgepack.calib.preprocess import Preprocess
    from edgepack.quant.origin import qdq_origin, stored_preprocess

    origin = qdq_origin(io.load(cpu_int8))
    assert (origin.target, origin.form) == ("x86-cpu", "onnxruntime")
    model = model_from_text(GEMM)
    data = [{"x": np.random.default_rng(0).integers(0, 255, (8, 3)).astype(np.uint8)}]
    quantize(model, data, target="jetson-orin-nano", method="minmax", preprocess=Preprocess(scale="1/255"))
    assert stored_preprocess(model) == {"scale": pytest.approx(1 / 255)}
    assert qdq_origin(ir.serde.deserialize_model(ir.serde.serialize_model(model))).form == "tensorrt"


def test_the_build_manifest_says_how_to_feed_the_artifact(tmp_path):
    from edgepack.backends import build
    from edgepack.calib.preprocess import Preprocess

    model = model_from_text(GEMM)
    data = [{"x": np.random.default_rng(0).integers(0, 255, (8, 3)).astype(np.uint8)}]
    quantize(model, data, target="x86-cpu", method="minmax", preprocess=Preprocess(scale="1/255", mean=0.5))
    io.save(model, tmp_path / "q.onnx")
    manifest = build(tmp_path / "q.onnx", "x86-cpu", output=tmp_path / "out" / "q.opt.onnx").manifest
    assert manifest["quantized_for"] == "x86-cpu"
    assert manifest["preprocess"] == {"scale": pytest.approx(1 / 255), "mean": [0.5]}


def test_every_help_lists_the_short_flag_first():
    """`-t T, --target T` (never `--target T, -t T`) in every command's --help."""
    import argparse

    from edgepack.cli import build_parser

    def parsers(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield sub
                    yield from parsers(sub)

    checked = 0
    for parser in parsers(build_parser()):
        for action in parser._actions:
            shorts = [o for o in action.option_strings if not o.startswith("--")]
            if shorts and len(action.option_strings) > 1:
                assert action.option_strings[0] in shorts, (parser.prog, action.option_strings)
                checked += 1
    assert checked > 20
