"""INT8 or float per layer by what each costs on this machine's runtime, and the INT8-vs-FP32 verdict.

Placement rules say where INT8 *can* run; whether it is *faster* depends on the runtime's kernels
for that layer's shape on this CPU (a 1x1 conv with 8 channels, a tiny MatMul, a depthwise conv
at low resolution can be slower in INT8 once its requantization is counted). So, for ONNX Runtime
targets:

    1. the candidate (every layer the rules allow in INT8) and the FP32 model are profiled per node
       with ORT's profiler, as ORT deploys them (all optimizations: fused kernels);
    2. a weighted layer whose fused INT8 kernel is slower than its float kernel goes float
       (`Decisions` keeps both times as the reason);
    3. if any did, the two whole-model placements are timed in one process, interleaved, and the
       faster one is kept: a mixed placement is never kept when it is slower than all-INT8;
       activation regions that ORT may run faster in float (a YOLOX Focus at the input, SiLU:
       `op_groups`) are each tried in float the same way, and kept float only when faster;
    4. the result is timed against FP32 the same way: the verdict (ratio, 99 % interval) that
       `quantize` prints, with one warning line when INT8 is not faster.

Measurements are cached per model structure, target, CPU flags and ORT version
(~/.cache/edgepack/speed/), so a re-run with other options does not time again.
TensorRT targets cannot be timed here: their placement stays with the rules, and the record says so.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from edgepack.graph import WEIGHTED_OPS, node_label

logger = logging.getLogger(__name__)

# a float layer must be this much faster than its INT8 kernel to be kept float (timer noise)
FLOAT_MARGIN = 1.10


@dataclasses.dataclass
class SpeedVerdict:
    """INT8 latency / FP32 latency, both as ORT deploys them, timed interleaved in one process."""

    ratio: float
    low: float
    high: float
    verdict: str              # "faster" / "slower" / "same"
    metric: str
    threads: int
    int8_ms: float
    fp32_ms: float
    cpu_flags: str
    cause: str | None = None  # when not faster: the likely cause, from the fusion report

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def line(self) -> str:
        text = (f"INT8 vs FP32 on this CPU ({self.cpu_flags}; {self.threads} thread(s), batch 1, {self.metric}): "
                f"{self.verdict}, {self.ratio:.2f}x [{self.low:.2f}, {self.high:.2f}] "
                f"({self.int8_ms:.3f} ms vs {self.fp32_ms:.3f} ms)")
        return text

    @property
    def warning(self) -> str | None:
        if self.verdict == "faster":
            return None
        cause = f" likely cause: {self.cause}." if self.cause else ""
        return (f"INT8 is not faster than FP32 on this CPU ({self.ratio:.2f}x).{cause} "
                "hint: quantize for the target `edgepack targets --host` names (-t host); a model this "
                "small may not gain from INT8: --if-slower float keeps the float model")


def time_pair(path_a: str, path_b: str, feeds: dict, *, threads: int = 1, seconds: float = 2.0):
    """Latencies (ms) of two models on ORT as deployed, in alternating blocks in one process."""
    from edgepack.profile.timing import Budget, time_interleaved
    from edgepack.runtime import quiet_onnxruntime
    import onnxruntime as ort

    quiet_onnxruntime()

    def make(path):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    a, b = make(path_a), make(path_b)
    for _ in range(3):
        a.run(None, feeds)
        b.run(None, feeds)
    return time_interleaved(lambda: a.run(None, feeds), lambda: b.run(None, feeds), Budget(seconds=seconds),
                            block=5, progress=False)


def latency_verdict(fp32_path, int8_path, feeds: dict, *, threads: int = 1, seconds: float | None = None,
                    fusion_of=None) -> SpeedVerdict:
    """`fusion_of()`: the artifact's FusionReport, asked for only when INT8 is not faster (the cause)."""
    from edgepack.cpu import int8_summary as cpu_flags_text
    from edgepack.profile.regression import verdict_of
    from edgepack.profile.stats import ratio_interval

    seconds = verdict_seconds() if seconds is None else seconds
    int8_ms, fp32_ms = time_pair(str(int8_path), str(fp32_path), feeds, threads=threads, seconds=seconds)
    ratio, low, high = ratio_interval([int8_ms], [fp32_ms], percentile=10.0, n_resamples=500)
    verdict = verdict_of(ratio, low, high, 0.02)
    cause = likely_cause(fusion_of()) if verdict != "faster" and fusion_of is not None else None
    return SpeedVerdict(ratio, low, high, verdict, "p10", threads, float(np.percentile(int8_ms, 10)),
                        float(np.percentile(fp32_ms, 10)), cpu_flags_text(), cause)


