"""Where a QDQ model comes from: the target it was quantized for and the data preprocessing used.

`edgepack quantize` stamps both into the model's metadata (`edgepack.quantized_for`,
`edgepack.preprocess`); for a model without the stamp the QDQ form tells the runtime family:

    ONNX Runtime (CPU) form:  uint8 activations (Q zero point uint8) and/or int32 biases (DQ of int32)
    TensorRT form:            int8 everywhere, zero points 0, float biases
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgepack.errors import EdgepackError
from edgepack.graph import const_array, iter_nodes

logger = logging.getLogger(__name__)

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


def stamp_quantized(model: ir.Model, target, preprocess=None, ranges=None) -> None:
    """Record the target and the whole input pipeline in the model's metadata: the preprocessing
    the calibration data went through (`ranges.preprocess`: the flags merged with the data
    folder's own, image defaults included), else the `preprocess` given."""
    model.metadata_props[QUANTIZED_FOR] = target.name
    recorded = getattr(ranges, "preprocess", None) or (preprocess.to_json() if preprocess is not None else None)
    if recorded:
        model.metadata_props[PREPROCESS] = json.dumps(recorded)


def recorded_defaults(model, *, target=None, data=None, preprocess=None,
                      need_target: bool = True) -> tuple[dict, object, object]:
    """What `model`'s metadata records, for what the caller left out: the target it was quantized
    for (when `target` is None and `need_target`), and the preprocessing of its calibration data
    (for `data` given as a file or folder without `preprocess`; batches from Python are taken as
    ready). Returns (used, target, data): `used` = {"target": name, "preprocess": {...}} for what
    was read, so that the command can say so. `model`: an onnx-ir Model, or its metadata as a dict
    (see recorded_in_file)."""
    from edgepack.calib.data import PreprocessedData, with_preprocess
    from edgepack.calib.preprocess import Preprocess

    used: dict = {}
    metadata = model.metadata_props if isinstance(model, ir.Model) else dict(model or {})
    stamped = metadata.get(QUANTIZED_FOR)
    if target is None and need_target and stamped:
        from edgepack.targets import load_target

        try:
            load_target(stamped)
            target, used["target"] = stamped, stamped
        except EdgepackError:
            logger.warning("the model was quantized for '%s', a target this machine does not know", stamped)
    recorded = _json_table(metadata.get(PREPROCESS))
    if (recorded and preprocess is None and isinstance(data, (str, os.PathLike))
            and not isinstance(data, PreprocessedData)):
        try:
            data = with_preprocess(data, Preprocess.from_manifest(recorded, f"model metadata {PREPROCESS}"))
            used["preprocess"] = recorded
        except EdgepackError as exc:
            logger.warning("ignoring the model's recorded preprocessing: %s", exc)
    return used, target, data


def describe_defaults(used: dict) -> list[str]:
    """One line per default read from a model's metadata (see recorded_defaults)."""
    from edgepack.calib.preprocess import Preprocess

    lines = []
    if used.get("target"):
        lines.append(f"target {used['target']}: as recorded in the model (quantized for it); -t overrides")
    if used.get("preprocess"):
        steps = Preprocess.from_manifest(used["preprocess"], "model metadata").describe()
        lines.append(f"data prepared as recorded in the model: {steps}; the preprocessing flags override")
    return lines


def recorded_in_file(path) -> dict:
    """The metadata `recorded_defaults` reads, for a file: an artifact's build manifest (target,
    preprocess), else an ONNX model's own metadata. {} when nothing is recorded or readable."""
    from pathlib import Path

    path = Path(path)
    try:
        from edgepack.backends.manifest import find_manifest

        manifest = json.loads(find_manifest(path).read_text())
        if isinstance(manifest, dict) and isinstance(manifest.get("target"), str):
            metadata = {QUANTIZED_FOR: manifest["target"]}
            if isinstance(manifest.get("preprocess"), dict):
                metadata[PREPROCESS] = json.dumps(manifest["preprocess"])
            return metadata
    except (EdgepackError, OSError, ValueError):
        pass
    if path.suffix.lower() != ".onnx" or not path.is_file():
        return {}
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # not a model: the command reports that with its own message
        return {}
    return {p.key: p.value for p in proto.metadata_props if p.key in (QUANTIZED_FOR, PREPROCESS)}


def stored_preprocess(model: ir.Model) -> dict | None:
    return _json_table(model.metadata_props.get(PREPROCESS))


def _json_table(text: str | None) -> dict | None:
    try:
        value = json.loads(text) if text else None
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


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
