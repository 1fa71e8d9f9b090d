"""Before Q/DQ goes in and before a quantized model is written: the opset the QDQ form needs, and
proof that the result is a valid model ONNX Runtime loads.

Per-channel DequantizeLinear (the `axis` attribute) exists from opset 13. A model below 13 is
upgraded with the ONNX version converter; if the converter cannot, weights fall back to one
scale per tensor, which opset 10 already has. Either way the model written is valid:
`validate_quantized` runs the checker (full shape inference) and an ONNX Runtime session on the
quantized model and raises instead of letting an invalid file out.
"""
from __future__ import annotations

import dataclasses
import logging

import onnx_ir as ir

from edgepack.errors import EdgepackError, first_line

logger = logging.getLogger(__name__)

QDQ_PER_CHANNEL_OPSET = 13  # DequantizeLinear `axis`
QDQ_MIN_OPSET = 10          # QuantizeLinear / DequantizeLinear


def default_opset(model: ir.Model) -> int:
    return int(model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0)))


def upgrade_opset(model: ir.Model, version: int = QDQ_PER_CHANNEL_OPSET) -> bool:
    """Convert `model` in place to `version` of the default domain if it is below; True if it
    was converted, False if it already was at or above (raises EdgepackError if it cannot be)."""
    opset = default_opset(model)
    if opset >= version:
        return False
    import onnx
    from onnx import version_converter

    try:
        proto = version_converter.convert_version(ir.serde.serialize_model(model), version)
        onnx.checker.check_model(proto)
        converted = ir.serde.deserialize_model(proto)
    except Exception as exc:  # the converter raises bare RuntimeErrors for unsupported adapters
        raise EdgepackError(f"cannot convert the model from opset {opset} to {version}: {first_line(exc)}",
                            hint="export it at opset 13 or later, or quantize with --per-tensor") from None
    model.graph, model.ir_version = converted.graph, converted.ir_version
    model.opset_imports.update(converted.opset_imports)
    logger.info("upgraded the model from opset %d to %d", opset, version)
    return True


def prepare_opset(model: ir.Model, policy):
    """The policy the model can carry: the model upgraded to opset 13 for per-channel weights,
    or, where that fails, the same policy with per-tensor weights. Below opset 10 (no Q/DQ at
    all) the model is upgraded or refused."""
    opset = default_opset(model)
    if opset >= QDQ_PER_CHANNEL_OPSET or not (policy.per_channel or opset < QDQ_MIN_OPSET):
        return policy
    try:
        upgrade_opset(model)
        return policy
    except EdgepackError as exc:
        if opset < QDQ_MIN_OPSET:
            raise
        logger.warning("%s; quantizing weights per tensor (valid at opset %d)", exc.message, opset)
        return dataclasses.replace(policy, per_channel=False)


def validate_quantized(model: ir.Model, what: str = "quantized model") -> None:
    """The checker (with full shape inference) and an ONNX Runtime CPU session on `model`;
    EdgepackError naming the failure otherwise (nothing should be written then)."""
    import onnx

    from edgepack import io, runtime

    if io.weights_nbytes(model) > io.EXTERNAL_DATA_THRESHOLD:  # beyond protobuf: checker via the io bridge
        try:
            io.check_model(model, full_check=True)
        except Exception as exc:
            raise EdgepackError(f"the {what} fails the ONNX checker: {first_line(exc)}",
                                hint="nothing was written; please report the model") from None
        logger.info("%s over 2 GB: checked; ONNX Runtime loads it from the written file only", what)
        return
    try:
        proto = ir.serde.serialize_model(model)
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise EdgepackError(f"the {what} fails the ONNX checker: {first_line(exc)}",
                            hint="nothing was written; please report the model") from None
    try:
        runtime.session(model, optimize=False)
    except EdgepackError as exc:
        raise EdgepackError(f"the {what} does not load in ONNX Runtime: {exc.message}",
                            hint="nothing was written; please report the model") from None
