"""The latency gate as CI uses it: an unchanged model never fails, two artifacts are checked
interleaved, the verdict reads the same everywhere, and timings that cannot be compared are refused.

Models (support.matmul_relu, width 128):
    base      x -> 6 x (MatMul -> Relu) -> y, weights seed 0
    copy      base's bytes in another file (the same artifact)
    twin      the same graph with weights seed 1: another sha256, the same work
    slower    12 layers: 2x the work
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgepack.commands.profile import check
from edgepack.errors import UsageError
from edgepack.profile.profiler import ProfileOptions, profile_model
from edgepack.profile.regression import check_regression
from edgepack.profile.timing import Budget
from tests.helpers import assert_one_line_error
from tests.profile.support import matmul_relu, synthetic_result
from tests.profile.test_cli import cli

OPTIONS = ProfileOptions(budget=Budget(runs=200), warmup=Budget(runs=5), threads=1, layer_runs=0, progress=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gate")
    base = matmul_relu(tmp / "base.onnx", width=128, layers=6)
    shutil.copy(base, tmp / "copy.onnx")
    return {"base": base, "copy": tmp / "copy.onnx",
            "twin": matmul_relu(tmp / "twin.onnx", width=128, layers=6, seed=1),
            "slower": matmul_relu(tmp / "slower.onnx", width=128, layers=12)}


def test_the_same_artifact_is_same_whatever_the_machine_did(models, tmp_path):
    base = profile_model(models["base"], "x86-cpu", OPTIONS)
    current = profile_model(models["copy"], "x86-cpu", OPTIONS)  # the same bytes, another path
    # load that came between the runs: the baseline's own samples 1.3x slower, so the statistic
    # alone says slower whatever noise the two measurements had
    current["samples_ms"] = [1.3 * t for t in base["samples_ms"]]
    assert current["model"]["weights_sha256"] == {} == base["model"]["weights_sha256"]
    report = check(current, base).report
    assert report["identical"] and report["verdict"] == "same" and not report["regression"]
    assert report["statistic_verdict"] == "slower" and report["ratio"] > 1.2  # the numbers alone would fail
    assert not report["confirm"]["ran"]  # nothing to confirm
    assert report["summary"].startswith(f"latency same: current/baseline {report['ratio']:.3f}x at p1")
    assert "the same artifact run by the same software" in report["summary"]
    # other software is not the same artifact any more: the statistic decides (and a rerun)
    other = {**current, "environment": {**current["environment"],
                                        "versions": {**current["environment"]["versions"], "onnxruntime": "0.0.1"}}}
    assert not check_regression(other, base)["identical"]


def test_device_state_differences_are_reported(models):
    base = profile_model(models["base"], "x86-cpu", OPTIONS)
    current = json.loads(json.dumps(base))
    current["environment"]["cpu_freq_limits_khz"] = {"min": [400000], "max": [1200000]}
    base["environment"]["cpu_freq_limits_khz"] = {"min": [400000], "max": [3000000]}
    report = check_regression(current, base)
    assert report["identical"] and report["device_differences"] == [
        "CPU frequency limits (kHz) {'min': [400000], 'max': [1200000]} vs {'min': [400000], 'max': [3000000]}"]


def test_two_artifacts_are_checked_interleaved(models):
    slower = check(models["slower"], models["base"], target="x86-cpu", duration="0.3s", confirm_duration="0.2s")
    r = slower.report
    assert r["verdict"] == "slower" and slower.exit_code == 1 and r["statistic"] == "paired blocks"
    assert r["confirm"]["ran"] and r["confirm"]["mode"] == "interleaved" and r["ratio"] > 1.4
    assert r["first"]["verdict"] == "slower" and r["ci"][0] > 1
    twin = check(models["twin"], models["base"], target="x86-cpu", duration="0.3s", confirm_duration="0.2s").report
    assert twin["verdict"] in ("same", "faster") and not twin["regression"] and 0.85 < twin["ratio"] < 1.1
    same = check(models["copy"], models["base"], duration="0.1s").report
    assert same["identical"] and same["verdict"] == "same"


def test_one_vocabulary_in_the_cli_the_api_and_the_json(models, tmp_path):
    rng = np.random.default_rng(0)
    files = {}
    for name, scale, sha in (("base", 1.0, "a" * 64), ("cur", 1.3, "b" * 64)):
        result = synthetic_result(rng.normal(scale, 0.01, 400), sha=sha)
        result["model"]["path"] = str(tmp_path / "gone.onnx")  # not here: not confirmable
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(result))
    api = check(files["cur"], files["base"], force=True)
    done = cli("check", files["cur"], "--baseline", files["base"], "--force", "--json", tmp_path / "check.json",
               db=tmp_path / "h.sqlite")  # text on stdout, JSON in the file
    as_json = json.loads((tmp_path / "check.json").read_text())
    assert done.returncode == 1 and api.exit_code == 1
    assert done.stdout.strip().splitlines()[-1] == api.summary() == as_json["summary"]
    word, ratio = api.summary().split(":")[0].split()[-1], as_json["ratio"]
    assert word == "slower" and f"{ratio:.3f}x" in api.summary() and ratio > 1.2
    assert "not confirmed: the current model file is not here" in api.summary()
    assert "to make it confirmable: keep both artifacts" in done.stdout
    assert "check CURRENT.onnx --baseline" in done.stdout


@pytest.mark.parametrize("value", [1e308, 3.7e6])
def test_timings_that_cannot_be_compared_are_refused(tmp_path, value):
    rng = np.random.default_rng(1)
    base = synthetic_result(rng.normal(1.0, 0.01, 100))
    huge = synthetic_result(np.full(100, value))
    for name, data in (("base", base), ("huge", huge)):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    done = cli("check", tmp_path / "huge.json", "--baseline", tmp_path / "base.json", db=tmp_path / "h.sqlite")
    assert_one_line_error(done, "one hour", code=2)
    assert "unchanged" not in done.stdout and "nan" not in done.stdout.lower()


def test_a_ratio_that_is_not_finite_is_refused(monkeypatch):
    import edgepack.profile.regression as regression

    rng = np.random.default_rng(2)
    a, b = (synthetic_result(rng.normal(1.0, 0.01, 100)) for _ in range(2))
    monkeypatch.setattr(regression, "ratio_interval", lambda *args, **kw: (float("inf"), float("nan"), float("nan")))
    with pytest.raises(UsageError, match="not a finite positive number"):
        regression.check_regression(a, b, force=True)
