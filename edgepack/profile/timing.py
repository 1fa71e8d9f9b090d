"""The timing loop: warm-up, then timed runs, with as little between two runs as possible.

One iteration is `t0 = perf_counter(); run(); samples.append(perf_counter() - t0)`; the progress
bar is refreshed at most four times a second, from the timestamps the loop takes anyway.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from edgepack.errors import UsageError

logger = logging.getLogger(__name__)

MIN_RUNS = 10  # like trtexec: a duration-based run still times at least this many runs


@dataclass(frozen=True)
class Budget:
    """How long to run: a number of runs, or a duration in seconds (at least MIN_RUNS runs)."""

    runs: int | None = None
    seconds: float | None = None

    def __post_init__(self):
        if (self.runs is None) == (self.seconds is None):
            raise ValueError("give exactly one of runs and seconds")

    @classmethod
    def parse(cls, text: str | int | float, option: str) -> "Budget":
        """'200' -> 200 runs; '2s', '500ms', '1.5s' -> a duration."""
        value = str(text).strip().lower()
        match = re.fullmatch(r"(\d+(?:\.\d*)?)\s*(ms|s)?", value)
        if not match:
            raise UsageError(f"{option} {text!r}: not a number of runs or a duration",
                             hint=f"write {option} 100 (runs), {option} 2s or {option} 500ms")
        number, unit = float(match.group(1)), match.group(2)
        if unit is None:
            if number != int(number):
                raise UsageError(f"{option} {text!r}: a number of runs must be whole",
                                 hint=f"add a unit for a duration: {option} {text}s")
            from edgepack.limits import MAX_RUNS, check_count

            return cls(runs=check_count(int(number), option, MAX_RUNS))
        from edgepack.limits import check_seconds

        return cls(seconds=check_seconds(number / 1000.0 if unit == "ms" else number, option))

    def describe(self) -> str:
        return f"{self.runs} runs" if self.runs is not None else f"{self.seconds:g} s"


def warm_up(run: Callable[[], object], budget: Budget) -> int:
    """Run until the budget is spent (at least once); returns the number of runs."""
    count = 0
    start = time.perf_counter()
    while True:
        run()
        count += 1
        if budget.runs is not None:
            if count >= budget.runs:
                return count
        elif time.perf_counter() - start >= budget.seconds:
            return count


def time_runs(run: Callable[[], object], budget: Budget, *, progress: bool = True,
              label: str = "timing") -> list[float]:
    """Latencies in milliseconds of `run()` called back to back until the budget is spent."""
    samples: list[float] = []
    append = samples.append
    clock = time.perf_counter
    meter = _Meter(budget, progress, label)
    while True:
        t0 = clock()
        run()
        t1 = clock()
        append(t1 - t0)
        if meter.done(len(samples), t1):
            break
    meter.close()
    return [s * 1000.0 for s in samples]


def time_interleaved(run_a: Callable[[], object], run_b: Callable[[], object], budget: Budget, *,
                     block: int = 10, progress: bool = True, min_runs: int = MIN_RUNS,
                     max_seconds: float | None = None) -> tuple[list[float], list[float]]:
    """A and B timed in alternating blocks of `block` runs (ABBA order), so that load from other
    processes and clock changes hit both alike. The budget counts runs of each (or total time);
    a time budget goes on until each side has `min_runs` runs (a starved process needs longer for
    as many pairs of blocks), but never past `max_seconds`."""
    a: list[float] = []
    b: list[float] = []
    clock = time.perf_counter
    meter = _Meter(budget, progress, "A/B")
    start = clock()
    turn = 0
    while True:
        order = ((run_a, a), (run_b, b)) if turn % 2 == 0 else ((run_b, b), (run_a, a))
        for run, samples in order:
            for _ in range(block):
                t0 = clock()
                run()
                samples.append(clock() - t0)
        turn += 1
        now = clock()
        if meter.done(len(a), now) and (len(a) >= min_runs or budget.seconds is None
                                        or (max_seconds is not None and now - start >= max_seconds)):
            break
    meter.close()
    return [s * 1000.0 for s in a], [s * 1000.0 for s in b]


class _Meter:
    """Decides when the budget is spent and refreshes the progress bar at most 4 times a second."""

    def __init__(self, budget: Budget, progress: bool, label: str):
        self.budget, self.bar = budget, _bar(budget, progress, label)
        self.start = self.last = time.perf_counter()
        self.end = self.start + budget.seconds if budget.seconds is not None else None

    def done(self, count: int, now: float) -> bool:
        finished = count >= self.budget.runs if self.end is None else (now >= self.end and count >= MIN_RUNS)
        if self.bar is not None and (finished or now - self.last > 0.25):
            _advance(self.bar, self.budget, count, now - self.start)
            self.last = now
        return finished

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _bar(budget: Budget, progress: bool, label: str):
    if not progress:
        return None
    from tqdm import tqdm

    if budget.runs is not None:
        return tqdm(total=budget.runs, desc=label, unit="run", leave=False, disable=None)
    return tqdm(total=round(budget.seconds, 1), desc=label, unit="s", leave=False, disable=None,
                bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s")


def _advance(bar, budget: Budget, count: int, elapsed: float) -> None:
    bar.n = min(count, budget.runs) if budget.runs is not None else round(min(elapsed, budget.seconds), 1)
    bar.refresh()


DEFAULT_BUDGET_TEXT = "3s"  # like trtexec's --duration default
