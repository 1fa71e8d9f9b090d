"""The regression check: is CURRENT slower than BASELINE by more than a threshold, for sure?

Decision, for a latency percentile m (p1 by default) and threshold t (5%):

    ratio = m(current) / m(baseline),  [lo, hi] = block-bootstrap interval at the confidence
    slower  iff  lo > 1  and  ratio > 1 + t      (significant AND larger than the threshold)
    faster  iff  hi < 1  and  ratio < 1 / (1 + t)
    same    otherwise

Only "slower" fails a CI job. Requiring both conditions is what keeps the false-alarm rate low
on a noisy machine: run-to-run shifts of a few percent are common and often "significant" within
one run's samples, but they stay under the threshold; a real 10% slowdown clears both. When the
baseline is several runs (`--baseline history`), the bootstrap resamples runs, then blocks within
them, so run-to-run noise widens the interval as it should.

An unchanged model never fails: when current and baseline are the same artifact (the sha256 of the
model file and of every external weight file it reads) run by the same software (backend,
ONNX Runtime / TensorRT versions, providers, threads, batch) on the same kind of device, any
difference measured is the machine's (load, clocks), and the verdict is "same" whatever the ratio;
the ratio, the load of both runs and any difference in device state are still reported.

Timings are refused (UsageError, exit 2) when they cannot be compared: non-finite or non-positive
values, values above MAX_TIMING_MS (one hour per run: no model that edgepack times takes that
long; such numbers come from a corrupt or edited file), or a ratio or interval that is not finite.

Why p1 by default: on a shared machine the median moves with other processes' load (measured on
a 2-core machine at load 5-7: A/A median ratio sd ~10%, p1 ~2-4%), because it includes the time
the process waits for a CPU; the fastest percent of runs is what the model costs when it gets
the CPU. Use --metric p50/p99 on a quiet, dedicated runner to gate typical or tail latency.
"""
from __future__ import annotations

import math

from edgepack.errors import UsageError
from edgepack.profile.stats import metric_percentile, ratio_interval

SCHEMA = "edgepack.check/1"
PROFILE_SCHEMA = "edgepack.profile/1"
MAX_TIMING_MS = 3.6e6  # one hour per run: beyond it, a result is corrupt, not slow


def verdict_of(ratio: float, low: float, high: float, threshold: float) -> str:
    """"slower" / "faster" when the interval [low, high] of the ratio excludes 1 and the ratio passes
    the threshold that way; "same" otherwise."""
    if low > 1.0 and ratio > 1.0 + threshold:
        return "slower"
    if high < 1.0 and ratio < 1.0 / (1.0 + threshold):
        return "faster"
    return "same"

def validate_profile(result, where: str) -> dict:
    """A profile result with timings, or a UsageError naming the file."""
    if not isinstance(result, dict) or result.get("schema") != PROFILE_SCHEMA:
        found = result.get("schema") if isinstance(result, dict) else type(result).__name__
        raise UsageError(f"{where}: not a profile result (schema {found!r}, expected {PROFILE_SCHEMA!r})",
                         hint="write one with `edgepack profile MODEL --target T --json FILE`")
    samples = result.get("samples_ms")
    if not isinstance(samples, list) or len(samples) < 10 or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in samples):
        raise UsageError(f"{where}: needs at least 10 timings in samples_ms",
                         hint="profile for longer (--runs 100 or --duration 2s)")
    bad = next((x for x in samples if not math.isfinite(x) or x <= 0 or x > MAX_TIMING_MS), None)
    if bad is not None:  # a NaN or a zero would make any slowdown look "same"
        raise UsageError(f"{where}: samples_ms holds {bad!r}; timings must be finite, positive and at most "
                         f"{MAX_TIMING_MS:.0f} ms (one hour)", hint="the file is corrupt or edited: profile again")
    for key in ("model", "environment"):
        if key in result and not isinstance(result[key], dict):
            raise UsageError(f"{where}: '{key}' must be a table, got {type(result[key]).__name__}",
                             hint="the file is corrupt or edited: profile again")
    return result


