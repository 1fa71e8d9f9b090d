"""Statistics and the regression decision on synthetic timings (autocorrelated, with outliers)."""
from __future__ import annotations

import numpy as np
import pytest

from edgepack.errors import UsageError
from edgepack.profile.regression import check_regression
from edgepack.profile.stats import count_outliers, ratio_interval, summarize
from edgepack.profile.timing import Budget, time_interleaved, time_runs, warm_up
from tests.profile.support import noisy_timings, synthetic_result


def test_summarize_matches_numpy():
    x = noisy_timings(1000, 1.0, seed=1)
    s = summarize(x)
    assert s["min"] == x.min() and s["max"] == x.max()
    assert s["p50"] == pytest.approx(np.median(x)) and s["p99"] == pytest.approx(np.percentile(x, 99))
    assert s["min"] <= s["p50"] <= s["p90"] <= s["p95"] <= s["p99"] <= s["max"]
    assert s["std"] == pytest.approx(np.std(x, ddof=1))


def test_outliers_counts_injected_spikes():
    x = np.random.default_rng(0).normal(1.0, 0.01, 1000)
    assert count_outliers(x) == 0
    x[[10, 500, 900]] = 5.0
    assert count_outliers(x) == 3


def test_ratio_interval_covers_one_for_same_distribution_and_excludes_it_for_a_shift():
    a = noisy_timings(2000, 1.0, seed=2)
    b = noisy_timings(2000, 1.0, seed=3)
    ratio, low, high = ratio_interval([a], [b], confidence=0.99, n_resamples=500)
    assert low < ratio < high
    assert low <= 1.0 <= high or abs(ratio - 1) < 0.02
    slow = noisy_timings(2000, 1.0, seed=4, drift=0.20)
    ratio, low, high = ratio_interval([slow], [b], confidence=0.99, n_resamples=500)
    assert 1.15 < ratio < 1.25 and low > 1.1


def test_block_bootstrap_is_wider_than_iid_on_autocorrelated_timings():
    # a slow drift makes consecutive timings alike: resampling single timings would understate it
    rng = np.random.default_rng(5)
    drift = np.repeat(rng.normal(0, 0.05, 20), 100)
    a = 1.0 + drift + rng.normal(0, 0.01, 2000)
    b = 1.0 + rng.normal(0, 0.01, 2000)
    _, lo_block, hi_block = ratio_interval([a], [b], blocks_per_run=20, n_resamples=500)
    _, lo_iid, hi_iid = ratio_interval([a], [b], blocks_per_run=1000, n_resamples=500)
    assert hi_block - lo_block > 1.5 * (hi_iid - lo_iid)


@pytest.mark.parametrize("drift, verdict", [(0.0, "same"), (0.20, "slower"), (-0.20, "faster"), (0.02, "same")])
def test_check_verdicts(drift, verdict):
    base = synthetic_result(noisy_timings(3000, 1.0, seed=10))
    cur = synthetic_result(noisy_timings(3000, 1.0, seed=11, drift=drift))
    report = check_regression(cur, base, threshold=0.05, confidence=0.99, n_resamples=500)
    assert report["verdict"] == verdict
    assert report["regression"] is (verdict == "slower")
    assert report["ci"][0] <= report["ratio"] <= report["ci"][1]
    assert report["metric"] == "p1"
    assert report["ratio"] == pytest.approx(np.percentile(cur["samples_ms"], 1) / np.percentile(base["samples_ms"], 1))
    p50 = check_regression(cur, base, metric="p50", n_resamples=500)
    assert p50["ratio"] == pytest.approx(np.median(cur["samples_ms"]) / np.median(base["samples_ms"]))
    assert p50["verdict"] == verdict


def test_significant_but_small_slowdown_passes():
    # 3% slower with tight timings: significant, but under the 5% threshold
    rng = np.random.default_rng(0)
    base = synthetic_result(rng.normal(1.0, 0.005, 3000))
    cur = synthetic_result(rng.normal(1.03, 0.005, 3000))
    report = check_regression(cur, base, threshold=0.05, n_resamples=500)
    assert report["significant"] and report["verdict"] == "same" and not report["regression"]
    assert check_regression(cur, base, threshold=0.01, n_resamples=500)["regression"]


def test_check_several_baseline_runs_and_metric():
    bases = [synthetic_result(noisy_timings(1000, 1.0, seed=s)) for s in range(3)]
    cur = synthetic_result(noisy_timings(1000, 1.0, seed=9, drift=0.3))
    report = check_regression(cur, bases, metric="p90", n_resamples=300)
    assert report["baseline"]["runs"] == 3 and report["baseline"]["samples"] == 3000
    assert report["verdict"] == "slower"


@pytest.mark.parametrize("change", [{"sha": "b" * 64}, {"target": "jetson-orin-nano"}, {"batch": 8}])
def test_check_refuses_mismatched_runs_unless_forced(change):
    x = noisy_timings(500, 1.0, seed=1)
    base, cur = synthetic_result(x), synthetic_result(x, **change)
    with pytest.raises(UsageError) as err:
        check_regression(cur, base)
    assert err.value.exit_code == 2 and "--force" in str(err.value)
    assert check_regression(cur, base, force=True, n_resamples=200)["verdict"] == "same"


def test_budget_parse():
    assert Budget.parse("200", "--runs") == Budget(runs=200)
    assert Budget.parse("2s", "--duration") == Budget(seconds=2.0)
    assert Budget.parse("500ms", "--warmup") == Budget(seconds=0.5)
    for bad in ("fast", "1.5", "-3s"):
        with pytest.raises(UsageError):
            Budget.parse(bad, "--runs")


def test_time_runs_counts_and_durations():
    calls = []
    samples = time_runs(lambda: calls.append(1), Budget(runs=37), progress=False)
    assert len(samples) == len(calls) == 37 and all(s >= 0 for s in samples)
    samples = time_runs(lambda: None, Budget(seconds=0.05), progress=False)
    assert len(samples) >= 10
    assert warm_up(lambda: None, Budget(runs=5)) == 5 and warm_up(lambda: None, Budget(seconds=0.0)) == 1


def test_interleaved_runs_alternate_in_blocks():
    order = []
    a, b = time_interleaved(lambda: order.append("a"), lambda: order.append("b"), Budget(runs=40),
                            block=10, progress=False)
    assert len(a) == len(b) == 40
    assert "".join(order[::10]) == "abbaabbaab"[: len(order) // 10]