def likely_cause(fusion) -> str:
    """Why an INT8 model is not faster, from what ORT left unfused."""
    if fusion.dq_on_constants:
        return f"{len(fusion.dq_on_constants)} weight(s) dequantized at every inference"
    if fusion.float_weighted:
        return f"{len(fusion.float_weighted)} weighted layer(s) run in float between Q/DQ"
    if fusion.activation_qdq:
        return f"{len(fusion.activation_qdq)} Q/DQ node(s) left between float ops"
    return "the model is too small for INT8 kernels to pay for their requantization"


def layer_times(path: str, feeds: dict, *, threads: int = 1, runs: int = 30) -> dict[str, float]:
    """ms per run of each ORT kernel as ORT deploys the model, the median over `runs` runs (a
    busy machine stalls single kernels; the median keeps the kernel's own cost)."""
    from edgepack.profile.ort_profile import KERNEL_SUFFIX
    from edgepack.runtime import quiet_onnxruntime
    import onnxruntime as ort

    quiet_onnxruntime()
    with tempfile.TemporaryDirectory(prefix="edgepack-ortprof-") as folder:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(folder, "ort")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        for _ in range(runs + 2):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    since = starts[2] if len(starts) > 2 else float("-inf")  # two warm-up runs left out
    durations: dict[str, list[float]] = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith(KERNEL_SUFFIX) and event.get("ts", 0) >= since:
            durations.setdefault(name[: -len(KERNEL_SUFFIX)], []).append(float(event.get("dur", 0)) / 1000.0)
    return {name: float(np.median(d)) for name, d in durations.items()}


def _model_name(ort_name: str, names: dict[str, str]) -> str | None:
    """The model node an ORT kernel name stands for: ORT prefixes "fused " and appends "_quant",
    "_token_<n>", "_nchwc"; peel those until a model node's name is left (a model's own names
    may contain them too, so every peeling order is tried, shortest first). `names` maps node
    names, and output tensor names (ORT's NCHWc kernels are named after them), to node names."""
    frontier, seen = [ort_name], set()
    while frontier:
        name = frontier.pop(0)
        if name in names:
            return names[name]
        seen.add(name)
        for peeled in (name.removeprefix("fused "), _SUFFIX.sub("", name)):
            if peeled != name and peeled not in seen:
                frontier.append(peeled)
    return None


_SUFFIX = re.compile(r"(_quant|_token_\d+|_nchwc)$")


@dataclasses.dataclass
class LayerSpeed:
    node: str
    op_type: str
    int8_ms: float | None
    float_ms: float | None

    @property
    def int8_slower(self) -> bool:
        return (self.int8_ms is not None and self.float_ms is not None
                and self.int8_ms > self.float_ms * FLOAT_MARGIN)


def layer_speeds(float_model: ir.Model, int8_model: ir.Model, feeds: dict, *, threads: int = 1,
                 cache_key: str | None = None) -> list[LayerSpeed]:
    """Each weighted layer's time as a fused INT8 kernel and as a float kernel, from ORT's profiler."""
    cached = _cache_read(cache_key)
    if cached is not None:
        return [LayerSpeed(**row) for row in cached]
    from edgepack import io

    with tempfile.TemporaryDirectory(prefix="edgepack-speed-") as folder:
        fp = str(io.save(float_model, Path(folder) / "fp32.onnx"))
        q = str(io.save(int8_model, Path(folder) / "int8.onnx"))
        names = {v.name: n.name for n in int8_model.graph if n.name for v in n.outputs}
        names.update({n.name: n.name for n in int8_model.graph if n.name})
        t_float, t_int8 = ({}, {})
        for times, path in ((t_float, fp), (t_int8, q)):
            for ort_name, ms in layer_times(path, feeds, threads=threads).items():
                name = _model_name(ort_name, names)
                if name is not None:
                    times[name] = times.get(name, 0.0) + ms
    rows = [LayerSpeed(node_label(n), n.op_type, t_int8.get(n.name), t_float.get(n.name))
            for n in int8_model.graph if n.op_type in WEIGHTED_OPS and n.domain == "" and n.name]
    _cache_write(cache_key, [dataclasses.asdict(r) for r in rows])
    return rows


