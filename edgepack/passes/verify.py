"""Proof by running: a model before and after a rewrite, in ONNX Runtime on the same inputs.

Any pass (or a test) can call `max_abs_error(before, after)`; without `feeds` it draws random
inputs (dynamic batch 2) from the `before` model's input signature.
"""
from __future__ import annotations

import os

import numpy as np
import onnx_ir as ir

from edgepack import runtime

ModelLike = ir.Model | str | os.PathLike


def max_abs_error(before: ModelLike, after: ModelLike, feeds: dict[str, np.ndarray] | None = None,
                  *, relative: bool = False, batch: int = 2, seed: int = 0) -> float:
    """Largest |before - after| over all outputs; divided by the largest |before| output
    when `relative` (so one tolerance fits models whose outputs are large or small)."""
    if feeds is None:
        spec = before if isinstance(before, ir.Model) else runtime.session(before)
        feeds = runtime.random_feeds(spec, batch=batch, seed=seed)
    ref = runtime.run_and_free(before, feeds)  # one session at a time: each holds the weights
    new = runtime.run_and_free(after, feeds)
    if not runtime.same_structure(ref, new):
        return float("inf")
    error = runtime.max_abs_error(ref, new)
    return error / runtime.output_scale(ref) if relative else error
