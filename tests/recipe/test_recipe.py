"""Recipes: validation against the commands' parsers, execution through the CLI, the cache.

The steps are the real commands (optimize, quantize, compare) on the bundled digits CNN:

    digits_cnn.onnx ─► optimize ─► optimize.onnx ─► quantize ─► quantize.onnx
                                        └──────────── compare ◄──────┘   (eval.npz, labels)
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgepack.recipe import load_recipe, run_recipe, sha256_path
from edgepack.resources import data_dir, example_model
from tests.helpers import assert_one_line_error, edgepack_cli

CALIB = data_dir("calibration") / "digits" / "calib.npz"
EVAL = data_dir("calibration") / "digits" / "eval.npz"

RECIPE = f"""
model = "{example_model()}"
targets = ["x86-cpu"]
data = "{CALIB}"

[[step]]
run = "optimize"

[[step]]
run = "quantize"
method = "{{method}}"

[[step]]
run = "compare"
input = ["optimize", "quantize"]
data = "{EVAL}"
no-layers = true
"""


def write_recipe(folder: Path, text: str, name: str = "r.recipe.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recipe")
    recipe = write_recipe(folder, RECIPE.replace("{method}", "minmax"))
    out = folder / "out"
    results = run_recipe(load_recipe(recipe), out)
    return recipe, out, results


def test_steps_run_through_the_commands_and_write_artifacts_and_manifests(first_run):
    recipe, out, results = first_run
    assert [(r.id, r.status) for r in results] == [("optimize", "done"), ("quantize", "done"), ("compare", "done")]
    manifest = json.loads((out / "quantize.step.json").read_text())
    assert manifest["inputs"][str(out / "optimize.onnx")] == sha256_path(out / "optimize.onnx")
    assert manifest["inputs"][str(CALIB)] == sha256_path(CALIB)
    assert manifest["options"]["method"] == "minmax" and manifest["options"]["target"] == "x86-cpu"
    assert {"edgepack", "onnx", "onnxruntime"} <= set(manifest["versions"])
    assert manifest["seconds"] > 0
    assert json.loads((out / "quantize.json").read_text())["method"] == "minmax"
    # the INT8 artifact runs and agrees with the FP32 one on real held-out digits
    with np.load(EVAL) as data:
        x, labels = data["input"][:200], data["labels"][:200]
    fp32 = ort.InferenceSession(str(out / "optimize.onnx")).run(None, {"input": x})[0]
    int8 = ort.InferenceSession(str(out / "quantize.onnx")).run(None, {"input": x})[0]
    assert (fp32.argmax(1) == int8.argmax(1)).mean() > 0.95
    compare = json.loads((out / "compare.json").read_text())
    assert compare["accuracy"]["a"] == pytest.approx((fp32.argmax(1) == labels).mean(), abs=0.05)
    run = json.loads((out / "run.json").read_text())
    assert [s["status"] for s in run["steps"]] == ["done"] * 3
    assert run["steps"][1]["inputs"] == ["optimize"]


def test_rerun_unchanged_skips_every_step_and_changed_option_reruns_downstream(first_run, tmp_path):
    recipe, out, _ = first_run
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.onnx")}
    start = time.perf_counter()
    again = run_recipe(load_recipe(recipe), out)
    assert time.perf_counter() - start < 10
    assert [r.status for r in again] == ["skipped"] * 3
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.onnx")} == before

    changed = write_recipe(tmp_path, RECIPE.replace("{method}", "percentile"))
    rerun = run_recipe(load_recipe(changed), out)
    assert [r.status for r in rerun] == ["skipped", "done", "done"]
    assert json.loads((out / "quantize.json").read_text())["method"] == "percentile"


def test_a_modified_artifact_is_rebuilt(tmp_path):
    recipe = write_recipe(tmp_path, RECIPE.replace("{method}", "minmax").split("[[step]]\nrun = \"quantize\"")[0])
    out = tmp_path / "out"
    run_recipe(load_recipe(recipe), out)
    (out / "optimize.onnx").write_bytes(b"tampered")
    assert [r.status for r in run_recipe(load_recipe(recipe), out)] == ["done"]
    assert ort.InferenceSession(str(out / "optimize.onnx")).get_inputs()[0].name == "input"


def test_unknown_step_is_refused_naming_it(tmp_path):
    recipe = write_recipe(tmp_path, f'model = "{example_model()}"\n[[step]]\nrun = "optimise"\n')
    result = edgepack_cli("run", recipe, "-o", tmp_path / "out")
    assert_one_line_error(result, "unknown step 'optimise'", "step 1", "hint:")
    assert not (tmp_path / "out").exists()


def test_unknown_option_is_refused_naming_step_and_option(tmp_path):
    text = RECIPE.replace("{method}", "minmax").replace('method = "minmax"', 'method = "minmax"\nbits = 4')
    result = edgepack_cli("run", write_recipe(tmp_path, text), "-o", tmp_path / "out")
    assert_one_line_error(result, "unknown option 'bits'", "'quantize'", "edgepack quantize")
    assert not (tmp_path / "out").exists()  # refused before anything ran


@pytest.mark.parametrize("line, needle", [
    ('method = "median"', "'method' = 'median' is not one of"),
    ("per-tensor = 1", "'per-tensor' is a switch"),
    ('output = "x.onnx"', "unknown option 'output'"),
])
def test_bad_option_values_are_refused(tmp_path, line, needle):
    text = RECIPE.replace("{method}", "minmax").replace('method = "minmax"', line)
    assert_one_line_error(edgepack_cli("run", write_recipe(tmp_path, text)), needle)


@pytest.mark.parametrize("text, needle", [
    ('model = "{model}"\nstep = []\nsteps = 3\n', "unknown key 'steps'"),
    ('model = "{model}"\n[[step]]\nid = "../x"\nrun = "optimize"\n', "id '../x' is not a plain name"),
    ('model = "{model}"\n[[step]]\nrun = "optimize"\n[[step]]\nrun = "optimize"\n', "duplicate step id"),
    ('model = "{model}"\n[[step]]\nrun = "quantize"\ninput = "later"\n', "input 'later'"),
    ('model = "{model}"\n[[step]]\nrun = "build"\n', "need a target"),
    ('model = "{model}"\n[[step]]\nmethod = "minmax"\n', "step 1: no 'run'"),
])
def test_malformed_recipes_are_refused_naming_the_problem(tmp_path, text, needle):
    recipe = write_recipe(tmp_path, text.replace("{model}", str(example_model())))
    assert_one_line_error(edgepack_cli("run", recipe, "-o", tmp_path / "out"), needle)
    assert not (tmp_path / "out").exists()


def test_unknown_target_and_missing_model_are_refused(tmp_path):
    text = RECIPE.replace("{method}", "minmax")
    assert_one_line_error(edgepack_cli("run", write_recipe(tmp_path, text), "--targets", "x86-cpu,toaster"),
                          "unknown target 'toaster'")
    broken = text.replace(str(example_model()), "nowhere.onnx")
    assert_one_line_error(edgepack_cli("run", write_recipe(tmp_path, broken)), "model not found", "nowhere.onnx")


def test_failing_step_stops_the_run_naming_it_and_keeps_earlier_artifacts(tmp_path):
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, pixels=np.zeros((4, 1, 8, 8), np.float32), depth=np.zeros((4, 1, 8, 8), np.float32))  # no `input`
    text = RECIPE.replace("{method}", "minmax").replace(f'data = "{CALIB}"', f'data = "{wrong}"', 1)
    out = tmp_path / "out"
    result = edgepack_cli("run", write_recipe(tmp_path, text), "-o", out)
    assert_one_line_error(result, "step 'quantize' failed")
    assert (out / "optimize.onnx").is_file() and (out / "optimize.step.json").is_file()
    assert not (out / "quantize.onnx").exists() and not (out / "quantize.step.json").exists()
    statuses = [s["status"] for s in json.loads((out / "run.json").read_text())["steps"]]
    assert statuses == ["done", "failed"]


def test_targets_option_runs_per_target_steps_in_sub_folders(tmp_path):
    text = (f'model = "{example_model()}"\ntargets = ["x86-cpu"]\n'
            '[[step]]\nrun = "optimize"\n'
            '[[step]]\nid = "retarget"\nrun = "optimize"\nper_target = true\nno-simplify = true\n')
    out = tmp_path / "out"
    result = edgepack_cli("run", write_recipe(tmp_path, text), "-o", out, "--targets", "x86-cpu,arm64-cpu",
                          "--json", tmp_path / "run.json", "--report", tmp_path / "report.html")
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "report.html").read_text()
    assert "<svg" in page and page.count("retarget") >= 2  # both targets' steps in the pipeline table
    report = json.loads((tmp_path / "run.json").read_text())
    assert [(s["id"], s["target"], s["status"]) for s in report["steps"]] == [
        ("optimize", None, "done"), ("retarget", "x86-cpu", "done"), ("retarget", "arm64-cpu", "done")]
    for target in ("x86-cpu", "arm64-cpu"):
        step = json.loads((out / target / "retarget.step.json").read_text())
        assert step["options"]["target"] == target
        target_file = data_dir("targets") / f"{target}.toml"
        assert step["inputs"] == {str(out / "optimize.onnx"): sha256_path(out / "optimize.onnx"),
                                  str(target_file): sha256_path(target_file)}
        assert (out / target / "retarget.onnx").is_file()


def test_demo_recipe_is_valid_and_uses_the_bundled_data():
    from edgepack.demo import DEMO_RECIPE

    recipe = load_recipe(DEMO_RECIPE)
    assert recipe.model == example_model() and Path(recipe.data) == CALIB
    assert [s.command for s in recipe.steps][:3] == ["optimize", "quantize", "compare"]
    assert {"build", "profile"} <= {s.command for s in recipe.steps}


@pytest.mark.slow
def test_demo_prints_the_summary_and_writes_the_report_then_skips_everything(tmp_path):
    out = tmp_path / "demo"
    result = edgepack_cli("demo", "-o", out)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[-3:] for line in result.stdout.splitlines()
            if line.startswith(("size", "top-1", "latency"))}
    assert set(rows) == {"size", "top-1", "latency"}
    assert all("n/a" not in values for values in rows.values()), result.stdout
    fp32, int8, ratio = map(float, rows["size"])
    assert int8 < fp32 and ratio == pytest.approx(int8 / fp32, rel=1e-2)
    compare = json.loads((out / "compare.json").read_text())
    assert float(rows["top-1"][1]) == pytest.approx(100 * compare["accuracy"]["b"], abs=1e-3)
    assert f"report: {out / 'report.html'}" in result.stdout
    assert (out / "report.html").read_text().count("<svg") >= 6
    run = json.loads((out / "run.json").read_text())
    assert {(s["id"], s["status"]) for s in run["steps"]} >= {("build-int8", "done"), ("profile-int8", "done")}
    # the verdict first, on the terminal and on the report's first screen: INT8 against FP32, interleaved
    comparison = json.loads((out / "x86-cpu" / "profile-int8.json").read_text())["comparison"]
    assert comparison["statistic"] == "paired blocks"
    page = (out / "report.html").read_text()
    first = page[page.index("<body>"):page.index("<h2>")]
    assert "INT8 on x86-cpu" in first and "verdict: INT8 on x86-cpu" in result.stdout
    said = {"slower": "INT8 is slower than FP32", "faster": "INT8 is faster than FP32"}.get(
        comparison["verdict"], "INT8 is no faster than FP32")
    assert said in first and said in result.stdout

    again = edgepack_cli("demo", "-o", out, "--json", tmp_path / "demo.json")
    assert again.returncode == 0, again.stderr
    assert {s["status"] for s in json.loads((tmp_path / "demo.json").read_text())["steps"]} == {"skipped"}


def test_check_step_takes_a_profile_report_and_gates_the_run(tmp_path):
    # model ─► build ─► profile (JSON report) ─► check --baseline <an earlier profile>
    steps = (f'model = "{example_model()}"\ntargets = ["x86-cpu"]\n'
             '[[step]]\nrun = "build"\n[[step]]\nrun = "profile"\nruns = 300\nno-history = true\n')
    first = run_recipe(load_recipe(write_recipe(tmp_path, steps)), tmp_path / "a")
    assert [r.status for r in first] == ["done", "done"]
    baseline = tmp_path / "baseline.json"
    baseline.write_bytes((tmp_path / "a" / "x86-cpu" / "profile.json").read_bytes())
    gated = steps + '[[step]]\nrun = "check"\ninput = "profile"\nbaseline = "baseline.json"\nthreshold = \"300%\"\n'
    results = run_recipe(load_recipe(write_recipe(tmp_path, gated, "gated.toml")), tmp_path / "b")
    assert [r.status for r in results] == ["done", "done", "done"]
    check = json.loads((tmp_path / "b" / "x86-cpu" / "check.step.json").read_text())
    assert str(tmp_path / "b" / "x86-cpu" / "profile.json") in check["inputs"]
    assert check["options"]["baseline"] == str(baseline)
