"""Where a QDQ model comes from: the target it was quantized for and the data preprocessing used.

`edgepack quantize` stamps both into the model's metadata (`edgepack.quantized_for`,
`edgepack.preprocess`); for a model without the stamp the QDQ form tells the runtime family:

    ONNX Runtime (CPU) form:  uint8 activations (Q zero point uint8) and/or int32 biases (DQ of int32)
    TensorRT form:            int8 everywhere, zero points 0, float biases
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgepack.graph import const_array, iter_nodes

QUANTIZED_FOR = "edgepack.quantized_for"
PREPROCESS = "edgepack.preprocess"
# the largest unsigned activation code the model was calibrated for: "127" for 7-bit activations
ACTIVATION_QMAX = "edgepack.activation_qmax"


@dataclass(frozen=True)
class QdqOrigin:
    """`target`: the stamped target name (None when unstamped); `form`: "onnxruntime" or "tensorrt"
    from the graph itself; `evidence`: what in the graph says so."""

    target: str | None
    form: str
    evidence: str


def stamp_quantized(model: ir.Model, target, preprocess=None) -> None:
    """Record the target (and the data preprocessing) in the model's metadata."""
    model.metadata_props[QUANTIZED_FOR] = target.name
    if preprocess is not None and preprocess.to_json():
        model.metadata_props[PREPROCESS] = json.dumps(preprocess.to_json())


def stored_preprocess(model: ir.Model) -> dict | None:
    text = model.metadata_props.get(PREPROCESS)
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


def qdq_origin(model: ir.Model) -> QdqOrigin | None:
    """None for a model without QuantizeLinear/DequantizeLinear."""
    uint8, int32, any_qdq = 0, 0, False
    for node in iter_nodes(model):
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        any_qdq = True
        zero = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        if node.op_type == "QuantizeLinear" and (zero is None or zero.dtype == np.uint8):
            uint8 += 1
        if node.op_type == "DequantizeLinear":
            src = const_array(node.inputs[0])
            if src is not None and src.dtype == np.int32:
                int32 += 1
    if not any_qdq:
        return None
    stamped = model.metadata_props.get(QUANTIZED_FOR)
    if uint8 or int32:
        parts = [f"{uint8} uint8 activation(s)" if uint8 else "", f"{int32} int32 bias(es)" if int32 else ""]
        return QdqOrigin(stamped, "onnxruntime", " and ".join(p for p in parts if p))
    return QdqOrigin(stamped, "tensorrt", "int8 symmetric activations and weights")


def target_mismatch(model: ir.Model, target) -> str | None:
    """A sentence when `model` was quantized for another target than `target`, else None.
    TensorRT refuses the ONNX Runtime form; an ONNX Runtime target runs the TensorRT form (slower)."""
    origin = qdq_origin(model)
    if origin is None:
        return None
    if origin.target is not None and origin.target != target.name:
        return f"quantized for {origin.target}, not {target.name}"
    if target.is_tensorrt and origin.form == "onnxruntime":
        return f"quantized for {origin.target or 'an ONNX Runtime CPU target'} ({origin.evidence})"
    return None


def seven_bit_activations(model: ir.Model) -> bool:
    """Whether the model's uint8 activations were calibrated to codes 0..127 (stamped by quantize)."""
    return model.metadata_props.get(ACTIVATION_QMAX) == "127"
