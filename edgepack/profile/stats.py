"""Latency statistics: percentiles, outliers, and a block bootstrap of a percentile ratio.

Timings taken in one run are autocorrelated (a burst of load from another process slows many
consecutive runs), so resampling single timings would make confidence intervals too narrow. The
bootstrap here resamples contiguous blocks instead (moving-block bootstrap), and when a baseline
is made of several separate runs, each run contributes its own blocks: the interval then carries
run-to-run noise as well.
"""
from __future__ import annotations

import math

import numpy as np

PERCENTILES = (1, 50, 90, 95, 99)


def summarize(samples_ms) -> dict:
    """min, mean, std, p50, p90, p95, p99, max of a list of timings in milliseconds."""
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.size == 0:
        return {k: None for k in ("min", "mean", "std", "p50", "p90", "p95", "p99", "max")}
    out = {"min": float(x.min()), "mean": float(x.mean()), "std": float(x.std(ddof=1)) if x.size > 1 else 0.0}
    for p in PERCENTILES:
        out[f"p{p}"] = float(np.percentile(x, p))
    out["max"] = float(x.max())
    return out


def count_outliers(samples_ms) -> int:
    """Timings above Q3 + 3 IQR (Tukey's far-out fence): preemptions, page faults, GC pauses."""
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.size < 4:
        return 0
    q1, q3 = np.percentile(x, [25, 75])
    return int(np.sum(x > q3 + 3.0 * (q3 - q1)))


def metric_percentile(metric: str) -> float:
    """'p50' -> 50.0; 'mean' is not offered: one preemption moves it, a percentile it does not."""
    if not (metric.startswith("p") and metric[1:].isdigit() and 0 < int(metric[1:]) < 100):
        raise ValueError(metric)
    return float(metric[1:])


def _blocks(samples: np.ndarray, n_blocks: int) -> list[np.ndarray]:
    return [b for b in np.array_split(samples, n_blocks) if b.size]


def _resample(runs: list[np.ndarray], blocks_per_run: int, rng: np.random.Generator,
              n_resamples: int) -> np.ndarray:
    """(n_resamples, n) matrix: each row a moving-block bootstrap of the concatenated runs.

    Each run is cut into `blocks_per_run` contiguous blocks; rows pick, run by run, that many
    blocks with replacement. Picking within runs keeps every run's weight, so a baseline made of
    five runs is five runs in every resample.
    """
    rows = []
    for run in runs:
        blocks = _blocks(np.asarray(run, dtype=np.float64), blocks_per_run)
        size = min(b.size for b in blocks)
        stacked = np.stack([b[:size] for b in blocks])          # (n_blocks, size)
        pick = rng.integers(0, len(stacked), size=(n_resamples, len(stacked)))
        rows.append(stacked[pick].reshape(n_resamples, -1))
    return np.concatenate(rows, axis=1)


def ratio_interval(current: list, baseline: list, *, percentile: float = 50.0,
                   confidence: float = 0.99, n_resamples: int = 2000, blocks_per_run: int = 20,
                   seed: int = 0) -> tuple[float, float, float]:
    """Ratio current/baseline of a latency percentile, with a two-sided bootstrap interval.

    `current` and `baseline` are lists of runs (each a sequence of timings in order). Returns
    (ratio, low, high). The point estimate uses all timings; the interval comes from the
    percentile method over block-bootstrap resamples of both sides, drawn independently.
    """
    if not (0.5 < confidence < 1.0):
        raise ValueError(confidence)
    rng = np.random.default_rng(seed)
    cur = [np.asarray(r, dtype=np.float64) for r in current if len(r)]
    base = [np.asarray(r, dtype=np.float64) for r in baseline if len(r)]
    ratio = float(np.percentile(np.concatenate(cur), percentile) / np.percentile(np.concatenate(base), percentile))
    blocks_cur = max(2, min(blocks_per_run, min(r.size for r in cur) // 2))
    blocks_base = max(2, min(blocks_per_run, min(r.size for r in base) // 2))
    # resample in chunks to bound memory for long runs
    ratios = []
    chunk = max(1, int(4e6 // max(1, sum(r.size for r in cur) + sum(r.size for r in base))))
    done = 0
    while done < n_resamples:
        n = min(chunk, n_resamples - done)
        c = np.percentile(_resample(cur, blocks_cur, rng, n), percentile, axis=1)
        b = np.percentile(_resample(base, blocks_base, rng, n), percentile, axis=1)
        ratios.append(c / b)
        done += n
    ratios = np.concatenate(ratios)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(ratios, [tail, 100.0 - tail])
    return ratio, float(low), float(high)


def format_ms(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" if value < 100 else f"{value:.1f}"
