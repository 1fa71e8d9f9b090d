"""What a compression step cost and what it saved: output error against the original model on
sample data, and params / nonzeros / MACs / size before and after.

Sample data is random (seeded) unless a calibration folder or .npz/.npy file is given.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import onnx_ir as ir

from edgepack.errors import EdgepackError
from edgepack.graph import copy_model

logger = logging.getLogger(__name__)

_NP_DTYPES = {ir.DataType.FLOAT: np.float32, ir.DataType.FLOAT16: np.float16,
              ir.DataType.DOUBLE: np.float64, ir.DataType.INT64: np.int64,
              ir.DataType.INT32: np.int32, ir.DataType.UINT8: np.uint8, ir.DataType.INT8: np.int8,
              ir.DataType.BOOL: np.bool_}


def graph_inputs(model: ir.Model) -> list[ir.Value]:
    return [v for v in model.graph.inputs if not v.is_initializer()]


def random_feeds(model: ir.Model, *, batch: int = 8, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """One batch of seeded random inputs; the first dynamic dim is `batch`."""
    from edgepack.runtime import random_feeds as session_feeds

    return [session_feeds(model, batch=batch, seed=seed)]


def load_feeds(spec, model: ir.Model, *, limit: int = 256, batch: int = 32) -> list[dict[str, np.ndarray]]:
    """Sample inputs from a calibration folder (its evaluation set), .npz or .npy, at most `limit`
    samples; a `labels` array, when there is one, comes along as feeds["labels"]."""
    from edgepack.calib.data import InputSpec, has_labels, open_dataset

    specs = [InputSpec(v.name, tuple(v.shape or ()), np.dtype(_NP_DTYPES.get(v.dtype, np.float32)))
             for v in graph_inputs(model)]
    labels = "labels" if has_labels(spec) else None
    dataset = open_dataset(spec, specs, batch_size=batch, limit=limit, labels=labels)
    feeds = []
    for item in dataset.batches(with_labels=labels is not None):
        if "__labels__" in item:
            item["labels"] = item.pop("__labels__")
        feeds.append(item)
    if not feeds:
        raise EdgepackError(f"{spec}: holds no samples", hint="pass data with at least one sample")
    return feeds


def sample_feeds(model: ir.Model, data=None) -> list[dict[str, np.ndarray]]:
    """Random inputs, the batches of a path (load_feeds), or a list of {input: array} batches."""
    if not graph_inputs(model):
        raise EdgepackError("the model has no inputs: its output change cannot be measured",
                            hint="compress a model whose graph takes inputs")
    if data is None:
        return random_feeds(model)
    if isinstance(data, (list, tuple)) and all(isinstance(batch, dict) for batch in data):
        return list(data)
    return load_feeds(data, model)


def run(model: ir.Model, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Run the model in ONNX Runtime (CPU) over each batch; `labels` in feeds are not fed."""
    from edgepack.runtime import session as ort_session

    session = ort_session(model)
    types = {i.name: i.type for i in session.get_inputs()}

    def cast(name, array):  # a float16 model (compress fp16) takes the same float samples
        return array.astype(np.float16) if types[name] == "tensor(float16)" else array

    from edgepack.runtime import run

    return [run(session, None, {k: cast(k, v) for k, v in f.items() if k in types}) for f in feeds]