def check_regression(current: dict, baseline: dict | list[dict], *, threshold: float = 0.05,
                     confidence: float = 0.99, metric: str = "p1", force: bool = False,
                     n_resamples: int = 2000, seed: int = 0) -> dict:
    """Compare a profile result with a baseline result (or several, e.g. recent history)."""
    baselines = baseline if isinstance(baseline, list) else [baseline]
    if not baselines:
        raise UsageError("no baseline runs to compare with",
                         hint="profile the model first (results go to the history by default)")
    if not (0 <= threshold < 10):
        raise UsageError(f"--threshold {threshold:g}: out of range", hint="for example --threshold 5%")
    if not (0.5 < confidence < 1):
        raise UsageError(f"--confidence {confidence:g}: must be between 0.5 and 1", hint="for example --confidence 0.99")
    try:
        percentile = metric_percentile(metric)
    except ValueError:
        raise UsageError(f"--metric {metric!r}: not a percentile", hint="use p50, p90, p95 or p99") from None
    if not force:
        for other in baselines:
            _refuse_mismatch(current, other)
    ratio, low, high = ratio_interval([current["samples_ms"]], [b["samples_ms"] for b in baselines],
                                      percentile=percentile, confidence=confidence,
                                      n_resamples=n_resamples, seed=seed)
    import numpy as np

    base_all = np.concatenate([np.asarray(b["samples_ms"], dtype=float) for b in baselines])
    refuse_non_finite(ratio, low, high, "the check")
    significant = low > 1.0 or high < 1.0
    verdict = verdict_of(ratio, low, high, threshold)
    identical = all(same_artifact(current, b) for b in baselines)
    report = {
        "schema": SCHEMA,
        "metric": metric,
        "threshold": threshold,
        "confidence": confidence,
        "baseline": {"value_ms": float(np.percentile(base_all, percentile)), "runs": len(baselines),
                     "samples": int(base_all.size), "ids": [b.get("id") for b in baselines],
                     "model_sha256": baselines[0].get("model", {}).get("sha256"),
                     "target": baselines[0].get("target")},
        "current": {"value_ms": float(np.percentile(current["samples_ms"], percentile)),
                    "samples": len(current["samples_ms"]), "id": current.get("id"),
                    "model_sha256": current.get("model", {}).get("sha256"), "target": current.get("target")},
        "ratio": ratio,
        "ci": [low, high],
        "significant": significant,
        "verdict": "same" if identical else verdict,
        "regression": verdict == "slower" and not identical,
        "identical": identical,
        "load_average": {"baseline": [(b.get("environment") or {}).get("load_average") for b in baselines],
                         "current": (current.get("environment") or {}).get("load_average")},
        "device_differences": device_differences(current, baselines[-1]),
    }
    if identical:
        report["statistic_verdict"] = verdict  # what the numbers alone would have said
    return report


def refuse_non_finite(ratio: float, low: float, high: float, where: str) -> None:
    """A ratio or interval that is NaN or infinite compares nothing: refuse it (exit 2)."""
    if not all(math.isfinite(x) and x > 0 for x in (ratio, low, high)):
        raise UsageError(f"{where}: the ratio {ratio!r} or its interval [{low!r}, {high!r}] is not a finite "
                         "positive number; the timings cannot be compared",
                         hint="the profile files are corrupt or edited: profile both again")


# what runs an artifact: the same bytes run by other software may well be faster or slower
SOFTWARE_KEYS = ("onnxruntime", "tensorrt")


def software(result: dict) -> dict:
    """The software a result's timings depend on, besides the artifact itself."""
    environment = result.get("environment") or {}
    versions = environment.get("versions") or {}
    from edgepack.profile.environment import device_kind

    return {"backend": result.get("backend"), "threads": result.get("threads"), "batch": result.get("batch"),
            "providers": environment.get("providers"), "device": device_kind(environment),
            **{k: versions.get(k) for k in SOFTWARE_KEYS}}


def same_artifact(current: dict, baseline: dict) -> bool:
    """The same model file and weights (sha256), run by the same software on the same kind of device.
    A result without the weights' hashes (written before they were recorded) is not known to be."""
    a, b = current.get("model") or {}, baseline.get("model") or {}
    if not a.get("sha256") or a.get("sha256") != b.get("sha256"):
        return False
    if a.get("weights_sha256") is None or a.get("weights_sha256") != b.get("weights_sha256"):
        return False
    return software(current) == software(baseline)


def software_differences(current: dict, baseline: dict) -> list[str]:
    mine, theirs = software(current), software(baseline)
    return [f"{k} {mine[k]} vs {theirs[k]}" for k in mine if mine[k] != theirs[k]]


def device_differences(current: dict, baseline: dict) -> list[str]:
    """Device settings and clocks that differ between the two runs (governor, power mode,
    jetson_clocks, CPU frequency limits, GPU/EMC clocks, mean CPU clock by more than 10%)."""
    from edgepack.profile.environment import power_mode

    mine_env, their_env = current.get("environment") or {}, baseline.get("environment") or {}
    if not isinstance(mine_env, dict) or not isinstance(their_env, dict):
        return []
    out = []
    mine, theirs = power_mode(mine_env), power_mode(their_env)
    out += [f"{k} {mine[k]} vs {theirs[k]}" for k in mine if k in theirs and mine[k] != theirs[k]]
    for key, label in (("cpu_freq_limits_khz", "CPU frequency limits (kHz)"),):
        if mine_env.get(key) and their_env.get(key) and mine_env[key] != their_env[key]:
            out.append(f"{label} {mine_env[key]} vs {their_env[key]}")
    for key in ("gpu_freq_hz", "emc_freq_hz"):
        a, b = (mine_env.get("jetson") or {}).get(key), (their_env.get("jetson") or {}).get(key)
        if a and b and a != b:
            out.append(f"{key} {a} vs {b}")
    a, b = _mean_clock(mine_env), _mean_clock(their_env)
    if a and b and abs(a / b - 1) > 0.10:
        out.append(f"mean CPU clock {a / 1000:.0f} MHz vs {b / 1000:.0f} MHz")
    return out


