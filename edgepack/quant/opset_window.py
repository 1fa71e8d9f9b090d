"""Keep a model inside the opset window of the target's runtime.

TensorRT's ONNX parser reads a fixed range of opsets (targets.py fills `onnx_opset_max` from the
TensorRT version: 20 for TensorRT 10.0-10.14, 24-25 for 11.x), while onnx 1.23 writes opset 28
by default. A writer of a TensorRT artifact therefore upgrades only as far as the features it
adds need (per-channel Q/DQ: 13, FP8: 19, INT4 blocked DequantizeLinear: 21), and brings a
model above the window down with the ONNX version converter, or says why it cannot.
"""
from __future__ import annotations

import logging

import onnx_ir as ir

from edgepack.errors import EdgepackError, first_line
from edgepack.quant.validate import default_opset, upgrade_opset

logger = logging.getLogger(__name__)


def fit_opset(model: ir.Model, target, needed: int = 0, feature: str = "") -> int:
    """Convert `model` in place so that needed <= opset <= the target's maximum; the new opset."""
    high = target.onnx_opset_max
    if high is not None and needed > high:
        runtime = f"TensorRT {target.tensorrt_version}'s ONNX parser" if target.is_tensorrt else target.name
        raise EdgepackError(f"{feature or 'this model'} needs opset {needed}; {runtime} reads opsets up to {high}",
                            hint=f"choose a target whose runtime reads opset {needed} (e.g. TensorRT 11), "
                                 "or another precision")
    opset = default_opset(model)
    if opset < needed:
        upgrade_opset(model, needed)
        logger.info("opset %d -> %d for %s", opset, needed, feature or "the target")
        return needed
    if high is not None and opset > high:
        _downgrade(model, high, target)
        return high
    return opset


def _downgrade(model: ir.Model, version: int, target) -> None:
    import onnx
    from onnx import version_converter

    opset = default_opset(model)
    try:
        proto = version_converter.convert_version(ir.serde.serialize_model(model), version)
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise EdgepackError(f"the model is at opset {opset}, above the {version} that {target.name}'s runtime reads, "
                            f"and cannot be converted down: {first_line(exc)}",
                            hint=f"export the model at opset {version} or lower") from None
    converted = ir.serde.deserialize_model(proto)
    model.graph, model.ir_version = converted.graph, converted.ir_version
    model.opset_imports.update(converted.opset_imports)
    logger.info("opset %d -> %d: the newest %s reads", opset, version, target.name)


def opset_problem(model: ir.Model, target) -> str | None:
    """Why the model's opset is outside the target's window, or None."""
    high = target.onnx_opset_max
    opset = default_opset(model)
    if high is not None and opset > high:
        runtime = f"TensorRT {target.tensorrt_version}'s ONNX parser" if target.is_tensorrt else target.name
        return f"opset {opset} is beyond {runtime}, which reads opsets up to {high}"
    return None