def output_error(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]],
                 labels: list[np.ndarray] | None = None) -> dict:
    """Max/mean absolute error and SQNR (dB) of the first output; top-1 agreement for [N, C]."""
    ref = np.concatenate([r[0].astype(np.float64).reshape(len(r[0]), -1) for r in reference])
    out = np.concatenate([c[0].astype(np.float64).reshape(len(c[0]), -1) for c in candidate])
    diff = out - ref
    non_finite = int(np.count_nonzero(~np.isfinite(out))) - int(np.count_nonzero(~np.isfinite(ref)))
    with np.errstate(over="ignore", invalid="ignore"):
        noise, energy = float(np.sum(diff ** 2)), float(np.sum(ref ** 2))
    if noise == 0:
        sqnr = math.inf
    elif math.isfinite(noise) and math.isfinite(energy):
        sqnr = 10 * math.log10(max(energy, 1e-30) / noise)
    else:  # an output overflowed (inf, nan): no ratio to give
        sqnr = math.nan
    report = {"max_abs_error": float(np.abs(diff).max()), "mean_abs_error": float(np.abs(diff).mean()),
              "sqnr_db": sqnr if math.isfinite(sqnr) else None}
    if non_finite > 0:  # the candidate computes inf/nan where the reference does not
        report["non_finite_outputs"] = non_finite
    if ref.shape[1] > 1:
        report["top1_agreement"] = float(np.mean(ref.argmax(1) == out.argmax(1)))
        if labels is not None:
            y = np.concatenate(labels).reshape(-1)
            report["accuracy"] = {"before": float(np.mean(ref.argmax(1) == y)),
                                  "after": float(np.mean(out.argmax(1) == y))}
    return report


def compare(original: ir.Model, compressed: ir.Model, data=None) -> dict:
    """Output error of `compressed` against `original` on sample data (random when data is None)."""
    feeds = sample_feeds(original, data)
    labels = [f["labels"] for f in feeds] if all("labels" in f for f in feeds) else None
    report = output_error(run(original, feeds), run(compressed, feeds), labels)
    report["samples"] = int(sum(len(next(iter(f.values()))) for f in feeds))
    report["data"] = "random" if data is None else str(data) if isinstance(data, (str, Path)) else "batches"
    return report


def model_stats(model: ir.Model) -> dict:
    """params, nonzero weights, MACs and serialized size of an in-memory model."""
    from edgepack.inspection import inspect_model

    clone = copy_model(model)
    report = inspect_model(clone)
    nonzeros = 0
    for value in clone.graph.initializers.values():
        if value.const_value is not None:
            nonzeros += int(np.count_nonzero(value.const_value.numpy()))
    return {"nodes": report["nodes"], "params": report["params"], "nonzeros": nonzeros,
            "macs": report["macs"],
            "size_bytes": len(ir.serde.serialize_model(clone).SerializeToString())}


def cost_report(original: ir.Model, compressed: ir.Model, data=None) -> dict:
    """{"before": stats, "after": stats, "error": output error} for a compression step."""
    return {"before": model_stats(original), "after": model_stats(compressed),
            "error": compare(original, compressed, data)}


def format_cost(report: dict) -> str:
    """Two lines: what it saved, what it cost."""
    b, a, e = report["before"], report["after"], report["error"]

    def ratio(key):
        return f"{b[key]:,} -> {a[key]:,} ({a[key] / b[key]:.0%})" if b[key] else f"{b[key]} -> {a[key]}"

    lines = [f"params {ratio('params')}, nonzeros {ratio('nonzeros')}, MACs {ratio('macs')}, "
             f"size {ratio('size_bytes')} bytes"]
    sqnr = ("-" if e.get("non_finite_outputs") or not math.isfinite(e["max_abs_error"]) else "inf") \
        if e["sqnr_db"] is None else f"{e['sqnr_db']:.1f}"
    text = (f"output error on {e['samples']} samples ({e['data']}): max |diff| {e['max_abs_error']:.4g}, "
            f"SQNR {sqnr} dB")
    if e.get("non_finite_outputs"):
        text += (f", {e['non_finite_outputs']:,} output values are inf/nan where the original's are finite "
                 "(an overflow: float16 stops at 65504)")
    if "top1_agreement" in e:
        text += f", top-1 agreement {e['top1_agreement']:.1%}"
    if "accuracy" in e:
        text += f", accuracy {e['accuracy']['before']:.1%} -> {e['accuracy']['after']:.1%}"
    return "\n".join(lines + [text])
