"""`profile_model`: latency statistics, per-layer times and the environment for one artifact.

ONNX models (and ORT artifacts) run in ONNX Runtime with the thread count pinned (intra-op
threads as asked, one inter-op thread, sequential execution); TensorRT engines (.engine, .plan)
run through edgepack.backends.tensorrt. `profile_pair` times two artifacts in one process,
interleaved, and compares them.
"""
from __future__ import annotations

import datetime
import json
import logging
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError, UsageError, first_line
from edgepack.limits import check_memory
from edgepack.profile import environment as env
from edgepack.profile.stats import count_outliers, format_ms, summarize
from edgepack.profile.timing import Budget, time_interleaved, time_runs, warm_up

logger = logging.getLogger(__name__)

SCHEMA = "edgepack.profile/1"
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
DEFAULT_DURATION = Budget(seconds=3.0)
DEFAULT_WARMUP = Budget(seconds=0.2)
MAX_SAMPLES_KEPT = 20000  # samples_ms keeps every k-th timing beyond this (in order, k = samples_stride)


@dataclass(frozen=True)
class ProfileOptions:
    """How to time: run budget, warm-up, batch, threads, inputs, per-layer breakdown."""

    budget: Budget = DEFAULT_DURATION
    warmup: Budget = DEFAULT_WARMUP
    batch: int | None = None
    threads: int | None = None         # None: the target's, else 1 (pinned: comparable runs)
    data: object = None                # calibration folder, .npz/.npy, or an iterable
    shapes: tuple = ()                 # ((input name, (d0, d1, ...)), ...) for dynamic dims
    layer_runs: int = 20               # profiled runs for the per-layer table; 0: none
    progress: bool = True
    seed: int = 0


def parse_shapes(text: str | None) -> tuple:
    """'input:1x3x224x224,mask:1x128' -> (("input", (1, 3, 224, 224)), ("mask", (1, 128)))."""
    if not text:
        return ()
    shapes = []
    for item in text.split(","):
        name, _, dims = item.strip().rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not name or not shape or min(shape) < 0:
            raise UsageError(f"--shapes {item!r}: expected NAME:D0xD1x...",
                             hint="for example --shapes input:1x3x224x224")
        shapes.append((name, shape))
    return tuple(shapes)


def is_engine(path: str | os.PathLike) -> bool:
    path = Path(path)
    if path.suffix.lower() in ENGINE_SUFFIXES:
        return True
    manifest = Path(f"{path}.manifest.json")
    if manifest.is_file():
        try:
            return json.loads(manifest.read_text()).get("backend") == "tensorrt"
        except (OSError, ValueError):
            return False
    return False