def fingerprint(model: ir.Model, target_name: str) -> str:
    """Model structure (ops, names, shapes), target, CPU flags and ORT version: what speed depends on."""
    import onnxruntime

    from edgepack.cpu import int8_summary as cpu_flags_text

    h = hashlib.sha256()
    for node in model.graph:
        h.update(f"{node.op_type}|{node.name}|".encode())
        for v in node.inputs:
            h.update(f"{v.shape if v is not None else None};".encode())
    h.update(f"{target_name}|{cpu_flags_text()}|{onnxruntime.__version__}".encode())
    return h.hexdigest()[:32]


def _cache_dir() -> Path:
    return Path(os.environ.get("EDGEPACK_CACHE", Path.home() / ".cache" / "edgepack")) / "speed"


def _cache_read(key: str | None):
    if key is None:
        return None
    path = _cache_dir() / f"{key}.json"
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(rows, list) and all(isinstance(r, dict) and set(r) == {"node", "op_type", "int8_ms", "float_ms"}
                                        and all(r[k] is None or isinstance(r[k], (int, float)) for k in ("int8_ms", "float_ms"))
                                        for r in rows)
    return rows if ok else None


def _cache_write(key: str | None, rows: list[dict]) -> None:
    if key is None:
        return
    try:
        folder = _cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(rows))
        os.replace(tmp, folder / f"{key}.json")
    except OSError as exc:  # a cache is an optimisation: never a failure
        logger.debug("speed cache not written: %s", exc)


def first_feeds(model: ir.Model, data) -> dict:
    """One batch-1 sample of the data (its first), for timing."""
    from edgepack import runtime
    from edgepack.calib.data import input_specs_of, open_dataset

    session = runtime.session(model, optimize=False)
    for batch in open_dataset(data, input_specs_of(session), batch_size=1, limit=1):
        return {k: np.ascontiguousarray(v[:1]) for k, v in batch.items()}
    return runtime.random_feeds(session)


def place_by_speed(model: ir.Model, ranges, policy, *, reference: ir.Model, feeds: dict, exclude: set[str],
                   float_defaults: bool, decisions, target_name: str, threads: int = 1):
    """The rules' placement, with every weighted layer whose INT8 kernel measures slower than its
    float kernel moved to float (steps 1-3 of the module docstring). `model` is rewritten in place;
    returns insert_qdq's result; `decisions` gets each layer's choice and times."""
    from edgepack.graph import copy_model
    from edgepack.quant.qdq import insert_qdq

    candidate = insert_qdq(copy_model(model), ranges, policy, exclude=exclude, float_defaults=float_defaults)
    speeds = {s.node: s for s in layer_speeds(reference, candidate.model, feeds, threads=threads,
                                               cache_key=fingerprint(reference, target_name))}
    slower = {n for n, s in speeds.items() if s.int8_slower and n in candidate.quantized}
    moved, why_not, current = set(), None, candidate.model
    if slower:
        mixed = insert_qdq(copy_model(model), ranges, policy, exclude=exclude | slower, float_defaults=float_defaults)
        all_ms, mixed_ms = _time_models(candidate.model, mixed.model, feeds, threads)
        if mixed_ms < all_ms:
            moved, current = slower, mixed.model
        else:
            why_not = f"moving them to float made the whole model slower ({mixed_ms:.3f} ms vs {all_ms:.3f} ms): kept INT8"
    group_moves = _try_groups(model, current, ranges, policy, feeds, exclude | moved, float_defaults, threads)
    result = insert_qdq(model, ranges, policy, exclude=exclude | moved | set().union(*group_moves.values()),
                        float_defaults=float_defaults)
    group_of = {n: why for why, names in group_moves.items() for n in names}
    result.skipped = [(n, "measured: INT8 kernel slower than float" if n in moved else group_of.get(n, why))
                      for n, why in result.skipped]
    _record(decisions, result, speeds, moved, why_not, group_of)
    return result


