"""quantize(weights="int4" | "fp8"): the formats beside INT8, each legal for its target's runtime.

int4: weight-only INT4 MatMul weights (quant/int4/), activations float; RTN, GPTQ or AWQ; the
      target's encoding (TensorRT: blocked DequantizeLinear, opset 21..the parser's maximum;
      ONNX Runtime: MatMulNBits); `max_error` / `min_agreement` keep the most sensitive layers
      at INT8 (weight-only) instead of float.
fp8:  FP8 E4M3 Q/DQ on weights and activations with TensorRT's INT8 placement (quant/fp8.py),
      for targets with FP8 (compute capability >= 8.9).
Both end like INT8: check-qdq against the target, the checker and an ONNX Runtime load.
"""
from __future__ import annotations

import logging
import os

import onnx_ir as ir

from edgepack.errors import EdgepackError, UsageError

logger = logging.getLogger(__name__)
WEIGHTS = ("int8", "int4", "fp8")


def quantize_low_precision(model, data, *, target, weights: str, algorithm: str = "awq-gptq",
                           block_size: int | None = None, method: str | None = None, percentile: float = 99.99,
                           exclude=(), max_error=None, min_agreement=None, limit=None, progress=False,
                           preprocess=None, ranges=None, smoothquant="auto", output=None):
    from edgepack import io
    from edgepack.calib.data import reusable, with_preprocess
    from edgepack.quant.quantize import EMULATED, QuantizeResult

    if weights not in WEIGHTS:
        raise UsageError(f"unknown weight format '{weights}'", hint=f"use --weights {' or '.join(WEIGHTS)}")
    if not isinstance(model, ir.Model):
        model = io.load(model)
    data = with_preprocess(reusable(data), preprocess)
    for node in model.graph:  # decisions are recorded per node name
        if not node.name:
            node.name = f"/{node.op_type}_{id(node):x}"
    if weights == "int4":
        result = _int4(model, data, target, algorithm, block_size, exclude, max_error, min_agreement, limit, progress)
    else:
        result = _fp8(model, data, target, method, percentile, exclude, limit, progress, ranges, smoothquant)
    from edgepack.quant.check_qdq import check_qdq
    from edgepack.quant.origin import stamp_quantized
    from edgepack.quant.validate import validate_quantized

    problems = check_qdq(model, target)
    if problems:
        raise EdgepackError(f"{weights} model breaks {len(problems)} {target.name} rule(s); first: {problems[0]}",
                            hint="nothing was written; please report the model")
    validate_quantized(model)
    stamp_quantized(model, target, preprocess)
    quantized, skipped, method_name, sensitivity, sqnr, calibrated = result
    out = QuantizeResult(model, target.name, method_name, quantized, skipped, calibrated, sensitivity, sqnr, problems)
    out.accuracy_proxy = EMULATED if target.is_tensorrt else None
    if output is not None:
        out.output = str(io.save(model, output))
    return out


def _int4(model, data, target, algorithm, block_size, exclude, max_error, min_agreement, limit, progress):
    from edgepack.quant.int4.weight_only import quantize_weights

    r = quantize_weights(model, data, target, algorithm=algorithm, block_size=block_size, exclude=set(exclude),
                         min_sqnr_db=max_error, min_agreement=min_agreement, limit=limit, progress=progress)
    quantized = [layer.label for layer in r.layers]
    rows = [{"node": layer.label, "op_type": layer.node.op_type, "bits": layer.bits, "sqnr_db": layer.sqnr_db,
             "relative_error": layer.error} for layer in r.layers if layer.sqnr_db is not None]
    rows = sorted(rows, key=lambda row: row["sqnr_db"]) or None  # measured with a budget only
    name = f"int4 {algorithm}, block {r.block}, {r.encoding}"
    eight = sum(layer.bits == 8 for layer in r.layers)
    if eight:
        name += f", {eight} layer(s) INT8"
    return quantized, r.skipped, name, rows, r.output_sqnr_db, None


def _fp8(model, data, target, method, percentile, exclude, limit, progress, ranges, smoothquant):
    from edgepack.calib import Ranges, calibrate
    from edgepack.graph import copy_model
    from edgepack.quant import fp8
    from edgepack.quant.opset_window import fit_opset
    from edgepack.quant.prepare import prepare
    from edgepack.quant.qdq import QuantPolicy, insert_qdq, tensors_to_calibrate

    if not target.fp8:
        cc = target.compute_capability or "no GPU"
        raise EdgepackError(f"target '{target.name}' has no FP8 (compute capability {cc}; FP8 needs 8.9+: "
                            "Ada, Hopper, Blackwell, Thor)", hint="use --weights int8 for this target")
    if isinstance(ranges, (str, os.PathLike)):
        ranges = Ranges.load(ranges)
    if data is None and ranges is None:
        raise UsageError("fp8 needs calibration data or a ranges file", hint="pass --data D or --ranges R")
    method = {"amax": "minmax"}.get(method, method) or target.calibration_method
    policy = QuantPolicy.for_target(target)
    prepare(model)
    fit_opset(model, target, fp8.FP8_OPSET, "FP8 Q/DQ")
    if smoothquant is not None and data is not None and ranges is None:
        from edgepack.quant.smoothquant import smooth

        smooth(model, data, alpha=smoothquant, limit=limit)
    if ranges is None:
        ranges = calibrate(copy_model(model), data, method=method, percentile=percentile, limit=limit,
                           symmetric=True, progress=progress, only=tensors_to_calibrate(model, policy))
    weights = fp8.float_weights(model)
    inserted = insert_qdq(model, ranges, policy, exclude=set(exclude))
    fp8.convert_int8_qdq_to_fp8(model, weights)
    return inserted.quantized, inserted.skipped, f"fp8-e4m3 ({ranges.method} ranges)", None, None, ranges
