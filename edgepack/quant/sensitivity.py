"""Mixed precision: which layers hurt most when quantized, and which to keep in float.

Sensitivity of layer L = output SQNR (dB) of the model with only L quantized, against float.
`keep_sensitive_float` quantizes everything, then moves the most sensitive layers back to float,
one at a time, until the output SQNR reaches the floor (and/or top-1 agreement its floor).
"""
from __future__ import annotations

import logging

import onnx_ir as ir

from edgepack.calib import Ranges
from edgepack.graph import copy_model
from edgepack.quant.compare import compare
from edgepack.quant.qdq import QuantPolicy, insert_qdq

logger = logging.getLogger(__name__)


def _score(float_model, quantized, data, limit, preprocess=None) -> tuple[float, float | None]:
    out = compare(float_model, quantized, data, limit=limit, layers=False, labels=False,
                  preprocess=preprocess).outputs[0]
    return out["sqnr_db"], out["top1_agreement"]


def layer_sensitivity(model: ir.Model, ranges: Ranges, policy: QuantPolicy, data, *, limit: int = 64,
                      progress: bool = False, preprocess=None) -> list[dict]:
    """Each quantizable layer alone quantized: its output SQNR, most sensitive first."""
    every = insert_qdq(copy_model(model), ranges, policy)
    layers = every.quantized
    rows = []
    iterator = layers
    if progress:
        from tqdm import tqdm

        iterator = tqdm(layers, desc="sensitivity", unit="layer", leave=False, disable=None)
    op_of = {n.name: n.op_type for n in model.graph}
    for name in iterator:
        single = insert_qdq(copy_model(model), ranges, policy, exclude=set(layers) - {name})
        sqnr, _ = _score(model, single.model, data, limit, preprocess)
        rows.append({"node": name, "op_type": op_of.get(name, "?"), "sqnr_db": sqnr})
    return sorted(rows, key=lambda r: r["sqnr_db"])


def keep_sensitive_float(model: ir.Model, ranges: Ranges, policy: QuantPolicy, data, sensitivity: list[dict], *,
                         min_sqnr_db: float | None = None, min_agreement: float | None = None,
                         exclude: set[str] = frozenset(), limit: int = 256, preprocess=None):
    """The quantization result with the fewest float layers that meets the floors."""
    kept: set[str] = set(exclude)
    order = [r["node"] for r in sensitivity if r["node"] not in kept]
    while True:
        result = insert_qdq(copy_model(model), ranges, policy, exclude=kept)
        sqnr, agreement = _score(model, result.model, data, limit, preprocess)
        ok = _within(sqnr, agreement, min_sqnr_db, min_agreement)
        logger.info("%d layers float: output SQNR %.2f dB, top-1 agreement %s", len(kept), sqnr, agreement)
        if ok or not order:
            return result, sqnr, agreement
        kept.add(order.pop(0))


def meets_budget(float_model: ir.Model, quantized: ir.Model, data, min_sqnr_db: float | None,
                 min_agreement: float | None, *, limit: int = 256) -> tuple[bool, float]:
    """Whether `quantized` still meets the floors keep_sensitive_float met (same data and limit)."""
    sqnr, agreement = _score(float_model, quantized, data, limit)
    return _within(sqnr, agreement, min_sqnr_db, min_agreement), sqnr


def _within(sqnr: float, agreement: float | None, min_sqnr_db: float | None, min_agreement: float | None) -> bool:
    return (min_sqnr_db is None or sqnr >= min_sqnr_db) and (
        min_agreement is None or agreement is None or agreement >= min_agreement)
