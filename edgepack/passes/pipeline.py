"""The optimize pipeline: a PassManager built from the target, run with per-pass timing, verified."""
from __future__ import annotations

import gc
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from edgepack.passes.fold_batchnorm import FoldBatchNormPass
from edgepack.passes.fold_pruned_weights import FoldPrunedWeightsPass
from edgepack import io
from edgepack.passes import verify
from edgepack.passes.simplify import FoldConstantsPass, OnnxSimplifyPass, RemoveNoOpsPass
from edgepack.targets import Target

logger = logging.getLogger(__name__)


def build_pipeline(target: Target | None = None, *, simplify: bool = True) -> ir.passes.PassManager:
    """The passes `optimize` runs, in order. Every target gets the same graph-level passes today;
    the target is the hook for backend-specific ones (e.g. layouts a runtime prefers)."""
    passes: list[ir.passes.PassBase] = []
    if simplify:
        passes.append(OnnxSimplifyPass())
    passes += [RemoveNoOpsPass(), FoldConstantsPass(), FoldBatchNormPass(), FoldPrunedWeightsPass(),
               RemoveNoOpsPass(), RemoveUnusedNodesPass()]
    return ir.passes.PassManager(passes)


@dataclass
class PassRecord:
    name: str
    modified: bool
    seconds: float


@dataclass
class OptimizeResult:
    model: ir.Model
    passes: list[PassRecord] = field(default_factory=list)


def run_timed(manager: ir.passes.PassManager, model: ir.Model) -> OptimizeResult:
    """Runs each pass of `manager` and times it (the instrument: no prints in passes)."""
    records = []
    for p in manager.passes:
        start = time.perf_counter()
        result = p(model)
        model = result.model
        if result.modified:
            gc.collect()  # replaced weights sit in reference cycles (values <-> nodes): free them now
            from edgepack.runtime import trim_memory

            trim_memory()  # and give their pages back to the OS
        records.append(PassRecord(type(p).__name__, result.modified, time.perf_counter() - start))
        logger.info("%s: modified=%s (%.3f s)", type(p).__name__, result.modified, records[-1].seconds)
    return OptimizeResult(model, records)


def optimize(model: ir.Model | str | os.PathLike, *, target: Target | None = None,
             simplify: bool = True) -> ir.Model:
    """Simplify, fold BatchNorm, fold pruned channels. Returns the optimized model (an `ir.Model`
    given is changed in place; a path is loaded, never written)."""
    if isinstance(model, (str, os.PathLike)):
        model = io.load(model)
    return run_timed(build_pipeline(target, simplify=simplify), model).model


def compare_outputs(before, after, feeds: dict[str, np.ndarray]) -> float:
    """Max abs output difference, relative to the largest output magnitude of `before`."""
    return verify.max_abs_error(before, after, feeds, relative=True)