def _mean_clock(environment: dict) -> float | None:
    values = environment.get("cpu_freq_khz")
    if isinstance(values, list) and values and all(isinstance(v, (int, float)) for v in values):
        return sum(values) / len(values)
    return None


def _refuse_mismatch(current: dict, baseline: dict) -> None:
    for key, label in ((("model", "sha256"), "model"), (("target",), "target"), (("batch",), "batch")):
        a, b = current, baseline
        for k in key:
            a = a.get(k) if isinstance(a, dict) else None
            b = b.get(k) if isinstance(b, dict) else None
        if a != b:
            shown = (a[:12], b[:12]) if label == "model" and a and b else (a, b)
            raise UsageError(f"the current run and the baseline differ in {label} "
                             f"({shown[0]} vs {shown[1]})",
                             hint="compare runs of the same model and target, or pass --force")
    from edgepack.profile.environment import power_mode

    mine, theirs = power_mode(current.get("environment")), power_mode(baseline.get("environment"))
    differ = [k for k in mine if k in theirs and mine[k] != theirs[k]]
    if differ:
        what = ", ".join(f"{k} {mine[k]} vs {theirs[k]}" for k in differ)
        raise UsageError(f"the current run and the baseline were taken under different power modes ({what})",
                         hint="set the device to the baseline's mode (nvpmodel -m N, jetson_clocks, "
                              "the CPU governor) and profile again, or pass --force")


def verdict_line(report: dict) -> str:
    """The verdict in the one vocabulary (edgepack.profile.verdict.describe)."""
    from edgepack.profile.verdict import describe

    return describe(report)


def format_check(report: dict) -> str:
    """The table of the deciding comparison, notes on how it was decided, then the verdict line."""
    lo, hi = report["ci"]
    pct = round(report["confidence"] * 100, 2)
    header = f"{'metric':<7} {'baseline ms':>12} {'current ms':>11} {'ratio':>7}  {f'{pct:g}% interval':<17} verdict"
    row = (f"{report['metric']:<7} {report['baseline']['value_ms']:>12.4f} {report['current']['value_ms']:>11.4f} "
           f"{report['ratio']:>7.3f}  [{lo:.3f}, {hi:.3f}]  {report['verdict']}")
    notes = [f"threshold {report['threshold'] * 100:g}%, baseline: {report['baseline']['runs']} run(s), "
             f"{report['baseline']['samples']} timings; current: {report['current']['samples']} timings"
             + (f" ({report['statistic']})" if report.get("statistic") else "")]
    if report.get("identical"):
        loads = report.get("load_average") or {}
        base_load = next((x for x in reversed(loads.get("baseline") or []) if x), None)
        pair = (loads["before"], loads.get("after")) if loads.get("before") else (base_load, loads.get("current"))
        shown = " -> ".join(f"{x[0]:.2f}" for x in pair if x)
        notes.append(f"same artifact (sha256 {str(report['current'].get('model_sha256'))[:12]}, weights included) "
                     f"run by the same software: the {report['ratio']:.3f}x measured is the machine's, not the "
                     f"model's" + (f" (load average {shown})" if shown else ""))
    if report.get("device_differences"):
        notes.append("device state differed: " + "; ".join(report["device_differences"]))
    confirm = report.get("confirm") or {}
    if confirm.get("ran"):
        first = report.get("first") or {}
        first_ci = first.get("ci") or [float("nan")] * 2
        load = " -> ".join(f"{x[0]:.2f}" for x in (confirm.get("load_before"), confirm.get("load_after")) if x)
        notes.append(f"first run: {first.get('verdict')}, ratio {first.get('ratio', float('nan')):.3f} "
                     f"[{first_ci[0]:.3f}, {first_ci[1]:.3f}]"
                     f"; confirming rerun ({confirm['mode']}, {confirm['duration_s']:.1f} s, load {load}), "
                     "which decides (the row above)")
        if confirm.get("note"):
            notes.append(confirm["note"])
    elif confirm.get("reason") and confirm.get("confirmable") is False:
        notes.append(f"could not be confirmed: {confirm['reason']}"
                     + (f"; to make it confirmable: {confirm['hint']}" if confirm.get("hint") else ""))
    if report["verdict"] == "same" and report["significant"] and report["ratio"] > 1 and not report.get("identical"):
        notes.append("slower by a significant margin, but under the threshold: passes")
    return "\n".join([header, row, *notes, verdict_line(report)])