INPUT_REGION_OPS = ("Slice", "Concat", "Reshape", "Transpose", "Pad", "Split", "Squeeze", "Unsqueeze", "Flatten",
                    "Resize", "Expand", "Tile", "Gather", "MaxPool")


def op_groups(model: ir.Model) -> dict[str, set[str]]:
    """Activation regions whose INT8 form ORT may run slower than float, each toggled as a whole:

      input region  data movement and Concat between a graph input and the first weighted ops
                    (a YOLOX Focus: four Slices + Concat, which ORT fuses into one SpaceToDepth in
                    float, but runs as four strided uint8 Slices in INT8)
      SiLU          x * Sigmoid(x) (ORT fuses it into one QuickGelu kernel in float; in INT8 it is a
                    QLinearSigmoid and a QLinearMul)
    """
    graph = model.graph
    region: set[str] = set()
    frontier = [v for v in graph.inputs]
    seen: set[ir.Value] = set()
    while frontier:
        value = frontier.pop()
        if value in seen:
            continue
        seen.add(value)
        for use in value.uses():
            node = use.node
            if node.op_type not in INPUT_REGION_OPS or node.domain != "":
                continue
            region.add(node_label(node))
            frontier.extend(node.outputs)
    silu: set[str] = set()
    for node in graph:
        if node.op_type == "Mul" and node.domain == "" and len(node.inputs) == 2:
            a, b = node.inputs
            for x, s in ((a, b), (b, a)):
                sig = s.producer() if s is not None else None
                if sig is not None and sig.op_type == "Sigmoid" and sig.inputs[0] is x:
                    silu |= {node_label(node), node_label(sig)}
    return {name: names for name, names in (("input region", region), ("SiLU (Sigmoid·Mul)", silu)) if names}


def _try_groups(model, current: ir.Model, ranges, policy, feeds, exclude: set[str], float_defaults: bool,
                threads: int):
    """Each op group of `op_groups` moved to float, kept only when the whole model, timed
    interleaved against `current` (the placement without the move, `exclude`), is faster (2 % at
    least); a kept move becomes the placement the next group is timed against."""
    from edgepack.graph import copy_model
    from edgepack.quant.qdq import insert_qdq

    kept: dict[str, set[str]] = {}
    for name, names in op_groups(model).items():
        moved = insert_qdq(copy_model(model), ranges, policy, exclude=exclude | names, float_defaults=float_defaults)
        int8_ms, float_ms = _time_models(current, moved.model, feeds, threads)
        logger.info("%s: INT8 %.3f ms, float %.3f ms", name, int8_ms, float_ms)
        if float_ms < 0.98 * int8_ms:
            kept[f"measured: {name} in float is faster (whole model {float_ms:.3f} ms vs {int8_ms:.3f} ms in INT8)"] = names
            exclude, current = exclude | names, moved.model
    return kept


def _time_models(a: ir.Model, b: ir.Model, feeds: dict, threads: int) -> tuple[float, float]:
    """p10 latency (ms) of two models as ORT deploys them, timed interleaved in one process."""
    from edgepack import io

    with tempfile.TemporaryDirectory(prefix="edgepack-speed-") as folder:
        a_path, b_path = io.save(a, Path(folder) / "a.onnx"), io.save(b, Path(folder) / "b.onnx")
        a_ms, b_ms = time_pair(str(a_path), str(b_path), feeds, threads=threads, seconds=verdict_seconds())
    return float(np.percentile(a_ms, 10)), float(np.percentile(b_ms, 10))


