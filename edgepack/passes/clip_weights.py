"""Weight clipping: outliers beyond a per-layer threshold are set to the threshold."""
from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from edgepack.errors import EdgepackError
from edgepack.graph import const_array, copy_model, node_label, weight_input
from edgepack.passes.prune import select_nodes

logger = logging.getLogger(__name__)


class ClipWeightsPass(ir.passes.InPlacePass):
    """w <- clip(w, -t, t) for the weights of Conv/ConvTranspose/Gemm/MatMul.

    t is fixed (`threshold`) or per layer the `percentile`-th percentile of |w| (taken at an
    element, never interpolated, so clipping again at the same percentile moves nothing).
    Narrower weight ranges make INT8 weight scales finer for the bulk of the weights.
    """

    def __init__(self, *, percentile: float | None = None, threshold: float | None = None,
                 include=(), exclude=()):
        super().__init__()
        if (percentile is None) == (threshold is None):
            raise EdgepackError("clip needs exactly one of --percentile or --threshold",
                                hint="e.g. --percentile 99.9")
        if percentile is not None and not 0 < percentile <= 100:
            raise EdgepackError(f"--percentile {percentile}: must be in (0, 100]", hint="e.g. 99.9")
        if threshold is not None and threshold <= 0:
            raise EdgepackError(f"--threshold {threshold}: must be positive", hint="e.g. --threshold 1.0")
        self.percentile, self.threshold = percentile, threshold
        self.include, self.exclude = tuple(include), tuple(exclude)
        self.layers: list[dict] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.layers = []
        ops = ("Conv", "ConvTranspose", "Gemm", "MatMul")
        for node in select_nodes(model, self.include, self.exclude, ops=ops):
            value = weight_input(node)
            w = const_array(value)
            if w.dtype.kind != "f" or w.size == 0:
                continue
            t = self.threshold if self.threshold is not None else float(
                np.percentile(np.abs(w), self.percentile, method="higher"))
            clipped = np.clip(w, -t, t).astype(w.dtype)
            moved = int(np.count_nonzero(clipped != w))
            self.layers.append({"node": node_label(node), "op_type": node.op_type, "threshold": t,
                                "moved": moved, "params": int(w.size),
                                "max_abs_before": float(np.abs(w).max())})
            if moved:
                value.const_value = ir.tensor(clipped, name=value.name)
        moved = sum(layer["moved"] for layer in self.layers)
        logger.info("clipped %d weights in %d layers", moved, len(self.layers))
        return ir.passes.PassResult(model, modified=moved > 0)


def clip_weights(model: ir.Model, *, percentile: float | None = None, threshold: float | None = None,
                 include=(), exclude=(), data=None) -> tuple[ir.Model, dict]:
    """A clipped copy of `model` and its report (weights moved per layer, cost)."""
    from edgepack import cost

    clipped = copy_model(model)
    clip_pass = ClipWeightsPass(percentile=percentile, threshold=threshold, include=include, exclude=exclude)
    clip_pass(clipped)
    report = {"percentile": percentile, "threshold": threshold, "layers": clip_pass.layers,
              "moved": sum(layer["moved"] for layer in clip_pass.layers),
              **cost.cost_report(model, clipped, data)}
    return clipped, report
