"""Documented maxima for counts, durations and batches, and the memory check before a large
allocation: an option can ask for a long run or a big batch, never for one that cannot end or
cannot fit (docs/security.md lists these numbers).
"""
from __future__ import annotations

from pathlib import Path

from edgepack.errors import UsageError

MAX_RUNS = 10_000_000          # timed runs (--runs, warm-up runs)
MAX_SECONDS = 24 * 3600.0      # a duration (--duration, --warmup, --confirm-duration): one day
MAX_LAYER_RUNS = 100_000       # profiled runs for the per-layer table
MAX_BATCH = 1_000_000          # --batch; the memory it needs is checked as well


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (MemAvailable), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_count(value: int, option: str, maximum: int, *, minimum: int = 0) -> int:
    """`value` if it is a whole number within [minimum, maximum]; else a one-line usage error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{option} {value!r}: not a whole number", hint=f"for example {option} 100")
    if not minimum <= value <= maximum:
        raise UsageError(f"{option} {value:,}: out of range", hint=f"use {minimum:,} to {maximum:,}")
    return value


def check_seconds(value: float, option: str, maximum: float = MAX_SECONDS) -> float:
    if not 0 <= value <= maximum:
        raise UsageError(f"{option} {value:g} s: longer than the {maximum:g} s allowed",
                         hint=f"use at most {maximum:g} s")
    return value


def check_memory(needed: int, what: str, hint: str) -> None:
    """Refuse, before allocating, what needs more than the memory this machine has available."""
    available = available_memory()
    if available is not None and needed > available:
        raise UsageError(f"{what} needs about {needed / 2**30:.1f} GiB, more than the "
                         f"{available / 2**30:.1f} GiB of memory available; refused", hint=hint)
