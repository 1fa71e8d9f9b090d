"""Per-node times from ONNX Runtime's profiler (the Chrome-trace JSON written by end_profiling).

Profiling costs time of its own, so it runs in a separate session after the timed runs: the
latency numbers are never taken with the profiler on. Events with cat == "Node" and a name
ending in "_kernel_time" are kernel executions; their `dur` is in microseconds.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from collections import defaultdict
from pathlib import Path

KERNEL_SUFFIX = "_kernel_time"
# what ORT's graph transformers add to the name of a node they rewrite: "fused " (fusions),
# "_nchwc" (the NCHWc layout: named after the node's output tensor), "_token_<n>" (NHWC / QDQ)
_ORT_SUFFIX = re.compile(r"(_token_\d+|_nchwc)$")


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


def model_node_names(rows: list[dict], model_path: str | os.PathLike | None) -> list[dict]:
    """Adds "node" to each layer row: the model's node that ORT's kernel comes from, found by
    undoing ORT's renaming (`relu1_out_nchwc` is the node writing tensor `relu1_out`,
    `/conv1/Conv_token_1` is `/conv1/Conv`, `fused /fc1/Gemm` is `/fc1/Gemm`), or None for a node
    ORT inserted itself (layout Transpose, ReorderInput/ReorderOutput)."""
    if model_path is None:
        return rows
    try:
        import onnx

        graph = onnx.load(str(model_path), load_external_data=False).graph
    except Exception:  # an engine or an unreadable file: ORT's names are all there is
        return rows
    names = {n.name for n in graph.node if n.name}
    by_name = {n.name: n for n in graph.node if n.name}
    producers = {out: n for n in graph.node for out in n.output}

    def label(node) -> str:
        return node.name or node.output[0]

    def find(base: str):
        while True:
            if base in names:
                return by_name[base]
            if base in producers:
                return producers[base]
            shorter = _ORT_SUFFIX.sub("", base)
            if shorter == base:
                return None
            base = shorter

    def fused_chain(node, op_type: str) -> str:
        """ORT names a fused kernel (Conv+Relu) after its last node: name the chain from the
        node whose op the kernel runs (`/conv1/Conv + /relu1/Relu`)."""
        core = op_type.removeprefix("Fused").removeprefix("QLinear").removeprefix("Q")
        chain, current = [node], node
        for _ in range(3):
            if core in current.op_type or not current.input or current.input[0] not in producers:
                break
            current = producers[current.input[0]]
            chain.insert(0, current)
        if core not in current.op_type:
            return label(node)
        return " + ".join(label(n) for n in chain)

    for row in rows:
        node = find(row["name"]) or find(row["name"].removeprefix("fused "))
        # a built artifact keeps ORT's offline renaming ("fused /fc1/Gemm"): show the model's name
        row["node"] = fused_chain(node, row.get("op_type", "")).removeprefix("fused ") if node is not None else None
    return rows


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
