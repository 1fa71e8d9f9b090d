"""The gate on a busy machine: a suspect slowdown is decided by an interleaved rerun on this device;
device state in every profile; power modes and device kinds kept apart.

Models (support.matmul_relu, width 128):
    base      x -> 6 x (MatMul -> Relu) -> y, weights seed 0
    same      the same graph, weights seed 1: another file and sha256, the same work
    slower    18 layers: 3x the work
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgepack.errors import UsageError
from edgepack.profile.confirm import gate, paired_ratio
from edgepack.profile.profiler import ProfileOptions, profile_model
from edgepack.profile.regression import check_regression
from edgepack.profile.timing import Budget
from tests.profile.support import matmul_relu, synthetic_result

OPTIONS = ProfileOptions(budget=Budget(runs=60), warmup=Budget(runs=5), threads=1, layer_runs=0, progress=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("confirm")
    return {"base": matmul_relu(tmp / "base.onnx", width=128, layers=6),
            "same": matmul_relu(tmp / "same.onnx", width=128, layers=6, seed=1),
            "slower": matmul_relu(tmp / "slower.onnx", width=128, layers=18)}


def _flagged(current: dict, baseline: dict) -> dict:
    """The check's report, made to say "slower" as a noisy separate run can."""
    report = check_regression(current, baseline, force=True)
    report.update(verdict="slower", regression=True, ratio=1.3, ci=[1.1, 1.5])
    return report


def test_false_alarm_is_cleared_by_the_interleaved_rerun(models):
    base, same = (profile_model(models[k], "x86-cpu", OPTIONS) for k in ("base", "same"))
    report = gate(_flagged(same, base), same, [base], confirm=None, duration=0.5, force=True)
    record = report["confirm"]
    assert record["ran"] and record["mode"] == "interleaved" and record["report"]["statistic"] == "paired blocks"
    assert 0.8 < record["report"]["ratio"] < 1.05 and not record["confirmed"]
    assert (report["first_verdict"], report["verdict"], report["regression"]) == ("slower", "same", False)
    assert len(record["load_before"]) == 3 and len(record["load_after"]) == 3


def test_real_slowdown_is_confirmed(models):
    base, slower = (profile_model(models[k], "x86-cpu", OPTIONS) for k in ("base", "slower"))
    report = gate(_flagged(slower, base), slower, [base], confirm=None, duration=0.5, force=True)
    assert report["confirm"]["confirmed"] and report["regression"] and report["confirm"]["report"]["ratio"] > 1.5


def test_without_the_model_files_the_first_verdict_stands():
    rng = np.random.default_rng(0)
    base, cur = synthetic_result(rng.normal(1.0, 0.01, 400)), synthetic_result(rng.normal(1.3, 0.01, 400))
    report = gate(check_regression(cur, base), cur, [base], confirm=None)
    assert report["verdict"] == "slower" and report["regression"] and not report["confirm"]["ran"]
    assert "not here" in report["confirm"]["reason"]
    with pytest.raises(UsageError, match="--confirm"):
        gate(check_regression(cur, base), cur, [base], confirm=True)


def test_paired_ratio_cancels_load_that_moves_between_pairs():
    # baseline 1.0 ms, current 1.1 ms; every pair of blocks shares a load factor that varies 1x..3x
    rng = np.random.default_rng(1)
    load = np.repeat(rng.uniform(1, 3, 50), 10)
    ratio, low, high = paired_ratio(list(1.1 * load), list(1.0 * load), 1.0)
    assert low <= ratio <= high and abs(ratio - 1.1) < 1e-9
    unpaired = np.percentile(1.1 * load, 50) / np.percentile(1.0 * load[::-1], 50)
    assert abs(unpaired - 1.1) > abs(ratio - 1.1)


def test_profile_records_device_state_before_and_after(models):
    result = profile_model(models["base"], "x86-cpu", OPTIONS)
    state = result["environment"]["state"]
    assert set(state) == {"before", "after"}
    assert len(state["before"]["load_average"]) == 3  # Linux: always readable
    for snapshot in state.values():   # absent, never guessed: only what this machine exposes
        assert set(snapshot) <= {"load_average", "thermal_c", "cpu_freq_khz"}
        assert all(value is not None for value in snapshot.values())


def test_check_refuses_different_power_modes(tmp_path):
    from tests.profile.test_cli import cli

    rng = np.random.default_rng(2)
    files = {}
    for name, mode in (("a", "MAXN"), ("b", "15W")):
        result = synthetic_result(rng.normal(1.0, 0.01, 300))
        result["environment"] = {"governor": "performance", "jetson": {"power_mode": mode}}
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(result))
    refused = cli("check", files["b"], "--baseline", files["a"], db=tmp_path / "h.sqlite")
    assert refused.returncode == 2 and "different power modes (nvpmodel 15W vs MAXN)" in refused.stderr
    assert cli("check", files["b"], "--baseline", files["a"], "--force", db=tmp_path / "h.sqlite").returncode == 0


def test_history_compares_like_with_like(tmp_path):
    from edgepack.profile.history import History

    store = History(tmp_path / "h.sqlite")
    rng = np.random.default_rng(3)
    for host, cpu in (("orin-1", "ARMv8 Processor rev 1 (v8l)"), ("ci-x86", "Intel Xeon")):
        result = synthetic_result(rng.normal(1.0, 0.01, 50))
        result["environment"] = {"hostname": host, "cpu_model": cpu, "machine": "aarch64" if "ARM" in cpu else "x86_64"}
        store.add(result)
    rows = store.runs()
    assert [(r["hostname"], r["device"]) for r in rows] == [
        ("orin-1", "ARMv8 Processor rev 1 (v8l) / aarch64"), ("ci-x86", "Intel Xeon / x86_64")]
    same_kind = store.recent(model_sha256="a" * 64, target="x86-cpu", device="Intel Xeon / x86_64")
    assert [r["environment"]["hostname"] for r in same_kind] == ["ci-x86"]


def test_history_made_before_the_device_columns_gets_them(tmp_path):
    import sqlite3

    from edgepack.profile.history import _SCHEMA, History

    result = synthetic_result(np.full(20, 1.0))
    result["environment"] = {"hostname": "old-box", "cpu_model": "Intel Xeon", "machine": "x86_64"}
    with sqlite3.connect(tmp_path / "old.sqlite") as db:  # the schema before hostname/device
        db.executescript(_SCHEMA)
        db.execute("INSERT INTO runs (run_id, created, model_sha256, target, batch, threads, p50, p99, result) "
                   "VALUES (?, ?, ?, ?, 1, 1, 1.0, 1.0, ?)", ("r1", result["created"], "a" * 64, "x86-cpu",
                                                             json.dumps(result)))
    rows = History(tmp_path / "old.sqlite").runs()
    assert [(r["hostname"], r["device"]) for r in rows] == [("old-box", "Intel Xeon / x86_64")]
