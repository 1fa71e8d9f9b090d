"""calibrate: one ONNX Runtime pass over the data, every float activation fed to an observer."""
from __future__ import annotations

import hashlib
import logging

import numpy as np
import onnx_ir as ir

from edgepack import runtime
from edgepack.calib.data import input_specs_of, open_dataset
from edgepack.calib.observers import METHODS, ChannelMeanObserver, HistogramObserver
from edgepack.calib.ranges import Ranges
from edgepack.errors import EdgepackError

logger = logging.getLogger(__name__)
FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16)


def observable_tensors(model: ir.Model) -> list[ir.Value]:
    """Every float tensor computed by the graph, plus float graph inputs (what Q/DQ may go on)."""
    values = [v for v in model.graph.inputs if v.dtype in FLOATS and not v.is_initializer()]
    for node in model.graph:
        if node.op_type in ("Constant", "QuantizeLinear", "DequantizeLinear"):
            continue
        values += [o for o in node.outputs if o.dtype in FLOATS]
    return values


def calibrate(model: ir.Model, data, *, method: str = "entropy", percentile: float = 99.99,
              batch_size: int = 32, limit: int | None = None, symmetric: bool = False,
              progress: bool = True, only: set[str] | None = None, preprocess=None) -> Ranges:
    """Observe every float tensor over `data` (a path or an iterable of {input: array}).

    `preprocess`: an `edgepack.calib.preprocess.Preprocess` for the data (stored in the ranges).

    `only`: observe just these tensor names (what a quantizer needs). Fewer extra graph outputs
    leave ONNX Runtime free to fuse (Conv+Relu), so the calibration run is faster.
    """
    if method not in METHODS:
        raise EdgepackError(f"unknown calibration method '{method}'", hint=f"use one of {', '.join(METHODS)}")
    from edgepack import io

    from edgepack.calib.data import reusable

    data = reusable(data)  # the batch size is fitted on the first sample, then every sample is read
    io.infer_shapes(model)
    tensors = observable_tensors(model)
    if only is not None:
        tensors = [v for v in tensors if v.name in only]
    names = [v.name for v in tensors]
    probe = _with_outputs(model, tensors)
    session = runtime.session(probe, lean=True)  # graph outputs survive ORT fusions
    specs = input_specs_of(session)
    first = open_dataset(data, specs, batch_size=1, limit=1, preprocess=preprocess)
    batch_size = _batch_for_budget(session, first, batch_size)
    dataset = open_dataset(data, specs, batch_size=batch_size, limit=limit, preprocess=preprocess)
    observers = {n: HistogramObserver() for n in names}
    means = {n: ChannelMeanObserver() for n in _weighted_op_inputs(model) if n in observers}
    need_hist = method != "minmax"
    samples = 0
    bar = _progress(progress, limit)
    outputs = [o.name for o in session.get_outputs()]
    model_outputs = {v.name for v in model.graph.outputs}
    for batch in dataset:
        results = runtime.run(session, outputs, batch, where=dataset.description)
        for name, value in zip(outputs, results):
            if name in model_outputs and value.dtype.kind == "f" and not np.isfinite(value).all():
                # masks carry -inf inside a model by design; a model *output* that overflows means
                # the data is out of the model's range (e.g. unscaled, or values near 1e38)
                raise EdgepackError(f"{dataset.description}: the model's output '{name}' overflows to NaN or "
                                    "Inf on this data", hint="check the data's scale and preprocessing")
            if name in observers:
                observers[name].update(value, need_hist)
            if name in means:
                means[name].update(value)
        for name in batch:  # graph inputs are observed from the data itself
            if name in observers:
                observers[name].update(batch[name], need_hist)
            if name in means:
                means[name].update(batch[name])
        n = len(next(iter(batch.values())))
        samples += n
        if bar is not None:
            bar.update(n)
    if bar is not None:
        bar.close()
    if samples == 0:
        raise EdgepackError(f"{dataset.description}: no calibration samples")
    ranges = Ranges(method, symmetric=symmetric, samples=samples,
                    percentile=percentile if method == "percentile" else None,
                    preprocess=dataset.preprocess.to_json() if dataset.preprocess is not None else None)
    for name, obs in observers.items():
        ranges.tensors[name] = tuple(float(v) for v in obs.range(method, symmetric=symmetric, percentile=percentile))
    ranges.means = {name: m for name, obs in means.items() if (m := obs.mean()) is not None}
    ranges.model_sha256 = hashlib.sha256(ir.serde.serialize_model(model).graph.SerializeToString()).hexdigest()
    logger.info("calibrated %d tensors on %d samples (%s)", len(names), samples, method)
    return ranges


# what one calibration batch may hold in observed activations: memory stays flat whatever the
# number of samples, and small whatever the model (a 224x224 CNN holds ~10 MB per sample)
ACTIVATION_BUDGET_BYTES = 96 * 2**20


def _batch_for_budget(session, first, batch_size: int) -> int:
    """The largest batch <= `batch_size` whose observed activations fit ACTIVATION_BUDGET_BYTES,
    measured on the first sample."""
    for sample in first:
        per_sample = sum(o.nbytes for o in session.run(None, sample)) or 1
        fitted = max(1, min(batch_size, ACTIVATION_BUDGET_BYTES // per_sample))
        if fitted < batch_size:
            logger.info("calibrating %d samples at a time (%.1f MB of activations each)", fitted, per_sample / 2**20)
        return fitted
    return batch_size


def _weighted_op_inputs(model: ir.Model) -> set[str]:
    """Activations entering Conv/Gemm: their per-channel means drive bias correction."""
    return {n.inputs[0].name for n in model.graph if n.op_type in ("Conv", "Gemm") and n.inputs
            and n.inputs[0] is not None}


def _with_outputs(model: ir.Model, tensors: list[ir.Value]) -> ir.Model:
    """A copy of the graph whose outputs include every observed tensor (weights shared, not
    copied; external data still read from the model's folder)."""
    from edgepack.graph import copy_model

    probe = copy_model(model)
    wanted = {v.name for v in tensors}
    existing = {v.name for v in (*probe.graph.outputs, *probe.graph.inputs)}
    for node in probe.graph:
        for value in node.outputs:
            if value.name in wanted and value.name not in existing:
                probe.graph.outputs.append(value)
                existing.add(value.name)
    return probe


def _progress(enabled: bool, total: int | None):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="calibrating", unit="sample", leave=False, disable=None)
