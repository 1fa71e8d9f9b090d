"""`edgepack optimize`: simplify, fold BatchNorm, remove pruned channels; outputs verified unchanged."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx_ir as ir

from edgepack.commands.result import NOT_JSON, CommandResult
from edgepack.errors import EdgepackError
from edgepack.keywords import cli_keywords

logger = logging.getLogger(__name__)


@dataclass
class OptimizeReport(CommandResult):
    """JSON `edgepack.optimize/1`."""

    SCHEMA = "edgepack.optimize/1"
    model: str | None
    output: str | None
    before: dict
    after: dict
    passes: list[dict]
    max_abs_error: float | None
    optimized: ir.Model | None = field(default=None, repr=False, metadata=NOT_JSON)

    def text(self) -> str:
        b, a = self.before, self.after
        lines = [f"{'':<10} {'before':>14} {'after':>14} {'ratio':>7}"]
        for key in ("nodes", "params", "macs", "size_bytes"):
            if b[key] is None or a[key] is None:  # size of a model never written
                continue
            ratio = a[key] / b[key] if b[key] else 1.0
            lines.append(f"{key:<10} {b[key]:>14,} {a[key]:>14,} {ratio:>7.3f}")
        lines.append("passes    " + ", ".join(f"{p['name']}{'*' if p['modified'] else ''} {p['seconds']:.2f}s"
                                             for p in self.passes) + "   (* changed the graph)")
        change = "not verified" if self.max_abs_error is None else f"{self.max_abs_error:.2e} (relative)"
        wrote = f"; wrote {self.output}" if self.output else ""
        lines.append(f"max output change {change}{wrote}")
        return "\n".join(lines)


def _summary(model: ir.Model, path) -> dict:
    from edgepack.inspection import inspect_model

    report = inspect_model(model, path)
    return {k: report[k] for k in ("nodes", "params", "macs", "size_bytes")}


@cli_keywords
def optimize(model: str | os.PathLike | ir.Model, output: str | os.PathLike | None = None, *,
             target=None, simplify: bool = True, tolerance: float = 1e-4) -> OptimizeReport:
    """Simplify, fold BatchNorm and remove pruned channels, then prove the outputs unchanged.

    `model` is a path or an onnx-ir Model (never changed: a copy is optimized). The optimized and
    the input model run in ONNX Runtime on the same random inputs; if their outputs differ by more
    than `tolerance` (relative to the output scale) nothing is written and EdgepackError is raised.
    `output`: the file to write (None: only `report.optimized`). `target`: name, .toml or Target.
    The pass-level function without verification is `edgepack.passes.optimize`.
    """
    from edgepack import io, runtime
    from edgepack.graph import copy_model
    from edgepack.passes import verify
    from edgepack.passes.pipeline import build_pipeline, run_timed
    from edgepack.targets import load_target

    path = None if isinstance(model, ir.Model) else Path(model)
    if output is not None and path is not None and Path(output).resolve() == path.resolve():
        raise EdgepackError(f"-o {output} is the input model; edgepack never overwrites an input",
                            hint="write the optimized model to another file")
    resolved = load_target(target) if target is not None else None
    if path is not None and output is not None:
        return _optimize_file(path, Path(output), resolved, simplify, tolerance)
    original = io.load(path) if path is not None else model
    reference = path if path is not None else copy_model(original)  # what the outputs are checked against
    work = copy_model(original) if path is None else original
    before = _summary(original, path)
    tolerance = max(tolerance, half_precision_floor(original))
    try:
        feeds = runtime.random_feeds(runtime.session(reference), batch=2)
    except EdgepackError as exc:  # custom ops (e.g. TensorRT plugins): optimize, but say it is unchecked
        logger.warning("outputs not verified: %s", exc)
        feeds = None
    result = run_timed(build_pipeline(resolved, simplify=simplify), work)
    error = None
    in_memory = io.weights_nbytes(result.model) < io.EXTERNAL_DATA_THRESHOLD
    if feeds is not None and (in_memory or output is None):  # check before writing anything
        error = verify.max_abs_error(reference, result.model, feeds, relative=True)
        _refuse_if_changed(path, output, error, tolerance)
    if output is not None:
        io.save(result.model, output)
        if feeds is not None and not in_memory:  # over 2 GB: ORT reads it from the file
            error = verify.max_abs_error(reference, output, feeds, relative=True)
            _refuse_if_changed(path, output, error, tolerance, written=True)
        after = _summary(io.load(output), output)
    else:
        after = _summary(result.model, None)
    return OptimizeReport(model=str(path) if path is not None else None,
                          output=str(output) if output is not None else None, before=before, after=after,
                          passes=[vars(r) for r in result.passes], max_abs_error=error, optimized=result.model)


def _optimize_file(path: Path, output: Path, target, simplify: bool, tolerance: float) -> OptimizeReport:
    """File to file, lean: onnx-ir holds the weights once (memory-mapped when external); ORT checks
    the outputs from files (it maps external data too), one session at a time, and mapped pages are
    released after each step, so the peak stays near one copy of the weights
    (scripts/bench/bench_optimize_memory.py)."""
    from edgepack import io, runtime
    from edgepack.passes.pipeline import build_pipeline, run_timed

    model = io.load(path)
    before = _summary(model, path)
    tolerance = max(tolerance, half_precision_floor(model))
    external = True if io.has_external_data(model) else None  # the output keeps a data file too
    io.release_weights(model)
    try:
        feeds = runtime.random_feeds(model, batch=2)
        # from the file: ORT maps external data and keeps one copy of embedded weights, where a
        # session from memory would also hold a copy read out of the parsed protobuf
        reference = runtime.run_and_free(path, feeds)
    except EdgepackError as exc:  # custom ops (e.g. TensorRT plugins): optimize, but say it is unchecked
        logger.warning("outputs not verified: %s", exc)
        reference = None
    io.release_weights(model)
    result = run_timed(build_pipeline(target, simplify=simplify), model)
    del model
    after = _summary(result.model, None)
    error = None

    def check(staged):  # before anything is written where the user can see it
        nonlocal error
        if reference is not None:
            error = _relative_error(reference, runtime.run_and_free(staged if external else result.model, feeds))
            _refuse_if_changed(path, output, error, tolerance)

    if not external:
        check(None)  # embedded weights: check in memory, then write
    io.save(result.model, output, external_data=external, check=check if external else None, rebase=True)
    after["size_bytes"] = io.files_nbytes(output, result.model)
    return OptimizeReport(model=str(path), output=str(output), before=before, after=after,
                          passes=[vars(r) for r in result.passes], max_abs_error=error, optimized=result.model)


def half_precision_floor(model: ir.Model) -> float:
    """The least relative tolerance for a model with float16/bfloat16 outputs: their rounding step
    near 1 (2^-10, about the rtol 1e-3 of the ONNX node tests), which a reassociated sum (a folded
    constant, a fused op) moves by without any error; 0 for other models."""
    half = {ir.DataType.FLOAT16, ir.DataType.BFLOAT16}
    return 2.0 ** -10 if any(o.dtype in half for o in model.graph.outputs) else 0.0


def _relative_error(ref, new) -> float:
    from edgepack import runtime

    if not runtime.same_structure(ref, new):
        return float("inf")
    return runtime.max_abs_error(ref, new) / runtime.output_scale(ref)


def _refuse_if_changed(path, output, error: float, tolerance: float, written: bool = False) -> None:
    if error <= tolerance:
        return
    if written:
        for file in (Path(output), Path(str(output) + ".data")):
            file.unlink(missing_ok=True)
    raise EdgepackError(
        f"{path or 'model'}: optimized outputs differ by {error:.3g} (relative), over --tolerance {tolerance}",
        hint="nothing was written; rerun with --no-simplify, and please report the model")
