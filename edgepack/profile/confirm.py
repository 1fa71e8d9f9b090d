"""Confirming a flagged slowdown on the same device before failing a gate.

Two profiles taken minutes apart on a busy machine differ more than either run's statistics
say (other jobs come and go between them): at load 2x the cores, separate runs raise about 13
false alarms in 100. A real slowdown survives a rerun in which load hits both sides alike:

    flagged "slower" by check_regression(current, baseline)
      -> interleaved:  both model files present and different: time CURRENT and BASELINE in one
                       process, alternating blocks of runs (ABBA), and check again with the
                       same metric (p1 by default: the fastest runs, when the model had a CPU);
      -> rerun:        the same model (a change of device state or software, not of the model),
                       or a TensorRT engine: profile CURRENT again now and check it against the
                       same baseline with the same metric;
    the gate fails only when the confirming check says "slower" too.

The load average before and after the confirming run is recorded with it. When neither model
file is readable here (or its sha256 no longer matches), the first verdict stands and the
report says why the confirmation was skipped.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from edgepack.profile import environment as env

logger = logging.getLogger(__name__)

DEFAULT_DURATION = 2.0


def model_file(result: dict) -> Path | None:
    """The result's model file, if it is here and still has the recorded sha256."""
    model = result.get("model") or {}
    path = Path(model["path"]) if model.get("path") else None
    if path is None or not path.is_file():
        return None
    try:
        return path if env.sha256_of(path) == model.get("sha256") else None
    except OSError:
        return None


def availability(current: dict, baselines: list[dict]) -> str | None:
    """None when a confirmation can run; else why not."""
    if model_file(current) is None:
        return f"the current model file is not here or changed ({(current.get('model') or {}).get('path')})"
    if model_file(baselines[-1]) is None and (current.get("model") or {}).get("sha256") != \
            (baselines[-1].get("model") or {}).get("sha256"):
        return f"the baseline model file is not here or changed ({(baselines[-1].get('model') or {}).get('path')})"
    return None


def confirm_slowdown(current: dict, baselines: list[dict], *, threshold: float, confidence: float,
                     metric: str, duration: float = DEFAULT_DURATION, force: bool = False,
                     progress: bool = False) -> dict:
    """Rerun on this device (see the module docstring); returns the confirmation record:
    {ran, mode, reason, duration_s, load_before, load_after, report, confirmed}."""
    from edgepack.profile.profiler import ProfileOptions, is_engine, profile_model, profile_pair
    from edgepack.profile.regression import check_regression
    from edgepack.profile.timing import Budget

    why = availability(current, baselines)
    if why:
        return {"ran": False, "reason": why, "confirmed": None}
    current_path = model_file(current)
    baseline_path = model_file(baselines[-1])
    same_model = (current.get("model") or {}).get("sha256") == (baselines[-1].get("model") or {}).get("sha256")
    engine = is_engine(current_path) or (baseline_path is not None and is_engine(baseline_path))
    mode = "rerun" if same_model or engine or baseline_path is None else "interleaved"
    options = ProfileOptions(budget=Budget(seconds=duration), warmup=Budget(seconds=0.2),
                             batch=current.get("batch"), threads=current.get("threads"), layer_runs=0,
                             progress=progress)
    target = _target(current.get("target"))
    load_before = env.load_average()
    start = time.perf_counter()
    if mode == "interleaved":
        fresh, base = profile_pair(current_path, baseline_path, target, options)
        report = check_regression(fresh, base, threshold=threshold, confidence=confidence,
                                  metric=metric, force=True)
    else:
        fresh = profile_model(current_path, target, options)
        fresh["model"] = dict(current["model"])  # the same file; keep the recorded name/path
        report = check_regression(fresh, baselines, threshold=threshold, confidence=confidence,
                                  metric=metric, force=force)
    seconds = time.perf_counter() - start
    load_after = env.load_average()
    logger.info("confirmation (%s): ratio %.3f, verdict %s", mode, report["ratio"], report["verdict"])
    return {"ran": True, "mode": mode,
            "reason": ("same model: profiled again and checked against the baseline" if mode == "rerun"
                       else "baseline and current timed interleaved in one process (ABBA blocks)"),
            "duration_s": round(seconds, 3), "load_before": load_before, "load_after": load_after,
            "report": report, "confirmed": report["verdict"] == "slower"}


def gate(report: dict, current: dict, baselines: list[dict], *, confirm: bool | None,
         duration: float = DEFAULT_DURATION, force: bool = False, progress: bool = False) -> dict:
    """The check's final verdict: a "slower" report is confirmed (confirm None: where the model
    files are here; True: required; False: never). Adds `confirm` and, when a confirmation
    overturned it, `first_verdict` to the report."""
    from edgepack.errors import UsageError

    if report["verdict"] != "slower" or confirm is False:
        report["confirm"] = {"ran": False, "confirmed": None,
                             "reason": "not flagged" if confirm is not False else "--no-confirm"}
        return report
    why = availability(current, baselines)
    if why and confirm:
        raise UsageError(f"--confirm: {why}", hint="profile where both model files are, or pass --no-confirm")
    record = confirm_slowdown(current, baselines, threshold=report["threshold"], confidence=report["confidence"],
                              metric=report["metric"], duration=duration, force=force, progress=progress)
    report["confirm"] = record
    if record["ran"]:
        report["first_verdict"] = report["verdict"]
        if not record["confirmed"]:
            report["verdict"] = "same"
        report["regression"] = bool(record["confirmed"])
    return report


def _target(name):
    if not name:
        return None
    from edgepack.errors import EdgepackError
    from edgepack.targets import load_target

    try:
        return load_target(name)
    except EdgepackError:
        return None
