"""quantize: calibrate (or reuse ranges), insert QDQ per the target, check the result."""
from __future__ import annotations

import logging

import onnx_ir as ir

from edgepack.calib import Ranges, calibrate
from edgepack.errors import EdgepackError
from edgepack.quant.check_qdq import check_qdq
from edgepack.quant.prepare import prepare
from edgepack.quant.qdq import QuantizeResult, QuantPolicy, insert_qdq, tensors_to_calibrate
from edgepack.targets import load_target

logger = logging.getLogger(__name__)


def quantize(model: ir.Model, data=None, *, target="x86-cpu", ranges: Ranges | None = None,
             method: str = "entropy", percentile: float = 99.99, exclude=(), per_tensor: bool = False,
             bias_correction: bool = True, smoothquant: float | None = None, float_defaults: bool = True,
             limit: int | None = None, progress: bool = False) -> QuantizeResult:
    """QDQ post-training quantization of `model` in place. Give calibration `data` or `ranges`.

    `smoothquant`: migrate activation outliers into the weights with this alpha (0..1) before
    calibrating (quant/smoothquant.py); `float_defaults`: keep norms, masks, attention scores and
    detection-head outputs float (quant/float_rules.py)."""
    from edgepack.quant.smoothquant import smooth
    from edgepack.quant.validate import prepare_opset, validate_quantized

    target = load_target(target)
    if "int8" not in target.precisions:
        raise EdgepackError(f"target '{target.name}' has no fast INT8", hint="build it with --precision fp16")
    policy = QuantPolicy.for_target(target, per_tensor=per_tensor, bias_correction=bias_correction)
    prepare(model)
    policy = prepare_opset(model, policy)
    if smoothquant is not None:
        if data is None or ranges is not None:
            raise EdgepackError("smoothquant needs calibration data and recalibrates after smoothing",
                                hint="pass data and no ranges: ranges of the unsmoothed model no longer fit")
        smooth(model, data, alpha=smoothquant, limit=limit)
    if ranges is None:
        if data is None:
            raise EdgepackError("quantize needs calibration data or a ranges file",
                                hint="pass --data D or --ranges ranges.json")
        ranges = calibrate(model, data, method=method, percentile=percentile, limit=limit,
                           symmetric=policy.symmetric_activations, progress=progress,
                           only=tensors_to_calibrate(model, policy))
    result = insert_qdq(model, ranges, policy, exclude=set(exclude), float_defaults=float_defaults)
    problems = check_qdq(model, target)
    if problems:
        raise EdgepackError(f"quantized model breaks {len(problems)} {target.name} rule(s); first: {problems[0]}")
    validate_quantized(model)
    return result