class OrtRunner:
    """An ONNX Runtime session with pinned threads, for timing."""

    backend = "onnxruntime"

    def __init__(self, path: Path, target, threads: int):
        import onnxruntime as ort

        self.path, self.threads = path, threads
        available = set(ort.get_available_providers())
        wanted = [p for p in (target.execution_providers if target else ("CPUExecutionProvider",))]
        self.providers = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
        missing = [p for p in wanted if p not in available]
        if missing:
            logger.warning("execution providers %s are not available here; using %s", missing, self.providers)
        self.session = self.make_session()
        from edgepack.runtime import input_specs

        self.inputs = [(n, s, np.dtype(d)) for n, s, d in input_specs(self.session)]

    def make_session(self, hook=None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        from edgepack.runtime import bound_threads

        options.intra_op_num_threads = bound_threads(self.threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if hook:
            hook(options)
        try:
            return ort.InferenceSession(str(self.path), options, providers=self.providers)
        except Exception as exc:
            raise EdgepackError(f"{self.path}: ONNX Runtime cannot load the model: {first_line(exc)}",
                                hint="check it with `edgepack inspect`") from None

    def bind(self, feeds: dict):
        run, names = self.session.run, None
        return lambda: run(names, feeds)

    def layers(self, feeds: dict, runs: int) -> list[dict]:
        from edgepack.profile.ort_profile import model_node_names, profile_layers

        return model_node_names(profile_layers(self.make_session, feeds, runs), self.path)

    def close(self):
        self.session = None


def _open(path: Path, target, threads: int):
    if not path.exists():
        raise EdgepackError(f"artifact not found: {path}", hint="pass an .onnx model or a TensorRT engine")
    if is_engine(path):
        from edgepack.profile.tensorrt_profile import open_runner

        return open_runner(str(path))
    return OrtRunner(path, target, threads)


def make_feeds(inputs: list, options: ProfileOptions) -> tuple[dict, int]:
    """Inputs for timing: the first batch of --data, or random data shaped from the model's
    inputs (dynamic first dim = batch, other dynamic dims from --shapes). Returns (feeds, batch)."""
    shapes = dict(options.shapes)
    unknown = set(shapes) - {name for name, _, _ in inputs}
    if unknown:
        raise UsageError(f"--shapes names {sorted(unknown)}, which are not inputs of the model",
                         hint=f"the inputs are {[n for n, _, _ in inputs]}")
    if options.data is not None:
        from edgepack.calib.data import InputSpec, open_dataset

        specs = [InputSpec(n, tuple(shapes.get(n, s)), np.dtype(d)) for n, s, d in inputs]
        batch_size = options.batch or 1
        for batch in open_dataset(options.data, specs, batch_size=batch_size, limit=batch_size):
            feeds = {n: np.ascontiguousarray(batch[n]) for n, _, _ in inputs}
            return feeds, len(next(iter(feeds.values())))
        raise EdgepackError(f"{options.data}: no samples", hint="pass a data set with at least one sample")
    rng = np.random.default_rng(options.seed)
    feeds, batch, planned = {}, None, []
    for name, shape, dtype in inputs:
        if name in shapes:
            concrete = list(shapes[name])
            if len(concrete) != len(shape):
                raise UsageError(f"--shapes {name}: {len(concrete)} dims, the input has {len(shape)}",
                                 hint=f"its shape is {list(shape)}")
        else:
            concrete = []
            for axis, dim in enumerate(shape):
                if isinstance(dim, int) and dim >= 0:
                    if axis == 0 and options.batch and dim != options.batch:
                        raise UsageError(f"--batch {options.batch}: input '{name}' has a fixed batch of {dim}",
                                         hint="export the model with a dynamic batch dimension, or drop --batch")
                    concrete.append(dim)
                elif axis == 0:
                    concrete.append(options.batch or 1)
                else:
                    raise UsageError(f"input '{name}' has dynamic dim '{dim}' at axis {axis}",
                                     hint=f"give its shape with --shapes {name}:D0xD1x...")
        if batch is None and concrete:
            batch = concrete[0]
        planned.append((name, concrete, dtype))
    _check_feed_memory(planned, batch or 1)
    for name, concrete, dtype in planned:
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(concrete).astype(dtype)
        elif dtype == np.bool_:
            feeds[name] = rng.integers(0, 2, concrete).astype(bool)
        else:
            feeds[name] = rng.integers(0, 10, concrete).astype(dtype)
    return feeds, batch or 1


def _check_feed_memory(planned: list, batch: int) -> None:
    """The random inputs (drawn in float64, then cast) must fit in the memory available, checked
    before they are drawn: a --batch too big for this machine is one error line, not a MemoryError."""
    needed = sum(math.prod(shape) * (8 + np.dtype(dtype).itemsize) for _, shape, dtype in planned)
    check_memory(needed, f"--batch {batch}: the inputs", hint="use a smaller --batch")


def check_batch_memory(path: Path, batch: int) -> None:
    """Refuse a batch whose tensors would not fit: the inputs and every intermediate tensor whose
    shape ONNX shape inference gives at batch 1, times the batch (an upper bound: ONNX Runtime
    reuses memory, so the real peak is lower). Checked for batches over 64 only; a model whose
    shapes cannot be inferred is not checked beyond its inputs."""
    if batch <= 64 or path.suffix != ".onnx":
        return
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        for value in model.graph.input:
            dims = value.type.tensor_type.shape.dim
            if dims and not dims[0].HasField("dim_value"):
                dims[0].dim_value = 1
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is a best effort here; the inputs are checked anyway
        return
    per_sample = 0
    for value in list(inferred.graph.value_info) + list(inferred.graph.output):
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if dims and None not in dims:
            size = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize if tensor.elem_type else 4
            per_sample += math.prod(dims) * size
    check_memory(per_sample * batch, f"--batch {batch}: the model's tensors ({per_sample:,} bytes a sample, "
                 "every intermediate at once)", hint="use a smaller --batch")


def _threads(target, options: ProfileOptions) -> int:
    if options.threads is not None:
        if options.threads < 1:
            raise UsageError(f"--threads {options.threads}: must be 1 or more", hint="for example --threads 1")
        return options.threads
    return (target.threads if target and target.threads else 1)


def _result(path: Path, target, runner, batch: int, threads: int, options: ProfileOptions,
            samples: list[float], warmup_runs: int, sha: str) -> dict:
    stats = summarize(samples)
    stride = max(1, -(-len(samples) // MAX_SAMPLES_KEPT))
    kept = [round(s, 6) for s in samples[::stride]]
    total_s = sum(samples) / 1000.0
    return {
        "schema": SCHEMA,
        "id": uuid.uuid4().hex,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"path": str(path), "name": path.name, "sha256": sha, "weights_sha256": env.weights_sha256(path)},
        "target": target.name if target else None,
        "backend": runner.backend,
        "batch": batch,
        "threads": threads,
        "runs": len(samples),
        "warmup": warmup_runs,
        "budget": options.budget.describe(),
        "warmup_budget": options.warmup.describe(),
        "latency_ms": stats,
        "throughput_per_s": batch * len(samples) / total_s if total_s else None,
        "samples_ms": kept,
        "samples_stride": stride,
        "outliers": count_outliers(samples),
        "layers": [],
    }


def profile_model(path: str | os.PathLike, target=None, options: ProfileOptions = ProfileOptions(), *,
                  affinity: list[int] | None = None) -> dict:
    """Time one artifact; returns the `edgepack.profile/1` result (see README)."""
    from edgepack.targets import load_target

    path = Path(path)
    target = load_target(target) if target is not None else None
    _pin(affinity)
    threads = _threads(target, options)
    before = env.device_state()
    runner = _open(path, target, threads)
    if not isinstance(runner, OrtRunner):
        return _profile_tensorrt(path, target, runner, options, threads, before)
    check_batch_memory(path, options.batch or 1)
    feeds, batch = make_feeds(runner.inputs, options)
    run = runner.bind(feeds)
    warmup_runs = warm_up(run, options.warmup)
    samples = time_runs(run, options.budget, progress=options.progress, label=path.name)
    result = _result(path, target, runner, batch, threads, options, samples, warmup_runs, env.sha256_of(path))
    if options.layer_runs:
        result["layers"] = runner.layers(feeds, options.layer_runs)
    runner.close()
    result["environment"] = env.environment(threads=threads, before=before)
    result["environment"]["providers"] = runner.providers
    return result


def _io_triplet(binding) -> tuple:
    """(name, shape, dtype) from a TensorRTRunner input: a tuple or an object with those fields."""
    name, shape, dtype = ((binding.name, binding.shape, binding.dtype) if hasattr(binding, "name") else binding)
    return name, tuple(int(d) if isinstance(d, (int, np.integer)) and d >= 0 else "?" for d in shape), np.dtype(dtype)


def _profile_tensorrt(path: Path, target, runner, options: ProfileOptions, threads: int,
                      before: dict | None = None) -> dict:
    """Host latency and GPU compute per run from TensorRTRunner.time_once; layers from IProfiler."""
    from edgepack.profile.tensorrt_profile import layer_profiler, layer_rows

    with runner:
        inputs = [_io_triplet(i) for i in runner.inputs]
        feeds, batch = make_feeds(inputs, options)
        runner.infer(feeds)  # loads the feeds into the host buffers that time_once reuses
        gpu: list[float] = []

        def run():
            host, compute = runner.time_once()
            gpu.append(compute)
            return host

        warmup_runs = warm_up(run, options.warmup)
        gpu.clear()
        host: list[float] = []
        # time_once measures host latency itself (H2D + compute + D2H, synchronized)
        wall = time_runs(lambda: host.append(run()), options.budget, progress=options.progress, label=path.name)
        result = _result(path, target, runner, batch, threads, options, host[: len(wall)], warmup_runs,
                         env.sha256_of(path))
        result["backend"] = "tensorrt"
        result["gpu_compute_ms"] = summarize(gpu)
        result["gpu_samples_ms"] = gpu
        if options.layer_runs:
            profiler = layer_profiler()
            runner.attach_profiler(profiler)
            for _ in range(options.layer_runs):
                runner.infer(feeds)
            result["layers"] = layer_rows(profiler, options.layer_runs)
    result["environment"] = env.environment(threads=threads, before=before)
    return result


def profile_pair(path_a, path_b, target=None, options: ProfileOptions = ProfileOptions(), *,
                 affinity: list[int] | None = None, block: int = 10, min_runs: int = 10,
                 max_seconds: float | None = None) -> tuple[dict, dict]:
    """Time A and B in one process, interleaved in blocks (ABBA), with the same inputs (a time
    budget goes on until `min_runs` runs each, at most `max_seconds`: see time_interleaved)."""
    from edgepack.targets import load_target

    target = load_target(target) if target is not None else None
    _pin(affinity)
    threads = _threads(target, options)
    paths = [Path(path_a), Path(path_b)]
    before = env.device_state()
    for p in paths:
        if is_engine(p):
            raise UsageError(f"{p}: --vs compares ONNX Runtime artifacts only",
                             hint="profile engines one by one and compare with `edgepack check`")
    runners = [_open(p, target, threads) for p in paths]
    feeds, batch = make_feeds(runners[0].inputs, options)
    feeds_b, _ = make_feeds(runners[1].inputs, options)
    runs = [r.bind(f) for r, f in zip(runners, (feeds, feeds_b))]
    warmups = [warm_up(run, options.warmup) for run in runs]
    a, b = time_interleaved(runs[0], runs[1], options.budget, block=block, progress=options.progress,
                            min_runs=min_runs, max_seconds=max_seconds)
    results = []
    for p, runner, f, samples, w in zip(paths, runners, (feeds, feeds_b), (a, b), warmups):
        result = _result(p, target, runner, batch, threads, options, samples, w, env.sha256_of(p))
        if options.layer_runs:
            result["layers"] = runner.layers(f, options.layer_runs)
        result["environment"] = env.environment(threads=threads, before=before)
        result["environment"]["providers"] = runner.providers
        result["interleaved"] = True
        results.append(result)
        runner.close()
    return results[0], results[1]


def _pin(affinity: list[int] | None) -> None:
    if affinity:
        try:
            env.set_affinity(affinity)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--affinity {','.join(map(str, affinity))}: {exc}",
                             hint=f"choose among the CPUs {env.affinity()}") from None


def layer_label(row: dict) -> str:
    """A profiled layer as people know it: the model's node name, else ORT's own node marked so."""
    if row.get("node"):
        return row["node"]
    if "node" in row:  # mapped, and not in the model: ORT inserted it
        return f"{row['name']} (added by ONNX Runtime)"
    return row["name"]


def format_profile(result: dict, top: int = 10) -> str:
    """The summary people read: percentiles, throughput, outliers, the slowest layers."""
    lat = result["latency_ms"]
    lines = [f"{result['model']['name']}  target {result['target']}  backend {result['backend']}  "
             f"batch {result['batch']}  threads {result['threads']}  runs {result['runs']}",
             "latency (ms)  " + "  ".join(f"{k} {format_ms(lat[k])}" for k in
                                           ("min", "mean", "std", "p50", "p90", "p95", "p99", "max"))]
    if "gpu_compute_ms" in result:
        gpu = result["gpu_compute_ms"]
        lines.append("gpu compute   " + "  ".join(f"{k} {format_ms(gpu[k])}" for k in ("min", "mean", "p50", "p99", "max")))
    lines.append(f"throughput {result['throughput_per_s']:.1f}/s   outliers {result['outliers']} "
                 f"(> Q3 + 3 IQR)")
    if result.get("layers"):
        lines.append(f"\n{'layer':<40} {'op':<16} {'ms':>9} {'%':>6}")
        for row in result["layers"][:top]:
            name = layer_label(row)
            name = name if len(name) <= 40 else "…" + name[-39:]
            lines.append(f"{name:<40} {row['op_type'][:16]:<16} {row['time_ms']:>9.4f} {row['percent']:>6.1f}")
    return "\n".join(lines)
