"""`edgepack profile`, `check`, `history` as a user runs them: exit codes, JSON, one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from tests.helpers import REPO, assert_one_line_error
from tests.profile.support import matmul_relu, noisy_timings, synthetic_result


def cli(*args, db):
    env = {**os.environ, "EDGEPACK_HISTORY": str(db)}
    return subprocess.run([sys.executable, "-m", "edgepack", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=300)


def test_profile_check_history_round_trip(tmp_path):
    # x[N,16] -> mm0 -> relu0 -> mm1 -> relu1 -> y, profiled twice: A/A passes
    model = matmul_relu(tmp_path / "tiny.onnx")
    db = tmp_path / "history.sqlite"
    for name in ("a.json", "b.json"):
        result = cli("profile", model, "--target", "x86-cpu", "--runs", "300", "--warmup", "20",
                     "--layer-runs", "3", "--json", tmp_path / name, db=db)
        assert result.returncode == 0, result.stderr
        assert "p50" in result.stdout and "mm0" in result.stdout or "mm1" in result.stdout
    a = json.loads((tmp_path / "a.json").read_text())
    assert a["schema"] == "edgepack.profile/1" and a["runs"] == 300
    check = cli("check", tmp_path / "b.json", "--baseline", tmp_path / "a.json", "--json", db=db)
    report = json.loads(check.stdout)
    # the same artifact profiled twice never fails, whatever the load did between the runs
    assert report["schema"] == "edgepack.check/1"
    assert report["identical"] and report["verdict"] == "same" and check.returncode == 0, check.stderr
    # history holds both runs; `check --baseline history` leaves the current run out of the baseline
    history = cli("history", "--model", model, "--json", db=db)
    runs = json.loads(history.stdout)["runs"]
    assert [r["run_id"] for r in runs] == [a["id"], json.loads((tmp_path / "b.json").read_text())["id"]]
    from_history = cli("check", tmp_path / "b.json", "--baseline", "history", "--json", db=db)
    assert from_history.returncode == 0, from_history.stderr
    assert json.loads(from_history.stdout)["baseline"]["ids"] == [a["id"]]
    assert json.loads(from_history.stdout)["verdict"] == "same"
    table = cli("history", "--target", "x86-cpu", db=db)
    assert "tiny.onnx" in table.stdout and "trend" in table.stdout
    assert db.is_file()


def test_check_exit_codes(tmp_path):
    db = tmp_path / "h.sqlite"
    base = synthetic_result(noisy_timings(2000, 1.0, seed=1))
    files = {}
    for name, data in {"base": base,
                       "slow": synthetic_result(noisy_timings(2000, 1.0, seed=2, drift=0.3)),
                       "same": synthetic_result(noisy_timings(2000, 1.0, seed=3)),
                       "other": synthetic_result(noisy_timings(2000, 1.0, seed=4), target="jetson-orin-nano")}.items():
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(data))
    slow = cli("check", files["slow"], "--baseline", files["base"], db=db)
    assert slow.returncode == 1 and "slower" in slow.stdout
    assert cli("check", files["slow"], "--baseline", files["base"], "--threshold", "50%", db=db).returncode == 0
    assert cli("check", files["same"], "--baseline", files["base"], "--metric", "p99", db=db).returncode == 0
    assert_one_line_error(cli("check", files["other"], "--baseline", files["base"], db=db), "target", code=2)
    assert cli("check", files["other"], "--baseline", files["base"], "--force", db=db).returncode == 0
    (tmp_path / "bad.json").write_text("{not json")
    assert_one_line_error(cli("check", tmp_path / "bad.json", "--baseline", files["base"], db=db), "bad.json", code=2)
    (tmp_path / "wrong.json").write_text(json.dumps({"schema": "edgepack.optimize/1"}))
    assert_one_line_error(cli("check", tmp_path / "wrong.json", "--baseline", files["base"], db=db),
                          "not a profile result", code=2)
    assert_one_line_error(cli("check", tmp_path / "none.json", "--baseline", files["base"], db=db), "not found", code=2)
    assert_one_line_error(cli("check", files["same"], "--baseline", files["base"], "--threshold", "lots", db=db),
                          "--threshold", code=2)
    assert_one_line_error(cli("check", files["same"], "--baseline", "history", db=db), "history", code=1)


def test_profile_user_errors(tmp_path):
    db = tmp_path / "h.sqlite"
    model = matmul_relu(tmp_path / "tiny.onnx")
    assert_one_line_error(cli("profile", tmp_path / "missing.onnx", "-t", "x86-cpu", db=db), "missing.onnx")
    assert_one_line_error(cli("profile", model, "-t", "x86-cpu", "--runs", "2s", db=db), "--runs", code=2)
    assert_one_line_error(cli("profile", model, "-t", "x86-cpu", "--affinity", "zero", db=db), "--affinity", code=2)
    engine = tmp_path / "m.engine"
    engine.write_bytes(np.zeros(8, np.uint8).tobytes())
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert_one_line_error(cli("profile", engine, "-t", "jetson-orin-nano", db=db), "TensorRT")
    assert not db.exists()  # nothing recorded for failed runs


def test_profile_vs_interleaved(tmp_path):
    small = matmul_relu(tmp_path / "small.onnx", width=64, layers=2)
    big = matmul_relu(tmp_path / "big.onnx", width=64, layers=16)
    result = cli("profile", big, "--vs", small, "-t", "x86-cpu", "--runs", "200", "--warmup", "10",
                 "--layer-runs", "0", "--affinity", "0", "--no-history", "--json", tmp_path / "ab.json",
                 db=tmp_path / "h.sqlite")
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "ab.json").read_text())
    assert data["vs"]["model"]["name"] == "small.onnx" and data["comparison"]["verdict"] == "slower"
    assert data["environment"]["affinity"] == [0]
    assert not (tmp_path / "h.sqlite").exists()
