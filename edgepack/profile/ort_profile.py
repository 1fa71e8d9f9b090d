"""Per-node times from ONNX Runtime's profiler (the Chrome-trace JSON written by end_profiling).

Profiling costs time of its own, so it runs in a separate session after the timed runs: the
latency numbers are never taken with the profiler on. Events with cat == "Node" and a name
ending in "_kernel_time" are kernel executions; their `dur` is in microseconds.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

KERNEL_SUFFIX = "_kernel_time"


def layer_times(events: list[dict], runs: int, *, skip_runs: int = 0) -> list[dict]:
    """[{"name", "op_type", "time_ms", "percent"}] per node, mean per run, slowest first.

    The first `skip_runs` runs (warm-up: allocation, first-touch) are left out, found by the
    timestamps of the "model_run" session events.
    """
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    since = starts[skip_runs] if 0 < skip_runs < len(starts) else float("-inf")
    total_us: dict[str, float] = defaultdict(float)
    op_type: dict[str, str] = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith(KERNEL_SUFFIX) or event.get("ts", 0) < since:
            continue
        node = name[: -len(KERNEL_SUFFIX)]
        total_us[node] += float(event.get("dur", 0))
        op_type[node] = event.get("args", {}).get("op_name", "?")
    overall = sum(total_us.values()) or 1.0
    rows = [{"name": n, "op_type": op_type[n], "time_ms": t / 1000.0 / max(runs, 1),
             "percent": 100.0 * t / overall} for n, t in total_us.items()]
    return sorted(rows, key=lambda r: -r["time_ms"])


def profile_layers(make_session, feeds: dict, runs: int = 20) -> list[dict]:
    """Per-node times over `runs` runs of a session built by `make_session(options_hook)`, where
    the hook turns profiling on; one extra warm-up run is profiled and left out."""
    with tempfile.TemporaryDirectory(prefix="edgepack-ortprof-") as folder:
        def hook(options):
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(folder, "ort")

        session = make_session(hook)
        for _ in range(runs + 1):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    return layer_times(events, runs, skip_runs=1)
