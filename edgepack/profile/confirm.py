"""Confirming a flagged slowdown on the same device before failing a gate.

Two profiles taken minutes apart on a busy machine differ more than either run's statistics
say (other jobs come and go between them): at load 2x the cores, separate runs raise about 13
false alarms in 100, and miss real slowdowns as often. A real slowdown survives a rerun in which
load hits both sides alike:

    suspect: check_regression(current, baseline) says "slower", or cannot rule out a slowdown
             over the threshold (interval's upper end > 1 + threshold, ratio > 1), or its
             ratio is above 1 + threshold/2
      -> interleaved:  both model files present and different: time CURRENT and BASELINE in one
                       process, alternating blocks of 10 runs (ABBA). Each pair of neighbouring
                       blocks gives r_i = q(current block i) / q(baseline block i), q the check's
                       percentile (p1 by default: about the block's fastest run, when the model
                       had a CPU); ratio = median(r_i), interval = bootstrap over the pairs.
                       Load that changes between pairs cancels within each pair.
      -> rerun:        the same model (a change of device state or software, not of the model),
                       or a TensorRT engine: profile CURRENT again now and check it against the
                       same baseline with the same metric;
    the confirming check decides, whatever the first verdict was: its ratio, interval and
    verdict become the report's (the first check's are kept under `first`).

The same artifact run by the same software is never suspect (its verdict is "same": see
regression.py). The load average before and after the confirming run is recorded with it. When
a model file is not readable here (or its sha256 no longer matches), the first verdict stands,
and the report says that it could not be confirmed and how to make it confirmable.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from edgepack.profile import environment as env
from edgepack.profile.timing import Budget

logger = logging.getLogger(__name__)

DEFAULT_DURATION = 2.0
BLOCK = 10  # runs per block in the interleaved rerun
MIN_PAIRS = 10  # fewer pairs of blocks than this: compare the interleaved samples unpaired
CONFIRM_PAIRS = 30  # a confirming interleaved run times at least this many pairs of blocks ...
STARVED_FACTOR = 5  # ... taking up to this many times its duration when other load starves it


def paired_ratio(current: list[float], baseline: list[float], percentile: float, *, block: int = BLOCK,
                 confidence: float = 0.99, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(median, low, high) of the per-pair ratios of a block percentile, blocks in time order
    (pair i: block i of each side, timed next to each other); interval: bootstrap over pairs."""
    import numpy as np

    pairs = min(len(current), len(baseline)) // block
    if pairs < 3:
        from edgepack.errors import UsageError

        raise UsageError("the confirming rerun timed fewer than 3 blocks", hint="raise --confirm-duration")
    a = np.percentile(np.asarray(current[: pairs * block], dtype=float).reshape(pairs, block), percentile, axis=1)
    b = np.percentile(np.asarray(baseline[: pairs * block], dtype=float).reshape(pairs, block), percentile, axis=1)
    ratios = a / b
    rng = np.random.default_rng(seed)
    medians = np.median(ratios[rng.integers(0, pairs, size=(n_resamples, pairs))], axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(medians, [tail, 100.0 - tail])
    return float(np.median(ratios)), float(low), float(high)


def interleaved_report(current: dict, baseline: dict, *, threshold: float, confidence: float, metric: str,
                       earlier: tuple[list[float], list[float]] | None = None) -> dict:
    """The check of two results timed interleaved in one process (profile_pair): the paired-blocks
    ratio when there are MIN_PAIRS pairs or more (`earlier`: the (current, baseline) samples of an
    earlier interleaved run of the same pair, pooled with these), else the unpaired check."""
    from edgepack.profile.regression import check_regression, refuse_non_finite, verdict_of
    from edgepack.profile.stats import metric_percentile

    report = check_regression(current, baseline, threshold=threshold, confidence=confidence, metric=metric,
                              force=True)
    a, b = _whole_blocks(current["samples_ms"], baseline["samples_ms"])
    if earlier is not None:
        ea, eb = _whole_blocks(*earlier)
        a, b = ea + a, eb + b
    if len(a) >= MIN_PAIRS * BLOCK:
        ratio, low, high = paired_ratio(a, b, metric_percentile(metric), block=BLOCK, confidence=confidence)
        refuse_non_finite(ratio, low, high, "the interleaved check")
        verdict = verdict_of(ratio, low, high, threshold)
        report.update(ratio=ratio, ci=[low, high], significant=low > 1.0 or high < 1.0, pairs=len(a) // BLOCK,
                      statistic="paired blocks")
        if report.get("identical"):
            report["statistic_verdict"] = verdict
        else:
            report.update(verdict=verdict, regression=verdict == "slower")
    else:  # a starved process timed too few blocks to pair: the interleaved samples, unpaired
        report["statistic"] = "interleaved, unpaired (too few blocks to pair)"
    return report


def time_both_orders(current_path, baseline_path, target, options, *, min_pairs: int,
                     max_seconds: float) -> tuple[dict, dict]:
    """Time the pair interleaved twice, current first then baseline first (each half the budget),
    and join the two runs' samples (each cut to whole blocks, pairs kept): on a starved CPU the side
    that leads each ABBA period can come out a few percent slower, and swapping cancels that."""
    from dataclasses import replace

    from edgepack.profile.profiler import profile_pair

    half = replace(options, budget=Budget(seconds=options.budget.seconds / 2))
    first = profile_pair(current_path, baseline_path, target, half, block=BLOCK,
                         min_runs=(min_pairs + 1) // 2 * BLOCK, max_seconds=max_seconds / 2)
    base2, cur2 = profile_pair(baseline_path, current_path, target, half, block=BLOCK,
                               min_runs=(min_pairs + 1) // 2 * BLOCK, max_seconds=max_seconds / 2)
    joined = []
    for one, two in ((first[0], cur2), (first[1], base2)):
        result = dict(two)
        result["samples_ms"] = []
        joined.append(result)
    a1, b1 = _whole_blocks(first[0]["samples_ms"], first[1]["samples_ms"])
    a2, b2 = _whole_blocks(cur2["samples_ms"], base2["samples_ms"])
    joined[0]["samples_ms"], joined[1]["samples_ms"] = a1 + a2, b1 + b2
    for result in joined:
        from edgepack.profile.stats import summarize

        result["latency_ms"], result["runs"] = summarize(result["samples_ms"]), len(result["samples_ms"])
        result["orders"] = "current first, then baseline first"
    return joined[0], joined[1]


def _whole_blocks(a: list[float], b: list[float]) -> tuple[list[float], list[float]]:
    n = min(len(a), len(b)) // BLOCK * BLOCK
    return list(a[:n]), list(b[:n])


def suspect(report: dict) -> bool:
    """Worth a confirming rerun: slower; or a slowdown over the threshold not ruled out (the
    interval's upper end above 1 + threshold, ratio above 1); or a ratio above 1 + threshold/2
    (under heavy load separate runs' intervals are too narrow to rule anything out). Never for
    the same artifact run by the same software: its verdict is "same" by construction."""
    if report.get("identical"):
        return False
    t = report["threshold"]
    return (report["verdict"] == "slower" or report["ratio"] > 1.0 + t / 2
            or (report["ratio"] > 1.0 and report["ci"][1] > 1.0 + t))


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


CONFIRMABLE_HINT = ("keep both artifacts where the check runs and check them directly: "
                    "`edgepack check CURRENT.onnx --baseline BASELINE.onnx --target T` (timed interleaved), "
                    "or profile the baseline on this machine so its JSON names a file that is here")


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
    {ran, mode, reason, note, duration_s, load_before, load_after, report, confirmed}."""
    from edgepack.profile.profiler import ProfileOptions, is_engine, profile_model
    from edgepack.profile.regression import check_regression, software_differences

    why = availability(current, baselines)
    if why:
        return {"ran": False, "confirmable": False, "reason": why, "hint": CONFIRMABLE_HINT, "confirmed": None}
    current_path = model_file(current)
    baseline_path = model_file(baselines[-1])
    same_model = (current.get("model") or {}).get("sha256") == (baselines[-1].get("model") or {}).get("sha256")
    engine = is_engine(current_path) or (baseline_path is not None and is_engine(baseline_path))
    mode = "rerun" if same_model or engine or baseline_path is None else "interleaved"
    note = None
    if mode == "rerun":
        note = ("not interleaved: " + ("a TensorRT engine is profiled on its own" if engine else
                "the same artifact under other software or settings ("
                + "; ".join(software_differences(current, baselines[-1])) + "), which one process cannot run "
                "side by side") + "; the current side was profiled again and checked against the recorded baseline")
    options = ProfileOptions(budget=Budget(seconds=duration), warmup=Budget(seconds=0.2),
                             batch=current.get("batch"), threads=current.get("threads"), layer_runs=0,
                             progress=progress)
    target = _target(current.get("target"))
    load_before = env.load_average()
    start = time.perf_counter()
    if mode == "interleaved":
        fresh, base = time_both_orders(current_path, baseline_path, target, options, min_pairs=CONFIRM_PAIRS,
                                       max_seconds=STARVED_FACTOR * duration)
        report = interleaved_report(fresh, base, threshold=threshold, confidence=confidence, metric=metric)
    else:
        fresh = profile_model(current_path, target, options)
        fresh["model"] = dict(current["model"])  # the same file; keep the recorded name/path
        report = check_regression(fresh, baselines, threshold=threshold, confidence=confidence,
                                  metric=metric, force=force)
    seconds = time.perf_counter() - start
    load_after = env.load_average()
    logger.info("confirmation (%s): ratio %.3f, verdict %s", mode, report["ratio"], report["verdict"])
    return {"ran": True, "mode": mode, "confirmable": True,
            "reason": ("profiled again and checked against the recorded baseline" if mode == "rerun"
                       else "baseline and current timed interleaved in one process (ABBA blocks)"),
            "note": note, "duration_s": round(seconds, 3), "load_before": load_before, "load_after": load_after,
            "report": report, "confirmed": report["verdict"] == "slower"}


DECIDING = ("ratio", "ci", "significant", "verdict", "regression", "statistic", "pairs", "current", "baseline")


def decide(report: dict, record: dict) -> dict:
    """The confirming check decides: its ratio, interval and verdict become the report's (the first
    check's go to `first`), so that the verdict and the numbers printed with it always agree."""
    report["confirm"] = record
    if record.get("ran"):
        again = record["report"]
        report["first"] = {k: report.get(k) for k in ("ratio", "ci", "significant", "verdict", "statistic")}
        report["first_verdict"] = report["verdict"]
        report.update({k: again[k] for k in DECIDING if k in again})
        if again.get("identical"):
            report["identical"] = True
    return report


def gate(report: dict, current: dict, baselines: list[dict], *, confirm: bool | None,
         duration: float = DEFAULT_DURATION, force: bool = False, progress: bool = False) -> dict:
    """The check's final verdict: a suspect report is confirmed or cleared by a rerun (confirm
    None: where the model files are here; True: required; False: never), which then decides.
    Adds `confirm`, and `first` / `first_verdict` (the check before the rerun), to the report."""
    from edgepack.errors import UsageError

    if not suspect(report) or confirm is False:
        reason = ("the same artifact run by the same software" if report.get("identical")
                  else "--no-confirm" if confirm is False else "no slowdown over the threshold possible")
        report["confirm"] = {"ran": False, "confirmed": None, "reason": reason}
        if confirm is False and report["verdict"] == "slower":
            report["confirm"].update(confirmable=False, reason="--no-confirm", hint="drop --no-confirm")
        return report
    why = availability(current, baselines)
    if why and confirm:
        raise UsageError(f"--confirm: {why}", hint="profile where both model files are, or pass --no-confirm")
    record = confirm_slowdown(current, baselines, threshold=report["threshold"], confidence=report["confidence"],
                              metric=report["metric"], duration=duration, force=force, progress=progress)
    return decide(report, record)


def _target(name):
    if not name:
        return None
    from edgepack.errors import EdgepackError
    from edgepack.targets import load_target

    try:
        return load_target(name)
    except EdgepackError:
        return None