def _record(decisions, result, speeds: dict[str, LayerSpeed], moved: set[str], why_not: str | None,
            group_of: dict[str, str] | None = None) -> None:
    op_of = {node_label(n): n.op_type for n in result.model.graph}
    for name in result.quantized:
        s = speeds.get(name)
        figures = {"int8_ms": s.int8_ms, "float_ms": s.float_ms} if s is not None else {}
        if s is not None and s.int8_ms is not None and s.float_ms is not None:
            reason = f"measured: INT8 kernel {s.int8_ms:.3f} ms vs float {s.float_ms:.3f} ms"
            if s.int8_slower and why_not:
                reason += f"; {why_not}"
        else:
            reason = "rules: runs as an integer kernel on this runtime (not timed alone)"
        decisions.decide(name, op_of.get(name, s.op_type if s else ""), "int8", reason, **figures)
    for name, why in result.skipped:
        s = speeds.get(name)
        if name in moved and s is not None:
            decisions.decide(name, s.op_type, "float", f"measured: INT8 kernel {s.int8_ms:.3f} ms slower than "
                             f"float {s.float_ms:.3f} ms", int8_ms=s.int8_ms, float_ms=s.float_ms)
        elif group_of and name in group_of:
            decisions.decide(name, op_of.get(name, ""), "float", group_of[name])
        else:
            decisions.decide(name, op_of.get(name, ""), "float", f"rules: {why}")


def record_rules(decisions, result, why: str) -> None:
    """Placement by rules only (TensorRT targets, or measuring off): each choice with the rule."""
    op_of = {node_label(n): n.op_type for n in result.model.graph}
    for name in result.quantized:
        decisions.decide(name, op_of.get(name, ""), "int8", f"rules ({why})")
    for name, reason in result.skipped:
        decisions.decide(name, op_of.get(name, ""), "float", f"rules: {reason}")


def verdict_seconds() -> float:
    """Seconds of interleaved timing for a whole-model comparison (EDGEPACK_SPEED_SECONDS, default 2)."""
    try:
        return max(0.05, min(60.0, float(os.environ.get("EDGEPACK_SPEED_SECONDS", "2"))))
    except ValueError:
        return 2.0


def float_twin(qdq_model: ir.Model) -> ir.Model:
    """The float model a QDQ model stands for, for timing: every DQ of a constant becomes the
    dequantized constant, every activation Q -> DQ pair is bypassed. Same ops, shapes and weights
    (up to rounding) as the FP32 original, so its latency is the FP32 model's: what `build`
    compares an artifact with when only the QDQ model is at hand."""
    from edgepack.graph import const_array, copy_model
    from edgepack.passes.rewrite import new_initializer, remove_unused_initializers, take_over_output

    model = copy_model(qdq_model)
    graph = model.graph
    for node in list(graph):
        if node.op_type != "DequantizeLinear" or node.domain != "":
            continue
        q, scale = const_array(node.inputs[0]), const_array(node.inputs[1])
        zero = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        if q is not None and scale is not None:
            axis = node.attributes["axis"].value if "axis" in node.attributes else 1
            block = node.attributes["block_size"].value if "block_size" in node.attributes else 0
            if block:
                continue  # blocked (INT4) weights: left to the runtime
            shape = [1] * q.ndim
            if scale.ndim == 1 and q.ndim > 0:
                shape[axis % q.ndim] = -1
            z = 0 if zero is None else zero.astype(np.float32).reshape(shape if zero.ndim == 1 else ())
            w = ((q.astype(np.float32) - z) * scale.astype(np.float32).reshape(shape if scale.ndim == 1 else ()))
            take_over_output(node.outputs[0], new_initializer(graph, w.astype(np.float32), node.outputs[0].name + "_float"))
            graph.remove(node, safe=True)
            continue
        producer = node.inputs[0].producer() if node.inputs[0] is not None else None
        if producer is not None and producer.op_type == "QuantizeLinear":
            take_over_output(node.outputs[0], producer.inputs[0])
            graph.remove(node, safe=True)
    for node in list(graph):
        if node.op_type == "QuantizeLinear" and not node.outputs[0].uses():
            graph.remove(node, safe=True)
    remove_unused_initializers(graph)
    return model
