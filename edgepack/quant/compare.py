"""compare: how far model B's outputs (and shared intermediate tensors) are from model A's.

Per tensor, accumulated over the data in constant memory:
    SQNR   = 10 log10( sum a^2 / sum (a - b)^2 )   dB; higher is closer
    cosine = sum ab / sqrt(sum a^2 * sum b^2)
    max abs error, and for [N, classes] outputs the top-1 agreement of B with A (and accuracy with labels).
"""
from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from edgepack import runtime
from edgepack.errors import EdgepackError
from edgepack.calib.calibrate import _with_outputs, observable_tensors
from edgepack.calib.data import has_labels, input_specs_of, open_dataset

SCHEMA = "edgepack.compare/1"


class _Stats:
    def __init__(self):
        self.aa = self.bb = self.ab = self.ee = 0.0
        self.max_abs = 0.0
        self.agree = self.total = 0
        self.correct = {"a": 0, "b": 0}

    def update(self, a: np.ndarray, b: np.ndarray, labels: np.ndarray | None) -> None:
        a64, b64 = a.astype(np.float64).reshape(-1), b.astype(np.float64).reshape(-1)
        e = a64 - b64
        self.aa += float(a64 @ a64)
        self.bb += float(b64 @ b64)
        self.ab += float(a64 @ b64)
        self.ee += float(e @ e)
        self.max_abs = max(self.max_abs, float(np.abs(e).max()) if e.size else 0.0)
        if a.ndim == 2 and a.shape[1] > 1:
            pa, pb = a.argmax(axis=1), b.argmax(axis=1)
            self.agree += int((pa == pb).sum())
            self.total += len(pa)
            if labels is not None:
                self.correct["a"] += int((pa == labels).sum())
                self.correct["b"] += int((pb == labels).sum())

    def result(self) -> dict:
        sqnr = math.inf if self.ee == 0 else 10 * math.log10(self.aa / self.ee) if self.aa > 0 else -math.inf
        cosine = self.ab / math.sqrt(self.aa * self.bb) if self.aa > 0 and self.bb > 0 else 1.0
        return {"sqnr_db": sqnr, "cosine": cosine, "max_abs_error": self.max_abs,
                "top1_agreement": self.agree / self.total if self.total else None}


def compare(a, b, data, *, limit: int | None = None, layers: bool = True, labels: bool = True,
            label_key: str = "labels") -> dict:
    """`compare_models` for models given as paths or onnx-ir models (the public API)."""
    from edgepack import io

    a = io.load(a) if not isinstance(a, ir.Model) else a
    b = io.load(b) if not isinstance(b, ir.Model) else b
    return compare_models(a, b, data, limit=limit, layers=layers, labels=labels, label_key=label_key)


def compare_models(a: ir.Model, b: ir.Model, data, *, limit: int | None = None, layers: bool = True,
                   labels: bool = True, batch_size: int = 64, label_key: str = "labels") -> dict:
    """Run A and B on the same data; statistics per output and per shared intermediate tensor.

    Top-1 accuracy is computed when `labels` and the data holds an array named `label_key` (an
    .npz) or is a calibration folder whose manifest names an evaluation file and its labels."""
    from edgepack import io

    outputs = [o.name for o in a.graph.outputs]
    shared = []
    if layers:
        io.infer_shapes(a)
        io.infer_shapes(b)
        names_b = {v.name for v in observable_tensors(b)}
        shared = [v for v in observable_tensors(a) if v.name in names_b and v.name not in outputs
                  and not v.is_graph_input()]
        a, b = _with_outputs(a, shared), _with_outputs(b, [v for v in observable_tensors(b) if v.name in
                                                          {s.name for s in shared}])
    sa, sb = runtime.session(a), runtime.session(b)
    names = outputs + [v.name for v in shared]
    stats = {n: _Stats() for n in names}
    reshaped: set[str] = set()  # same name, other shape (e.g. channels removed by optimize)
    dataset = open_dataset(data, input_specs_of(sa), batch_size=batch_size, limit=limit,
                           labels=label_key if labels and has_labels(data, label_key) else None)
    for batch in dataset.batches(with_labels=dataset.label_key is not None):
        y = batch.pop("__labels__", None)
        ra = dict(zip([o.name for o in sa.get_outputs()], runtime.run(sa, None, batch)))
        rb = dict(zip([o.name for o in sb.get_outputs()], runtime.run(sb, None, batch)))
        for n in names:
            if ra[n].shape != rb[n].shape:
                if n in outputs:
                    raise EdgepackError(f"output '{n}' has shape {list(ra[n].shape)} in A and "
                                        f"{list(rb[n].shape)} in B: the models are not comparable")
                reshaped.add(n)
            elif n not in reshaped:
                stats[n].update(ra[n], rb[n], y if n in outputs else None)
    result = {"schema": SCHEMA,
              "outputs": [{"name": n, **stats[n].result()} for n in outputs],
              "layers": [{"tensor": n, **{k: v for k, v in stats[n].result().items() if k != "top1_agreement"}}
                         for n in names[len(outputs):] if n not in reshaped],
              "reshaped_tensors": sorted(reshaped),
              "accuracy": None}
    first = stats[outputs[0]]
    if dataset.label_key is not None and first.total:
        result["accuracy"] = {"a": first.correct["a"] / first.total, "b": first.correct["b"] / first.total,
                              "samples": first.total}
    return result


def format_comparison(result: dict, top: int = 10) -> str:
    lines = [f"{'output':<24} {'SQNR dB':>9} {'cosine':>9} {'max abs err':>12} {'top-1 agree':>12}"]
    for o in result["outputs"]:
        agree = "-" if o["top1_agreement"] is None else f"{o['top1_agreement']:.2%}"
        lines.append(f"{o['name'][:24]:<24} {o['sqnr_db']:>9.2f} {o['cosine']:>9.5f} {o['max_abs_error']:>12.4g} {agree:>12}")
    if result["accuracy"]:
        acc = result["accuracy"]
        lines.append(f"top-1 accuracy on {acc['samples']} labelled samples: A {acc['a']:.2%}, B {acc['b']:.2%} "
                     f"({100 * (acc['b'] - acc['a']):+.2f} points)")
    if result["layers"]:
        worst = sorted(result["layers"], key=lambda r: r["sqnr_db"])[:top]
        lines += ["", f"{'least accurate shared tensors':<40} {'SQNR dB':>9} {'cosine':>9}"]
        lines += [f"{r['tensor'][:40]:<40} {r['sqnr_db']:>9.2f} {r['cosine']:>9.5f}" for r in worst]
    return "\n".join(lines)
