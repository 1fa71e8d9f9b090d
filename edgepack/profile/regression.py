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
    bad = next((x for x in samples if not math.isfinite(x) or x <= 0), None)
    if bad is not None:  # a NaN or a zero would make any slowdown look "same"
        raise UsageError(f"{where}: samples_ms holds {bad!r}; timings must be finite and positive",
                         hint="the file is corrupt or edited: profile again")
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
    significant = low > 1.0 or high < 1.0
    verdict = verdict_of(ratio, low, high, threshold)
    return {
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
        "verdict": verdict,
        "regression": verdict == "slower",
    }


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
    """One line, with the statistic compared: `latency regression: 1.41x slower at p50 (threshold 1.05x)`."""
    ratio, limit, metric = report["ratio"], 1.0 + report["threshold"], report["metric"]
    if report["regression"]:
        return f"latency regression: {ratio:.2f}x slower at {metric} (threshold {limit:.2f}x)"
    if report["verdict"] == "faster":
        return f"latency improved: {1 / ratio:.2f}x faster at {metric} (threshold {limit:.2f}x)"
    return f"latency unchanged: {ratio:.2f}x at {metric} (threshold {limit:.2f}x)"


def format_check(report: dict) -> str:
    lo, hi = report["ci"]
    pct = round(report["confidence"] * 100, 2)
    header = f"{'metric':<7} {'baseline ms':>12} {'current ms':>11} {'ratio':>7}  {f'{pct:g}% CI':<17} verdict"
    row = (f"{report['metric']:<7} {report['baseline']['value_ms']:>12.4f} {report['current']['value_ms']:>11.4f} "
           f"{report['ratio']:>7.3f}  [{lo:.3f}, {hi:.3f}]  {report['verdict']}")
    note = (f"threshold {report['threshold'] * 100:g}%, baseline: {report['baseline']['runs']} run(s), "
            f"{report['baseline']['samples']} timings; current: {report['current']['samples']} timings")
    confirm = report.get("confirm") or {}
    if confirm.get("ran"):
        again = confirm["report"]
        load = " -> ".join(f"{x[0]:.2f}" for x in (confirm.get("load_before"), confirm.get("load_after")) if x)
        note += (f"\nfirst verdict {report.get('first_verdict')}; confirmation ({confirm['mode']}, "
                 f"{confirm['duration_s']:.1f} s, load {load}): "
                 f"{again['metric']} ratio {again['ratio']:.3f} [{again['ci'][0]:.3f}, {again['ci'][1]:.3f}] "
                 + ("-> slower, confirmed" if confirm["confirmed"] else "-> not confirmed: passes"))
    elif report.get("verdict") == "slower" and confirm.get("reason"):
        note += f"\nnot confirmed by a rerun: {confirm['reason']}"
    if report["verdict"] == "same" and report["significant"] and report["ratio"] > 1 and not confirm.get("ran"):
        note += "\nslower by a significant margin, but under the threshold: passes"
    return "\n".join([header, row, note, verdict_line(report)])
